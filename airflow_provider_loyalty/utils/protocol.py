"""The API's wire protocol, shared by the sync and the async hook.

Endpoint paths, how a reply becomes data or a typed error (HTTP status, the ``error`` /
``error_text`` envelope, ``Retry-After``, redirects), and the one safe way to turn a
server-supplied ``hashed_file`` into a download URL. What an export task's status means is
:mod:`airflow_provider_loyalty.utils.export_status`.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyNotFoundError,
    LoyaltyRedirectError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyUnsafeDataError,
)
from airflow_provider_loyalty.utils.codec import (
    ENVELOPE_SCHEMA,
    MIME_TYPES,
    Schema,
    decode_body,
    encode_body,
    error_page_text,
)
from airflow_provider_loyalty.utils.connection import LoyaltyConnectionSettings
from airflow_provider_loyalty.utils.content_coding import ACCEPT_ENCODING, codings_left_as_sent
from airflow_provider_loyalty.utils.redaction import clip, quoted, scrub
from airflow_provider_loyalty.utils.validation import first_control_character

EXPORT_PATH = "/api/v1.1/loyalty/transactions_export"
STATUS_PATH = "/api/v1.1/tasks/status"
ACCOUNT_PATH = "/api/v1.1/loyalty/account/transactions"
DOWNLOAD_PREFIX = "/api/download/"


_ENVELOPE_MEDIA = ("json", "xml")


def encode_request(payload: dict[str, Any], content_type: str) -> tuple[bytes, dict[str, str]]:
    """A request's body and its ``Content-Type`` header, in the connection's content type."""
    return encode_body(payload, content_type), {"Content-Type": MIME_TYPES[content_type]}


def carries_envelope(headers: Mapping[str, str]) -> bool:
    """Whether a reply declares a JSON or XML body: an envelope, where a file was expected. Only
    the media type counts, not its parameters (``application/zip; name="T.xml.zip"`` is a zip)."""
    media_type = (headers.get("Content-Type") or "").split(";", 1)[0].lower()
    return any(media in media_type for media in _ENVELOPE_MEDIA)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (GMT in every form HTTP allows; the
    asctime form carries no zone and would otherwise be read in the machine's local time)."""
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
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def check_reply(
    *,
    http_status: int,
    headers: Mapping[str, str],
    body: bytes,
    token: str,
    schema: Schema = ENVELOPE_SCHEMA,
    conn_id: str | None = None,
    base_url: str | None = None,
    refusal_in_words: bool = True,
    path: str | None = None,
) -> dict[str, Any]:
    """Turn one reply into its decoded envelope, or raise the typed error it stands for.

    :param http_status: the reply's HTTP status.
    :param headers: the reply's headers (case-insensitive mapping).
    :param body: the reply's body, already read within :data:`MAX_REPLY_BYTES`.
    :param token: the API token, removed from any text that goes into an exception.
    :param schema: the endpoint's documented typed fields (see :mod:`~airflow_provider_loyalty.utils.codec`).
    :param conn_id: the Airflow connection the token came from, named in an auth error.
    :param base_url: the connection's Base URL, to say what a redirect away from it means.
    :param refusal_in_words: an error envelope whose text says the token was refused is an auth
        error. Not for a download: the status call that named the file just accepted the token,
        so "download token expired" is about the file's link.
    :param path: the API path that answered, named in the error.
    """
    try:
        envelope = _decoded(http_status, headers.get("Content-Type"), body, schema)
        code = _envelope_code(envelope)
    except LoyaltyResponseError as error:  # may quote the reply (an HTML page's title, a field's text)
        scrub(error, token)
        left = codings_left_as_sent(headers.get("Content-Encoding"))
        if left and str(error).startswith("reply is not valid"):  # bytes that do not decode, not a bad field
            raise LoyaltyResponseError(
                f"{error} (the reply is encoded as {clip(', '.join(left), 80)!r}, which the hook did not ask for: it "
                f"asks for {ACCEPT_ENCODING!r}; check what compresses the API's replies)"
            ) from None
        raise
    if envelope is None and body.strip() and http_status >= 400:  # a proxy's or web server's own page
        fallback = error_page_text(body, headers.get("Content-Type"))
        if http_status == 404:
            fallback += ": check the connection's host and the path of its Base URL"
    else:
        fallback = f"HTTP {http_status}"
    text = quoted(str((envelope or {}).get("error_text") or fallback), token)

    if http_status in (408, 429) or http_status >= 500:  # 408: a proxy or load balancer timed the request out
        raise LoyaltyTransientError(
            code,
            text,
            http_status,
            parse_retry_after(headers.get("Retry-After")),
            unprocessed=http_status in (429, 503),  # "not now": the server did not act on it
            endpoint=path,
        )
    if http_status in (401, 403):
        raise LoyaltyAuthError(code, auth_text(text, conn_id), http_status, endpoint=path)
    if http_status == 404:
        raise LoyaltyNotFoundError(code, text, http_status, endpoint=path)
    if 300 <= http_status < 400:
        raise LoyaltyRedirectError(
            code, redirect_text(http_status, headers.get("Location"), base_url), http_status, endpoint=path
        )
    if http_status >= 400 or (code is not None and code != 0):
        if refusal_in_words and code is not None and _REFUSED_CREDENTIALS.search(text):  # in an HTTP 200
            raise LoyaltyAuthError(code, auth_text(text, conn_id), http_status, endpoint=path)
        if http_status < 400 and code is not None and _NOT_FOUND.search(text):  # as its 404 would say
            raise LoyaltyNotFoundError(code, text, http_status, endpoint=path)
        raise LoyaltyApiError(code, text, http_status, endpoint=path)
    if envelope is None:
        raise LoyaltyResponseError(f"empty reply body (HTTP {http_status}); expected an error/error_text envelope")
    if code is None:
        raise LoyaltyResponseError("reply has no 'error' field; expected the error/error_text envelope")
    return envelope


#: An API error that says the token (or API key, or credentials) was refused, in an HTTP 200 or
#: 4xx of the API's own style (the seeds document no error codes): an auth error, not retried. The
#: words must name the token, key or credentials and say they were refused ("invalid token",
#: "token expired", "authentication failed", "unauthorized"): "missing key: date_from", "permission
#: denied: /var/tmp/x.zip" or "authentication service temporarily unavailable" stay API errors.
_CREDENTIAL = r"(?:api[ _-]?key|(?:access|bearer|api|auth)[ _-]?token|token|credentials?)"
#: An error envelope in an HTTP 200 that says what a 404 says ("Member profile not found",
#: "Export task not found"): the same not-found error, whatever status the server chose.
_NOT_FOUND = re.compile(r"\bnot\s+found\b", re.IGNORECASE)
_REFUSED_CREDENTIALS = re.compile(
    rf"\b(?:invalid|wrong|bad|incorrect|expired|revoked)\s+{_CREDENTIAL}\b"
    rf"|\b{_CREDENTIAL}\s+(?:is\s+|has\s+(?:been\s+)?)?(?:invalid|expired|revoked|not\s+valid|refused)\b"
    r"|\bauthenticat\w*\s+failed\b|\bunauthori[sz]ed\b",
    re.IGNORECASE,
)


def _decoded(http_status: int, content_type: str | None, body: bytes, schema: Schema) -> dict[str, Any] | None:
    """The reply's envelope; ``None`` for an empty body or an error page that is no envelope.

    Only a success needs the endpoint's fields: when they do not decode, the envelope alone is
    tried, so an API error (``error`` != 0, or an HTTP error status) is reported with its own
    text rather than as an undecodable field of a reply that was never a success.
    """
    if not body.strip():
        return None
    try:
        return decode_body(body, content_type, schema=schema)
    except LoyaltyResponseError:
        try:
            envelope = decode_body(body, content_type, schema=ENVELOPE_SCHEMA)
        except LoyaltyResponseError:
            if http_status < 400:
                raise
            return None  # an HTML error page from a proxy: the status says enough
        if http_status < 400 and _envelope_code(envelope) in (0, None):
            raise
        return envelope


def auth_text(api_text: str, conn_id: str | None) -> str:
    """An auth refusal, with the API's words and which connection's token it refused."""
    which = f"the token of connection {conn_id!r}" if conn_id else "the token"
    return f"{api_text} (the API refused {which}: check the API token in its Password field)"


def redirect_text(http_status: int, location: str | None, base_url: str | None = None) -> str:
    """What a redirect means for a user: where it points, and what to change.

    :param http_status: the redirect's status.
    :param location: its ``Location``.
    :param base_url: the connection's Base URL: the hint names the change that would help (https
        for the same host; another host is not followed at all, the token stays on its own host).
    """
    target = (location or "").strip()
    if not target:
        return f"unexpected redirect (HTTP {http_status}); redirects are not followed"
    shown = _shown_location(target)
    hint = "put that scheme and host in the connection's Base URL"
    try:
        here, there = urlsplit(base_url or ""), urlsplit(target)
    except ValueError:  # a Location no URL parser reads (``http://[bad``): say where it points, no more
        return f"the API redirects (HTTP {http_status}) to {shown!r}, not a URL; redirects are not followed"
    if there.netloc and here.netloc and there.hostname != here.hostname:
        hint = (
            f"it points to another host than the connection's ({here.hostname}), where the token is never "
            "sent; if the API has moved there, put that host in the connection's Base URL"
        )
    elif there.scheme == "https" and here.scheme != "https":
        hint = "the API wants https: put https:// in the connection's Base URL"
    return f"the API redirects (HTTP {http_status}) to {shown}; redirects are not followed: {hint}"


#: The most of a redirect's Location an error shows.
_LOCATION_CHARS = 200


def _shown_location(target: str) -> str:
    """A Location as an error shows it: whole up to :data:`_LOCATION_CHARS` (the caller's redaction
    masks a token in it), else without its query and fragment, where a token would sit, so that no
    cut leaves a piece of one too short to recognise."""
    if len(target) <= _LOCATION_CHARS:
        return target
    shortened = target.partition("#")[0].partition("?")[0]
    if len(shortened) <= _LOCATION_CHARS:
        return f"{shortened} (its query is not shown: {len(target)} characters in all)"
    try:
        parts = urlsplit(shortened)
    except ValueError:
        return f"a Location of {len(target)} characters"
    return f"{parts.scheme}://{parts.hostname or ''}/... (its path is not shown: {len(target)} characters in all)"


def _envelope_code(envelope: Mapping[str, Any] | None) -> int | None:
    if envelope is None or "error" not in envelope:
        return None
    raw = envelope["error"]
    if isinstance(raw, bool):
        raise LoyaltyResponseError(f"field 'error': expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isascii() and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    got = "an empty value" if raw is None or raw == "" else repr(clip(str(raw), 40))
    raise LoyaltyResponseError(f"field 'error': expected an integer, got {got}")


def data_object(envelope: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
    """The envelope's ``data`` as an object, or a clear error naming the endpoint."""
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise LoyaltyResponseError(f"{endpoint}: expected 'data' to be an object, got {type(data).__name__}")
    return data


#: ``https:/x``, ``javascript:x``, ``C:/x``: the name starts with a scheme of letters (or a drive
#: letter) and a colon. A file name whose colons follow digits or an underscore
#: (``Transactions_1_2023-09-01T00:00:00Z.zip``) is a name.
_SCHEME_OR_DRIVE = re.compile(r"[A-Za-z][A-Za-z+.-]*:")


def _name_of(segment: str) -> str:
    """A ``hashed_file`` segment's file name: a segment sent percent-encoded, as the download link
    spells it (``T00%2000%2000Z``), decoded once so it is not encoded twice. One whose decoding
    still holds a ``%`` (encoded twice, ``%252e``) stays the literal name it is: no server that
    decodes again can read it as ``..``."""
    name = unquote(segment)
    return segment if "%" in name else name


def download_url(settings: LoyaltyConnectionSettings, hashed_file: Any) -> str:
    """The URL of ``GET /api/download/<hashed_file>``, refusing anything that would leave it.

    ``hashed_file`` is server data. Each ``/``-separated segment is percent-encoded (the seed's
    names contain spaces and colons); one the server sent already encoded is decoded first, so it
    is not encoded twice (``%20`` stays ``%20``, as ``requests`` treats a link's escapes). Refused
    before any request: non-strings, absolute URLs or paths, empty, ``.`` or ``..`` segments (also
    percent-encoded ones), backslashes and control characters (also percent-encoded ones). The
    result is checked to stay on the connection's host under ``/api/download/``. Blanks around it
    are not part of the name (an XML reply may put the value on a line of its own), as for the
    status reply's ``hashed_file``.
    """
    if not isinstance(hashed_file, str) or not hashed_file.strip():
        raise LoyaltyUnsafeDataError(f"hashed_file: expected a non-empty string, got {hashed_file!r}")
    hashed_file = hashed_file.strip()
    shown = repr(hashed_file[:120])
    if first_control_character(hashed_file) is not None:
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} contains control characters")
    if "\\" in hashed_file:
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} contains a backslash")
    if hashed_file.startswith("/") or "://" in hashed_file or _SCHEME_OR_DRIVE.match(hashed_file):
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} is an absolute URL or path; expected a relative name")
    segments = hashed_file.split("/")
    for segment in segments:
        decoded = unquote(segment)
        if decoded in ("", ".", "..") or "/" in decoded or "\\" in decoded:
            raise LoyaltyUnsafeDataError(f"hashed_file {shown} has an empty, '.' or '..' segment")
        if first_control_character(decoded) is not None:
            raise LoyaltyUnsafeDataError(f"hashed_file {shown} contains percent-encoded control characters")
    path = settings.base_path + DOWNLOAD_PREFIX + "/".join(quote(_name_of(segment), safe="") for segment in segments)
    url = settings.origin + path
    parts = urlsplit(url)
    if parts.netloc != settings.netloc or not parts.path.startswith(settings.base_path + DOWNLOAD_PREFIX):
        raise LoyaltyUnsafeDataError(f"hashed_file {shown} would leave {DOWNLOAD_PREFIX} on the connection's host")
    return url
