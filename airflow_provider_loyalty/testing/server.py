r"""The loyalty API emulator: a real HTTP/1.1 server of the seed API on loopback.

Endpoints (paths below the base URL):

=====================================================  =============================================
``POST /api/v1.1/loyalty/transactions_export``         create an export task (``export``)
``POST /api/v1.1/tasks/status``                        poll an export task (``status``)
``GET  /api/download/<hashed_file>``                   the batch zip, streamed (``download``)
``POST /api/v1.1/loyalty/account/transactions``        a member's history, paged (``account``)
``GET  /_emulator/stats``                              counters and request log (no auth, loopback)
``GET|POST /_emulator/faults``                         read / replace fault rules (JSON list)
``GET|POST /_emulator/config``                         read / update :class:`EmulatorConfig` fields
``POST /_emulator/reset``                              clear counters, request log and tasks
``GET  /_emulator/health``                             liveness probe
=====================================================  =============================================

All four API endpoints require ``Authorization: Bearer <token>``. Requests are ``application/json``
or ``application/xml`` (``text/xml`` accepted); the answer uses the request's format (for ``GET``
requests and bodies without a usable Content-Type: XML if ``Accept`` names XML, else JSON). Every
response, errors included, carries the envelope fields ``error`` and ``error_text``:

=====  ===========  =================================================================
error  HTTP status  meaning
=====  ===========  =================================================================
0      200          success (``"Successful operation"``)
1000   500 / 503    internal error (also the ``http_500`` / ``http_503`` faults)
1001   400          validation error; text names the parameter, e.g.
                    ``Invalid parameter date_from: expected RFC3339 date-time``
1002   401          authentication failed (missing/wrong Bearer token, wrong body
                    ``token`` on the account endpoint); 403 for control endpoints
                    called from a non-loopback address
1003   404          export task not found
1004   404          member profile not found
1005   404          download not found (unknown ``hashed_file`` or task not completed)
1006   429          rate limit exceeded (``rate_limit`` fault; ``Retry-After`` header)
1007   404 / 405    unknown endpoint / method not allowed
=====  ===========  =================================================================

Validation notes: ``null`` and empty values count as absent (so ``"from_id": ""`` starts at the
beginning of the period); unknown keys are ignored; ``from_id`` must be UUID-shaped (8-4-4-4-12
alphanumerics, so the seed's own example ``a1b2c3d4-e5f6-7890-g1h2-i3j4k5l6m7n8`` is accepted) and is
compared to ids as a lowercase string; JSON integers must be JSON numbers (not strings, floats or
booleans), XML integers digit text.

Downloads are generated on the fly: a :class:`zipfile.ZipFile` writes into a non-seekable writer
that emits HTTP ``Transfer-Encoding: chunked`` chunks, so memory stays flat for multi-GiB exports.
The zip holds one CSV member (``Transactions_loyalty_....csv``): header row of
:data:`~airflow_provider_loyalty.testing.data.TRANSACTION_FIELDS`, ``csv.QUOTE_MINIMAL``, lines
terminated by ``\\r\\n`` (RFC 4180; newlines inside quoted descriptions are ``\\n``), booleans
``true``/``false``, ``custom_json`` as a JSON string. Bytes are deterministic per task (fixed
``ZipInfo`` date 2023-10-01 00:00:00), so re-downloads are identical.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import re
import socket
import ssl
import struct
import threading
import time
import uuid
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from airflow_provider_loyalty.testing.codec import (
    BodyError,
    content_type_for,
    decode_body,
    encode_body,
    format_from_content_type,
)
from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.data import (
    TRANSACTION_FIELDS,
    TransactionStream,
    member_stream,
    parse_rfc3339,
    program_stream,
    transaction_to_csv_row,
)
from airflow_provider_loyalty.testing.faults import TRANSPORT_KINDS, FaultRule, FaultSet

__all__ = ["ERROR_CODES", "ApiError", "LoyaltyEmulator"]

log = logging.getLogger(__name__)

SUCCESS_TEXT = "Successful operation"
#: error code -> (default HTTP status, short meaning)
ERROR_CODES: dict[int, tuple[int, str]] = {
    0: (200, "success"),
    1000: (500, "internal error"),
    1001: (400, "validation error"),
    1002: (401, "authentication failed"),
    1003: (404, "export task not found"),
    1004: (404, "member profile not found"),
    1005: (404, "download not found"),
    1006: (429, "rate limit exceeded"),
    1007: (404, "unknown endpoint"),
}

EXPORT_PATH = "/api/v1.1/loyalty/transactions_export"
STATUS_PATH = "/api/v1.1/tasks/status"
ACCOUNT_PATH = "/api/v1.1/loyalty/account/transactions"
DOWNLOAD_PREFIX = "/api/download/"
CONTROL_PREFIX = "/_emulator/"
_API_PATHS = {EXPORT_PATH: "export", STATUS_PATH: "status", ACCOUNT_PATH: "account"}
_UUID_RE = re.compile(r"^[0-9A-Za-z]{8}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{12}$")
_INT_TEXT_RE = re.compile(r"^[+-]?\d+$")
_ZIP_DATE = (2023, 10, 1, 0, 0, 0)
_MATCHING = ("email", "phone", "profile_id", "custom")
_CHUNK = 64 * 1024
_CSV_FLUSH = 256 * 1024


class ApiError(Exception):
    """An error answered with the API envelope.

    :param code: the ``error`` code (see :data:`ERROR_CODES`).
    :param text: the ``error_text``.
    :param http_status: HTTP status (default: the code's status).
    :param headers: extra response headers.
    """

    def __init__(
        self, code: int, text: str, http_status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.http_status = http_status if http_status is not None else ERROR_CODES[code][0]
        self.headers = dict(headers or {})


def _invalid(name: str, reason: str) -> ApiError:
    return ApiError(1001, f"Invalid parameter {name}: {reason}")


class _Params:
    """Typed access to a decoded request body (XML scalars arrive as text)."""

    def __init__(self, body: dict[str, Any], is_xml: bool) -> None:
        self.body = body
        self.is_xml = is_xml

    def present(self, name: str) -> bool:
        value = self.body.get(name)
        return value is not None and value != ""

    def get_int(self, name: str, required: bool) -> int | None:
        if not self.present(name):
            if required:
                raise _invalid(name, "required")
            return None
        value = self.body[name]
        if self.is_xml:
            if isinstance(value, str) and _INT_TEXT_RE.match(value):
                return int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _invalid(name, f"expected int, got {_describe(value)}")

    def get_str(self, name: str, required: bool) -> str | None:
        if not self.present(name):
            if required:
                raise _invalid(name, "required")
            return None
        value = self.body[name]
        if not isinstance(value, str):
            raise _invalid(name, f"expected string, got {_describe(value)}")
        return value

    def get_str_or_int(self, name: str, required: bool) -> str | None:
        if not self.present(name):
            if required:
                raise _invalid(name, "required")
            return None
        value = self.body[name]
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise _invalid(name, f"expected string or int, got {_describe(value)}")
        return value


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return type(value).__name__


@dataclass
class _ExportTask:
    task_id: str
    created: float
    duration: float
    loyalty_program_id: int
    points_currency_iid: int
    date_from: str
    date_to: str
    from_id: str | None
    stream: TransactionStream
    lo: int
    hi: int
    next_from_id: str
    hashed_file: str
    csv_name: str
    compresslevel: int
    never_finishes: bool = False
    failure: tuple[str, str] | None = None

    @property
    def total(self) -> int:
        return self.hi - self.lo

    def completed(self, now: float) -> bool:
        return not self.never_finishes and self.failure is None and now - self.created >= self.duration

    def progress(self, now: float) -> int:
        if self.completed(now):
            return 100
        if self.duration <= 0:
            return 99
        return max(0, min(99, int(99 * (now - self.created) / self.duration)))


@functools.lru_cache(maxsize=32)
def _program_stream(seed: int, transactions: int, start: str, end: str, padding: int) -> TransactionStream:
    return program_stream(seed, transactions, start, end, padding)


@functools.lru_cache(maxsize=256)
def _member_stream(seed: int, member: int, size: int, start: str, end: str) -> TransactionStream:
    return member_stream(seed, member, size, start, end)


class _AbortResponseError(Exception):
    """Raised by the chunked writer after it deliberately sent a truncated body."""


class _ChunkedWriter:
    """A non-seekable binary sink that sends HTTP/1.1 chunks (64 KiB) to ``wfile``.

    :param wfile: the socket writer.
    :param on_bytes: called with the payload size of each sent chunk.
    :param truncate_after: if set, send only this many payload bytes (at most half of the body)
        and raise :class:`_AbortResponseError` instead of finishing.
    :param slow_during: seconds to sleep after the first chunk.
    """

    def __init__(
        self,
        wfile: io.BufferedIOBase,
        on_bytes: Callable[[int], None],
        truncate_after: int | None = None,
        slow_during: float = 0.0,
    ) -> None:
        self._wfile = wfile
        self._on_bytes = on_bytes
        self._buf = bytearray()
        self._sent = 0
        self._truncate_after = truncate_after
        self._slow_during = slow_during

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= _CHUNK:
            chunk = bytes(self._buf[:_CHUNK])
            del self._buf[:_CHUNK]
            self._emit(chunk)
        return len(data)

    def flush(self) -> None:
        """No-op: chunks are emitted when full and on :meth:`finish`."""

    def close(self) -> None:
        """No-op: the HTTP connection outlives the zip (see :meth:`finish`)."""

    def _emit(self, chunk: bytes) -> None:
        if self._truncate_after is not None and self._sent + len(chunk) > self._truncate_after:
            keep = max(0, self._truncate_after - self._sent)
            self._on_bytes(keep)
            self._wfile.write(b"%x\r\n" % len(chunk) + chunk[:keep])
            raise _AbortResponseError()
        # Counters are updated before the bytes leave, so a client that got them sees them counted.
        first = self._sent == 0
        self._sent += len(chunk)
        self._on_bytes(len(chunk))
        self._wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if first and self._slow_during > 0:
            time.sleep(self._slow_during)

    def finish(self, before_end: Callable[[], None] | None = None) -> None:
        """Send the remaining bytes and the terminating chunk (or truncate, if asked to).

        :param before_end: called right before the terminating chunk is sent.
        """
        if self._truncate_after is not None:
            remaining = bytes(self._buf)
            # Never deliver the whole body: at most half of what is left.
            self._truncate_after = min(self._truncate_after, self._sent + len(remaining) // 2)
            self._emit(remaining)
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()
        if before_end is not None:
            before_end()
        self._wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], emulator: LoyaltyEmulator, ssl_context: ssl.SSLContext | None):
        self.emulator = emulator
        self.ssl_context = ssl_context
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.emulator._count("connections")
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("loyalty emulator: error on connection from %s", client_address, exc_info=True)

    def close_all_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoyaltyEmulator/1.0"
    timeout = 300  # idle keep-alive connections are dropped after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid delayed-ACK stalls
    server: _Server

    # --- plumbing -------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("loyalty emulator: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    @property
    def emulator(self) -> LoyaltyEmulator:
        return self.server.emulator

    def _read_body(self) -> bytes:
        limit = self.emulator.config.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(1024)
                n = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                size += n
                if size > limit:
                    self.close_connection = True
                    raise ApiError(1001, f"Invalid request body: larger than {limit} bytes", 413)
                parts.append(self.rfile.read(n))
                self.rfile.readline(1024)
            return b"".join(parts)
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

    def _dispatch(self) -> None:
        self._status = 0
        self._response_type = ""
        self._fault: FaultRule | None = None
        self._logged = False
        path = self.path.split("?", 1)[0]
        endpoint = self._route(path)
        request_type = self.headers.get("Content-Type", "")
        self._log_entry: dict[str, Any] = {
            "method": self.command,
            "path": path,
            "endpoint": endpoint,
            "status": 0,
            "request_content_type": request_type,
            "content_type": "",
            "fault": None,
        }
        self.emulator._count_request(endpoint)
        self._fmt = format_from_content_type(request_type) or (
            "xml" if "xml" in self.headers.get("Accept", "").lower() else "json"
        )
        try:
            self._handle(endpoint, path)
        except ApiError as exc:
            self._send_error(exc)
        except (_AbortResponseError, ConnectionError, TimeoutError):
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
        entry["fault"] = self._fault.kind if self._fault else None
        self.emulator._record(entry)

    @staticmethod
    def _route(path: str) -> str:
        if path in _API_PATHS:
            return _API_PATHS[path]
        if path.startswith(DOWNLOAD_PREFIX):
            return "download"
        if path.startswith(CONTROL_PREFIX):
            return "control"
        return "unknown"

    def _handle(self, endpoint: str, path: str) -> None:
        emu = self.emulator
        body = self._read_body()
        if endpoint == "unknown":
            raise ApiError(1007, f"Unknown endpoint: {self.command} {path[:200]}")
        if endpoint == "control":
            self._fmt = "json"
            self._control(path[len(CONTROL_PREFIX) :], body)
            return
        expected_method = "GET" if endpoint == "download" else "POST"
        if self.command != expected_method:
            raise ApiError(
                1007,
                f"Method {self.command} not allowed, use {expected_method}",
                405,
                {"Allow": expected_method},
            )
        fault = emu.faults.match(endpoint, TRANSPORT_KINDS)
        if fault is not None:
            self._fault = fault
            emu._count_fault(fault.kind)
            self._apply_transport_fault(fault)
        self._check_auth()
        if endpoint == "download":
            self._download(unquote(path[len(DOWNLOAD_PREFIX) :]))
            return
        fmt = format_from_content_type(self.headers.get("Content-Type"))
        if fmt is None:
            raise ApiError(1001, "Invalid header Content-Type: expected application/json or application/xml")
        try:
            data = decode_body(body, fmt)
        except BodyError as exc:
            raise ApiError(1001, f"Invalid request body: {exc}") from None
        params = _Params(data, fmt == "xml")
        if endpoint == "export":
            payload = emu._create_export(params)
        elif endpoint == "status":
            payload = emu._task_status(params)
        else:
            payload = emu._account_transactions(params)
        self._send_payload(200, payload)

    def _check_auth(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(1002, "Authentication failed: missing Bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(value.strip().encode(), self.emulator.config.token.encode()):
            raise ApiError(1002, "Authentication failed: invalid token", headers={"WWW-Authenticate": "Bearer"})

    def _apply_transport_fault(self, fault: FaultRule) -> None:
        p = fault.params
        if fault.kind == "reset":
            self._abort_connection()
            raise _AbortResponseError()
        if fault.kind == "http_500":
            raise ApiError(1000, str(p.get("text", "Internal server error")), 500)
        if fault.kind == "http_503":
            headers = {"Retry-After": _seconds_text(p["retry_after"])} if "retry_after" in p else {}
            raise ApiError(1000, str(p.get("text", "Service temporarily unavailable")), 503, headers)
        if fault.kind == "rate_limit":
            retry_after = _seconds_text(p.get("retry_after", 1))
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
        payload = {"error": exc.code, "error_text": exc.text}
        self._send_payload(exc.http_status, payload, exc.headers)

    def _send_payload(self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        body = encode_body(payload, self._fmt)
        self._send_bytes(status, body, content_type_for(self._fmt), headers or {})

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
        emu = self.emulator
        task = emu._task_for_download(hashed_file)
        fault = self._fault
        truncate_after: int | None = None
        slow_during = 0.0
        if fault is not None and fault.kind == "truncate":
            truncate_after = int(fault.params.get("after_bytes", 65536))
        if fault is not None and fault.kind == "slow":
            slow_during = float(fault.params.get("during", 0))
        self._log_response(200, "application/zip")
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Transfer-Encoding", "chunked")
        filename = task.hashed_file.rsplit("/", 1)[-1].replace('"', "")
        self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.end_headers()
        writer = _ChunkedWriter(self.wfile, emu._add_download_bytes, truncate_after, slow_during)
        csv_bytes = _write_zip(writer, task)

        def completed() -> None:
            emu._count("downloads_completed")
            emu._count("download_csv_bytes", csv_bytes)

        writer.finish(before_end=completed)

    # --- control --------------------------------------------------------------------------------
    def _control(self, name: str, body: bytes) -> None:
        host = self.client_address[0] if self.client_address else ""
        try:
            loopback = ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ApiError(1002, "Control endpoints are available from loopback only", 403)
        emu = self.emulator
        data: Any
        if name == "health" and self.command == "GET":
            data = {"status": "ok"}
        elif name == "stats" and self.command == "GET":
            data = emu.stats()
        elif name == "faults" and self.command == "GET":
            data = [r.to_dict() for r in emu.faults.rules()]
        elif name == "faults" and self.command == "POST":
            rules = _load_json(body)
            if isinstance(rules, dict):
                rules = rules.get("faults", [])
            if not isinstance(rules, list):
                raise ApiError(1001, "Invalid parameter faults: expected a JSON list of fault rules")
            try:
                emu.set_faults(rules)
            except (ValueError, TypeError) as exc:
                raise ApiError(1001, f"Invalid parameter faults: {exc}") from None
            data = [r.to_dict() for r in emu.faults.rules()]
        elif name == "config" and self.command == "GET":
            data = emu.config.to_dict()
        elif name == "config" and self.command == "POST":
            changes = _load_json(body)
            if not isinstance(changes, dict):
                raise ApiError(1001, "Invalid parameter config: expected a JSON object")
            try:
                emu.config.update(changes)
            except (ValueError, TypeError) as exc:
                raise ApiError(1001, f"Invalid parameter config: {exc}") from None
            data = emu.config.to_dict()
        elif name == "reset" and self.command == "POST":
            emu.reset()
            data = {"reset": True}
        else:
            raise ApiError(1007, f"Unknown endpoint: {self.command} {CONTROL_PREFIX}{name[:100]}")
        self._send_payload(200, {"data": data, "error": 0, "error_text": SUCCESS_TEXT})


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(1001, f"Invalid request body: malformed JSON body: {exc}") from None


def _seconds_text(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _write_zip(sink: _ChunkedWriter, task: _ExportTask) -> int:
    """Stream the task's zip into ``sink``; return the CSV size in bytes."""
    info = zipfile.ZipInfo(task.csv_name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    try:
        info.compress_level = task.compresslevel  # type: ignore[attr-defined]  # Python >= 3.13
    except AttributeError:
        info._compresslevel = task.compresslevel  # type: ignore[attr-defined]
    # Unseekable output: ZIP64 must be decided up front from a generous size estimate.
    estimate = 4096 + task.total * (1024 + task.stream.row_padding)
    force_zip64 = estimate > zipfile.ZIP64_LIMIT
    csv_bytes = 0
    with (
        zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=task.compresslevel) as archive,
        archive.open(info, "w", force_zip64=force_zip64) as member,
    ):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(TRANSACTION_FIELDS)
        stream = task.stream
        for index in range(task.lo, task.hi):
            writer.writerow(transaction_to_csv_row(stream.transaction(index)))
            if text.tell() >= _CSV_FLUSH:
                chunk = text.getvalue().encode("utf-8")
                member.write(chunk)
                csv_bytes += len(chunk)
                text.seek(0)
                text.truncate()
        chunk = text.getvalue().encode("utf-8")
        member.write(chunk)
        csv_bytes += len(chunk)
    return csv_bytes


class LoyaltyEmulator:
    """A running (or runnable) emulator of the loyalty API.

    Use as a context manager or call :meth:`start` / :meth:`stop`::

        with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000)) as emu:
            requests.post(f"{emu.url}/api/v1.1/loyalty/transactions_export", ...)

    :param config: emulator configuration (default :class:`EmulatorConfig`). Mutable while running.
    :param host: address to bind (loopback by default).
    :param port: TCP port (0: pick a free one; see :attr:`port` after :meth:`start`).
    :param ssl_context: serve HTTPS with this server-side context.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.host = host
        self._port = port
        self._ssl_context = ssl_context
        self.faults = FaultSet(self.config.seed)
        self._lock = threading.Lock()
        self._tasks: dict[str, _ExportTask] = {}
        self._files: dict[str, str] = {}
        self._counters: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._faults_applied: Counter[str] = Counter()
        self._log: deque[dict[str, Any]] = deque(maxlen=max(1, self.config.request_log_limit))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LoyaltyEmulator:
        """Bind and serve in a daemon thread. Returns ``self``."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        server = _Server((self.host, self._port), self, self._ssl_context)
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loyalty-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open (keep-alive) connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LoyaltyEmulator:
        """Start the emulator."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the emulator."""
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (real port once started)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (``https`` with an SSL context)."""
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self._port}"

    @property
    def token(self) -> str:
        """The API token the emulator accepts."""
        return self.config.token

    # --- control --------------------------------------------------------------------------------
    def set_faults(self, rules: Iterable[FaultRule | Mapping[str, Any]]) -> None:
        """Replace the fault rules (reseeding their random source from ``config.seed``).

        :param rules: :class:`FaultRule` objects or their JSON dicts; ``[]`` clears.
        """
        self.faults.set(rules, seed=self.config.seed)

    def reset(self) -> None:
        """Clear counters, the request log and all export tasks (faults and config are kept)."""
        with self._lock:
            self._tasks.clear()
            self._files.clear()
            self._counters.clear()
            self._requests.clear()
            self._statuses.clear()
            self._faults_applied.clear()
            self._log = deque(maxlen=max(1, self.config.request_log_limit))

    def stats(self) -> dict[str, Any]:
        """Counters and the request log as a JSON-ready dict.

        Keys: ``requests`` (per endpoint: export, status, download, account, control, unknown),
        ``requests_total``, ``responses_by_status``, ``faults_applied`` (per kind),
        ``export_tasks_created``, ``connections``, ``open_connections``, ``download_bytes`` (zip
        bytes sent), ``download_csv_bytes``, ``downloads_completed``, ``tasks`` and
        ``request_log`` (method, path, endpoint, status, request_content_type, content_type,
        fault; never headers).
        """
        with self._lock:
            requests = {name: self._requests.get(name, 0) for name in ("export", "status", "download", "account")}
            requests.update({k: v for k, v in self._requests.items() if k not in requests})
            server = self._server
            return {
                "requests": requests,
                "requests_total": sum(self._requests.values()),
                "responses_by_status": dict(self._statuses),
                "faults_applied": dict(self._faults_applied),
                "export_tasks_created": self._counters["export_tasks_created"],
                "connections": self._counters["connections"],
                "open_connections": len(server.open_sockets) if server is not None else 0,
                "download_bytes": self._counters["download_bytes"],
                "download_csv_bytes": self._counters["download_csv_bytes"],
                "downloads_completed": self._counters["downloads_completed"],
                "tasks": len(self._tasks),
                "request_log": list(self._log),
            }

    # --- counters (called from handler threads) ---------------------------------------------------
    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def _add_download_bytes(self, amount: int) -> None:
        self._count("download_bytes", amount)

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._faults_applied[kind] += 1

    def _count_request(self, endpoint: str) -> None:
        with self._lock:
            self._requests[endpoint] += 1

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._statuses[str(entry["status"])] += 1
            self._log.append(entry)

    # --- API logic ------------------------------------------------------------------------------
    def _check_program_and_currency(self, params: _Params) -> int:
        cfg = self.config
        program = params.get_int("loyalty_program_id", required=True)
        if program != cfg.loyalty_program_id:
            raise _invalid("loyalty_program_id", f"unknown loyalty program {program}")
        has_eid = params.present("points_currency_eid")
        has_iid = params.present("points_currency_iid")
        if has_eid and has_iid:
            raise _invalid(
                "points_currency_eid/points_currency_iid",
                "give exactly one of points_currency_eid or points_currency_iid, not both",
            )
        if not has_eid and not has_iid:
            raise _invalid(
                "points_currency_eid/points_currency_iid",
                "one of points_currency_eid or points_currency_iid is required",
            )
        if has_eid:
            eid = params.get_str("points_currency_eid", required=True)
            if eid != cfg.points_currency_eid:
                raise _invalid("points_currency_eid", f"unknown points currency {eid!r}")
        else:
            iid = params.get_int("points_currency_iid", required=True)
            if iid != cfg.points_currency_iid:
                raise _invalid("points_currency_iid", f"unknown points currency {iid}")
        return cfg.points_currency_iid

    @staticmethod
    def _from_id(params: _Params) -> str | None:
        from_id = params.get_str("from_id", required=False)
        if from_id is not None and not _UUID_RE.match(from_id):
            raise _invalid("from_id", "expected a UUID")
        return from_id

    def _create_export(self, params: _Params) -> dict[str, Any]:
        cfg = self.config
        currency_iid = self._check_program_and_currency(params)
        dates: dict[str, float] = {}
        raw: dict[str, str] = {}
        for name in ("date_from", "date_to"):
            text = params.get_str(name, required=True)
            assert text is not None
            try:
                dates[name] = parse_rfc3339(text)
            except ValueError:
                raise _invalid(name, "expected RFC3339 date-time") from None
            raw[name] = text
        if dates["date_from"] > dates["date_to"]:
            raise _invalid("date_from", "must not be after date_to")
        from_id = self._from_id(params)

        stream = _program_stream(cfg.seed, cfg.transactions, cfg.period_start, cfg.period_end, cfg.row_padding)
        lo, hi = stream.index_range(dates["date_from"], dates["date_to"])
        mode = cfg.cursor_mode
        start = lo if from_id is None else stream.first_index_after(from_id, lo, hi, inclusive=mode != "exclusive")
        end = min(start + cfg.batch_size, hi)
        next_from_id = ""
        if end < hi:
            next_from_id = stream.transaction_id(end if mode == "next_row" else end - 1)

        task_id = f"task_{uuid.uuid4()}"
        digest = hashlib.shake_256(f"{cfg.seed}:{task_id}".encode()).digest(72)
        sep = {"seed": " ", "colon": ":", "plain": "-"}[cfg.hashed_file_style]
        stem = (
            f"Transactions_loyalty_{cfg.loyalty_program_id}_{currency_iid}_"
            f"{raw['date_from'].replace(':', sep)}_{raw['date_to'].replace(':', sep)}"
        )
        hashed_file = f"{base64.urlsafe_b64encode(digest).decode()}/{stem}.zip"
        never = self.faults.match(
            ("export", "status"), {"task_never_finishes"}, predicate=lambda r: "task_ids" not in r.params
        )
        task = _ExportTask(
            task_id=task_id,
            created=time.monotonic(),
            duration=float(cfg.task_duration),
            loyalty_program_id=cfg.loyalty_program_id,
            points_currency_iid=currency_iid,
            date_from=raw["date_from"],
            date_to=raw["date_to"],
            from_id=from_id,
            stream=stream,
            lo=start,
            hi=end,
            next_from_id=next_from_id,
            hashed_file=hashed_file,
            csv_name=f"{stem}.csv",
            compresslevel=cfg.zip_compresslevel,
            never_finishes=never is not None,
        )
        with self._lock:
            self._tasks[task_id] = task
            self._files[hashed_file] = task_id
            self._counters["export_tasks_created"] += 1
            if never is not None:
                self._faults_applied["task_never_finishes"] += 1
        return {"data": {"task_id": task_id}, "error": 0, "error_text": SUCCESS_TEXT}

    def _task_status(self, params: _Params) -> dict[str, Any]:
        task_id = params.get_str("task_id", required=True)
        with self._lock:
            task = self._tasks.get(task_id or "")
        if task is None:
            raise ApiError(1003, f"Export task not found: {str(task_id)[:100]}")
        if task.failure is None:
            rule = self.faults.match("status", {"task_failed"})
            if rule is not None:
                task.failure = (
                    str(rule.params.get("status", "failed")),
                    str(rule.params.get("text", "Export task failed")),
                )
                self._count_fault("task_failed")
        now = time.monotonic()
        pinned = any(
            r.kind == "task_never_finishes" and task.task_id in (r.params.get("task_ids") or ())
            for r in self.faults.rules()
        )
        data: dict[str, Any]
        if task.failure is not None:
            status, text = task.failure
            data = {"status": status, "progress": task.progress(now), "error_text": text, "message": text}
        elif pinned or not task.completed(now):
            data = {"status": "in_progress", "progress": min(99, task.progress(now))}
        else:
            override = self.config.hashed_file_override
            data = {
                "status": "completed",
                "progress": 100,
                "result": {
                    "hashed_file": override if override is not None else task.hashed_file,
                    "is_api": True,
                    "loyalty_id": task.loyalty_program_id,
                    "next_from_id": task.next_from_id,
                    "points_currency_iid": task.points_currency_iid,
                    "total": task.total,
                },
            }
        return {"data": data, "error": 0, "error_text": SUCCESS_TEXT}

    def _task_for_download(self, hashed_file: str) -> _ExportTask:
        with self._lock:
            task_id = self._files.get(hashed_file)
            task = self._tasks.get(task_id) if task_id else None
        if task is None or not task.completed(time.monotonic()):
            raise ApiError(1005, "Download not found")
        return task

    def _account_transactions(self, params: _Params) -> dict[str, Any]:
        cfg = self.config
        body_token = params.body.get("token")
        if body_token not in (None, "") and (
            not isinstance(body_token, str) or not hmac.compare_digest(body_token.encode(), cfg.token.encode())
        ):
            raise ApiError(1002, "Authentication failed: invalid token")
        self._check_program_and_currency(params)
        from_id = self._from_id(params)
        limit = params.get_int("limit", required=False)
        if limit is None:
            limit = 20
        if not 1 <= limit <= 100:
            raise _invalid("limit", f"must be within 1..100, got {limit}")
        matching = params.get_str("matching", required=True)
        if matching not in _MATCHING:
            raise _invalid("matching", f"expected one of {', '.join(_MATCHING)}, got {matching!r}")
        member = self._find_member(params, matching)
        sizes = cfg.member_history_sizes
        if member is None or member >= len(sizes):
            raise ApiError(1004, "Member profile not found")
        stream = _member_stream(cfg.seed, member, sizes[member], cfg.period_start, cfg.period_end)
        total = len(stream)
        start = 0 if from_id is None else stream.first_index_after(from_id, 0, total, inclusive=False)
        end = min(start + limit, total)
        rows = [stream.transaction(i) for i in range(start, end)]
        next_from_id = rows[-1]["transaction_id"] if rows and end < total else ""
        return {
            "data": rows,
            "next_from_id": next_from_id,
            "total_count": total,
            "error": 0,
            "error_text": SUCCESS_TEXT,
        }

    @staticmethod
    def _find_member(params: _Params, matching: str) -> int | None:
        if matching == "custom":
            field_name = params.get_str("field_name", required=True)
            field_value = params.get_str_or_int("field_value", required=True)
            if field_name != "user_id" or field_value is None or not field_value.isdigit():
                return None
            member = int(field_value)
            return member if str(member) == field_value else None
        value = params.get_str(matching, required=True)
        assert value is not None
        patterns = {
            "email": (r"member(\d+)@example\.com", "member{}@example.com"),
            "phone": (r"\+1555000(\d{4,})", "+1555000{:04d}"),
            "profile_id": (r"profile_(\d+)", "profile_{}"),
        }
        pattern, template = patterns[matching]
        text = value.lower() if matching == "email" else value
        found = re.fullmatch(pattern, text)
        if not found:
            return None
        member = int(found.group(1))
        return member if template.format(member) == text else None
