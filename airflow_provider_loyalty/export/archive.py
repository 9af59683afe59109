"""Verify one downloaded export batch and turn it into a part.

A batch counts only after its archive proves sound: the zip opens, every member has a safe name,
is stored or deflated and passes its CRC check; every member and the archive as a whole stay under
the size and compression-ratio caps (checked from the zip's directory before anything is
inflated); every CSV member parses exactly as ``csv.reader`` reads it
(:mod:`~airflow_provider_loyalty.export.csv_records`), its rows have the header's width, and the
data rows of all members equal the API's ``total``.

Rows are copied to the part byte for byte as the server wrote them (or converted, for Parquet:
:mod:`~airflow_provider_loyalty.export.part_formats`); the only rows left out are boundary
duplicates — ids already written at the end of the previous batch, found at the start of the
next — which is how the output holds every transaction exactly once whether the API reads
``from_id`` as inclusive or exclusive. Memory stays bounded: a few blocks, the record at hand and
a small window of trailing ids, whatever the batch size.

Empty batches: with ``expected_rows == 0`` a zip with no member, a 0-byte CSV member, or a member
with only its header row are all valid; nothing is written to the part (``PartStats.rows == 0``,
``bytes == 0``), and the caller does not land one.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from airflow_provider_loyalty.exceptions import LoyaltyUnsafeDataError, LoyaltyVerificationError
from airflow_provider_loyalty.export.csv_records import FIELD_SIZE_LIMIT, BatchRecords
from airflow_provider_loyalty.export.inflate import InflateError, open_member
from airflow_provider_loyalty.export.part_formats import check_output_format, open_part_writer, part_suffix
from airflow_provider_loyalty.utils.validation import first_control_character

ID_COLUMN = "transaction_id"
#: How many trailing ids of a batch are remembered to drop boundary duplicates in the next one.
TAIL_WINDOW = 1000
# Members are read in blocks of this size. Memory is a few blocks at a time, and a block of text
# costs up to 4 bytes a character in a str: 256 KiB keeps the peak small at the same speed.
_BLOCK = 256 * 1024
# Compression methods whose inflation zipfile bounds per read (bzip2 and lzma it does not).
_BOUNDED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps that make a zip bomb fail closed instead of filling the disk or the memory.

    Every cap is checked against the zip's directory before anything is inflated; inflation then
    never reads a member past its declared size, so a member that lies about it fails its checks.

    :param max_uncompressed_bytes: largest uncompressed size of one member and of the whole archive.
    :param max_compression_ratio: largest uncompressed/compressed ratio of every member and of the
        archive as a whole (compressed sizes count at most the archive's size on disk).
    :param max_line_bytes: longest physical CSV line verification holds in memory.
    """

    max_uncompressed_bytes: int = 32 * 1024**3
    max_compression_ratio: float = 200.0
    max_line_bytes: int = FIELD_SIZE_LIMIT


@dataclass
class PartStats:
    """What one verified batch contributed: counts, size and digest of the part written.

    :param rows: data rows written to the part.
    :param archive_rows: data rows in the archive (boundary duplicates included).
    :param duplicates_dropped: boundary duplicates left out.
    :param bytes: bytes stored in the part (compressed for ``csv.gz``); 0 when no row was written.
    :param sha256: hex SHA-256 of the stored bytes.
    :param tail_ids: ids of the last rows written, for the next batch's ``skip_ids``.
    :param output_format: the part's format.
    :param columns: the batch's CSV header (``None`` for a batch without a CSV member).
    """

    rows: int = 0
    archive_rows: int = 0
    duplicates_dropped: int = 0
    bytes: int = 0
    sha256: str = ""
    tail_ids: list[str] = field(default_factory=list)
    output_format: str = "csv"
    columns: list[str] | None = None

    @property
    def is_empty(self) -> bool:
        """No row was written (an empty batch, or boundary duplicates only): the part holds nothing
        (``bytes == 0``) and need not be landed."""
        return self.rows == 0

    @property
    def suffix(self) -> str:
        """The part's file name suffix (``csv``, ``csv.gz``, ``parquet``)."""
        return part_suffix(self.output_format)


def check_member_name(name: str) -> None:
    """Refuse archive member names that could escape a directory or hide what they are.

    :param name: a member name from the zip's directory.
    """
    shown = repr(name[:120])
    if not name or first_control_character(name) is not None:
        raise LoyaltyUnsafeDataError(f"zip member name {shown} is empty or contains control characters")
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise LoyaltyUnsafeDataError(f"zip member name {shown} is an absolute or Windows path")
    # "./Transactions.csv" (PHP's ZipArchive::addFile("./x.csv")) names no other place; ".." does.
    if ".." in name.rstrip("/").split("/"):
        raise LoyaltyUnsafeDataError(f"zip member name {shown} contains a '..' segment")


def check_archive_caps(members: list[zipfile.ZipInfo], archive_bytes: int, limits: ArchiveLimits) -> None:
    """Hold every member and the archive as a whole to the size and ratio caps, before inflating.

    A compressed size counts at most ``archive_bytes``: a directory cannot claim more compressed
    data than the file holds to make a ratio look small.

    :param members: the data members.
    :param archive_bytes: the archive's size on disk.
    :param limits: the caps.
    :raises LoyaltyUnsafeDataError: naming the member (or the archive), its size or ratio and the cap.
    """
    total = compressed = 0
    for info in members:
        name = info.filename
        if info.file_size > limits.max_uncompressed_bytes:
            raise LoyaltyUnsafeDataError(
                f"zip member {name!r} expands to {info.file_size} bytes, "
                f"over the cap of {limits.max_uncompressed_bytes} bytes (max_uncompressed_bytes)"
            )
        member_compressed = min(info.compress_size, archive_bytes)
        _check_ratio(f"zip member {name!r}", info.file_size, member_compressed, limits)
        total += info.file_size
        compressed += member_compressed
    if total > limits.max_uncompressed_bytes:
        raise LoyaltyUnsafeDataError(
            f"the archive expands to {total} bytes, over the cap of {limits.max_uncompressed_bytes} bytes "
            "(max_uncompressed_bytes)"
        )
    _check_ratio("the archive as a whole", total, min(compressed, archive_bytes), limits)


def _check_ratio(what: str, size: int, compressed: int, limits: ArchiveLimits) -> None:
    ratio = size / max(compressed, 1)
    if ratio > limits.max_compression_ratio:
        raise LoyaltyUnsafeDataError(
            f"{what} expands {ratio:.0f}x ({size} bytes from {compressed}), over the cap of "
            f"{limits.max_compression_ratio:g}x (max_compression_ratio): refused as a possible zip bomb"
        )


def _is_macos_metadata(name: str) -> bool:
    """``__MACOSX/…``: the resource forks a Mac's archiver adds beside each file; never data."""
    return name.startswith("__MACOSX/")


def _data_members(archive: zipfile.ZipFile, archive_bytes: int, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    entries = archive.infolist()
    for info in entries:
        check_member_name(info.filename)
    members = [info for info in entries if not info.is_dir() and not _is_macos_metadata(info.filename)]
    for info in members:
        if not info.filename.lower().endswith(".csv"):
            raise LoyaltyVerificationError(f"zip member {info.filename!r} is not a .csv file")
        if info.flag_bits & 0x1:
            raise LoyaltyVerificationError(f"zip member {info.filename!r} is encrypted")
        if info.compress_type not in _BOUNDED_METHODS:
            raise LoyaltyUnsafeDataError(
                f"zip member {info.filename!r} uses compression method {info.compress_type}; only stored and "
                "deflated members are read (their inflation stays bounded)"
            )
    check_archive_caps(members, archive_bytes, limits)
    return sorted(members, key=lambda info: _natural_order(info.filename))


def _natural_order(name: str) -> list[str | int]:
    """Sort key of a member name, numbers by value (``_2.csv`` before ``_10.csv``).

    A batch split over several CSV files names them in row order (``…_001.csv``, ``…_002.csv``),
    but nothing fixes the order of the zip's directory; the boundary rows a batch repeats are
    found at its start and end, so the members are read in name order, not directory order.
    """
    return [int(piece) if index % 2 else piece.lower() for index, piece in enumerate(re.split(r"(\d+)", name))]


def write_part(
    archive_path: str,
    part: IO[bytes],
    *,
    expected_rows: int,
    skip_ids: Iterable[str] = frozenset(),
    limits: ArchiveLimits | None = None,
    output_format: str = "csv",
) -> PartStats:
    """Verify a downloaded archive and write its rows to ``part`` in ``output_format``.

    :param archive_path: the downloaded zip on local disk.
    :param part: binary sink of the part; nothing is written to it when no row is.
    :param expected_rows: the API's ``total`` for this batch: data rows the archive must hold.
    :param skip_ids: transaction ids already written at the end of the previous batch.
    :param limits: zip bomb caps.
    :param output_format: ``csv`` (default), ``csv.gz`` or ``parquet`` (see
        :mod:`~airflow_provider_loyalty.export.part_formats`).
    :return: counts, bytes, sha256 of the part and the trailing ids for the next batch.
    :raises LoyaltyVerificationError: the batch failed verification.
    :raises LoyaltyUnsafeDataError: the archive was refused for safety (names, caps).
    :raises LoyaltyValidationError: an unknown ``output_format``, or ``parquet`` without pyarrow.
    """
    output_format = check_output_format(output_format)
    limits = limits or ArchiveLimits()
    writer = open_part_writer(output_format, part)
    records = BatchRecords(
        writer,
        id_column=ID_COLUMN,
        skip_ids=skip_ids,
        tail_window=TAIL_WINDOW,
        block_size=_BLOCK,
        max_line_bytes=limits.max_line_bytes,
    )
    finished = False
    try:
        _read_archive(archive_path, records, limits)
        _check_row_count(records, expected_rows)
        writer.finish()
        finished = True
    finally:
        if not finished:
            writer.discard()
    return PartStats(
        rows=records.rows,
        archive_rows=records.archive_rows,
        duplicates_dropped=records.duplicates_dropped,
        bytes=writer.bytes,
        sha256=writer.sha256,
        tail_ids=list(records.tail),
        output_format=output_format,
        columns=records.header,
    )


def _read_archive(archive_path: str, records: BatchRecords, limits: ArchiveLimits) -> None:
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for info in _data_members(archive, os.path.getsize(archive_path), limits):
                with open_member(archive, info) as member:
                    try:
                        inflated = records.read_member(member, info.filename)
                    except LoyaltyVerificationError as bad_csv:
                        _raise_if_damaged(member, bad_csv)
                        raise
                if inflated != info.file_size:
                    raise LoyaltyVerificationError(
                        f"the downloaded archive is corrupt: zip member {info.filename!r} inflates to "
                        f"{inflated} bytes, its directory says {info.file_size}"
                    )
    except (zipfile.BadZipFile, zlib.error, InflateError) as err:
        raise LoyaltyVerificationError(f"the downloaded archive is corrupt: {err}") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError) as err:
        raise LoyaltyVerificationError(f"the downloaded archive cannot be read: {err}") from None


def _raise_if_damaged(member: IO[bytes], bad_csv: LoyaltyVerificationError) -> None:
    """A member whose CSV failed: read it to its end, where the zip checks its CRC-32. Damaged bytes
    (a download corrupted in transit) read as malformed CSV first; say what they are."""
    try:
        while member.read(_BLOCK):
            pass
    except (zipfile.BadZipFile, zlib.error, InflateError) as damage:
        raise LoyaltyVerificationError(
            f"the downloaded archive is corrupt: {damage} (its damaged bytes read as malformed CSV: {bad_csv})"
        ) from None


def _check_row_count(records: BatchRecords, expected_rows: int) -> None:
    if records.archive_rows == expected_rows:
        return
    if records.header is None:
        raise LoyaltyVerificationError(
            f"row count mismatch: the archive holds no CSV header and no rows (no member, or only empty "
            f"members); the API's total says {expected_rows}"
        )
    raise LoyaltyVerificationError(
        f"row count mismatch: the archive holds {records.archive_rows} data rows; the API's total says {expected_rows}"
    )


__all__ = [
    "ID_COLUMN",
    "TAIL_WINDOW",
    "ArchiveLimits",
    "PartStats",
    "check_archive_caps",
    "check_member_name",
    "write_part",
]
