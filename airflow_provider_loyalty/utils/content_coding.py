"""Content codings of API replies (``Content-Encoding``), undone the same way by the sync and the
async hook: gzip (``x-gzip`` too, RFC 9110 8.4.1.3) of any number of members, deflate with its zlib
header or raw, several codings stacked (``gzip, gzip``), in bounded steps. aiohttp inflates only
``gzip``/``deflate``/``br``/``zstd`` and not ``x-gzip`` or stacked ones, so the trigger read such a
reply as compressed bytes while the worker read it fine. Codings not asked for (``br``) are left as
sent by both. Only for internal usage.
"""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Iterator

#: What both hooks ask for (what ``requests`` asks for without brotli or zstandard installed).
ACCEPT_ENCODING = "gzip, deflate"
#: Output of one inflating step: a small compressed reply never expands past the reply cap unseen.
_STEP_BYTES = 64 * 1024


class ContentDecodingError(http.client.HTTPException):
    """A body that does not inflate as its ``Content-Encoding`` says; "cut short", as ``requests``' own."""


class Inflater:
    """One content coding undone in steps of at most :data:`_STEP_BYTES` of output, as
    ``urllib3`` undoes it: gzip of any number of members (trailing garbage ignored), deflate with
    its zlib header or raw."""

    def __init__(self, coding: str) -> None:
        self._gzip = coding in ("gzip", "x-gzip")
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)
        self._started = False
        self._members = 0
        self._done = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The output ``data`` gives, piece by piece."""
        while data and not self._done:
            try:
                piece = self._inflate.decompress(data, _STEP_BYTES)
            except zlib.error:
                if self._members:  # garbage after a complete gzip member
                    self._done = True
                    return
                if self._gzip or self._started:
                    raise
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate sent without its zlib header
                self._started = True
                continue
            self._started = True
            data = self._inflate.unconsumed_tail
            if piece:
                yield piece
            if self._inflate.eof:
                self._members += 1
                data = self._inflate.unused_data
                if not self._gzip or not data:
                    self._done = not self._gzip  # a gzip body may go on with another member
                    return
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member
        # No output waits inside zlib once its input is taken: every stream ends with codes (the
        # end of its last block, a checksum) that are read only after the output before them.


#: The codings the hooks undo; any other but ``identity`` is left as sent.
_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})


def _codings(content_encoding: str | None) -> list[str]:
    """The codings a ``Content-Encoding`` lists, in the order they were applied."""
    return [coding.strip().lower() for coding in (content_encoding or "").split(",") if coding.strip()]


def codings_left_as_sent(content_encoding: str | None) -> list[str]:
    """The codings of a ``Content-Encoding`` that no hook undoes (``br``, ``zstd``: not asked for)."""
    return [coding for coding in _codings(content_encoding) if coding not in _INFLATED and coding != "identity"]


def inflaters(content_encoding: str | None) -> list[Inflater]:
    """The decoders of a ``Content-Encoding``, in the order they were applied; codings other than
    gzip and deflate (none was asked for) are left as sent, as ``requests`` leaves them."""
    return [Inflater(coding) for coding in _codings(content_encoding) if coding in _INFLATED]


def inflated(chunk: bytes, stages: list[Inflater]) -> Iterator[bytes]:
    """``chunk`` through every coding, the last applied undone first."""
    if not stages:
        yield chunk
        return
    for piece in stages[-1].feed(chunk):
        yield from inflated(piece, stages[:-1])


class BodyDecoder:
    """A reply body's ``Content-Encoding`` undone chunk by chunk (see :func:`inflaters`).

    :param content_encoding: the reply's ``Content-Encoding`` header, if any.
    :param path: the endpoint, for the error.
    """

    def __init__(self, content_encoding: str | None, path: str) -> None:
        self._stages = inflaters(content_encoding)
        self._path = path

    @property
    def identity(self) -> bool:
        """Whether the body comes as sent (nothing to inflate)."""
        return not self._stages

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes ``chunk`` gives, piece by piece.

        :raises ContentDecodingError: the body does not inflate as its ``Content-Encoding`` says.
        """
        try:
            yield from inflated(chunk, self._stages)
        except zlib.error as error:
            raise ContentDecodingError(f"{self._path}: the reply's Content-Encoding does not inflate") from error
