"""The emulator's HTTP/1.1 server and request handler: routing, bodies, auth, transport faults.

The handler moves bytes only. What a request means is decided by the emulator's
:class:`~airflow_provider_loyalty.testing.api.LoyaltyApi` (``emulator.api``) through its public
methods, control requests by :func:`~airflow_provider_loyalty.testing.control.handle_control`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from airflow_provider_loyalty.testing.api import Download
from airflow_provider_loyalty.testing.codec import BodyError, content_type_for, decode_body, encode_body
from airflow_provider_loyalty.testing.codec import format_from_content_type as format_of
from airflow_provider_loyalty.testing.control import CONTROL_PREFIX, handle_control, is_loopback
from airflow_provider_loyalty.testing.errors import ApiError, success
from airflow_provider_loyalty.testing.faults import TRANSPORT_KINDS, FaultRule
from airflow_provider_loyalty.testing.streaming import AbortResponseError, ChunkedWriter, send_file
from airflow_provider_loyalty.testing.validation import RequestParams

if TYPE_CHECKING:
    from airflow_provider_loyalty.testing.server import LoyaltyEmulator

__all__ = ["API_PATHS", "DOWNLOAD_PREFIX", "EmulatorHTTPServer", "RequestHandler"]

log = logging.getLogger("airflow_provider_loyalty.testing.server")

#: API paths and their endpoint names.
API_PATHS: dict[str, str] = {
    "/api/v1.1/loyalty/transactions_export": "export",
    "/api/v1.1/tasks/status": "status",
    "/api/v1.1/loyalty/account/transactions": "account",
}
DOWNLOAD_PREFIX = "/api/download/"


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its emulator, wraps TLS and tracks open sockets.

    :param address: ``(host, port)`` to bind; an IPv6 host (``::1``) binds an IPv6 socket.
    :param emulator: the emulator the handler serves.
    :param ssl_context: serve HTTPS with this server-side context.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], emulator: LoyaltyEmulator, ssl_context: ssl.SSLContext | None) -> None:
        self.emulator = emulator
        self.ssl_context = ssl_context
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        host = address[0].strip("[]")
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, address[1]), RequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection (TLS handshake deferred to the handler thread) and count it."""
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.emulator.counters.count("connections")
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track the socket, then serve it in a thread."""
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the socket, then close it."""
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log connection errors at debug level (clients hang up on purpose in tests)."""
        log.debug("loyalty emulator: error on connection from %s", client_address, exc_info=True)

    def close_all_connections(self) -> None:
        """Shut down every open (keep-alive) connection."""
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def route(path: str) -> str:
    """Return the endpoint name of a path (``unknown`` if none).

    :param path: the URL path, without the query.
    """
    if path in API_PATHS:
        return API_PATHS[path]
    if path.startswith(DOWNLOAD_PREFIX):
        return "download"
    if path.startswith(CONTROL_PREFIX):
        return "control"
    return "unknown"


def seconds_text(value: Any) -> str:
    """Format seconds for ``Retry-After`` (``1``, ``0.1``).

    :param value: a number.
    """
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


class RequestHandler(BaseHTTPRequestHandler):
    """One connection's requests (keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "LoyaltyEmulator/1.0"
    timeout = 300  # idle keep-alive connections are dropped after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid delayed-ACK stalls
    server: EmulatorHTTPServer

    # --- plumbing -------------------------------------------------------------------------------
    def setup(self) -> None:
        """Finish the TLS handshake in the handler thread."""
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        """Log requests at debug level."""
        log.debug("loyalty emulator: " + format, *args)

    def do_GET(self) -> None:
        """Serve a request: every method goes through one dispatcher (405 where not allowed)."""
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    @property
    def emulator(self) -> LoyaltyEmulator:
        """The emulator this handler serves."""
        return self.server.emulator

    def _read_body(self) -> bytes:
        limit = self.emulator.config.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body(limit)
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise ApiError(1001, "Invalid header Content-Length") from None
        if length < 0 or length > limit:
            self.close_connection = True
            raise ApiError(1001, f"Invalid request body: larger than {limit} bytes", 413)
        return self.rfile.read(length)

    def _read_chunked_body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            n = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if n == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            size += n
            if size > limit:
                self.close_connection = True
                raise ApiError(1001, f"Invalid request body: larger than {limit} bytes", 413)
            parts.append(self.rfile.read(n))
            self.rfile.readline(1024)

    def _dispatch(self) -> None:
        self._status = 0
        self._response_type = ""
        self._fault: FaultRule | None = None
        self._fault_name: str | None = None
        self._logged = False
        path, _, query = self.path.partition("?")
        endpoint = route(path)
        request_type = self.headers.get("Content-Type", "")
        self._log_entry: dict[str, Any] = {
            "received_at": time.time(),
            "method": self.command,
            "path": path,
            "endpoint": endpoint,
            "status": 0,
            "request_content_type": request_type,
            "content_type": "",
            "fault": None,
        }
        self.emulator.counters.count_request(endpoint)
        self._fmt = format_of(request_type) or ("xml" if "xml" in self.headers.get("Accept", "").lower() else "json")
        try:
            self._handle(endpoint, path, query)
        except ApiError as exc:
            self._send_error(exc)
        except (AbortResponseError, ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("loyalty emulator: internal error")
            if self._status == 0:
                self._send_error(ApiError(1000, f"Internal error: {type(exc).__name__}"))
            else:
                self.close_connection = True
        finally:
            self._log_response(self._status, self._response_type)

    def _log_response(self, status: int, content_type: str) -> None:
        """Record the request log entry once, before the response's first byte is sent."""
        if self._logged:
            return
        self._logged = True
        self._status = status
        self._response_type = content_type
        entry = {**self._log_entry, "status": status, "content_type": content_type}
        entry["fault"] = self._fault.kind if self._fault else self._fault_name
        self.emulator.counters.record(entry, self.emulator.config.request_log_limit)

    def _handle(self, endpoint: str, path: str, query: str) -> None:
        body = self._read_body()
        if endpoint == "unknown":
            raise ApiError(1007, f"Unknown endpoint: {self.command} {path[:200]}")
        if endpoint == "control":
            self._control(path[len(CONTROL_PREFIX) :], body, query)
            return
        expected_method = "GET" if endpoint == "download" else "POST"
        if self.command != expected_method:
            raise ApiError(
                1007, f"Method {self.command} not allowed, use {expected_method}", 405, {"Allow": expected_method}
            )
        with self._admitted():
            fault = self.emulator.faults.match(endpoint, TRANSPORT_KINDS)
            if fault is not None:
                self._fault = fault
                self.emulator.counters.count_fault(fault.kind)
                self._apply_transport_fault(fault)
            self._check_auth()
            if endpoint == "download":
                self._download(unquote(path[len(DOWNLOAD_PREFIX) :]))
            else:
                self._send_payload(200, self.emulator.api.handle(endpoint, self._params(body)))

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """Hold a slot of ``max_concurrent_requests`` while the request runs (429 if none is free)."""
        config = self.emulator.config
        limit = config.max_concurrent_requests
        if not self.emulator.counters.begin_request(limit):
            self._fault_name = "max_concurrent_requests"
            retry_after = {"Retry-After": seconds_text(config.concurrency_retry_after)}
            raise ApiError(1006, f"Rate limit exceeded: more than {limit} concurrent requests", 429, retry_after)
        try:
            yield
        finally:
            self.emulator.counters.end_request()

    def _params(self, body: bytes) -> RequestParams:
        fmt = format_of(self.headers.get("Content-Type"))
        if fmt is None:
            raise ApiError(1001, "Invalid header Content-Type: expected application/json or application/xml")
        try:
            return RequestParams(decode_body(body, fmt), fmt == "xml")
        except BodyError as exc:
            raise ApiError(1001, f"Invalid request body: {exc}") from None

    def _check_auth(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(1002, "Authentication failed: missing Bearer token", headers=challenge)
        if not _same_secret(value.strip(), self.emulator.config.token):
            raise ApiError(1002, "Authentication failed: invalid token", headers=challenge)

    def _apply_transport_fault(self, fault: FaultRule) -> None:
        p = fault.params
        if fault.kind == "reset":
            self._abort_connection()
            raise AbortResponseError()
        if fault.kind == "http_500":
            raise ApiError(1000, str(p.get("text", "Internal server error")), 500)
        if fault.kind == "http_503":
            headers = {"Retry-After": seconds_text(p["retry_after"])} if "retry_after" in p else {}
            raise ApiError(1000, str(p.get("text", "Service temporarily unavailable")), 503, headers)
        if fault.kind == "rate_limit":
            retry_after = seconds_text(p.get("retry_after", 1))
            raise ApiError(1006, str(p.get("text", "Rate limit exceeded")), 429, {"Retry-After": retry_after})
        if fault.kind == "api_error":
            raise ApiError(int(p.get("code", 1000)), str(p.get("text", "Internal error")), 200)
        if fault.kind == "slow":
            time.sleep(float(p.get("seconds", 0.5)))
        # "truncate" and the in-body part of "slow" are applied while sending.

    def _abort_connection(self) -> None:
        """Close the TCP connection with RST (SO_LINGER 0) without answering."""
        self.close_connection = True
        self._log_response(0, "")
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.rfile.close()  # releases the makefile() reference so close() really closes
        with contextlib.suppress(OSError):
            sock.close()

    # --- responses ------------------------------------------------------------------------------
    def _send_error(self, exc: ApiError) -> None:
        self._send_payload(exc.http_status, exc.envelope(), exc.headers, exc.fmt)

    def _send_payload(
        self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None, fmt: str | None = None
    ) -> None:
        fmt = fmt or self._fmt
        self._send_bytes(status, encode_body(payload, fmt), content_type_for(fmt), headers or {})

    def _send_bytes(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str]) -> None:
        fault = self._fault
        self._log_response(status, content_type)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if fault is not None and fault.kind == "truncate":
            keep = int(len(body) * float(fault.params.get("fraction", 0.5)))
            self.wfile.write(body[: min(keep, len(body) - 1)])
            self.close_connection = True
            return
        if fault is not None and fault.kind == "slow" and float(fault.params.get("during", 0)) > 0:
            half = len(body) // 2
            self.wfile.write(body[:half])
            time.sleep(float(fault.params["during"]))
            self.wfile.write(body[half:])
            return
        self.wfile.write(body)

    # --- download -------------------------------------------------------------------------------
    def _download(self, hashed_file: str) -> None:
        download = self.emulator.api.download(hashed_file)
        try:
            self._send_download(download)
        finally:
            if download.file is not None:
                download.file.close()

    def _send_download(self, download: Download) -> None:
        counters = self.emulator.counters
        fault = self._fault
        truncate_after = int(fault.params.get("after_bytes", 65536)) if fault and fault.kind == "truncate" else None
        slow_during = float(fault.params.get("during", 0)) if fault and fault.kind == "slow" else 0.0
        self._log_response(200, "application/zip")
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        if download.file is not None:
            self.send_header("Content-Length", str(download.size))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Content-Disposition", f'attachment; filename="{download.filename}"')
        self.end_headers()

        def on_bytes(amount: int) -> None:
            counters.count("download_bytes", amount)

        def completed(csv_bytes: int) -> None:
            counters.count("downloads_completed")
            counters.count("download_csv_bytes", csv_bytes)

        if download.file is not None:
            send_file(
                self.connection,
                download.file,
                download.size,
                on_bytes,
                lambda: completed(download.csv_bytes),
                truncate_after,
                slow_during,
            )
            return
        writer = ChunkedWriter(self.wfile, on_bytes, truncate_after, slow_during)
        csv_bytes = download.write(writer)
        writer.finish(before_end=lambda: completed(csv_bytes))

    # --- control --------------------------------------------------------------------------------
    def _control(self, name: str, body: bytes, query: str) -> None:
        self._fmt = "json"
        host = self.client_address[0] if self.client_address else ""
        if not is_loopback(str(host)):
            raise ApiError(1002, "Control endpoints are available from loopback only", 403)
        data = handle_control(self.emulator, self.command, name, body, query)
        self._send_payload(200, success(data=data))


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
