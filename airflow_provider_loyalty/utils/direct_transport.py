"""The sync hook's API POSTs on :mod:`http.client`, for a connection straight to the API (no proxy).

A POST of the API is a small request and a reply read whole; ``requests`` and ``urllib3`` around
it cost more client CPU than the codec decoding the reply (about 0.5 ms a page, measured against
one ``http.client`` connection in ``benchmarks/paging.py``). :class:`DirectPoster` sends it on
keep-alive ``http.client`` connections and keeps what the ``requests`` path guarantees:

- TLS verified against the connection's CA bundle (else ``certifi``'s, as ``requests`` uses), the
  host name checked, a client certificate presented when configured;
- the connection's timeout on connect and on every read;
- redirects never followed (``http.client`` follows none): a 3xx reaches the reply check;
- replies capped at :data:`~airflow_provider_loyalty.utils.transport.MAX_REPLY_BYTES`, a declared
  length at once, a compressed body (gzip, deflate) as it inflates, in bounded steps;
- failures raised as ``http.client`` / socket / ssl errors, which
  :func:`~airflow_provider_loyalty.utils.transport.transport_error` maps as it maps ``requests``'.

A connection through a proxy keeps :class:`~airflow_provider_loyalty.utils.sync_transport.ApiPoster`
on ``requests`` (CONNECT tunnels, proxy credentials). Downloads always use the ``requests`` session.
Only for internal usage.
"""

from __future__ import annotations

import http.client
import select
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import certifi
from requests.utils import requote_uri

from airflow_provider_loyalty.utils.codec import MIME_TYPES
from airflow_provider_loyalty.utils.connection import USER_AGENT, LoyaltyConnectionSettings
from airflow_provider_loyalty.utils.content_coding import ACCEPT_ENCODING, BodyDecoder
from airflow_provider_loyalty.utils.tls import settings_context
from airflow_provider_loyalty.utils.transport import ReplyBuffer

_READ_CHUNK_BYTES = 64 * 1024


class DirectPoster:
    """POSTs to the API's endpoints on keep-alive ``http.client`` connections.

    Idle connections are kept for the next call; one a server closed while idle is noticed before
    use and replaced. A hook used from several threads at once gets one connection per call in
    flight.

    :param settings: the connection's settings (base URL, token, timeout, TLS).
    """

    def __init__(self, settings: LoyaltyConnectionSettings) -> None:
        self._settings = settings
        self._closed = False
        parts = urlsplit(settings.base_url)
        self._host = parts.hostname or ""
        # Always given: without one, http.client reads an IPv6 host's last ":1" as its port.
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # As requests sends a Base URL's path: unsafe characters escaped, escapes kept.
        self._base_path = requote_uri(settings.base_path)
        self._timeout = settings.timeout
        self._tls = settings_context(settings, certifi.where()) if parts.scheme == "https" else None
        self._headers = {
            "User-Agent": USER_AGENT,
            "Accept": f"{MIME_TYPES[settings.content_type]}, */*;q=0.5",
            "Accept-Encoding": ACCEPT_ENCODING,
            "Authorization": f"Bearer {settings.token}",
        }
        self._idle: list[http.client.HTTPConnection] = []

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """Send one POST; return the reply's HTTP status, headers and body.

        :param path: the API path (``/api/v1.1/tasks/status``).
        :param body: the encoded request body.
        :param headers: the request's own headers (its ``Content-Type``).
        :raises Exception: what ``http.client``, ``ssl`` and sockets raise; the caller maps it.
        """
        connection = self._connection()
        response: http.client.HTTPResponse | None = None
        try:
            connection.request("POST", self._base_path + path, body, {**self._headers, **headers})
            response = connection.getresponse()
            # After a 1xx reply (but 100, which http.client skips), http.client holds that reply as the
            # connection's, and a 101 switched it to another protocol: it carries no further request.
            reusable = response.status >= 200
            if response.status in _INFORMATIONAL:
                response = _final_response(response)
            reply = read_reply(response, path)
        except BaseException:
            if response is not None:
                response.close()  # a final reply after a 1xx is not the connection's: it holds the socket too
            connection.close()
            raise
        if reusable and not response.will_close and not self._closed:
            self._idle.append(connection)
            if self._closed:  # close() ran between the check and the append
                self.close()
        else:
            connection.close()
        # An HTTPMessage: ``get`` is case-insensitive, as the reply check needs.
        return response.status, cast("Mapping[str, str]", response.headers), reply

    def close(self) -> None:
        """Close the idle connections, and each connection in use as its call ends."""
        self._closed = True
        while (connection := self._idle_connection()) is not None:
            connection.close()

    def __reduce__(self) -> tuple[type[DirectPoster], tuple[LoyaltyConnectionSettings]]:
        """A copy (``copy.deepcopy`` of a hook or an operator holding one) is a new poster on the same
        settings: sockets and TLS contexts are not copied."""
        return type(self), (self._settings,)

    def _idle_connection(self) -> http.client.HTTPConnection | None:
        try:
            return self._idle.pop()  # atomic: two threads never take one connection
        except IndexError:
            return None

    def _connection(self) -> http.client.HTTPConnection:
        while (connection := self._idle_connection()) is not None:
            if connection.sock is not None and not _closed_by_peer(connection.sock):
                return connection
            connection.close()
        if self._tls is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)


class InvalidHeader(http.client.HTTPException):
    """A reply whose headers leave its framing unclear; transient, as ``requests``' own ``InvalidHeader``."""


#: Informational replies a server may send before its final one (``101`` switches protocols: none
#: is asked for, so it is read as a final reply the check refuses).
_INFORMATIONAL = range(102, 200)
#: The most informational replies read before the final one.
_MAX_INFORMATIONAL = 16


class _ReaderOf:
    """Hands a reply the reader of the one before it on the same connection, with what it buffered."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def makefile(self, mode: str) -> Any:
        return self._reader


def _final_response(response: http.client.HTTPResponse) -> http.client.HTTPResponse:
    """The final reply after informational ones (``103 Early Hints``; ``http.client`` skips only
    ``100 Continue``), read on from where they end (RFC 9110, 15.2)."""
    reader = response.fp
    for _ in range(_MAX_INFORMATIONAL):
        response.fp = None  # type: ignore[assignment]  # done with: closing it leaves the reader be
        response = http.client.HTTPResponse(_ReaderOf(reader), method="POST")  # type: ignore[arg-type]
        try:
            response.begin()
        except BaseException:
            reader.close()
            raise
        if response.status not in _INFORMATIONAL:
            return response
    response.fp = None  # type: ignore[assignment]
    reader.close()
    raise http.client.BadStatusLine(f"more than {_MAX_INFORMATIONAL} informational replies")


def _closed_by_peer(sock: object) -> bool:
    """Whether an idle keep-alive socket has something to read: the server's close (or bytes no
    request asked for), so it must not carry the next request."""
    poller = select.poll()
    poller.register(cast("int", sock.fileno()), select.POLLIN)  # type: ignore[attr-defined]
    return bool(poller.poll(0))


def read_reply(response: http.client.HTTPResponse, path: str) -> bytes:
    """A reply's whole body, refused past the reply cap (a compressed one as it inflates).

    :param response: the reply, its headers read.
    :param path: the endpoint, for the errors.
    """
    lengths = {length.strip() for length in response.headers.get_all("Content-Length") or ()}
    if len(lengths) > 1:  # which one frames the body? Neither: the connection is dropped (RFC 9112, 6.3)
        raise InvalidHeader(f"{path}: reply with {len(lengths)} different Content-Length values")
    buffer = ReplyBuffer(path, cast("Mapping[str, str]", response.headers))
    decoder = BodyDecoder(response.getheader("Content-Encoding"), path)
    try:
        if decoder.identity and response.length is not None:
            buffer.add(response.read())  # a declared length under the cap: one read
            return buffer.body()
        while chunk := response.read(_READ_CHUNK_BYTES):
            for piece in decoder.feed(chunk):
                buffer.add(piece)
        if response.length:  # the connection ended before the declared length (read() says b"")
            raise http.client.IncompleteRead(b"", response.length)
    except ValueError as error:  # a chunk size that is no number (http.client lets int()'s error out)
        raise http.client.IncompleteRead(b"") from error
    return buffer.body()
