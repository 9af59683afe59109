"""The upload options of the S3 transfer, checked when the DAG is parsed.

``extra_upload_args`` and ``transfer_config_args`` go to boto3 only when the first part is
uploaded, after the export's first tasks were created: a misspelt key or a size written as text
would fail there, with botocore's words. Checked up front, each fails naming the parameter.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_loyalty.exceptions import LoyaltyValidationError

#: TransferConfig arguments that are counts or byte sizes (positive integers).
_POSITIVE_INTEGERS = (
    "multipart_threshold",
    "multipart_chunksize",
    "max_concurrency",
    "num_download_attempts",
    "max_io_queue",
    "io_chunksize",
    "max_bandwidth",
)


def check_upload_args(extra_upload_args: dict[str, Any] | None) -> dict[str, Any]:
    """boto3 ``ExtraArgs`` for every upload: only names boto3's managed upload takes.

    :param extra_upload_args: the operator's ``extra_upload_args``.
    """
    args = dict(extra_upload_args or {})
    if not args:
        return args
    from boto3.s3.transfer import S3Transfer

    unknown = sorted(set(args) - set(S3Transfer.ALLOWED_UPLOAD_ARGS))
    if unknown:
        raise LoyaltyValidationError(
            "extra_upload_args",
            f"{', '.join(map(repr, unknown))} not among the upload arguments boto3 takes "
            f"({', '.join(S3Transfer.ALLOWED_UPLOAD_ARGS[:8])}, ...)",
        )
    return args


def check_transfer_config_args(transfer_config_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """boto3 ``TransferConfig`` arguments: known names, sizes and counts as positive integers.

    :param transfer_config_args: the operator's ``transfer_config_args``.
    """
    if not transfer_config_args:
        return None
    from boto3.s3.transfer import TransferConfig

    args = dict(transfer_config_args)
    for name in _POSITIVE_INTEGERS:
        value = args.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise LoyaltyValidationError(
                "transfer_config_args", f"{name} must be a positive integer (bytes or a count), got {value!r}"
            )
    try:
        TransferConfig(**args)
    except TypeError as error:
        raise LoyaltyValidationError("transfer_config_args", f"not a TransferConfig argument: {error}") from None
    return args


#: Parts up to this size go to S3 in one ``PutObject`` unless ``transfer_config_args`` says otherwise.
SINGLE_PUT_LIMIT = 512 * 1024 * 1024


def part_transfer_config(transfer_config_args: dict[str, Any] | None) -> dict[str, Any]:
    """The ``TransferConfig`` arguments parts are uploaded with: the user's over our default.

    boto3's own threshold (8 MiB) cuts a 128 MiB part into 16 requests plus two; we send a part up to
    :data:`SINGLE_PUT_LIMIT` in one ``PutObject``: one request, atomic, and a crash mid-upload
    leaves no incomplete multipart upload behind to be billed until a lifecycle rule aborts it.
    The upload of a part overlaps the download of the next batch, so one stream is rarely what
    the export waits on; a user who wants parallel streams sets ``multipart_threshold``.

    :param transfer_config_args: the operator's checked ``transfer_config_args``.
    """
    return {"multipart_threshold": SINGLE_PUT_LIMIT, **(transfer_config_args or {})}
