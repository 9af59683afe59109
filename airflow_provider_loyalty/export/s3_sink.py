"""Parts in S3 through the amazon provider's ``S3Hook`` (boto3's managed transfer from disk).

A part that goes up in one ``PutObject`` carries the SHA-256 taken while it was verified as its S3
checksum: S3 refuses the upload unless the bytes it received hash to it, so a part cannot change
between verification and storage unnoticed, and the stored object keeps it (``HeadObject`` with
``ChecksumMode=ENABLED`` gives the manifest's ``sha256``, base64-encoded).

Small documents use S3's conditional writes (``If-None-Match: *`` to create, ``If-Match: <ETag>``
to replace), so the lease of a location is exact on S3. Every failure is a
:class:`~airflow_provider_loyalty.exceptions.LoyaltyStorageError` naming the bucket, the key and
the AWS connection, with botocore's error chained.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyStorageError
from airflow_provider_loyalty.export.sinks import PartSink, decode_document, read_document_bytes, storage_error_code

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

_HINTS = {
    "NoSuchBucket": "create the bucket, or fix s3_bucket",
    "AccessDenied": "the AWS connection's credentials may not write there",
    "InvalidAccessKeyId": "check the AWS connection's credentials",
    "SignatureDoesNotMatch": "check the AWS connection's secret key",
}


class S3PartSink(PartSink):
    """An S3 prefix as the output location.

    Parts are uploaded with boto3's managed transfer (``upload_file``) as ``S3Hook.load_file``
    does, with the hook's ``TransferConfig`` and ``extra_args``: multipart above its threshold,
    streamed from the temporary file, never the whole part in memory. ``load_file`` itself is not
    called: it takes no per-object arguments (the part's checksum) and reports every part, a
    temporary file as its input, to the hook lineage collector (the operator reports the export
    as one dataset).

    :param hook: the ``S3Hook`` (its ``extra_args`` carry encryption and other upload args).
    :param bucket: the bucket.
    :param prefix: the key prefix, without a trailing slash.
    :param encrypt: SSE-S3 (AES256) on every object.
    """

    def __init__(self, hook: S3Hook, bucket: str, prefix: str, *, encrypt: bool = False) -> None:
        self.hook = hook
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.encrypt = encrypt

    @contextlib.contextmanager
    def _storage(self, what: str, key: str | None = None) -> Iterator[None]:
        """Any S3 failure, as our typed error naming the bucket, the key and the connection."""
        try:
            yield
        except LoyaltyError:
            raise
        except Exception as err:
            code = storage_error_code(err)
            where = f"s3://{self.bucket}/{key if key is not None else self.prefix + '/'}"
            hint = f" ({_HINTS[code]})" if code in _HINTS else ""
            raise LoyaltyStorageError(
                f"S3 {what} failed at {where} with aws_conn_id={self.hook.aws_conn_id!r}: "
                f"{code or type(err).__name__}: {_error_message(err)}{hint}"
            ) from err

    @property
    def client(self) -> Any:
        """The boto3 S3 client of the hook."""
        return self.hook.get_conn()

    def key(self, name: str) -> str:
        """The S3 key of a file of this export."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    def _upload_args(self) -> dict[str, Any]:
        args = dict(self.hook.extra_args or {})
        if self.encrypt:
            args["ServerSideEncryption"] = "AES256"
        return args

    def put_file(self, name: str, local_path: str, sha256: str | None = None) -> None:
        key = self.key(name)
        with self._storage("upload", key):
            args = self._upload_args()
            if getattr(self.hook, "_requester_pays", False):  # as load_file does
                args["RequestPayer"] = "requester"
            config = self.hook.transfer_config
            if sha256 is not None and self._takes_checksum(args, os.path.getsize(local_path), config):
                args["ChecksumAlgorithm"] = "SHA256"
                args["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
            self.client.upload_file(local_path, self.bucket, key, ExtraArgs=args or None, Config=config)

    def _takes_checksum(self, args: dict[str, Any], size: int, config: Any) -> bool:
        """Whether a part of ``size`` bytes goes up with its own SHA-256 as the S3 checksum: in one
        ``PutObject`` (S3 takes no whole-object SHA-256 for a multipart upload), with no checksum the
        user set in ``extra_args``, with a client that sends checksums when S3 supports them
        (botocore's default; ``when_required`` is the setting for a store without them) and a
        boto3 transfer that passes it on."""
        from boto3.s3.transfer import S3Transfer

        return (
            size < config.multipart_threshold
            and not any(name.startswith("Checksum") for name in args)
            and getattr(self.client.meta.config, "request_checksum_calculation", None) == "when_supported"
            and "ChecksumSHA256" in S3Transfer.ALLOWED_UPLOAD_ARGS
        )

    def _get(self, name: str) -> dict[str, Any] | None:
        """The object's GET reply (body unread), or ``None`` when it does not exist."""
        key = self.key(name)
        with self._storage("read", key):
            try:
                reply: dict[str, Any] = self.client.get_object(Bucket=self.bucket, Key=key)
            except Exception as err:
                if storage_error_code(err) in ("NoSuchKey", "404"):
                    return None
                raise
            return reply

    def read_bytes(self, name: str) -> bytes | None:
        reply = self._get(name)
        if reply is None:
            return None
        with self._storage("read", self.key(name)):
            return read_document_bytes(name, reply["Body"])

    def tagged(self, name: str) -> tuple[dict[str, Any], str] | None:
        """A JSON document and its ETag (what ``If-Match`` compares)."""
        reply = self._get(name)
        if reply is None:
            return None
        with self._storage("read", self.key(name)):
            return decode_document(name, read_document_bytes(name, reply["Body"])), str(reply["ETag"])

    def write_bytes(self, name: str, payload: bytes) -> None:
        key = self.key(name)
        with self._storage("write", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=payload, **self._upload_args())

    def create_exclusive(self, name: str, payload: bytes) -> str | None:
        key = self.key(name)
        with self._storage("create", key):
            try:
                reply = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=payload, IfNoneMatch="*", **self._upload_args()
                )
            except Exception as err:
                if storage_error_code(err) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    return None
                raise
            return str(reply["ETag"])

    def replace_if(self, name: str, payload: bytes, tag: str) -> str | None:
        key = self.key(name)
        with self._storage("replace", key):
            try:
                reply = self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=payload, IfMatch=tag, **self._upload_args()
                )
            except Exception as err:
                if storage_error_code(err) in ("PreconditionFailed", "412", "NoSuchKey", "ConditionalRequestConflict"):
                    return None
                raise
            return str(reply["ETag"])

    def delete(self, names: list[str]) -> None:
        if not names:
            return
        with self._storage("delete"):
            for start in range(0, len(names), 1000):
                self.hook.delete_objects(self.bucket, [self.key(name) for name in names[start : start + 1000]])

    def sizes(self, directory: str = "") -> dict[str, int]:
        root = self.key(directory.strip("/")) if directory else self.prefix
        listing_prefix = f"{root}/" if root else ""
        strip = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, int] = {}
        with self._storage("list", listing_prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=listing_prefix, Delimiter="/"):
                for item in page.get("Contents", []):
                    found[item["Key"][len(strip) :]] = int(item["Size"])
        return found

    def move(self, source: str, target: str) -> None:
        source_key, target_key = self.key(source), self.key(target)
        with self._storage("copy", target_key):
            self.client.copy(
                {"Bucket": self.bucket, "Key": source_key},
                self.bucket,
                target_key,
                ExtraArgs=self._upload_args() or None,
            )


def _error_message(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict) and response.get("Error", {}).get("Message"):
        return str(response["Error"]["Message"])
    return str(err)[:300]
