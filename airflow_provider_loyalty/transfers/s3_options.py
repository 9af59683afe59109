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
