"""The API's wire protocol, shared by the sync hook and the trigger's async client.

Endpoint paths, how a reply becomes data or a typed error (HTTP status, the ``error`` /
``error_text`` envelope, ``Retry-After``), export task status words, and the one safe way to turn
a server-supplied ``hashed_file`` into a download URL.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyNotFoundError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyUnsafeDataError,
)
from airflow_provider_loyalty.utils.codec import decode_body
from airflow_provider_loyalty.utils.connection import LoyaltyConnectionSettings

EXPORT_PATH = "/api/v1.1/loyalty/transactions_export"
STATUS_PATH = "/api/v1.1/tasks/status"
ACCOUNT_PATH = "/api/v1.1/loyalty/account/transactions"
DOWNLOAD_PREFIX = "/api/download/"

#: Largest JSON/XML reply body read into memory (downloads are streamed, not capped by this).
MAX_REPLY_BYTES = 32 * 1024 * 1024

SUCCESS_STATUSES = frozenset({"completed"})
FAILURE_STATUSES = frozenset({"failed", "error", "canceled", "cancelled"})

TaskState = Literal["success", "failure", "running"]


def task_state(status: Any) -> TaskState:
    """Map the API's status word (any case) to success, failure or still running."""
    word = str(status or "").strip().lower()
    if word in SUCCESS_STATUSES:
        return "success"
    if word in FAILURE_STATUSES:
        return "failure"
    return "running"


def failure_text(data: Mapping[str, Any], token: str) -> str:
    """The API's explanation of a failed task, from whichever field carries it, token removed.

    :param data: the status ``data`` of the failed task.
    :param token: the API token; server text goes into exceptions and logs, so it is redacted here.
    """
    for key in ("error_text", "message", "error", "reason"):
        value = data.get(key)
        if value not in (None, "", 0):
            return redact(str(value), token)
    result = data.get("result")
    if isinstance(result, Mapping):
        return failure_text(result, token)
    return "the API gave no reason"


def redact(text: str, token: str) -> str:
    """Remove the token from text that may have come from the server."""
    return text.replace(token, "***") if token else text


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_reply(
    *,
    http_status: int,
    headers: Mapping[str, str],
    body: bytes,
    token: str,
    list_fields: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Turn one reply into its decoded envelope, or raise the typed error it stands for.

    :param http_status: the reply's HTTP status.
    :param headers: the reply's headers (case-insensitive mapping).
    :param body: the reply's body, already read within :data:`MAX_REPLY_BYTES`.
    :param token: the API token, removed from any text that goes into an exception.
    :param list_fields: XML fields that are lists for this endpoint.
    """
    content_type = headers.get("Content-Type")
    envelope: dict[str, Any] | None
    try:
        envelope = decode_body(body, content_type, list_fields=list_fields) if body.strip() else None
    except LoyaltyResponseError:
        if http_status < 400:
            raise
        envelope = None  # an HTML error page from a proxy: the status says enough
    code = _envelope_code(envelope)
    text = redact(str((envelope or {}).get("error_text") or f"HTTP {http_status}"), token)

    if http_status == 429:
        raise LoyaltyTransientError(code, text, http_status, parse_retry_after(headers.get("Retry-After")))
    if http_status >= 500:
        raise LoyaltyTransientError(code, text, http_status, parse_retry_after(headers.get("Retry-After")))
    if http_status in (401, 403):
        raise LoyaltyAuthError(code, text, http_status)
    if http_status == 404:
        raise LoyaltyNotFoundError(code, text, http_status)
    if 300 <= http_status < 400:
        raise LoyaltyApiError(
            code, f"unexpected redirect (HTTP {http_status}); redirects are not followed", http_status
        )
    if http_status >= 400:
        raise LoyaltyApiError(code, text, http_status)
    if envelope is None:
        raise LoyaltyResponseError(f"empty reply body (HTTP {http_status}); expected an error/error_text envelope")
    if code is None:
        raise LoyaltyResponseError("reply has no 'error' field; expected the error/error_text envelope")
    if code != 0:
        raise LoyaltyApiError(code, text, http_status)
    return envelope


def _envelope_code(envelope: Mapping[str, Any] | None) -> int | None:
    if envelope is None or "error" not in envelope:
        return None
    raw = envelope["error"]
    if isinstance(raw, bool):
        raise LoyaltyResponseError(f"field 'error': expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    raise LoyaltyResponseError(f"field 'error': expected an integer, got {str(raw)[:40]!r}")


def data_object(envelope: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
    """The envelope's ``data`` as an object, or a clear error naming the endpoint."""
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise LoyaltyResponseError(f"{endpoint}: expected 'data' to be an object, got {type(data).__name__}")
    return data


def download_url(settings: LoyaltyConnectionSettings, hashed_file: Any) -> str:
    """The URL of ``GET /api/download/<hashed_file>``, refusing anything that would leave it.

    ``hashed_file`` is server data. Each ``/``-separated segment is percent-encoded (the seed's
    names contain spaces and colons). Refused before any request: non-strings, absolute URLs or
    paths, empty, ``.`` or ``..`` segments (also percent-encoded ones), backslashes and control
    characters. The result is checked to stay on the connection's host under ``/api/download/``.
    """
    if not isinstance(hashed_file, str) or not hashed_file.strip():
        raise LoyaltyUnsafeDataError(f"hashed_file: expected a non-empty string, got {hashed_file!r}")
    shown = repr(hashed_file[:120])
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in hashed_file):
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} contains control characters")
    if "\\" in hashed_file:
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} contains a backslash")
    if hashed_file.startswith("/") or "://" in hashed_file or ":" in hashed_file.split("/", 1)[0]:
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} is an absolute URL or path; expected a relative name")
    segments = hashed_file.split("/")
    for segment in segments:
        decoded = unquote(segment)
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            raise LoyaltyUnsafeDataError(f"hashed_file {shown} has an empty, '.' or '..' segment")
    path = settings.base_path + DOWNLOAD_PREFIX + "/".join(quote(segment, safe="") for segment in segments)
    url = settings.origin + path
    parts = urlsplit(url)
    if parts.netloc != settings.netloc or not parts.path.startswith(settings.base_path + DOWNLOAD_PREFIX):
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} would leave {DOWNLOAD_PREFIX} on the connection's host")
    return url
