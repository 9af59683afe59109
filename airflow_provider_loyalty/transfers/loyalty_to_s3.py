"""LoyaltyTransactionsToS3Operator: compliance-grade exports of points transactions to S3."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException, Context

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.export.layout import MANIFEST_NAME
from airflow_provider_loyalty.export.s3_sink import S3PartSink
from airflow_provider_loyalty.export.sinks import PartSink
from airflow_provider_loyalty.export.spec import ExportSpec
from airflow_provider_loyalty.operators.export_base import LoyaltyExportBaseOperator
from airflow_provider_loyalty.operators.lineage import asset_uri
from airflow_provider_loyalty.transfers.s3_location import (
    check_bucket,
    check_key_length,
    check_key_prefix,
    check_key_segments,
)
from airflow_provider_loyalty.transfers.s3_options import (
    check_transfer_config_args,
    check_upload_args,
    part_transfer_config,
)
from airflow_provider_loyalty.utils.validation import (
    check_conn_ids,
    check_currency,
    check_program_id,
    is_template,
    parse_bool,
)
from airflow_provider_loyalty.verify_storage import NO_CONNECTION

__all__ = ["LoyaltyTransactionsToS3Operator"]

#: Longest asset URI Airflow stores (``Asset`` refuses longer ones).
MAX_ASSET_URI = 1500
DEFAULT_PREFIX = "loyalty/transactions/program={program}/currency={currency}/{date_from}_{date_to}"


#: What a DAG using the operator without the amazon provider installed is told when it is parsed.
AMAZON_INSTALL_HINT = (
    "LoyaltyTransactionsToS3Operator needs the amazon provider (its S3Hook lands the parts): "
    "pip install 'airflow-provider-loyalty[amazon]'"
)


def require_amazon_provider() -> None:
    """Refuse, when the DAG is parsed, an S3 transfer that could only fail at run time (after the
    export was begun) for want of the amazon provider: the ``[amazon]`` extra names it."""
    if importlib.util.find_spec("airflow.providers.amazon") is None:
        raise AirflowOptionalProviderFeatureException(AMAZON_INSTALL_HINT)


def _checked_s3_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """The S3 arguments among ``values``, checked as far as they can be before rendering (errors
    name the parameter): what the constructor keeps, and what ``partial()`` checks at parse time."""
    require_amazon_provider()
    checked: dict[str, Any] = {}
    if "s3_bucket" in values:  # None too: s3_bucket=os.environ.get("BUCKET") with the variable unset
        bucket = values["s3_bucket"]
        checked["s3_bucket"] = bucket if is_template(bucket) else check_bucket(bucket)
    if not is_template(values.get("s3_key_prefix")):
        check_key_prefix(values.get("s3_key_prefix"))
    if "encrypt" in values:
        checked["encrypt"] = parse_bool(values["encrypt"], "encrypt")
        if checked["encrypt"] and values.get("sse_kms_key_id"):
            raise LoyaltyValidationError("encrypt/sse_kms_key_id", "give one: SSE-S3 (encrypt) or SSE-KMS")
    if "extra_upload_args" in values:
        checked["extra_upload_args"] = check_upload_args(values["extra_upload_args"])
    if "transfer_config_args" in values:
        checked["transfer_config_args"] = check_transfer_config_args(values["transfer_config_args"])
    check_conn_ids(values)
    return checked


class LoyaltyTransactionsToS3Operator(LoyaltyExportBaseOperator):
    """
    Export points transactions of a period to S3: verified parts, then ``_manifest.json`` last.

    Layout under ``s3://<s3_bucket>/<s3_key_prefix>/``: ``part-00000.csv``, ``part-00001.csv``,
    … and ``_manifest.json`` (per-part key, rows, bytes, sha256) written last as the completion
    marker: a manifest exists only for a complete, verified export. Parts are uploaded with the
    amazon provider's ``S3Hook`` (managed multipart from a temporary file; memory stays flat).

    One writer per prefix: an export holds a lease on its prefix (S3 conditional writes); an export
    of another period there fails at once, naming the holder. Re-running the same period replaces
    the set, staging the new parts until they are complete, so the prefix always holds the previous
    true manifest or the new one. A retry after a crash resumes after the last landed part,
    re-attaching to the export tasks already created, instead of re-exporting from the start.

    .. seealso::
        :ref:`howto/operator:LoyaltyTransactionsToS3Operator`

    :param s3_bucket: the target bucket, a name (not an ``s3://`` URL). (templated)
    :param s3_key_prefix: the key prefix of this export's files, without empty, ``.`` or ``..``
        segments. Defaults to
        ``loyalty/transactions/program=<id>/currency=<eid|iid>/<date_from>_<date_to>``. (templated)
    :param aws_conn_id: the AWS connection. (templated)
    :param encrypt: server-side encryption with S3-managed keys (SSE-S3, AES256).
    :param sse_kms_key_id: server-side encryption with this KMS key (SSE-KMS) instead.
    :param extra_upload_args: further boto3 ``ExtraArgs`` for every upload (e.g. ``ACL``).
    :param transfer_config_args: boto3 ``TransferConfig`` arguments (multipart threshold, chunk
        size, concurrency). By default a part up to 512 MiB goes up in one ``PutObject``; larger
        parts in boto3's multipart upload.

    Every parameter of both export operators applies too (program, currency, period,
    ``output_format``, ``deferrable``, ``fail_on_empty``, ``verify``, limits …): see
    :ref:`howto/operator:export-parameters`.

    Unless ``outlets`` are given, the task's outlet is an asset per program and currency (the
    literal part of the prefix): each finished export emits an event whose ``extra`` carries the
    manifest's ``s3://`` URL, its row count and its number of parts.
    """

    template_fields: Sequence[str] = (
        *LoyaltyExportBaseOperator.template_fields,
        "s3_bucket",
        "s3_key_prefix",
        "aws_conn_id",
    )
    conn_id_parameters = (*LoyaltyExportBaseOperator.conn_id_parameters, "aws_conn_id")

    def __init__(
        self,
        *,
        s3_bucket: str,
        s3_key_prefix: str | None = None,
        aws_conn_id: str | None = "aws_default",
        encrypt: bool = False,
        sse_kms_key_id: str | None = None,
        extra_upload_args: dict[str, Any] | None = None,
        transfer_config_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        checked = _checked_s3_arguments(
            {
                "s3_bucket": s3_bucket,
                "s3_key_prefix": s3_key_prefix,
                "encrypt": encrypt,
                "sse_kms_key_id": sse_kms_key_id,
                "extra_upload_args": extra_upload_args,
                "transfer_config_args": transfer_config_args,
                "aws_conn_id": aws_conn_id,
            }
        )
        s3_bucket = checked["s3_bucket"]
        self.s3_bucket = s3_bucket
        self.s3_key_prefix = s3_key_prefix
        #: A prefix was given: one that renders to None is refused, not replaced by the default.
        self._key_prefix_given = s3_key_prefix is not None
        self.aws_conn_id = aws_conn_id
        self.encrypt: bool = checked["encrypt"]
        self.sse_kms_key_id = sse_kms_key_id
        self.extra_upload_args: dict[str, Any] = checked["extra_upload_args"]
        self.transfer_config_args: dict[str, Any] = checked["transfer_config_args"]
        super().__init__(**kwargs)
        if "outlets" not in kwargs and not self.outlets:
            # After the base's __init__: the program and currency may come from default_args, which
            # Airflow applies to the base's own parameters there (before, such a task's asset was
            # the bucket's root, not the documented program=/currency= one a consumer schedules on).
            self.outlets = default_outlets(
                {
                    "loyalty_program_id": self.loyalty_program_id,
                    "points_currency_eid": self.points_currency_eid,
                    "points_currency_iid": self.points_currency_iid,
                    "s3_bucket": s3_bucket,
                    "s3_key_prefix": s3_key_prefix,
                }
            )

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As :meth:`BaseOperator.partial`; the literal S3 arguments given here (bucket, prefix,
        encryption, upload and transfer arguments) are checked at DAG-parse time, and mapped exports
        get the same default asset outlet."""
        checked = _checked_s3_arguments(kwargs)
        if "s3_bucket" in checked:
            kwargs["s3_bucket"] = checked["s3_bucket"]
        if "outlets" not in kwargs:
            defaults = _default_args_of_partial(kwargs)
            if "outlets" not in defaults:
                kwargs["outlets"] = default_outlets({**defaults, **kwargs})
        return super().partial(**kwargs)

    def key_prefix(self, spec: ExportSpec) -> str:
        """The rendered prefix, or the default one built from the export's parameters."""
        prefix = check_key_prefix(self.s3_key_prefix, given=self._key_prefix_given)
        if prefix is not None:
            return prefix
        currency = spec.points_currency_eid or f"iid-{spec.points_currency_iid}"
        default = DEFAULT_PREFIX.format(
            program=spec.loyalty_program_id,
            currency=currency,
            date_from=spec.date_from.replace(":", "").replace("-", ""),
            date_to=spec.date_to.replace(":", "").replace("-", ""),
        )
        # The eid is the one free-form piece: "a/../b" would make a '..' segment of every key.
        return check_key_segments(check_key_length(default, "points_currency_eid"), "points_currency_eid")

    def build_sink(self, context: Context, spec: ExportSpec) -> PartSink:
        """Parts go under ``s3://<s3_bucket>/<prefix>/`` through ``S3Hook``."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.s3_bucket = check_bucket(self.s3_bucket)
        upload_args = dict(self.extra_upload_args)
        if self.sse_kms_key_id:
            upload_args.update({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key_id})
        hook = S3Hook(
            aws_conn_id=self.aws_conn_id,
            extra_args=upload_args,
            transfer_config_args=part_transfer_config(self.transfer_config_args),
        )
        return S3PartSink(hook, str(self.s3_bucket), self.key_prefix(spec), encrypt=self.encrypt)

    def verify_conn_id(self) -> str | None:
        """``verify=True`` reads the bucket with ``aws_conn_id``; without one, with boto3's own
        credentials, as the export wrote it (not with ``aws_default``)."""
        return self.aws_conn_id or NO_CONNECTION

    def on_manifest(self, context: Context, manifest: dict[str, Any]) -> None:
        """Attach the manifest's location and counts to the asset event of each outlet."""
        manifest["bucket"] = self.s3_bucket
        outlet_events = context.get("outlet_events")
        if outlet_events is None:
            return
        for outlet in self.outlets:
            try:
                outlet_events[outlet].extra = {
                    "manifest": manifest["manifest"],
                    "total_rows": manifest["total_rows"],
                    "parts": len(manifest["parts"]),
                }
            except (KeyError, TypeError):
                self.log.debug("Outlet %r takes no asset event extra", outlet)


def _default_args_of_partial(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``default_args`` a ``.partial()`` task gets from its DAG, task group and own argument,
    merged as Airflow merges them (applied to the mapped tasks when they are created, too late for
    the asset the DAG declares when parsed)."""
    try:
        from airflow.sdk.bases.operator import get_merged_defaults
        from airflow.sdk.definitions._internal.contextmanager import DagContext, TaskGroupContext
    except ImportError:  # pragma: no cover - another Airflow layout: the literal arguments only
        return dict(kwargs.get("default_args") or {})
    dag = kwargs.get("dag") or DagContext.get_current()
    task_group = kwargs.get("task_group") or (TaskGroupContext.get_current(dag) if dag else None)
    merged, _params = get_merged_defaults(dag, task_group, None, kwargs.get("default_args"))
    return dict(merged)


def default_outlets(params: dict[str, Any]) -> list[Any]:
    """The task's default asset, or none while its bucket is not known (templated or mapped)."""
    bucket = params.get("s3_bucket")
    if not isinstance(bucket, str) or not bucket or is_template(bucket):
        return []
    from airflow.sdk import Asset

    uri = default_asset_uri(bucket, params)
    if len(uri) > MAX_ASSET_URI:
        given = "s3_key_prefix" if params.get("s3_key_prefix") else "points_currency_eid"
        raise LoyaltyValidationError(
            given,
            f"the export's default asset URI would be {len(uri)} characters ({uri[:60]}...), over the "
            f"{MAX_ASSET_URI} Airflow stores; use a shorter {given}, or pass outlets (your own Asset, or [])",
        )
    return [Asset(uri=uri)]


def default_asset_uri(bucket: str, params: dict[str, Any]) -> str:
    """The asset of an export: its manifest for a literal prefix; otherwise the literal part of the
    key space, per program and currency for the default prefix (each event's ``extra`` then names
    the exact manifest)."""
    bucket = bucket.strip()
    prefix = params.get("s3_key_prefix")
    literal = (isinstance(prefix, str) and not is_template(prefix)) or (
        isinstance(prefix, int) and not isinstance(prefix, bool)  # s3_key_prefix=2023 lands at "2023"
    )
    if literal and (key_prefix := check_key_prefix(prefix)) is not None:
        return asset_uri(bucket, f"{key_prefix}/{MANIFEST_NAME}")  # as the sink writes it
    if prefix and not literal:  # templated: the literal part before the first template
        # (a TaskFlow output or a mapped task group's argument has no literal part: the bucket's root)
        text = prefix if isinstance(prefix, str) else ""
        head = text.lstrip().lstrip("/").split("{", 1)[0]
        root = head.rsplit("/", 1)[0] if "/" in head else ""  # "daily-{{ ds }}": no whole segment before it
        return asset_uri(bucket, f"{root}/{MANIFEST_NAME}" if root else MANIFEST_NAME)
    # The values as the request (and the default prefix) gets them: "0123" is program 123.
    program, eid, iid = (
        params.get(name) for name in ("loyalty_program_id", "points_currency_eid", "points_currency_iid")
    )
    if any(is_template(value) for value in (program, eid, iid)):
        return asset_uri(bucket, f"loyalty/transactions/{MANIFEST_NAME}")
    try:
        program = check_program_id(program)
        currency = check_currency(eid, iid)
    except LoyaltyValidationError:  # not known yet (mapped), or refused where the values are checked
        return asset_uri(bucket, f"loyalty/transactions/{MANIFEST_NAME}")
    name = currency.get("points_currency_eid") or f"iid-{currency['points_currency_iid']}"
    root = check_key_segments(
        f"loyalty/transactions/program={program}/currency={name}", "points_currency_eid", is_location=False
    )
    return asset_uri(bucket, f"{root}/{MANIFEST_NAME}")
