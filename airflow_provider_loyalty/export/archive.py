"""Verify one downloaded export batch and turn it into a part file.

A batch counts only after its archive proves sound: the zip opens, every member has a safe name
and passes its CRC check, the archive stays under the size and compression-ratio caps, the CSV
parses (quoted commas and newlines included) and its data rows equal the API's ``total``.

Rows are copied to the part byte for byte as the server wrote them; the only rows left out are
boundary duplicates — ids already written at the end of the previous batch, found at the start
of the next — which is how the output holds every transaction exactly once whether the API reads
``from_id`` as inclusive or exclusive. Memory stays bounded: a few blocks of a few MiB plus a small
window of trailing ids, whatever the batch size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from airflow_provider_loyalty.exceptions import LoyaltyUnsafeDataError, LoyaltyVerificationError

ID_COLUMN = "transaction_id"
#: How many trailing ids of a batch are remembered to drop boundary duplicates in the next one.
TAIL_WINDOW = 1000
_CHUNK = 1024 * 1024
# Verification reads the CSV in blocks of this size. Memory is a few blocks at a time, and a block
# of text costs up to 4 bytes a character in a str: 256 KiB keeps the peak small at the same speed.
_BLOCK = 256 * 1024
# csv's default field limit (128 KiB) is lower than a long description may be; still bounded.
csv.field_size_limit(16 * 1024 * 1024)


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps that make a zip bomb fail closed instead of filling the disk.

    :param max_uncompressed_bytes: largest total uncompressed size of one batch's archive.
    :param max_compression_ratio: largest uncompressed/compressed ratio of a member over 1 MiB.
    """

    max_uncompressed_bytes: int = 32 * 1024**3
    max_compression_ratio: float = 200.0


@dataclass
class PartStats:
    """What one verified batch contributed: counts, size and digest of the part written."""

    rows: int = 0
    archive_rows: int = 0
    duplicates_dropped: int = 0
    bytes: int = 0
    sha256: str = ""
    tail_ids: list[str] = field(default_factory=list)


class _HashingWriter:
    """Writes text as UTF-8 to a binary sink, counting bytes and hashing them on the way."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._digest = hashlib.sha256()
        self.bytes = 0

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_bytes(self, data: bytes) -> None:
        self._digest.update(data)
        self._sink.write(data)
        self.bytes += len(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class _RecordCapture:
    """Feeds lines to ``csv.reader`` and keeps the raw text of the record being read.

    ``csv.reader`` pulls lines only until the current record is complete, so after each record
    the buffer holds exactly that record's original text (several lines when a quoted field
    contains newlines).
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.buffer: list[str] = []

    def __iter__(self) -> _RecordCapture:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.buffer.append(line)
        return line

    def take(self) -> str:
        raw = "".join(self.buffer)
        self.buffer.clear()
        return raw


def check_member_name(name: str) -> None:
    """Refuse archive member names that could escape a directory or hide what they are."""
    shown = repr(name[:120])
    if not name or any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise LoyaltyUnsafeDataError(f"zip member name {shown} is empty or contains control characters")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise LoyaltyUnsafeDataError(f"zip member name {shown} is an absolute or Windows path")
    if any(part in ("..", ".") for part in name.rstrip("/").split("/")):
        raise LoyaltyUnsafeDataError(f"zip member name {shown} contains a '..' or '.' segment")


def _data_members(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    members = [info for info in archive.infolist() if not info.is_dir()]
    for info in archive.infolist():
        check_member_name(info.filename)
    if not members:
        raise LoyaltyVerificationError("the archive holds no files; expected one or more CSV files")
    total = 0
    for info in members:
        if not info.filename.lower().endswith(".csv"):
            raise LoyaltyVerificationError(f"zip member {info.filename!r} is not a .csv file")
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _CHUNK and ratio > limits.max_compression_ratio:
            raise LoyaltyUnsafeDataError(
                f"zip member {info.filename!r} expands {ratio:.0f}x (cap {limits.max_compression_ratio:.0f}x): "
                "refused as a possible zip bomb"
            )
    if total > limits.max_uncompressed_bytes:
        raise LoyaltyUnsafeDataError(
            f"the archive expands to {total} bytes, over the cap of {limits.max_uncompressed_bytes} bytes"
        )
    return members


def _record_chunks(stream: IO[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Read a CSV byte stream in blocks that each end on a record boundary.

    A newline ends a record only outside quotes; with RFC 4180 quoting (``""`` escapes a quote)
    that is where the count of ``"`` since the block's start is even. Yields ``(block, last)``.
    """
    carry = b""
    while True:
        block = stream.read(_BLOCK)
        if not block:
            if carry:
                yield carry, True
            return
        data = carry + block if carry else block
        end = _last_record_end(data)
        if end < 0:
            carry = data
            continue
        yield data[: end + 1], False
        carry = data[end + 1 :]


def _last_record_end(data: bytes) -> int:
    position = data.rfind(b"\n")
    while position >= 0:
        if data.count(b'"', 0, position) % 2 == 0:
            return position
        position = data.rfind(b"\n", 0, position)
    return -1


def _decode(block: bytes, name: str, *, first: bool) -> str:
    try:
        return block.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as err:
        raise LoyaltyVerificationError(f"zip member {name!r} is not UTF-8 text ({err.reason})") from None


def write_part(
    archive_path: str,
    part: IO[bytes],
    *,
    expected_rows: int,
    skip_ids: frozenset[str] = frozenset(),
    limits: ArchiveLimits | None = None,
) -> PartStats:
    """Verify a downloaded archive and write its CSV rows to ``part``.

    :param archive_path: the downloaded zip on local disk.
    :param part: binary sink of the part (header + rows, UTF-8).
    :param expected_rows: the API's ``total`` for this batch: data rows the archive must hold.
    :param skip_ids: transaction ids already written at the end of the previous batch.
    :param limits: zip bomb caps.
    :return: counts, bytes, sha256 of the part and the trailing ids for the next batch.
    """
    limits = limits or ArchiveLimits()
    writer = _HashingWriter(part)
    stats = PartStats()
    tail: deque[str] = deque(maxlen=TAIL_WINDOW)
    header: list[str] | None = None
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for info in _data_members(archive, limits):
                with archive.open(info) as member:
                    header = _copy_member(member, info.filename, header, writer, stats, skip_ids, tail)
    except (zipfile.BadZipFile, zlib.error) as err:
        raise LoyaltyVerificationError(f"the downloaded archive is corrupt: {err}") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError) as err:
        raise LoyaltyVerificationError(f"the downloaded archive cannot be read: {err}") from None
    if stats.archive_rows != expected_rows:
        raise LoyaltyVerificationError(
            f"row count mismatch: the archive holds {stats.archive_rows} data rows; "
            f"the API's total says {expected_rows}"
        )
    stats.bytes = writer.bytes
    stats.sha256 = writer.hexdigest()
    stats.tail_ids = list(tail)
    return stats


def _copy_member(
    member: IO[bytes],
    name: str,
    header: list[str] | None,
    writer: _HashingWriter,
    stats: PartStats,
    skip_ids: frozenset[str],
    tail: deque[str],
) -> list[str]:
    """Verify and copy one CSV member; return its header.

    The member's first block goes record by record (its header, and boundary duplicates at the
    start of the batch, may be left out); every later block is parsed for verification and then
    copied as one piece, byte for byte, which keeps verification close to the speed of unzipping.
    """
    member_header: list[str] | None = None
    line_end = "\n"
    width = id_index = 0
    at_head = True  # until the header and any boundary duplicates after it have gone by
    for number, (block, last) in enumerate(_record_chunks(member)):
        text = _decode(block, name, first=number == 0)
        try:
            if at_head:
                capture = _RecordCapture(iter(io.StringIO(text, newline="")))
                reader = csv.reader(capture, strict=True)
                if member_header is None:
                    member_header = next(reader, None)
                    raw_header = capture.take()
                    if member_header is None:
                        break
                    if ID_COLUMN not in member_header:
                        raise LoyaltyVerificationError(
                            f"zip member {name!r}: the CSV header has no {ID_COLUMN!r} column"
                        )
                    if header is not None and member_header != header:
                        raise LoyaltyVerificationError(
                            f"zip member {name!r}: its CSV header differs from the first member's"
                        )
                    line_end = "\r\n" if raw_header.endswith("\r\n") else "\n"
                    if header is None:
                        writer.write_text(_terminated(raw_header, line_end))
                    width, id_index = len(member_header), member_header.index(ID_COLUMN)
                for row in reader:
                    raw = capture.take()
                    if not _count_row(row, name, width, stats):
                        continue
                    if at_head and row[id_index] in skip_ids:
                        stats.duplicates_dropped += 1
                        continue
                    at_head = False
                    writer.write_text(_terminated(raw, line_end))
                    tail.append(row[id_index])
                    stats.rows += 1
                continue
            rows = 0
            for row in csv.reader(io.StringIO(text, newline=""), strict=True):
                if _count_row(row, name, width, stats):
                    tail.append(row[id_index])
                    rows += 1
            stats.rows += rows
            writer.write_bytes(block if not last or block.endswith(b"\n") else block + line_end.encode())
        except csv.Error as err:
            raise LoyaltyVerificationError(f"zip member {name!r} is not valid CSV: {err}") from None
    if member_header is None:
        raise LoyaltyVerificationError(f"zip member {name!r} is empty; expected a CSV header row")
    return member_header


def _count_row(row: list[str], name: str, width: int, stats: PartStats) -> bool:
    """Count a data row after checking its width; blank lines are not records."""
    if not row:
        return False
    stats.archive_rows += 1
    if len(row) != width:
        raise LoyaltyVerificationError(
            f"zip member {name!r}, data row {stats.archive_rows}: {len(row)} fields, the header has {width}"
        )
    return True


def _terminated(raw: str, line_end: str) -> str:
    """Make sure a record ends with a line break (the last record of a file may not)."""
    return raw if raw.endswith(("\n", "\r")) else raw + line_end


__all__ = ["ID_COLUMN", "TAIL_WINDOW", "ArchiveLimits", "PartStats", "check_member_name", "write_part"]
