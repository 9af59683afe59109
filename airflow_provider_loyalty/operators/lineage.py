"""OpenLineage and Airflow assets of the loyalty operators: one dataset per export, not per part.

Only for internal usage. The input is always the API's points transactions of one program; the
output is where the export (or the member history) landed — the export's location as a whole, so
a lineage graph shows one node per export however many parts it has, and never the checkpoint.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow_provider_loyalty.utils.validation import is_template

#: Characters kept as they are in an asset URI's path (others are percent-encoded, so a ``#`` or
#: ``?`` in a key prefix cannot turn into a fragment or a query).
_URI_SAFE = "/=-_.~:@!$&'()*+,;"


def asset_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key`` with the key percent-encoded where it must be."""
    return f"s3://{bucket}/{quote(key.strip('/'), safe=_URI_SAFE)}"


def operator_lineage(loyalty_conn_id: str, loyalty_program_id: Any, output_url: str | None) -> Any:
    """An ``OperatorLineage`` with the API as input and the output dataset, if known yet (``None``
    without the openlineage provider).

    Always with the input, also at the task's start and after a failure before anything landed:
    lineage without datasets makes OpenLineage fall back to the task's outlets, which for the
    default asset name a node the export never writes (a second output of every export).

    :param loyalty_conn_id: the ``loyalty`` connection (its Base URL is the input's namespace).
    :param loyalty_program_id: the program, as rendered (``"0123"`` is program 123, one dataset).
    :param output_url: the location the export landed at (or the history file), or ``None``.
    """
    try:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:  # the openlineage provider is optional
        return None
    inputs = []
    if not (is_template(loyalty_conn_id) or is_template(loyalty_program_id)):  # unrendered (a failed rendering)
        name = f"loyalty_program/{_program(loyalty_program_id)}/points_transactions"
        inputs.append(Dataset(namespace=_api_namespace(loyalty_conn_id), name=name))
    outputs = []
    if output_url:
        namespace, name = _dataset_of(output_url)
        outputs.append(Dataset(namespace=namespace, name=name))
    return OperatorLineage(inputs=inputs, outputs=outputs)


def _api_namespace(loyalty_conn_id: str) -> str:
    """The connection's Base URL; ``loyalty://<conn id>`` when it cannot be read (lineage never fails a task)."""
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    try:
        return LoyaltyHook(loyalty_conn_id).settings.base_url
    except Exception:
        return f"loyalty://{loyalty_conn_id}"


def _program(loyalty_program_id: Any) -> Any:
    """The program id as the request sends it, or as given when it is none."""
    from airflow_provider_loyalty.utils.validation import check_program_id

    try:
        return check_program_id(loyalty_program_id)
    except Exception:
        return loyalty_program_id


def _dataset_of(location: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) of an output location as the export writes it (not encoded):
    ``s3://bucket/a/b`` is (``s3://bucket``, ``a/b``), ``file:///data/x`` is (``file``, ``/data/x``).
    Split by hand: a URL parser reads a ``#`` or ``?`` the location holds as a fragment or a query,
    and named ``exports/run#1`` as ``exports/run``."""
    scheme, separator, rest = location.partition("://")
    if not separator:
        scheme, colon, path = location.partition(":")
        return ("file", location) if not colon or "/" in scheme else (scheme, path)
    netloc, slash, path = rest.partition("/")
    if netloc:
        return f"{scheme}://{netloc}", path.strip("/")
    return scheme, slash + path
