"""The formats a verified batch can be stored in: ``csv``, ``csv.gz`` and ``parquet``.

Only for internal usage of the export pipeline. :meta private:

* ``csv`` (default): the header, then the rows byte for byte as the server wrote them.
* ``csv.gz``: the same bytes through gzip (ISA-L's, streamed: ``isal.igzip``, a standard gzip
  stream any gunzip reads, at about four times zlib's speed and a little smaller at level 1), with a
  reproducible header (no file name, modification time 0), so the same batch always gives the same
  stored bytes.
* ``parquet`` (the ``[parquet]`` extra, pyarrow): one column per header field, typed where the
  account transactions endpoint documents the field (see :data:`PARQUET_TYPES`), string
  otherwise; written in row groups of at most :data:`ROW_GROUP_ROWS` rows, so memory stays flat.

A writer hashes and counts the bytes it stores: ``bytes`` and ``sha256`` are always those of the
stored object (the compressed bytes for ``csv.gz``). A writer stores nothing until its first row:
a batch without rows leaves the part empty (0 bytes), and the caller need not land it.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from typing import IO, TYPE_CHECKING, Any

from isal import igzip

from airflow_provider_loyalty.exceptions import LoyaltyOutputFormatError, LoyaltyValidationError

if TYPE_CHECKING:
    import pyarrow as pa

#: The values of ``output_format``, the default first.
OUTPUT_FORMATS: tuple[str, ...] = ("csv", "csv.gz", "parquet")
#: gzip level of ``csv.gz`` parts (ISA-L's levels: 0 to 3). Level 1 stores a little less than
#: the API's zips hold (zlib's level 1; issue 18 asks for at most 1.5x) at about four times zlib's
#: level 1 speed on the API's CSV.
GZIP_LEVEL = 1
#: Largest row group of a Parquet part, in rows; groups also close at :data:`ROW_GROUP_BYTES`.
ROW_GROUP_ROWS = 64 * 1024
#: Largest row group of a Parquet part, in Arrow bytes held before it is written.
ROW_GROUP_BYTES = 32 * 1024 * 1024
PARQUET_INSTALL_HINT = "output_format='parquet' needs pyarrow: pip install 'airflow-provider-loyalty[parquet]'"

#: Parquet column types of the transaction fields (account transactions endpoint); other columns
#: are strings. ``amount`` and the balances stay strings: the API sends them as decimal text of no
#: documented scale, and a string keeps every digit as sent where a fixed-scale decimal would have
#: to guess a scale and could round or refuse values. Timestamps are RFC3339 times read into UTC
#: as ``timestamp[us, UTC]``: any fraction of a second the API sends is kept to the microsecond
#: (digits past the sixth must be zeros), and the other shapes RFC3339 allows are read as
#: :mod:`~airflow_provider_loyalty.utils.periods` reads them (``t``/``z`` in lower case, a space
#: for the ``T``, a comma before the fraction, ``:60`` for a leap second, read as ``:59``).
#: Empty fields of non-string columns are nulls.
PARQUET_TYPES: dict[str, str] = {
    "promo_iid": "int64",
    "source_iid": "int64",
    "source_subiid": "int64",
    "created_at": "timestamp",
    "activation_date": "timestamp",
    "expiration_date": "timestamp",
    "is_temp": "bool",
    "canceled": "bool",
}
#: An integer as the API writes one: decimal digits, an optional minus sign.
_DECIMAL_INTEGER = r"^-?[0-9]+$"
_TYPE_HINTS = {
    "int64": "an integer",
    "timestamp": "an RFC3339 time with a zone (to the microsecond)",
    "bool": "true or false",
}


def check_output_format(output_format: object, *, need_dependencies: bool = True) -> str:
    """Validate ``output_format``; for ``parquet`` also that pyarrow can be imported.

    :param output_format: ``csv``, ``csv.gz`` or ``parquet``.
    :param need_dependencies: also check that the format's optional dependency is installed.
    :raises LoyaltyValidationError: an unknown format, or ``parquet`` without pyarrow.
    """
    if not isinstance(output_format, str) or output_format not in OUTPUT_FORMATS:
        choices = ", ".join(repr(name) for name in OUTPUT_FORMATS)
        raise LoyaltyValidationError("output_format", f"expected one of {choices}, got {output_format!r}")
    if output_format == "parquet" and need_dependencies:
        _pyarrow()
    return output_format


def part_suffix(output_format: str) -> str:
    """The file name suffix of a part in ``output_format``: ``part-00000.<suffix>``.

    :param output_format: ``csv``, ``csv.gz`` or ``parquet``.
    """
    return check_output_format(output_format, need_dependencies=False)


def open_part_writer(output_format: str, sink: IO[bytes]) -> PartWriter:
    """A writer of one part in ``output_format`` to the binary ``sink`` (nothing is written yet).

    :param output_format: ``csv``, ``csv.gz`` or ``parquet``.
    :param sink: where the stored bytes go.
    """
    output_format = check_output_format(output_format)
    if output_format == "csv.gz":
        return GzipCsvPartWriter(sink)
    if output_format == "parquet":
        return ParquetPartWriter(sink)
    return CsvPartWriter(sink)


class HashingSink:
    """A binary sink that counts and hashes every byte written through it.

    :param sink: the underlying binary sink.
    """

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._digest = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Store ``data``; return its length.

        :param data: bytes to store.
        """
        self._digest.update(data)
        self._sink.write(data)
        size = memoryview(data).nbytes
        self.bytes += size
        return size

    def tell(self) -> int:
        """Bytes written so far."""
        return self.bytes

    def flush(self) -> None:
        """Flush the underlying sink if it buffers."""
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def writable(self) -> bool:
        """Always writable."""
        return True

    def hexdigest(self) -> str:
        """SHA-256 of the bytes written so far."""
        return self._digest.hexdigest()


class PartWriter(ABC):
    """Writes one part; see the module docstring. Used by the batch verification.

    :param sink: where the stored bytes go.
    """

    #: True: the writer wants parsed rows; False: raw CSV bytes.
    takes_rows = False

    def __init__(self, sink: IO[bytes]) -> None:
        self.stored = HashingSink(sink)

    @abstractmethod
    def start(self, header: list[str], raw_header: bytes) -> None:
        """Begin the part with the batch's header; called once, just before the first row.

        :param header: the header's fields.
        :param raw_header: the header record as the server wrote it, ending with a line break.
        """

    def write_raw(self, data: bytes) -> None:
        """Append whole CSV records, as the server wrote them.

        :param data: raw CSV bytes.
        """
        raise NotImplementedError

    def write_rows(self, rows: list[list[str]]) -> None:
        """Append parsed data rows.

        :param rows: rows of the header's width.
        """
        raise NotImplementedError

    @abstractmethod
    def finish(self) -> None:
        """Complete the part (trailers, footers); nothing is stored after this."""

    def discard(self) -> None:  # noqa: B027 - a no-op unless the format holds resources
        """Give up a part that failed verification, releasing what the writer holds."""

    @property
    def bytes(self) -> int:
        """Bytes stored so far."""
        return self.stored.bytes

    @property
    def sha256(self) -> str:
        """SHA-256 of the bytes stored so far."""
        return self.stored.hexdigest()


class CsvPartWriter(PartWriter):
    """``csv``: the header and the rows exactly as the server wrote them."""

    def start(self, header: list[str], raw_header: bytes) -> None:
        """Write the header record.

        :param header: the header's fields.
        :param raw_header: the header record as the server wrote it.
        """
        self.stored.write(raw_header)

    def write_raw(self, data: bytes) -> None:
        """Append raw CSV records.

        :param data: raw CSV bytes.
        """
        self.stored.write(data)

    def finish(self) -> None:
        """Nothing to complete for plain CSV."""


class GzipCsvPartWriter(PartWriter):
    """``csv.gz``: the ``csv`` part's bytes through gzip, reproducibly (no name, mtime 0)."""

    def __init__(self, sink: IO[bytes]) -> None:
        super().__init__(sink)
        self._gzip: igzip.GzipFile | None = None

    def start(self, header: list[str], raw_header: bytes) -> None:
        """Open the gzip stream and write the header record.

        :param header: the header's fields.
        :param raw_header: the header record as the server wrote it.
        """
        self._gzip = igzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=self.stored, mtime=0)
        self._gzip.write(raw_header)

    def write_raw(self, data: bytes) -> None:
        """Compress and append raw CSV records.

        :param data: raw CSV bytes.
        """
        assert self._gzip is not None
        self._gzip.write(data)

    def finish(self) -> None:
        """Write the gzip trailer (when anything was written)."""
        if self._gzip is not None:
            self._gzip.close()  # leaves the sink open
            self._gzip = None

    def discard(self) -> None:
        """Drop the compressor without a trailer."""
        self._gzip = None


class ParquetPartWriter(PartWriter):
    """``parquet``: typed columns, row groups of at most :data:`ROW_GROUP_ROWS` rows."""

    takes_rows = True

    def __init__(self, sink: IO[bytes]) -> None:
        super().__init__(sink)
        self._pa = _pyarrow()
        self._schema: pa.Schema | None = None
        self._writer: Any = None
        self._batches: list[pa.RecordBatch] = []
        self._held_rows = self._held_bytes = 0

    def start(self, header: list[str], raw_header: bytes) -> None:
        """Build the schema from the header and open the Parquet writer.

        :param header: the header's fields.
        :param raw_header: not used.
        """
        import pyarrow.parquet as pq

        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:  # Arrow writes such a file, but no reader takes it (pq.read_table refuses)
            raise LoyaltyOutputFormatError(
                f"the batch's CSV header names the column(s) {', '.join(repr(name[:60]) for name in repeated[:5])} "
                "more than once; a Parquet part needs one name per column. output_format='csv' keeps the "
                "header as sent"
            )
        pa = self._pa
        types = {"int64": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC"), "bool": pa.bool_()}
        self._schema = pa.schema(
            [pa.field(name, types.get(PARQUET_TYPES.get(name, ""), pa.string())) for name in header]
        )
        self._writer = pq.ParquetWriter(self.stored, self._schema)

    def write_rows(self, rows: list[list[str]]) -> None:
        """Convert rows to typed columns; write a row group when enough are held.

        :param rows: rows of the header's width.
        """
        assert self._schema is not None
        pa = self._pa
        columns = [self._column(index, values) for index, values in enumerate(zip(*rows, strict=True))]
        batch = pa.RecordBatch.from_arrays(columns, schema=self._schema)
        if self._held_rows + batch.num_rows > ROW_GROUP_ROWS:
            self._write_row_group()
        self._batches.append(batch)
        self._held_rows += batch.num_rows
        self._held_bytes += batch.nbytes
        if self._held_rows >= ROW_GROUP_ROWS or self._held_bytes >= ROW_GROUP_BYTES:
            self._write_row_group()

    def _column(self, index: int, values: tuple[str, ...]) -> pa.Array:
        pa = self._pa
        field = self._schema.field(index)  # type: ignore[union-attr]
        strings = pa.array(values, pa.string())
        if field.type == pa.string():
            return strings
        import pyarrow.compute as pc

        nullable = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
        if PARQUET_TYPES[field.name] == "timestamp":
            nullable = _arrow_readable_times(pc, nullable)
        try:
            if PARQUET_TYPES[field.name] == "int64" and pc.all(
                pc.match_substring_regex(nullable, _DECIMAL_INTEGER), skip_nulls=True
            ).as_py() not in (True, None):
                raise pa.ArrowInvalid("not a decimal integer")  # Arrow's cast also reads "0x10" as 16
            return pc.cast(nullable, field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = next(value for value in values if value and not _parses(pa, value, field.type))
            raise LoyaltyOutputFormatError(
                f"parquet column {field.name!r} expects {_TYPE_HINTS[PARQUET_TYPES[field.name]]} "
                f"(or an empty field), got {bad[:80]!r}; output_format='csv' keeps such values as sent"
            ) from None

    def _write_row_group(self) -> None:
        if self._batches:
            table = self._pa.Table.from_batches(self._batches, schema=self._schema)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            self._batches = []
            self._held_rows = self._held_bytes = 0

    def finish(self) -> None:
        """Write the last row group and the footer (when anything was written)."""
        if self._writer is not None:
            self._write_row_group()
            self._writer.close()
            self._writer = None

    def discard(self) -> None:
        """Drop the held rows and the writer without a footer."""
        self._batches = []
        self._writer = None


#: RFC3339 shapes Arrow's parser does not take, rewritten to ones it does (RE2 patterns, in order):
#: a leap second is the second before it, a comma fraction a dot one, and zeros past the sixth
#: digit of a fraction (Arrow's microseconds) are dropped; other digits there stay and are refused.
_TIME_REWRITES = (
    (r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d):60", r"\1:59"),
    (r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d),", r"\1."),
    (r"^(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\.\d{6})0+(\D|$)", r"\1\2"),
)


def _arrow_readable_times(pc: Any, times: Any) -> Any:
    """RFC3339 times in the shapes Arrow's string-to-timestamp cast reads (upper case first)."""
    times = pc.utf8_upper(times)
    for pattern, replacement in _TIME_REWRITES:
        times = pc.replace_substring_regex(times, pattern=pattern, replacement=replacement)
    return times


def _parses(pa: Any, value: str, arrow_type: Any) -> bool:
    import pyarrow.compute as pc

    if pa.types.is_integer(arrow_type) and re.fullmatch(_DECIMAL_INTEGER, value) is None:
        return False
    try:
        strings = pa.array([value], pa.string())
        if pa.types.is_timestamp(arrow_type):
            strings = _arrow_readable_times(pc, strings)
        pc.cast(strings, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # the writer needs it: fail here, not mid-batch
    except ImportError:
        raise LoyaltyValidationError("output_format", PARQUET_INSTALL_HINT) from None
    return pyarrow


__all__ = [
    "GZIP_LEVEL",
    "OUTPUT_FORMATS",
    "PARQUET_TYPES",
    "ROW_GROUP_ROWS",
    "CsvPartWriter",
    "GzipCsvPartWriter",
    "HashingSink",
    "ParquetPartWriter",
    "PartWriter",
    "check_output_format",
    "open_part_writer",
    "part_suffix",
]
