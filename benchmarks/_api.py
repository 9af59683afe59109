"""The bare minimum API client with plain ``requests``: the baselines' side of the comparisons.

No retries, no validation, no verification: create an export, poll it, download the zip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

EXPORT_PATH = "/api/v1.1/loyalty/transactions_export"
STATUS_PATH = "/api/v1.1/tasks/status"
DOWNLOAD_PREFIX = "/api/download/"
DATE_FROM = "2023-09-01T00:00:00Z"
DATE_TO = "2023-09-30T23:59:59Z"
PROGRAM_ID = 123
CURRENCY_EID = "bonus_points"


@dataclass(frozen=True)
class Batch:
    """A completed export task of the chain.

    :param task_id: the export task id.
    :param path: the download path (``/api/download/...``, percent-encoded).
    :param total: rows in the batch.
    """

    task_id: str
    path: str
    total: int


def download_path(hashed_file: str) -> str:
    """``/api/download/<hashed_file>`` with each path segment percent-encoded."""
    return DOWNLOAD_PREFIX + "/".join(quote(segment, safe="") for segment in hashed_file.split("/"))


def export_batches(session: requests.Session, url: str, token: str, poll_interval: float) -> Iterator[Batch]:
    """Create the export chain batch by batch (following ``next_from_id``), yielding each completed task."""
    headers = {"Authorization": f"Bearer {token}"}
    from_id: str | None = None
    while True:
        body: dict[str, Any] = {
            "loyalty_program_id": PROGRAM_ID,
            "points_currency_eid": CURRENCY_EID,
            "date_from": DATE_FROM,
            "date_to": DATE_TO,
        }
        if from_id:
            body["from_id"] = from_id
        reply = session.post(url + EXPORT_PATH, json=body, headers=headers, timeout=60)
        reply.raise_for_status()
        task_id = reply.json()["data"]["task_id"]
        while True:
            status = session.post(url + STATUS_PATH, json={"task_id": task_id}, headers=headers, timeout=60)
            status.raise_for_status()
            data = status.json()["data"]
            if data["status"] == "completed":
                break
            time.sleep(poll_interval)
        result = data["result"]
        yield Batch(task_id=task_id, path=download_path(result["hashed_file"]), total=int(result["total"]))
        from_id = result.get("next_from_id") or None
        if from_id is None:
            return


def download_to(session: requests.Session, url: str, token: str, path: str, target: str) -> int:
    """Stream one zip to a local file in 1 MiB chunks; return its size."""
    written = 0
    with (
        session.get(url + path, headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=300) as reply,
        open(target, "wb") as sink,
    ):
        reply.raise_for_status()
        for chunk in reply.iter_content(1024 * 1024):
            sink.write(chunk)
            written += len(chunk)
    return written
