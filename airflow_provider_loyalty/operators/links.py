"""The task view's link to an export's manifest. Only for internal usage."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import XCom
from airflow.sdk import BaseOperatorLink


def manifest_console_url(manifest_url: str) -> str:
    """Where a person opens a manifest: the S3 console for ``s3://``, the URL itself otherwise."""
    parts = urlsplit(manifest_url)
    if parts.scheme == "s3":
        key = parts.path.lstrip("/")
        return f"https://s3.console.aws.amazon.com/s3/object/{parts.netloc}?prefix={quote(key, safe='')}"
    return manifest_url


class LoyaltyManifestLink(BaseOperatorLink):
    """ "Export manifest": opens the manifest the task wrote (read from its XCom return)."""

    name = "Export manifest"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """The manifest's console URL, or '' before the task has written one."""
        value = XCom.get_value(ti_key=ti_key, key="return_value")
        if isinstance(value, dict) and value.get("manifest"):
            return manifest_console_url(str(value["manifest"]))
        return ""
