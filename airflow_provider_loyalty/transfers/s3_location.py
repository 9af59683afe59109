"""The S3 location of an export, checked before anything is sent: bucket name and key prefix.

Mistakes these catch are the usual ones: a URL where a name goes (``s3://bucket/path``), a path in
the bucket name, a template that rendered empty (``exports//2024-01-06``), a value pasted with a
newline. S3 itself would take most of them as odd keys, or fail with a botocore parameter error
after the location was half used. A prefix too long for every key an export writes under it
(S3 keys are at most 1024 bytes of UTF-8) is refused too.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.export.layout import is_reserved_location_name
from airflow_provider_loyalty.utils.validation import first_control_character, refuse_rendered_none

_SCHEME = "s3://"
#: S3 keys are at most 1024 bytes of UTF-8. The longest name an export writes under its prefix
#: (``/_staging/part-NNNNNNN.parquet``, ``/_manifest.inprogress.json``, ``/_tmp-<32 hex>``) is
#: under 64 bytes, which leaves the prefix the rest.
MAX_PREFIX_BYTES = 1024 - 64


def check_bucket(value: Any) -> str:
    """The bucket name, surrounding whitespace removed.

    :param value: the rendered ``s3_bucket``.
    """
    if value is not None and not isinstance(value, str):
        raise LoyaltyValidationError("s3_bucket", f"expected a bucket name string, got {value!r}")
    bucket = (value or "").strip()
    if not bucket:
        raise LoyaltyValidationError("s3_bucket", "required: the bucket to land the export in")
    refuse_rendered_none(bucket, "s3_bucket", "expected the bucket to land the export in")
    if bucket.lower().startswith(_SCHEME):
        raise LoyaltyValidationError(
            "s3_bucket", f"expected a bucket name, got the URL {bucket!r}{_split_hint(bucket)}"
        )
    if "/" in bucket or any(character.isspace() for character in bucket):
        raise LoyaltyValidationError(
            "s3_bucket", f"{bucket!r} is not a bucket name (no '/' or spaces); put the path in s3_key_prefix"
        )
    return bucket


def check_key_prefix(value: Any, *, given: bool = False) -> str | None:
    """The key prefix without surrounding whitespace and ``/``; ``None`` when not given (the default).

    A prefix that is empty once those are dropped (``""``, ``"/"``: a template that rendered empty)
    is refused, not taken for the default: the export would land where the DAG did not say.

    :param value: the rendered ``s3_key_prefix``.
    :param given: the DAG gave one (a template): ``None`` now is what it rendered, not "unset".
    """
    unset = "leave it unset (None) for the default prefix"
    if value is None:
        if given:
            raise LoyaltyValidationError("s3_key_prefix", f"rendered to None (a template of a missing value?); {unset}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise LoyaltyValidationError("s3_key_prefix", f"expected a key prefix string, got {value!r:.80}")
    prefix = str(value).strip().strip("/")
    if not prefix:
        raise LoyaltyValidationError(
            "s3_key_prefix",
            f"{value!r} is empty once surrounding spaces and '/' are dropped (did a template render empty?); {unset}",
        )
    refuse_rendered_none(prefix, "s3_key_prefix", unset)
    if prefix.lower().startswith(_SCHEME):
        raise LoyaltyValidationError(
            "s3_key_prefix", f"expected a key prefix, got the URL {prefix!r}{_split_hint(prefix)}"
        )
    control = first_control_character(prefix)
    if control is not None:
        raise LoyaltyValidationError(
            "s3_key_prefix",
            f"{prefix[:80]!r} holds the control character {control!r} (a line break pasted with it?); "
            "S3 would store it in every key",
        )
    check_key_length(prefix, "s3_key_prefix")
    check_key_segments(prefix, "s3_key_prefix")
    return prefix


def check_key_segments(prefix: str, parameter: str, *, is_location: bool = True) -> str:
    """``prefix``, if its ``/``-separated segments are names S3 keeps as a user reads them: none
    empty, ``.`` or ``..``, and (for an export's location) the last not a name the exports keep
    their bookkeeping under.

    :param prefix: a key prefix without surrounding ``/``.
    :param parameter: the parameter that made it (named in the error).
    :param is_location: ``prefix`` is an export's location (not a directory above locations).
    """
    segments = prefix.split("/")
    way_out = "" if parameter == "s3_key_prefix" else "; pass s3_key_prefix to choose the location yourself"
    if "" in segments:
        hint = "did a template render empty?" if parameter == "s3_key_prefix" else "a '/' at an end of it?"
        raise LoyaltyValidationError(parameter, f"{prefix!r} has an empty path segment ('//'): {hint}{way_out}")
    if is_location and is_reserved_location_name(segments[-1]):
        raise LoyaltyValidationError(
            parameter, f"{prefix!r} ends in {segments[-1]!r}, a name the exports keep their bookkeeping under"
        )
    if "." in segments or ".." in segments:
        raise LoyaltyValidationError(
            parameter, f"{prefix!r} has a '.' or '..' segment, which S3 keeps as a literal key name{way_out}"
        )
    return prefix


def check_key_length(prefix: str, parameter: str) -> str:
    """``prefix``, if every key an export writes under it fits S3's 1024 bytes.

    :param prefix: the export's key prefix.
    :param parameter: the parameter that made it, for the error.
    """
    size = len(prefix.encode("utf-8", "surrogatepass"))
    if size > MAX_PREFIX_BYTES:
        raise LoyaltyValidationError(
            parameter,
            f"the key prefix {prefix[:60]!r}... is {size} bytes of UTF-8; S3 keys hold at most 1024 and "
            f"the export's own names need up to {1024 - MAX_PREFIX_BYTES}, so keep it to {MAX_PREFIX_BYTES}",
        )
    return prefix


def _split_hint(url: str) -> str:
    bucket, _, prefix = url[len(_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    return f": use s3_bucket={bucket!r}" + (f" and s3_key_prefix={prefix!r}" if prefix else "")
