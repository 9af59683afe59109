"""LoyaltyTransactionsToS3Operator: compliance-grade exports of points transactions to S3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.export.loop import ExportSpec
from airflow_provider_loyalty.export.s3_sink import S3PartSink
from airflow_provider_loyalty.export.sinks import MANIFEST_NAME, PartSink
from airflow_provider_loyalty.operators.export_base import LoyaltyExportBaseOperator
from airflow_provider_loyalty.utils.validation import is_template

__all__ = ["LoyaltyTransactionsToS3Operator"]

DEFAULT_PREFIX = "loyalty/transactions/program={program}/currency={currency}/{date_from}_{date_to}"


class LoyaltyTransactionsToS3Operator(LoyaltyExportBaseOperator):
    """
    Export points transactions of a period to S3: verified parts, then ``_manifest.json`` last.

    Layout under ``s3://<s3_bucket>/<s3_key_prefix>/``: ``part-00000.csv``, ``part-00001.csv``,
    … and ``_manifest.json`` (per-part key, rows, bytes, sha256) written last as the completion
    marker: a manifest exists only for a complete, verified export. Parts are uploaded with the
    amazon provider's ``S3Hook`` (managed multipart from a temporary file; memory stays flat).

    Re-running the same interval replaces the set (stale parts of the earlier run are deleted
    before the new manifest is written). A retry after a crash resumes after the last part the
    checkpoint ``_manifest.inprogress.json`` proves landed, re-attaching to an export task that
    was still running, instead of re-exporting from the start.

    .. seealso::
        :ref:`howto/operator:LoyaltyTransactionsToS3Operator`

    :param s3_bucket: the target bucket. (templated)
    :param s3_key_prefix: the key prefix of this export's files. Defaults to
        ``loyalty/transactions/program=<id>/currency=<eid|iid>/<date_from>_<date_to>``. (templated)
    :param aws_conn_id: the AWS connection.
    :param encrypt: server-side encryption with S3-managed keys (SSE-S3, AES256).
    :param sse_kms_key_id: server-side encryption with this KMS key (SSE-KMS) instead.
    :param extra_upload_args: further boto3 ``ExtraArgs`` for every upload (e.g. ``ACL``).
    :param transfer_config_args: boto3 ``TransferConfig`` arguments (multipart threshold, chunk
        size, concurrency).
    :param replace: replace a finished export already under the prefix (else fail).
    :param keep_zip: also store each batch's original archive as ``part-NNNNN.zip``.

    All parameters of :class:`~airflow_provider_loyalty.operators.export_base.LoyaltyExportBaseOperator`
    apply: ``loyalty_program_id``, ``points_currency_eid`` | ``points_currency_iid``,
    ``date_from``, ``date_to``, ``from_id``, ``loyalty_conn_id``, ``max_batches``,
    ``poll_interval``, ``batch_timeout``, ``deferrable``, ``resume``.
    """

    template_fields: Sequence[str] = (*LoyaltyExportBaseOperator.template_fields, "s3_bucket", "s3_key_prefix")

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
        if not s3_bucket:
            raise LoyaltyValidationError("s3_bucket", "required: the bucket to land the export in")
        if encrypt and sse_kms_key_id:
            raise LoyaltyValidationError("encrypt/sse_kms_key_id", "give one: SSE-S3 (encrypt) or SSE-KMS")
        self.s3_bucket = s3_bucket
        self.s3_key_prefix = s3_key_prefix
        self.aws_conn_id = aws_conn_id
        self.encrypt = encrypt
        self.sse_kms_key_id = sse_kms_key_id
        self.extra_upload_args = dict(extra_upload_args or {})
        self.transfer_config_args = transfer_config_args
        if "outlets" not in kwargs and not is_template(s3_bucket):
            kwargs["outlets"] = [_manifest_asset(s3_bucket, s3_key_prefix)]
        super().__init__(**kwargs)

    def key_prefix(self, spec: ExportSpec) -> str:
        """The rendered prefix, or the default one built from the export's parameters."""
        if self.s3_key_prefix:
            return str(self.s3_key_prefix).strip("/")
        currency = spec.points_currency_eid or f"iid-{spec.points_currency_iid}"
        return DEFAULT_PREFIX.format(
            program=spec.loyalty_program_id,
            currency=currency,
            date_from=spec.date_from.replace(":", "").replace("-", ""),
            date_to=spec.date_to.replace(":", "").replace("-", ""),
        )

    def build_sink(self, context: Context, spec: ExportSpec) -> PartSink:
        """Parts go under ``s3://<s3_bucket>/<prefix>/`` through ``S3Hook``."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        upload_args = dict(self.extra_upload_args)
        if self.sse_kms_key_id:
            upload_args.update({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key_id})
        hook = S3Hook(
            aws_conn_id=self.aws_conn_id, extra_args=upload_args, transfer_config_args=self.transfer_config_args
        )
        return S3PartSink(hook, str(self.s3_bucket), self.key_prefix(spec), encrypt=self.encrypt)

    def on_manifest(self, context: Context, manifest: dict[str, Any]) -> dict[str, Any]:
        """Attach the manifest's location and counts to the asset event of the outlet."""
        manifest["bucket"] = self.s3_bucket
        outlet_events = context.get("outlet_events")
        if outlet_events is not None:
            for outlet in self.outlets:
                try:
                    outlet_events[outlet].extra = {
                        "manifest": f"s3://{self.s3_bucket}/{manifest['manifest']}",
                        "total_rows": manifest["total_rows"],
                        "parts": len(manifest["parts"]),
                    }
                except (KeyError, TypeError):
                    self.log.debug("Outlet %r takes no asset event extra", outlet)
        self._last_manifest = manifest
        return manifest

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the API's transactions as input, the S3 parts as outputs."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:  # the openlineage provider is optional
            return None
        manifest = getattr(self, "_last_manifest", None) or {}
        hook = self.hook
        source = Dataset(
            namespace=hook.settings.base_url,
            name=f"loyalty_program/{self.loyalty_program_id}/points_transactions",
        )
        outputs = [Dataset(namespace=f"s3://{self.s3_bucket}", name=part["key"]) for part in manifest.get("parts", [])]
        return OperatorLineage(inputs=[source], outputs=outputs)


def _manifest_asset(bucket: str, prefix: str | None) -> Any:
    """An Asset for the manifest, so downstream DAGs can be scheduled on finished exports.

    A templated or default prefix changes per run; the asset then names the literal part of the
    key space (``s3://bucket/<prefix up to the first template>``) and each event's ``extra``
    carries the exact manifest key.
    """
    from airflow.sdk import Asset

    literal = prefix if prefix and not is_template(prefix) else None
    if literal is not None:
        return Asset(uri=f"s3://{bucket}/{literal.strip('/')}/{MANIFEST_NAME}")
    root = (prefix or DEFAULT_PREFIX).split("{", 1)[0].rstrip("/=").rsplit("/", 1)[0]
    return Asset(uri=f"s3://{bucket}/{root}/{MANIFEST_NAME}")
