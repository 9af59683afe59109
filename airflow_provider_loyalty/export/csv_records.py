r"""Read a batch's CSV members exactly as ``csv.reader`` does, in one linear pass.

Only for internal usage of :mod:`airflow_provider_loyalty.export.archive`. :meta private:

What counts is what ``csv.reader`` (excel dialect, default settings, the field size limit below)
reads from the whole member decoded as UTF-8 (a leading byte order mark dropped) and split into
lines as ``io.StringIO(text, newline="")`` splits them: the same records, the same errors. A data
row is a non-empty record after the header (the first non-empty record); blank lines are not rows.

How it stays exact, linear and fast:

* A member is read in blocks cut just after their last line break (:func:`line_blocks`), so no
  line spans two blocks; a line break is one ASCII byte, so a block also ends on a whole UTF-8
  character and decodes on its own.
* ONE ``csv.reader`` reads the whole member, fed the lines of block after block through a chain
  of C iterators: a quoted field running over many lines and blocks needs no boundary guessing.
* ``csv.reader`` pulls lines only until the record at hand is complete, never further. While the
  head of the batch is read (a member's header, then any boundary duplicates), every line is also
  kept, so after each record the kept lines are exactly that record's raw text: the header and
  the first rows are copied (or left out) record by record. From the next block on, blocks are
  copied to the part whole, byte for byte, and their rows counted and checked.
* Most of those blocks need no parse at all: a block that starts where a record starts is counted
  by a few C-speed passes (:func:`plain_rows`: one regular expression replaces each quoted field
  as the reader reads it, then the commas and line breaks left are counted; about five times as
  fast as ``csv.reader`` on the API's CSV); any other block goes to the same reader, which gives
  the exact answer or error. An empty line fed after each block the reader reads tells whether it is
  at a record boundary again (it is a blank record there, and nothing inside a quoted field).
* After the last line an empty line is fed as well. It changes no record (in an open quoted field it adds
  nothing; elsewhere it is a blank record) and shows whether the member ended inside an open
  quoted field. ``csv.reader`` accepts that at the end of its input; here it is refused: a quote
  never closed is CSV cut short (or malformed), and its record's last value would land cut off.

Memory: a few blocks, the record at hand, and one physical line, however long, up to
``max_line_bytes``: a longer line is the one thing refused here that ``csv.reader`` would read
(the parts' verifier, ``loyalty-verify``, bounds lines the same way).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import deque
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Protocol

from airflow_provider_loyalty.exceptions import LoyaltyVerificationError

if TYPE_CHECKING:
    from _csv import Reader

#: ``csv``'s default field limit (128 KiB) is lower than a long description may be; still bounded.
FIELD_SIZE_LIMIT = 16 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))

_BOM = b"\xef\xbb\xbf"
_LINE_BREAKS = (b"\n", b"\r")
_END_PROBE = ("",)  # fed after a member's last line: see the module docstring
_BLOCK_PROBE = ("",)  # fed after a block read by csv.reader: tells whether its last record ended
_MAX_CARRY = 64 * 1024  # a record open at the end of a plain block waits for the next block up to this size
# A quoted field as csv.reader reads one (see plain_rows). Linear: every attempt that
# passes the look-behind matches, and nothing is ever given back (possessive).
_QUOTED_FIELD_PATTERN = rb'"(?<![^,\r\n]")[^"]*+(?:""[^"]*+)*+(?:"|\Z)'
_QUOTED_FIELD = re.compile(_QUOTED_FIELD_PATTERN)
_AROUND_QUOTED_FIELDS = re.compile(b"(" + _QUOTED_FIELD_PATTERN + b")")
_QUOTE = b'"'
_LONE_CR = re.compile(rb"\r(?!\n)")
_NOT_SEPARATORS = bytes(byte for byte in range(256) if byte not in b",\r\n")  # deleted to leave , \r \n
_ROWS_PER_CALL = 4096  # rows handed to a row-taking sink at a time, at most
#: Characters of parsed rows handed to a row-taking sink at a time, at most (rows of 64 KiB each
#: would otherwise make 4,096 of them 256 MiB of strings, several times that as Arrow columns).
_ROW_CHARS_PER_CALL = 4 * 1024 * 1024
# Characters str.splitlines() also breaks at, which io.StringIO(newline="") does not: \v \f \x1c-\x1e
# (ASCII) and U+0085, U+2028, U+2029 (as UTF-8). A block without any splits the same both ways.
_ASCII_ONLY_BREAKS = (b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
_OTHER_BREAKS = (*_ASCII_ONLY_BREAKS, b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")


class RecordSink(Protocol):
    """Where verified records go: the part writer of one output format."""

    @property
    def takes_rows(self) -> bool:
        """True: it wants parsed rows (:meth:`write_rows`); False: raw CSV bytes (:meth:`write_raw`)."""

    def start(self, header: list[str], raw_header: bytes) -> None:
        """Begin the part with the batch's header; called once, just before the first row."""

    def write_raw(self, data: bytes) -> None:
        """Append raw CSV bytes: whole records, as the server wrote them."""

    def write_rows(self, rows: list[list[str]]) -> None:
        """Append parsed data rows."""


def line_blocks(stream: IO[bytes], block_size: int, max_line_bytes: int, name: str) -> Iterator[bytes]:
    r"""Read ``stream`` in blocks that each end just after a line break (the last one may not).

    A line break is ``\n``, ``\r\n`` or a ``\r`` not followed by ``\n``: where
    ``io.StringIO(newline="")`` ends a line. A ``\r`` that ends a read waits for the next byte.
    Every byte is searched once, so a line of any length costs time linear in its length.

    :param stream: the member's bytes.
    :param block_size: bytes per read.
    :param max_line_bytes: refuse a line longer than this rather than hold it.
    :param name: the member's name, for errors.
    """
    pending: list[bytes] = []
    pending_bytes = 0
    while chunk := stream.read(block_size):
        cut = after_last_line_break(chunk)
        if cut:
            if pending_bytes and pending_bytes + _first_line_break(chunk) > max_line_bytes:
                _refuse_long_line(name, max_line_bytes)  # the held line ends in this chunk, too long
            pending.append(chunk[:cut])
            yield b"".join(pending)
            rest = chunk[cut:]
            pending, pending_bytes = ([rest], len(rest)) if rest else ([], 0)
        elif pending and pending[-1].endswith(b"\r") and not chunk.startswith(b"\n"):
            yield b"".join(pending)  # that last \r was a line break on its own
            pending, pending_bytes = [chunk], len(chunk)
        else:
            pending.append(chunk)
            pending_bytes += len(chunk)
        if pending_bytes > max_line_bytes:
            _refuse_long_line(name, max_line_bytes)
    if pending:
        yield b"".join(pending)


def _refuse_long_line(name: str, max_line_bytes: int) -> None:
    raise LoyaltyVerificationError(
        f"zip member {name!r} has a line longer than {max_line_bytes} bytes (max_line_bytes); "
        "refused rather than held in memory"
    )


def _first_line_break(chunk: bytes) -> int:
    """Index of the first line break (``\n`` or ``\r``) in ``chunk``, which holds one."""
    breaks = [at for at in (chunk.find(b"\n"), chunk.find(b"\r")) if at >= 0]
    return min(breaks)


def after_last_line_break(chunk: bytes) -> int:
    """Index just after the last certain line break in ``chunk``; 0 when there is none.

    A ``\r`` at the very end is not certain yet: a ``\n`` may follow in the next read.
    """
    newline = chunk.rfind(b"\n")
    carriage = chunk.rfind(b"\r", newline + 1)
    if 0 <= carriage < len(chunk) - 1:
        return carriage + 1  # a \r followed by something other than \n
    return newline + 1


def _lines(text: str, block: bytes) -> Iterable[str]:
    """The lines of ``text`` as ``io.StringIO(text, newline="")`` splits them.

    ``str.splitlines`` is several times faster and splits the same unless the block holds one of
    the characters only it breaks at.
    """
    breaks = _ASCII_ONLY_BREAKS if len(text) == len(block) else _OTHER_BREAKS
    if any(other in block for other in breaks):
        return io.StringIO(text, newline="")
    return text.splitlines(keepends=True)


def plain_rows(block: bytes, width: int) -> tuple[int, int] | None:
    """``(rows, end)``: the data rows of ``block[:end]``, counted without a parse.

    ``block`` starts where a record starts and ends after a line break (or at the end of the
    member). ``end`` is its length, unless the block ends inside a quoted field: then ``end`` is
    where that field's record starts (0 if at the block's start), and the rest waits for more.

    :data:`_QUOTED_FIELD` finds the quoted fields as ``csv.reader`` reads them: a quote at the
    start of a field (the block's start, or after a comma or a line break) opens one, which runs
    over every other character and every ``""`` to the quote that ends a run of odd length (or to
    the block's end: still open). Any other quote is text to the reader (in an unquoted field, or
    after the text that follows a closing quote), as it is to the pattern. With each quoted field
    replaced by a NUL (the block has none of its own), the commas and line breaks left are
    exactly those the reader ends fields and records at: each non-blank line is a record, and its
    commas separate its fields. ``None`` when a row has another width than the header's, or the
    block holds a NUL or is longer than the field size limit: the block then goes to
    ``csv.reader``, which gives the exact answer or error.

    :param block: a line-aligned block, starting at a record boundary.
    :param width: the header's number of fields.
    """
    if b"\x00" in block or len(block) > csv.field_size_limit():
        return None
    outside, end = _outside_quoted_fields(block)
    if not end:
        return 0, 0
    rows = _uniform_rows(outside, width) if outside.endswith(_LINE_BREAKS) else None
    if rows is None:  # blank lines, lines ending differently, a width of 1, or a row of another width
        lines = outside.splitlines()  # bytes split at \r, \n and \r\n only, as csv lines are
        rows = len(lines) - lines.count(b"")
        commas = list(map(bytes.count, lines, itertools.repeat(b",")))
        if not (commas.count(width - 1) == rows if width > 1 else not any(commas)):
            return None
    return rows, end


def _outside_quoted_fields(block: bytes) -> tuple[bytes, int]:
    """The block's complete records with each quoted field replaced by a NUL, and where they end.

    A quoted field that runs to the block's end is taken as still open (at the member's end it may
    have closed there: its record then waits for the reader, which counts it): its record is left
    for the next block (``end`` is where it starts; ``(b"", 0)`` when it starts the block).
    """
    if _QUOTE not in block:  # most blocks: one memchr instead of a pattern pass and a copy
        return block, len(block)
    outside = _QUOTED_FIELD.sub(b"\x00", block)
    if not outside.endswith(b"\x00"):
        return outside, len(block)
    pieces = _AROUND_QUOTED_FIELDS.split(block)  # text, quoted field, text, ..., the open field, b""
    for index in range(len(pieces) - 3, -1, -2):  # the texts before the open field, last first
        piece = pieces[index]
        cut = max(piece.rfind(b"\n"), piece.rfind(b"\r")) + 1
        if cut:
            return b"\x00".join([*pieces[:index:2], piece[:cut]]), sum(map(len, pieces[:index])) + cut
    return b"", 0


def records_in_block(block: bytes) -> tuple[int, int] | None:
    """``(records, end)``: the non-blank records ``csv.reader`` reads from ``block[:end]``.

    For counting the rows of a stored part (``loyalty-verify``), where rows are ``csv.reader``'s
    records whatever their width. ``block`` starts where a record starts and ends with a line
    break. ``end`` is its length, unless the block ends inside a quoted field: then it is where
    that field's record starts, and the rest belongs with what follows. ``None`` when the block
    holds a NUL (``csv.reader`` refuses it): the caller reads it with ``csv.reader``.

    With each quoted field replaced as :func:`plain_rows` does, every line left is one record, a
    blank line none (a field, even an empty quoted one, leaves a NUL on its line).

    :param block: a line-aligned block, starting at a record boundary, ending with a line break.
    """
    if b"\x00" in block:
        return None
    outside, end = _outside_quoted_fields(block)
    lines = outside.splitlines()  # bytes split at \r, \n and \r\n only, as csv lines are
    return len(lines) - lines.count(b""), end


def _uniform_rows(outside: bytes, width: int) -> int | None:
    """The rows of ``outside`` (a block's text outside quotes, ending with a line break) when every
    line has ``width - 1`` commas and ends alike, with ``\\n`` or with ``\\r\\n``.

    The common case, checked by a few C passes over the separators instead of a split per line;
    ``None`` for anything else (blank lines, mixed line ends, a width of 1), which the caller then
    counts line by line.
    """
    if width < 2:
        return None  # a blank line and a one-field row look alike here
    separators = outside.translate(None, _NOT_SEPARATORS)
    line_end = b"\r\n" if separators[width - 1 : width + 1] == b"\r\n" else b"\n"
    record = b"," * (width - 1) + line_end
    rows, rest = divmod(len(separators), len(record))
    if rest or separators.count(record) != rows:
        return None
    # Text between a \r and a \n vanished with the other text: they must really be one line end
    # (a search for a lone \r: its pattern starts with a literal, so it skips ahead like a memchr).
    return rows if line_end == b"\n" or _LONE_CR.search(outside) is None else None


_NAME_SEPARATORS = re.compile(r"[\s_\-]+")


def column_index(header: list[str], name: str) -> int | None:
    """Where ``name`` is in a CSV header: the field spelled so, else the one field that differs only
    in case, spaces, ``_`` or ``-`` (``Transaction ID``, ``transactionId``); ``None`` if none or
    several do."""
    if name in header:
        return header.index(name)
    wanted = _spelling(name)
    found = [index for index, field in enumerate(header) if _spelling(field) == wanted]
    return found[0] if len(found) == 1 else None


def _spelling(field: str) -> str:
    return _NAME_SEPARATORS.sub("", field.casefold())


#: Kept lines joined into one string at a time: a quoted field of millions of line breaks is then
#: held as its text, not as a string object (about 50 bytes) per 2-byte line.
_KEPT_LINES_JOINED = 4096


class _KeptLines:
    """Hands one block's lines to ``csv.reader`` and keeps each one in a shared list (the lines
    kept longest joined in pieces of :data:`_KEPT_LINES_JOINED`: the list's text stays the same)."""

    def __init__(self, lines: Iterator[str], kept: list[str]) -> None:
        self._lines = lines
        self._kept = kept
        # Entries kept before this block are never joined again: joining them once per block would
        # copy a long first record over and over (quadratic in its size).
        self._joined = len(kept)

    def __iter__(self) -> _KeptLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        kept = self._kept
        kept.append(line)
        if len(kept) < self._joined:  # the list was emptied for the next record meanwhile
            self._joined = 0
        elif len(kept) - self._joined >= _KEPT_LINES_JOINED:
            kept[self._joined :] = ["".join(kept[self._joined :])]
            self._joined += 1
        return line


class BatchRecords:
    """Verifies a batch's CSV members one after another and sends their rows to a sink.

    Results after the last member: :attr:`header`, :attr:`archive_rows`, :attr:`rows`,
    :attr:`duplicates_dropped` and :attr:`tail`.

    :param sink: the part writer.
    :param id_column: the column holding the transaction id (the header must have it).
    :param skip_ids: ids written at the end of the previous batch: rows with these ids at the start
        of this batch (before any row is written) are boundary duplicates and are left out.
    :param tail_window: how many ids of the last rows written to remember for the next batch.
    :param block_size: bytes per read of a member.
    :param max_line_bytes: longest physical line held in memory.
    """

    def __init__(
        self,
        sink: RecordSink,
        *,
        id_column: str,
        skip_ids: Iterable[str],
        tail_window: int,
        block_size: int,
        max_line_bytes: int,
    ) -> None:
        self._sink = sink
        self._raw = not sink.takes_rows
        self._id_column = id_column
        self._skip_ids = skip_ids if isinstance(skip_ids, frozenset | set) else frozenset(skip_ids)
        self._block_size = block_size
        self._max_line_bytes = max_line_bytes
        #: The batch's header (the first member's); ``None`` while no member had one.
        self.header: list[str] | None = None
        #: Data rows read, boundary duplicates included.
        self.archive_rows = 0
        #: Data rows sent to the part.
        self.rows = 0
        #: Boundary duplicates left out.
        self.duplicates_dropped = 0
        #: Ids of the last rows sent to the part, oldest first.
        self.tail: deque[str] = deque(maxlen=tail_window)
        self._raw_header = b""
        self._line_end = b"\n"
        self._at_head = True  # no row written yet: rows with skipped ids are still left out
        self._started = False
        # Per member, reset by read_member:
        self._name = ""
        self._member_header: list[str] | None = None
        self._width = self._id_index = 0
        self._member_rows = 0
        self._bulk = False
        self._kept: list[str] = []
        self._rows: list[list[str]] = []  # parsed rows waiting for a row-taking sink
        self._bytes_read = 0
        self._member_wrote = False
        self._last_byte = b""
        self._probing = False  # a block probe is with the reader
        self._at_boundary = False  # the reader has ended every record it was given
        self._plain_tail: deque[tuple[bytes, int]] = deque()  # plain blocks whose ids are not remembered yet
        self._plain_tail_rows = 0

    # ------------------------------------------------------------------ one member

    def read_member(self, stream: IO[bytes], name: str) -> int:
        """Verify one CSV member and send its rows on; return the bytes read from ``stream``.

        :param stream: the member's inflated bytes.
        :param name: its name in the archive, for errors.
        """
        self._name = name
        self._member_header = None
        self._width = self._id_index = self._member_rows = self._bytes_read = 0
        self._bulk = self._member_wrote = self._probing = self._at_boundary = False
        self._kept = []
        reader = csv.reader(itertools.chain.from_iterable(self._line_sources(stream)))
        last: list[str] = []
        try:
            for last in reader:
                if self._bulk:  # the reader just crossed into a block copied whole
                    self._bulk_record(last)
                    last = self._read_bulk(reader, last)
                    break
                self._head_record(last)
        except csv.Error as err:
            raise LoyaltyVerificationError(
                f"zip member {name!r} is not valid CSV after data row {self._member_rows}: {err}"
            ) from None
        if self._kept and not self._at_head:
            self._write_raw("".join(self._kept).encode("utf-8"))
        self._kept = []
        self._flush_rows()
        self._remember_plain_tail()
        if last:  # the end probe gave no blank record: the last quoted field is still open
            raise LoyaltyVerificationError(
                f"zip member {name!r} ends inside an open quoted field (a quote opened in "
                f"{f'data row {self._member_rows}' if self._member_rows else 'its header'} is never closed): "
                "the CSV was cut short or is malformed, and that row's last value would land cut off"
            )
        if self._member_wrote and self._last_byte not in _LINE_BREAKS:
            self._write_raw(self._line_end)  # the next member's rows must start on a line of their own
        return self._bytes_read

    def _line_sources(self, stream: IO[bytes]) -> Iterator[Iterable[str]]:
        """Each block's lines for the one ``csv.reader``, then the end probe.

        Head blocks go through :class:`_KeptLines`. After the head, each block is copied to the
        part whole: counted without a parse where it is plain (:func:`plain_rows`), else
        handed to the reader (pure C iteration) and followed by a block probe.
        """
        first = True
        carry, carry_at = b"", 0  # the start of a record still open at the end of a plain block
        for block in line_blocks(stream, self._block_size, self._max_line_bytes, self._name):
            at = self._bytes_read
            self._bytes_read += len(block)
            if first and block.startswith(_BOM):
                block, at = block[len(_BOM) :], at + len(_BOM)
            first = False
            if not self._bulk and not self._at_head and self._member_header is not None:
                self._bulk = True
                if self._kept:  # the head block's rest, and the start of a record still open
                    self._write_raw("".join(self._kept).encode("utf-8"))
                    self._kept = []
            if not self._bulk:
                yield _KeptLines(iter(_lines(self._decode(block, at), block)), self._kept)
                continue
            if carry:
                block, at, carry = carry + block, carry_at, b""
            if self._raw and self._at_boundary:
                block, carry, at, carry_at = self._take_plain(block, at)
                if not block:
                    continue
            yield from self._to_reader(block, at)
        if carry:
            yield from self._to_reader(carry, carry_at)
        yield _END_PROBE

    def _to_reader(self, block: bytes, at: int) -> Iterator[Iterable[str]]:
        """Copy a block to the part and hand its lines to the reader, then probe (raw parts)."""
        self._remember_plain_tail()
        self._write_raw(block)
        self._at_boundary = False
        yield _lines(self._decode(block, at), block)
        if self._raw:
            self._probing = True
            yield _BLOCK_PROBE
            self._probing = False

    def _take_plain(self, block: bytes, at: int) -> tuple[bytes, bytes, int, int]:
        """Count, check and copy the plain part of a block that starts at a record boundary.

        Returns what the reader must read, what waits for the next block (a record still open
        at the end of this one), and where each starts in the member.
        """
        plain = plain_rows(block, self._width)
        if plain is None:
            return block, b"", at, 0
        rows, end = plain
        if end:
            counted = block[:end] if end < len(block) else block
            if not counted.isascii():
                self._decode(counted, at)  # valid UTF-8, or the error
            self._write_raw(counted)
            self._add_rows(rows)
            self._plain_tail.append((counted, rows))
            self._plain_tail_rows += rows
            window = self.tail.maxlen or 0
            while len(self._plain_tail) > 1 and self._plain_tail_rows - self._plain_tail[0][1] >= window:
                self._plain_tail_rows -= self._plain_tail.popleft()[1]
        rest = block[end:]
        if len(rest) > _MAX_CARRY:
            return rest, b"", at + end, 0  # a long open record: the reader takes it
        return b"", rest, 0, at + end

    def _remember_plain_tail(self) -> None:
        """Read the ids of the last plain blocks' rows into the tail (in order, before any later row)."""
        while self._plain_tail:
            block, _ = self._plain_tail.popleft()
            for record in csv.reader(io.StringIO(block.decode("utf-8"), newline="")):
                if record:
                    self.tail.append(record[self._id_index])
        self._plain_tail_rows = 0

    def _decode(self, block: bytes, at: int) -> str:
        try:
            return block.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LoyaltyVerificationError(
                f"zip member {self._name!r} is not UTF-8 text (byte {at + err.start}: {err.reason})"
            ) from None

    def _head_record(self, record: list[str]) -> None:
        """One record of a block read line by line: the kept lines end with its raw text."""
        if self._member_header is None:
            raw = "".join(self._kept)
            self._kept.clear()
            if record:  # blank lines before the header are dropped
                self._take_header(record, raw)
        elif not self._at_head:
            self._bulk_record(record)  # its lines stay kept until they are copied together
        else:
            raw = "".join(self._kept)
            self._kept.clear()
            if not record:
                return  # a blank line before the first row written
            self._check_width(record)
            if record[self._id_index] in self._skip_ids:
                self.duplicates_dropped += 1
                return
            self._at_head = False
            if self._raw:
                self._write_raw(raw.encode("utf-8"))
            else:
                self._write_rows([record])
            self.tail.append(record[self._id_index])
            self.rows += 1

    def _take_header(self, record: list[str], raw: str) -> None:
        id_index = column_index(record, self._id_column)
        if id_index is None:
            other = next((mark for mark in (";", "\t", "|") if any(mark in field for field in record)), None)
            hint = f"; its fields look separated by {other!r}, and only comma-separated CSV is read" if other else ""
            raise LoyaltyVerificationError(
                f"zip member {self._name!r}: the CSV header has no {self._id_column!r} column "
                f"(it has {record[:30]!r}){hint}"
            )
        if self.header is not None and record != self.header:
            raise LoyaltyVerificationError(f"zip member {self._name!r}: its CSV header differs from the first member's")
        self._member_header = record
        self._width, self._id_index = len(record), id_index
        if self.header is None:
            self.header = record
            self._line_end = b"\r\n" if raw.endswith("\r\n") else b"\n"
            encoded = raw.encode("utf-8")
            self._raw_header = encoded if encoded.endswith(_LINE_BREAKS) else encoded + self._line_end

    def _check_width(self, record: list[str]) -> None:
        self.archive_rows += 1
        self._member_rows += 1
        if len(record) != self._width:
            raise LoyaltyVerificationError(
                f"zip member {self._name!r}, data row {self._member_rows}: "
                f"{len(record)} fields, the header has {self._width}"
            )

    def _bulk_record(self, record: list[str]) -> None:
        """A row after the head: its raw text is copied with its block; count, check, remember."""
        if record:
            self._check_width(record)
            if not self._raw:
                self._write_rows([record])
            self.tail.append(record[self._id_index])
            self.rows += 1
        elif self._probing:
            self._at_boundary = True

    def _read_bulk(self, reader: Reader, record: list[str]) -> list[str]:
        """The rest of the member, its blocks already copied: count and check every row.

        :param reader: the member's reader.
        :param record: the record read just before.
        :return: the last record read: the end probe's blank record unless a quoted field was open.
        """
        width, id_index, remember, raw = self._width, self._id_index, self.tail.append, self._raw
        rows: list[list[str]] = []
        count = held = 0
        try:
            for record in reader:
                if len(record) == width:
                    remember(record[id_index])
                    count += 1
                    if not raw:
                        rows.append(record)
                        held += sum(map(len, record))
                        if len(rows) >= _ROWS_PER_CALL or held >= _ROW_CHARS_PER_CALL:
                            self._write_rows(rows, now=True)
                            rows, held = [], 0
                elif record:
                    self._add_rows(count)
                    count = 0
                    self._check_width(record)  # raises
                elif self._probing:  # the block probe came back as a blank record: no record is open
                    self._at_boundary = True
        finally:
            self._add_rows(count)
        self._write_rows(rows)
        return record

    def _add_rows(self, count: int) -> None:
        self.archive_rows += count
        self._member_rows += count
        self.rows += count

    # ------------------------------------------------------------------ output

    def _write_raw(self, data: bytes) -> None:
        if not self._raw or not data:
            return
        self._begin_part()
        self._sink.write_raw(data)
        self._member_wrote = True
        self._last_byte = data[-1:]

    def _write_rows(self, rows: list[list[str]], *, now: bool = False) -> None:
        """Queue parsed rows for a row-taking sink; they go on in batches of ``_ROWS_PER_CALL``
        (``now``: at once, the caller having counted their size)."""
        self._rows.extend(rows)
        if now or len(self._rows) >= _ROWS_PER_CALL:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._rows:
            self._begin_part()
            self._sink.write_rows(self._rows)
            self._rows = []

    def _begin_part(self) -> None:
        if not self._started:
            assert self.header is not None
            self._started = True
            self._sink.start(self.header, self._raw_header)


__all__ = [
    "FIELD_SIZE_LIMIT",
    "BatchRecords",
    "RecordSink",
    "after_last_line_break",
    "line_blocks",
    "plain_rows",
    "records_in_block",
]
