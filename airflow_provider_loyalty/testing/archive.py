r"""Export files: a zip of CSV members holding one batch's rows, written as a stream.

A :class:`zipfile.ZipFile` writes into any non-seekable sink (an HTTP chunked writer, a file on
disk), so memory stays flat for multi-GiB exports, and the bytes are the same whichever sink
receives them. Deterministic: fixed ``ZipInfo`` date 2023-10-01 00:00:00, rows from the
deterministic dataset, so re-downloads are identical.

Each CSV member has the header row of :data:`~airflow_provider_loyalty.testing.data.TRANSACTION_FIELDS`
and its share of the rows (``ArchiveSpec.members`` members split the rows evenly), quoted as
``csv.QUOTE_MINIMAL`` with lines ending in ``\r\n`` (or ``\n``; newlines inside quoted descriptions
are ``\n``), booleans ``true``/``false`` and ``custom_json`` as a JSON string. The
``stray_quotes`` style also writes some unquoted fields with a ``"`` inside (``prod_12 5" screen``,
``prod_7 12"``), exactly as ``csv.reader`` (excel dialect) still reads them as one field.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from dataclasses import dataclass
from typing import Protocol

from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.data import (
    TRANSACTION_FIELDS,
    TransactionStream,
    csv_header,
    transaction_to_csv_row,
)

__all__ = [
    "ArchiveSpec",
    "BatchRows",
    "FillerMembers",
    "ZipSink",
    "csv_line",
    "member_names",
    "rfc3339_shape",
    "write_export_zip",
]

_ZIP_DATE = (2023, 10, 1, 0, 0, 0)
_CSV_FLUSH = 256 * 1024  # characters buffered before they are written to the zip member
_BOM = b"\xef\xbb\xbf"
_LINE_ENDINGS = {"crlf": "\r\n", "lf": "\n"}
_STRAY_COLUMN = TRANSACTION_FIELDS.index("product_eid")
_TIME_COLUMNS = tuple(TRANSACTION_FIELDS.index(name) for name in ("created_at", "activation_date", "expiration_date"))
_FILLER_BLOCK = 64 * 1024


class ZipSink(Protocol):
    """Where a zip is written: any binary writer without ``seek``/``tell``."""

    def write(self, data: bytes, /) -> int:
        """Write ``data``; return its length."""

    def flush(self) -> None:
        """Flush buffered bytes (the zip's end record calls it)."""

    def close(self) -> None:
        """Called by nobody here (the zip does not own the sink); present for ``zipfile``'s typing."""


@dataclass(frozen=True)
class ArchiveSpec:
    """How an export task's zip is laid out (captured from the config when the task is created).

    :param compresslevel: deflate level 0..9.
    :param members: CSV members; the rows are split evenly over them, each with the header.
    :param csv_style: one of :data:`~airflow_provider_loyalty.testing.config.CSV_STYLES`.
    :param csv_bom: start each member with a UTF-8 byte order mark.
    :param line_ending: ``crlf`` or ``lf``.
    :param empty_style: how a batch without rows looks (``header_only``, ``zero_byte_csv``,
        ``no_member``, ``zero_byte_file``: no zip at all; the ``hashed_file`` styles zip a
        header-only member).
    :param member_order: ``name`` (the directory lists the members in name and row order) or
        ``reversed``.
    """

    compresslevel: int = 6
    members: int = 1
    csv_style: str = "standard"
    csv_bom: bool = False
    line_ending: str = "crlf"
    empty_style: str = "header_only"
    member_order: str = "name"

    @classmethod
    def from_config(cls, config: EmulatorConfig) -> ArchiveSpec:
        """Capture the file fields of ``config``.

        :param config: the emulator's configuration.
        """
        return cls(
            compresslevel=config.zip_compresslevel,
            members=config.zip_members,
            csv_style=config.csv_style,
            csv_bom=config.csv_bom,
            line_ending=config.csv_line_ending,
            empty_style=config.empty_export_style,
            member_order=config.zip_member_order,
        )


@dataclass(frozen=True)
class BatchRows:
    """The rows ``lo..hi-1`` of ``stream`` that one export task holds.

    :param stream: the dataset.
    :param lo: first row index.
    :param hi: end row index (exclusive).
    :param stem: member name stem (``Transactions_loyalty_...``).
    """

    stream: TransactionStream
    lo: int
    hi: int
    stem: str

    @property
    def total(self) -> int:
        """Number of rows."""
        return self.hi - self.lo


@dataclass(frozen=True)
class FillerMembers:
    """Extra, highly compressible members appended after the CSV (a zip-bomb shape).

    :param count: how many members.
    :param size: uncompressed bytes per member.
    :param byte: the byte each member repeats.
    """

    count: int
    size: int
    byte: bytes = b"0"


def member_names(stem: str, members: int) -> list[str]:
    """Return the CSV member names of a zip with ``members`` members.

    :param stem: the name stem.
    :param members: member count (1: ``<stem>.csv``; more: ``<stem>_001.csv`` ...).
    """
    if members == 1:
        return [f"{stem}.csv"]
    return [f"{stem}_{k:03d}.csv" for k in range(1, members + 1)]


def write_export_zip(
    sink: ZipSink,
    batch: BatchRows,
    spec: ArchiveSpec,
    *,
    drop_last_row: bool = False,
    filler: FillerMembers | None = None,
) -> int:
    """Stream the batch's zip into ``sink``; return the CSV bytes written (filler excluded).

    :param sink: a non-seekable binary writer.
    :param batch: the rows.
    :param spec: the layout.
    :param drop_last_row: leave out the batch's last row (a short batch: CSV rows < ``total``).
    :param filler: extra compressible members after the CSV members.
    """
    hi = batch.hi - 1 if drop_last_row and batch.total > 0 else batch.hi
    csv_bytes = 0
    if batch.total == 0 and spec.empty_style == "zero_byte_file":
        return 0  # an empty body: no zip at all
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=spec.compresslevel) as archive:
        if batch.total == 0 and spec.empty_style == "no_member":
            pass
        elif batch.total == 0 and spec.empty_style == "zero_byte_csv":
            for name in member_names(batch.stem, spec.members):
                with archive.open(_member_info(name, spec.compresslevel), "w"):
                    pass
        else:
            members = list(zip(member_names(batch.stem, spec.members), _split(batch.lo, hi, spec.members), strict=True))
            for name, (lo, end) in reversed(members) if spec.member_order == "reversed" else members:
                csv_bytes += _write_csv_member(archive, name, batch.stream, lo, end, spec)
        if filler is not None:
            _write_filler(archive, filler)
    return csv_bytes


def _split(lo: int, hi: int, members: int) -> list[tuple[int, int]]:
    base, extra = divmod(max(0, hi - lo), members)
    slices: list[tuple[int, int]] = []
    start = lo
    for k in range(members):
        end = start + base + (1 if k < extra else 0)
        slices.append((start, end))
        start = end
    return slices


def _member_info(name: str, compresslevel: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    try:
        info.compress_level = compresslevel  # type: ignore[attr-defined]  # Python >= 3.13
    except AttributeError:
        info._compresslevel = compresslevel  # type: ignore[attr-defined]
    return info


def _write_csv_member(
    archive: zipfile.ZipFile, name: str, stream: TransactionStream, lo: int, hi: int, spec: ArchiveSpec
) -> int:
    # Unseekable output: ZIP64 must be decided up front from a generous size estimate.
    estimate = 4096 + (hi - lo) * (1024 + stream.row_padding)
    terminator = _LINE_ENDINGS[spec.line_ending]
    stray = spec.csv_style == "stray_quotes"
    shaped_times = spec.csv_style == "rfc3339_shapes"
    reverse = spec.csv_style == "reversed_columns"
    written = 0
    with archive.open(_member_info(name, spec.compresslevel), "w", force_zip64=estimate > zipfile.ZIP64_LIMIT) as out:
        if spec.csv_bom:
            written += out.write(_BOM)
        lines = [csv_line(list(reversed(TRANSACTION_FIELDS)), terminator) if reverse else csv_header(terminator)]
        size = 0
        for index in range(lo, hi):
            cells = transaction_to_csv_row(stream.transaction(index))
            if shaped_times:
                for column in _TIME_COLUMNS:
                    cells[column] = rfc3339_shape(cells[column], index + column)
            stray_text = _stray_quote_text(index) if stray else None
            if reverse:
                cells.reverse()
            if stray_text is None:
                line = csv_line(cells, terminator)
            else:
                cells[_STRAY_COLUMN] += stray_text
                line = csv_line(cells, terminator, unquoted=_STRAY_COLUMN)
            lines.append(line)
            size += len(line)
            if size >= _CSV_FLUSH:
                written += out.write("".join(lines).encode("utf-8"))
                lines.clear()
                size = 0
        written += out.write("".join(lines).encode("utf-8"))
    return written


def _stray_quote_text(index: int) -> str | None:
    """The stray-quote suffix of row ``index``'s ``product_eid``, if it gets one."""
    if index % 3 == 1:
        return ' 5" screen'
    if index % 7 == 2:
        return ' 12"'
    return None


def rfc3339_shape(time: str, variant: int) -> str:
    """``time`` (``YYYY-MM-DDTHH:MM:SSZ``, or empty) in one of the shapes RFC3339 also allows.

    By ``variant % 7``: as it is; lower case; a space for ``T`` and the ``+05:30`` offset (the same
    instant); microseconds after ``.``; a comma fraction of nine digits (the last three zeros);
    the ``-00:00`` offset; the leap second ``2016-12-31T23:59:60Z`` (a different instant: a time
    column with a leap second in it).

    :param time: a time as the emulator writes it.
    :param variant: which shape.
    """
    if len(time) != 20:
        return time
    shape = variant % 7
    if shape == 1:
        return time.lower()
    if shape == 2:
        local = dt.datetime.fromisoformat(time).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30)))
        return local.isoformat(sep=" ")
    if shape == 3:
        return f"{time[:-1]}.{variant % 1_000_000:06d}Z"
    if shape == 4:
        return f"{time[:-1]},{variant % 1_000_000:06d}000Z"
    if shape == 5:
        return f"{time[:-1]}-00:00"
    if shape == 6:
        return "2016-12-31T23:59:60Z"
    return time


def csv_line(cells: list[str], terminator: str, unquoted: int | None = None) -> str:
    r"""One CSV record as ``csv.writer`` writes it with ``QUOTE_MINIMAL`` (excel dialect).

    A cell holding ``"``, ``,``, ``\r`` or ``\n`` is quoted, its quotes doubled. Byte-identical to
    ``csv.writer`` for records of two or more cells (with a ``\n`` terminator ``csv.writer`` leaves a
    lone ``\r`` unquoted; this quotes it), and several times faster on long cells.

    :param cells: the cells.
    :param terminator: the line ending.
    :param unquoted: a cell index written as it is, never quoted (for stray quotes).
    """
    parts = []
    for i, cell in enumerate(cells):
        if i != unquoted and ('"' in cell or "," in cell or "\n" in cell or "\r" in cell):
            cell = '"' + cell.replace('"', '""') + '"'
        parts.append(cell)
    return ",".join(parts) + terminator


def _write_filler(archive: zipfile.ZipFile, filler: FillerMembers) -> None:
    block = filler.byte[:1] * _FILLER_BLOCK
    for k in range(filler.count):
        with archive.open(_member_info(f"filler_{k:04d}.csv", 9), "w") as out:
            left = filler.size
            while left > 0:
                left -= out.write(block[: min(left, _FILLER_BLOCK)])
