"""Download bodies on the wire: HTTP/1.1 chunked streaming and pre-built files with Content-Length.

Both honour the transport faults that act while a body is sent: ``truncate`` (the body stops
early and the connection closes) and ``slow`` (a pause after the first 64 KiB). Counters are
updated before the bytes they count leave, so a client that got them sees them counted.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from typing import IO

__all__ = ["CHUNK", "AbortResponseError", "ChunkedWriter", "send_file"]

CHUNK = 64 * 1024


class AbortResponseError(Exception):
    """Raised after a response was deliberately cut short (the connection must close)."""


class ChunkedWriter:
    """A non-seekable binary sink that sends HTTP/1.1 chunks (64 KiB) to ``wfile``.

    :param wfile: the socket writer.
    :param on_bytes: called with the payload size of each sent chunk.
    :param truncate_after: if set, send only this many payload bytes (at most half of the body)
        and raise :class:`AbortResponseError` instead of finishing.
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

    def write(self, data: bytes, /) -> int:
        """Buffer ``data``; send every full chunk.

        :param data: payload bytes.
        """
        self._buf += data
        while len(self._buf) >= CHUNK:
            chunk = bytes(self._buf[:CHUNK])
            del self._buf[:CHUNK]
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
            raise AbortResponseError()
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


def send_file(
    connection: socket.socket,
    file: IO[bytes],
    size: int,
    on_bytes: Callable[[int], None],
    before_end: Callable[[], None],
    truncate_after: int | None = None,
    slow_during: float = 0.0,
) -> None:
    """Send ``size`` bytes of ``file`` as a body whose headers (with Content-Length) are sent.

    Uses ``sendfile`` (kernel copy; TLS sockets fall back to ``send``).

    :param connection: the client socket.
    :param file: the open file, at offset 0.
    :param size: its size.
    :param on_bytes: called with the bytes about to be sent.
    :param before_end: called right before the last byte is sent.
    :param truncate_after: if set, send at most this many bytes (and at most half of the file),
        then raise :class:`AbortResponseError`.
    :param slow_during: seconds to sleep after the first 64 KiB.
    """
    if truncate_after is not None:
        keep = min(truncate_after, size // 2)
        on_bytes(keep)
        if keep:
            connection.sendfile(file, 0, keep)
        raise AbortResponseError()
    offset = 0
    if slow_during > 0:
        offset = min(CHUNK, size - 1)
        on_bytes(offset)
        connection.sendfile(file, 0, offset)
        time.sleep(slow_during)
    on_bytes(size - offset)
    if size - offset > 1:
        connection.sendfile(file, offset, size - offset - 1)
    before_end()
    connection.sendfile(file, size - 1, 1)
