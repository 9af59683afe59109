"""What one stored part measures: its bytes, SHA-256 and data rows, read once as a stream.

Only for internal usage of :mod:`airflow_provider_loyalty.verify`. :meta private:

Rows are counted the way the export wrote them: CSV records of ``csv.reader`` (excel dialect)
minus the header row, blank lines not counted (block by block at C speed, ``csv.reader`` itself
where a block is unusual); ``csv.gz`` the same after gunzip (ISA-L's); Parquet from the
file's metadata (needs pyarrow). Bytes and SHA-256 are of the stored object (compressed for
``csv.gz``). Memory stays bounded whatever the part's size.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from isal import igzip

from airflow_provider_loyalty.export.csv_records import FIELD_SIZE_LIMIT as FIELD_LIMIT  # also raises csv's limit
from airflow_provider_loyalty.export.csv_records import after_last_line_break, records_in_block
from airflow_provider_loyalty.export.inflate import InflateError
from airflow_provider_loyalty.verify_storage import Store

# The export verifies batches with this field limit (export/archive.py); rows are counted alike.
_BUFFER_BYTES = 1024 * 1024
_READ_BYTES = 1024 * 1024  # counted block by block (see _count_csv_rows)
_MAX_HELD = 64 * 1024  # a record open at the end of a block waits for the next one up to this size
NO_PYARROW = "rows of parquet parts cannot be checked: pyarrow is not installed (the [parquet] extra)"


@dataclass(frozen=True)
class PartMeasure:
    """A stored part as read.

    :param bytes: stored bytes.
    :param sha256: hex SHA-256 of the stored bytes.
    :param rows: data rows, or ``None`` when they could not be counted.
    :param unreadable: why the part does not parse as its format (``None``: it does).
    :param rows_unchecked: why rows could not be counted although the part was read (no pyarrow).
    """

    bytes: int
    sha256: str
    rows: int | None
    unreadable: str | None = None
    rows_unchecked: str | None = None


class _Unreadable(Exception):
    """A part that does not parse as its format."""


def measure_part(store: Store, path: str, output_format: str) -> PartMeasure:
    """Read one part to the end; raises :class:`~airflow_provider_loyalty.verify_storage.StorageError`.

    :param store: where the part is stored.
    :param path: the part's path in ``store``.
    :param output_format: ``csv``, ``csv.gz`` or ``parquet``.
    """
    hashing = _HashingReader(store.iter_chunks(path))
    rows: int | None = None
    unreadable = rows_unchecked = None
    try:
        if output_format == "parquet":
            hashing.drain()
            rows, rows_unchecked = _parquet_rows(store, path)
        elif output_format == "csv.gz":
            gunzipped = igzip.GzipFile(fileobj=io.BufferedReader(hashing, _BUFFER_BYTES), mode="rb")
            rows = _count_csv_rows(cast("IO[bytes]", gunzipped))
        else:
            rows = _count_csv_rows(io.BufferedReader(hashing, _BUFFER_BYTES))
    except (csv.Error, EOFError, gzip.BadGzipFile, zlib.error, InflateError, _Unreadable) as error:
        unreadable = str(error).splitlines()[0] if str(error) else type(error).__name__
    hashing.drain()
    return PartMeasure(hashing.size, hashing.sha256.hexdigest(), rows, unreadable, rows_unchecked)


class _HashingReader(io.RawIOBase):
    """A raw stream over chunks that hashes and counts every byte as it passes, read or drained."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes | None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self.sha256.update(chunk)
            self.size += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._next_chunk()
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def drain(self) -> None:
        """Hash the rest of the object without keeping it."""
        self._pending = memoryview(b"")
        while self._next_chunk() is not None:
            pass


def _count_csv_rows(binary: IO[bytes]) -> int:
    """Records of ``csv.reader`` (excel dialect) minus the header; blank lines are not records.

    Read in blocks cut after their last line break, each counted by
    :func:`~airflow_provider_loyalty.export.csv_records.records_in_block` (a few C-speed passes, the
    same records as ``csv.reader``). From the first block it does not count (a NUL), or once a
    record held over for the next block grows past :data:`_MAX_HELD`, the rest goes to
    ``csv.reader`` itself, which then also gives the errors.
    """
    records = 0
    held = b""
    while chunk := binary.read(_READ_BYTES):
        data = held + chunk if held else chunk
        cut = after_last_line_break(data)
        counted = records_in_block(data[:cut]) if cut else (0, 0)
        if counted is None:
            held = data
            break
        found, end = counted
        records += found
        held = data[end:]
        if len(held) > _MAX_HELD:
            break
    if held:  # from here on csv.reader reads: what is held, then the rest of the stream
        records += _reader_records(io.BufferedReader(_Prefixed(held, binary), _BUFFER_BYTES))
    return max(records - 1, 0)


def _reader_records(binary: IO[bytes]) -> int:
    """Non-blank records ``csv.reader`` reads from ``binary`` (UTF-8, invalid bytes replaced)."""
    text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
    records = sum(1 for record in csv.reader(_bounded_lines(text)) if record)
    text.detach()
    return records


class _Prefixed(io.RawIOBase):
    """``prefix``, then the rest of ``stream``: where counting block by block stopped, for ``csv.reader``."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _bounded_lines(text: io.TextIOWrapper) -> Iterator[str]:
    """Lines of at most the field limit: a file without line ends cannot fill the memory."""
    while line := text.readline(FIELD_LIMIT + 2):
        if len(line) > FIELD_LIMIT and not line.endswith(("\n", "\r")):
            raise _Unreadable(f"a line longer than {FIELD_LIMIT:,} characters")
        yield line


def _parquet_rows(store: Store, path: str) -> tuple[int | None, str | None]:
    """The row count in a Parquet file's footer (reads the footer only), or why it is unknown."""
    try:
        import pyarrow.parquet as pq
        from pyarrow import ArrowException
    except ImportError:
        return None, NO_PYARROW
    with store.open_random_access(path) as handle:
        try:
            return int(pq.ParquetFile(handle).metadata.num_rows), None
        except (ArrowException, OSError, ValueError) as error:
            raise _Unreadable(f"not a Parquet file ({error})") from None
