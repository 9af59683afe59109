"""What the sync and the async hook share about the transport: one cap on reply sizes, and one
mapping of transport failures (requests, urllib3, aiohttp, ssl, sockets) to typed errors."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from airflow_provider_loyalty.exceptions import (
    LoyaltyError,
    LoyaltyResponseError,
    LoyaltyTlsError,
    LoyaltyTransientError,
)
from airflow_provider_loyalty.utils.connection import LoyaltyConnectionSettings

#: Largest JSON/XML reply body read into memory (downloads are streamed, capped separately).
MAX_REPLY_BYTES = 32 * 1024 * 1024
# OpenSSL's words for "the other side does not speak TLS" (a plain-HTTP server on that port).
_NOT_TLS_MARKERS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST")
# The server's alerts when it wants a client certificate, or does not take the one it was shown.
_CLIENT_CERTIFICATE_ALERTS = ("ALERT_CERTIFICATE_", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA")
# Exception type names (requests, urllib3, http.client, aiohttp) of a timeout, and of a body cut short.
_TIMEOUTS = frozenset(
    {"Timeout", "ReadTimeout", "ConnectTimeout", "ReadTimeoutError", "ConnectTimeoutError", "ServerTimeoutError"}
)
#: The connection was made, then closed or answered with no HTTP reply the client could read.
_NO_REPLY = frozenset(
    {
        "RemoteDisconnected",
        "ServerDisconnectedError",
        "BadStatusLine",
        "BadHttpMessage",
        "LineTooLong",
        "ContentEncodingError",
        "InvalidHeader",
        "UnknownProtocol",
        "HTTPException",  # http.client's own, raised bare for a reply of more than 100 header fields
    }
)
_CUT_SHORT = frozenset(
    {
        "ClientPayloadError",
        "ChunkedEncodingError",
        "IncompleteRead",
        "ProtocolError",
        "ContentDecodingError",
        "DecodeError",
    }
)


def _declared_length(value: str | None) -> int | None:
    """A ``Content-Length`` as the HTTP clients read it (``int()``: blanks and a ``+`` allowed), or ``None``."""
    try:
        return int(value) if value else None
    except ValueError:
        return None


class ReplyBuffer:
    """Collects a reply body chunk by chunk and refuses it past ``limit`` bytes.

    :param path: the endpoint, for the error.
    :param headers: the reply's headers: a declared ``Content-Length`` over the cap fails at once.
    :param limit: the cap.
    """

    def __init__(self, path: str, headers: Mapping[str, str], limit: int = MAX_REPLY_BYTES) -> None:
        self.path = path
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        declared = _declared_length(headers.get("Content-Length"))
        if declared is not None and declared > limit:
            raise LoyaltyResponseError(f"{path}: reply of {declared} bytes is over the {limit} byte cap")

    def add(self, chunk: bytes) -> None:
        """Append a chunk; raise once the body grows over the cap."""
        self._size += len(chunk)
        if self._size > self.limit:
            raise LoyaltyResponseError(f"{self.path}: reply is over the {self.limit} byte cap")
        self._chunks.append(chunk)

    def body(self) -> bytes:
        """The whole body."""
        return b"".join(self._chunks)


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not item for item in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _tls_failure(error: BaseException) -> BaseException | None:
    for item in _chain(error):
        if isinstance(item, ssl.SSLError) or type(item).__name__ in (
            "SSLError",
            "ClientSSLError",
            "ClientConnectorSSLError",
            "ClientConnectorCertificateError",
        ):
            return item
    return None


def tls_error(settings: LoyaltyConnectionSettings, path: str, cause: BaseException) -> LoyaltyTlsError:
    """A TLS failure, explained: a plain-HTTP server behind an https URL is a configuration issue,
    not an untrusted certificate."""
    text = str(cause)
    if any(marker in text.upper() for marker in _NOT_TLS_MARKERS):
        why = (
            "https was assumed because the Base URL has no scheme"
            if settings.scheme_assumed
            else "the Base URL says https"
        )
        return LoyaltyTlsError(
            None,
            f"{path}: {settings.netloc} does not speak TLS (it looks like a plain-HTTP server); {why}. "
            f"If the API is served over plain HTTP, put http:// in the connection's Base URL",
            None,
        )
    if any(marker in text.upper() for marker in _CLIENT_CERTIFICATE_ALERTS):
        shown = "none was configured" if not settings.client_cert else "it did not take the configured one"
        return LoyaltyTlsError(
            None,
            f"{path}: {settings.netloc} wants a TLS client certificate it trusts and {shown}: {text[:300]}. "
            "Set the connection's client_cert extra (a PEM path holding certificate and key, or "
            "[certificate path, key path])",
            None,
        )
    return LoyaltyTlsError(
        None,
        f"{path}: TLS verification failed for {settings.netloc}: {text[:300]}. Trust its CA with the "
        "connection's ca_bundle extra (or REQUESTS_CA_BUNDLE), or set verify_ssl false for a test server",
        None,
    )


def transport_error(settings: LoyaltyConnectionSettings, path: str, error: BaseException) -> LoyaltyError:
    """The typed error a transport failure stands for: TLS failures are final, timeouts, resets,
    refused connections and cut-short bodies are transient (retried), a request the HTTP library
    refuses to send is neither (not retried).

    :param settings: the connection's settings (named in TLS advice).
    :param path: the endpoint, for the message.
    :param error: what the HTTP library raised.
    """
    if isinstance(error, LoyaltyError):
        return error
    tls = _tls_failure(error)
    if tls is not None:
        return tls_error(settings, path, tls)
    chain = _chain(error)
    names = {type(item).__name__ for item in chain}
    if any(isinstance(item, TimeoutError) for item in chain) or names & _TIMEOUTS:
        return LoyaltyTransientError(None, f"timed out ({settings.netloc})", endpoint=path)
    if names & _NO_REPLY:
        name = sorted(names & _NO_REPLY)[0]
        return LoyaltyTransientError(
            None,
            f"{settings.netloc} accepted the connection but closed it or sent no HTTP reply that could be read "
            f"({name})",
            endpoint=path,
        )
    if names & _CUT_SHORT:
        return LoyaltyTransientError(None, f"reply body cut short ({type(error).__name__})", endpoint=path)
    if isinstance(error, ValueError | TypeError):
        # Raised before anything was sent: a header or URL the HTTP library refuses. No retry helps.
        return LoyaltyError(
            f"{path}: the request could not be sent ({type(error).__name__}); check the connection's "
            "Base URL and API token for characters an HTTP request cannot carry"
        )
    never_reached = any(isinstance(item, ConnectionRefusedError | socket.gaierror) for item in chain)
    return LoyaltyTransientError(None, _connection_failure(settings, chain), unprocessed=never_reached, endpoint=path)


def _connection_failure(settings: LoyaltyConnectionSettings, chain: list[BaseException]) -> str:
    """Where the connection failed and why, in the words a user checks the connection with. With a
    proxy, the connection that failed is the proxy's (through it, reaching the API is its business)."""
    proxy = settings.proxy_for(settings.base_url)
    if proxy is None:
        where = f"cannot connect to {settings.netloc}"
        refused = "nothing listens on that port: check the Base URL's host and port"
        unresolved = "the host name does not resolve (check the Base URL's host)"
    else:
        where = f"cannot connect to the proxy {_proxy_address(proxy)} (for {settings.netloc})"
        refused = "check the connection's proxies extra, or HTTPS_PROXY / HTTP_PROXY"
        unresolved = "the proxy's host name does not resolve (check the proxies extra, or HTTPS_PROXY)"
    if any(isinstance(item, ConnectionRefusedError) for item in chain):
        return f"{where}: connection refused ({refused})"
    if any(isinstance(item, socket.gaierror) for item in chain):
        return f"{where}: {unresolved}"
    return f"{where} ({type(chain[-1]).__name__})"


def _proxy_address(proxy: str) -> str:
    """``host:port`` of a proxy URL, without the user and password it may carry."""
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    shown = parts.hostname or "?"
    with contextlib.suppress(ValueError):
        shown += f":{parts.port}" if parts.port else ""
    return shown
