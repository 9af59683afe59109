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


#: The XCom the export operators push the manifest's URL under: ``""`` as soon as the task starts,
#: the URL once the manifest is written. Airflow asks every link for its URL when a task defers or
#: fails too; read from the task's return value, which does not exist then, that logged an
#: ``XCom not found`` error each time.
MANIFEST_LINK_KEY = "loyalty_manifest_link"


def push_manifest_link(context: Any, manifest_url: str) -> None:
    """Record the manifest's URL (``""``: none yet) for :class:`LoyaltyManifestLink`."""
    push = getattr(context.get("ti"), "xcom_push", None)
    if push is not None:
        push(key=MANIFEST_LINK_KEY, value=manifest_url)


class LoyaltyManifestLink(BaseOperatorLink):
    """ "Export manifest": opens the manifest the task wrote (its URL pushed as an XCom)."""

    name = "Export manifest"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """The manifest's console URL, or '' before the task has written one."""
        value = XCom.get_value(ti_key=ti_key, key=MANIFEST_LINK_KEY)
        if value is None:  # a run from before the link had its own XCom: its return value says
            returned = XCom.get_value(ti_key=ti_key, key="return_value")
            value = returned.get("manifest") if isinstance(returned, dict) else None
        return manifest_console_url(value) if isinstance(value, str) and value else ""
