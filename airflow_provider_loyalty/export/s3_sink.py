"""Parts in S3 through the amazon provider's ``S3Hook`` (managed multipart upload from disk)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_provider_loyalty.export.sinks import PartSink

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook


class S3PartSink(PartSink):
    """An S3 prefix as the output location.

    Parts are uploaded with ``S3Hook.load_file`` (boto3's managed transfer: multipart above the
    threshold, streamed from the temporary file, never the whole part in memory).

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

    def key(self, name: str) -> str:
        """The S3 key of a file of this export."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    def put_file(self, name: str, local_path: str) -> str:
        key = self.key(name)
        self.hook.load_file(local_path, key, bucket_name=self.bucket, replace=True, encrypt=self.encrypt)
        return key

    def size_of(self, name: str) -> int | None:
        head = self.hook.head_object(self.key(name), bucket_name=self.bucket)
        return None if head is None else int(head["ContentLength"])

    def read_json(self, name: str) -> dict[str, Any] | None:
        key = self.key(name)
        if not self.hook.check_for_key(key, bucket_name=self.bucket):
            return None
        document = json.loads(self.hook.read_key(key, bucket_name=self.bucket))
        return document if isinstance(document, dict) else None

    def write_json(self, name: str, document: dict[str, Any]) -> str:
        key = self.key(name)
        payload = json.dumps(document, indent=2).encode("utf-8")
        self.hook.load_bytes(payload, key, bucket_name=self.bucket, replace=True, encrypt=self.encrypt)
        return key

    def delete(self, names: list[str]) -> None:
        if names:
            self.hook.delete_objects(self.bucket, [self.key(name) for name in names])

    def list_names(self) -> list[str]:
        listing_prefix = f"{self.prefix}/" if self.prefix else ""
        keys = self.hook.list_keys(bucket_name=self.bucket, prefix=listing_prefix, delimiter="/")
        return sorted(key[len(listing_prefix) :] for key in keys)
