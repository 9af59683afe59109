"""Parts in csv, csv.gz and parquet: exact read-back, digests of the stored bytes, types, memory."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import sys
import tracemalloc
import zipfile
from decimal import Decimal

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyOutputFormatError, LoyaltyValidationError
from airflow_provider_loyalty.export import archive, csv_records, part_formats
from airflow_provider_loyalty.export.part_formats import PARQUET_TYPES, check_output_format, part_suffix

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MiB = 1024 * 1024
FIELDS = [  # the account transactions endpoint's fields, in its order
    *("transaction_id", "transaction_eid", "created_at", "transaction_type", "amount", "balance_before"),
    *("balance_after", "promo_iid", "promo_eid", "description", "activation_date", "expiration_date"),
    *("source_type", "source_iid", "source_sid", "source_subiid", "is_temp", "custom_json", "product_eid"),
    *("sku_eid", "canceled"),
]


def _row(index: int, *, empty: bool = False) -> list[str]:
    values = {
        "transaction_id": f"00000000-{index:04x}-4000-8000-{index:012x}",
        "transaction_eid": f"trans_{index}",
        "created_at": "2023-09-01T12:34:56Z",
        "transaction_type": "accrual",
        "amount": "100.10" if index % 2 else "-0.5",
        "balance_before": "500.5",
        "balance_after": "600.6",
        "promo_iid": str(index),
        "promo_eid": f"promo_{index}",
        "description": 'a "quoted", two\nline description' if index % 3 == 0 else "plain",
        "activation_date": "2023-09-01T15:34:56+03:00",
        "expiration_date": "2023-12-31T23:59:59Z",
        "source_type": "order",
        "source_iid": "789",
        "source_sid": "order_123",
        "source_subiid": "1",
        "is_temp": "false" if index % 2 else "true",
        "custom_json": '{"key":"value"}',
        "product_eid": 'prod 5" screen',
        "sku_eid": "",
        "canceled": "false",
    }
    if empty:
        for name in ("promo_iid", "activation_date", "is_temp", "amount", "description"):
            values[name] = ""
    return [values[name] for name in FIELDS]


def _csv(rows: int, extra_column: bool = False) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS + (["merchant_note"] if extra_column else []))
    for index in range(rows):
        writer.writerow(_row(index, empty=index % 5 == 4) + ([f"note {index}"] if extra_column else []))
    return buffer.getvalue().encode("utf-8")


def _zip(tmp_path, data: bytes, name: str = "batch.zip") -> str:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        out.writestr("t.csv", data)
    return str(path)


def _ids(data: bytes) -> list[str]:
    return [row[0] for row in csv.reader(io.StringIO(data.decode(), newline="")) if row][1:]


def test_output_formats_and_suffixes():
    assert [part_suffix(name) for name in ("csv", "csv.gz", "parquet")] == ["csv", "csv.gz", "parquet"]
    for bad in ("CSV", "json", "", None, "csv.bz2"):
        with pytest.raises(LoyaltyValidationError, match=r"output_format: expected one of 'csv', 'csv\.gz', 'parquet'"):
            check_output_format(bad)
    stats = archive.PartStats(output_format="csv.gz")
    assert stats.suffix == "csv.gz"


def test_csv_part_is_the_servers_bytes(tmp_path):
    data = _csv(50)
    part = io.BytesIO()
    stats = archive.write_part(_zip(tmp_path, data), part, expected_rows=50)
    assert part.getvalue() == data
    assert (stats.bytes, stats.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_csv_gz_part_is_the_csv_part_gzipped_reproducibly(tmp_path):
    data = _csv(3000)
    path = _zip(tmp_path, data)
    stored = io.BytesIO()
    stats = archive.write_part(path, stored, expected_rows=3000, skip_ids={_ids(data)[0]}, output_format="csv.gz")
    blob = stored.getvalue()
    plain = io.BytesIO()
    archive.write_part(path, plain, expected_rows=3000, skip_ids={_ids(data)[0]})
    assert gzip.decompress(blob) == plain.getvalue()
    assert set(_ids(gzip.decompress(blob))) == set(_ids(data)[1:])  # the exact id set
    assert (stats.rows, stats.bytes, stats.sha256) == (2999, len(blob), hashlib.sha256(blob).hexdigest())
    assert stats.bytes < len(data) // 3
    # gzip header: magic, deflate, no flags (no file name), mtime 0.
    assert blob[:4] == b"\x1f\x8b\x08\x00" and blob[4:8] == b"\x00\x00\x00\x00"
    again = io.BytesIO()
    archive.write_part(path, again, expected_rows=3000, skip_ids={_ids(data)[0]}, output_format="csv.gz")
    assert again.getvalue() == blob


def _read_parquet(blob: bytes):
    return pq.ParquetFile(io.BytesIO(blob))


def test_parquet_part_has_typed_columns_and_the_exact_rows(tmp_path):
    data = _csv(1000, extra_column=True)
    stored = io.BytesIO()
    stats = archive.write_part(_zip(tmp_path, data), stored, expected_rows=1000, output_format="parquet")
    blob = stored.getvalue()
    assert (stats.rows, stats.bytes, stats.sha256) == (1000, len(blob), hashlib.sha256(blob).hexdigest())
    table = _read_parquet(blob).read()
    assert table.column("transaction_id").to_pylist() == _ids(data)
    types = {field.name: str(field.type) for field in table.schema}
    assert types["promo_iid"] == types["source_iid"] == types["source_subiid"] == "int64"
    # microseconds: any fraction the API sends is kept
    assert types["created_at"] == types["activation_date"] == types["expiration_date"] == "timestamp[us, tz=UTC]"
    assert types["is_temp"] == types["canceled"] == "bool"
    for name in (
        "transaction_id",
        "amount",
        "balance_before",
        "balance_after",
        "description",
        "custom_json",
        "merchant_note",
    ):
        assert types[name] == "string", name
    assert set(PARQUET_TYPES) <= set(types)
    first = table.slice(0, 1).to_pylist()[0]
    assert (first["promo_iid"], first["is_temp"], first["amount"], first["product_eid"]) == (
        0,
        True,
        "-0.5",
        'prod 5" screen',
    )
    assert first["activation_date"].isoformat() == "2023-09-01T12:34:56+00:00"  # +03:00 read in UTC
    assert first["description"] == 'a "quoted", two\nline description'
    assert Decimal(table.column("amount")[1].as_py()) == Decimal("100.10")  # amounts exact, as sent
    empty = table.slice(4, 1).to_pylist()[0]
    assert (empty["promo_iid"], empty["activation_date"], empty["is_temp"]) == (None, None, None)
    assert (empty["amount"], empty["description"], empty["sku_eid"]) == ("", "", "")  # strings stay strings


def test_parquet_is_written_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(part_formats, "ROW_GROUP_ROWS", 3000)
    data = _csv(10_000)
    stored = io.BytesIO()
    archive.write_part(_zip(tmp_path, data), stored, expected_rows=10_000, output_format="parquet")
    metadata = _read_parquet(stored.getvalue()).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sum(sizes) == 10_000 and max(sizes) <= 3000 and len(sizes) >= 4


@pytest.mark.parametrize(
    "bad",
    [b"2023-12-31 end of year", b"2023-12-31T23:59:59.1234567Z", b"2023-12-31T23:59:61Z", b"2023-12-31T23:59:59"],
    ids=["words", "past-microseconds", "second-61", "no-zone"],
)
def test_a_value_that_does_not_fit_its_parquet_type_is_an_output_format_error(tmp_path, bad):
    data = _csv(3).replace(b"2023-12-31T23:59:59Z", bad, 1)
    with pytest.raises(
        LoyaltyOutputFormatError, match="parquet column 'expiration_date' expects an RFC3339 time"
    ) as caught:
        archive.write_part(_zip(tmp_path, data), io.BytesIO(), expected_rows=3, output_format="parquet")
    assert repr(bad.decode())[:30] in str(caught.value)


def test_parquet_times_keep_microseconds_and_read_rfc3339_variants(tmp_path):
    shapes = {
        "2023-12-31T23:59:59.000001Z": "2023-12-31T23:59:59.000001+00:00",
        "2023-12-31t23:59:59.5z": "2023-12-31T23:59:59.500000+00:00",
        "2024-01-01 05:29:59,25+05:30": "2023-12-31T23:59:59.250000+00:00",
        "2016-12-31T23:59:60Z": "2016-12-31T23:59:59+00:00",
        "2016-12-31T23:59:60.5Z": "2016-12-31T23:59:59.500000+00:00",
        "2023-12-31T23:59:59.123456000Z": "2023-12-31T23:59:59.123456+00:00",
        "9999-12-31T23:59:59Z": "9999-12-31T23:59:59+00:00",
    }
    data = _csv(len(shapes))
    for shape in shapes:
        cell = f'"{shape}"' if "," in shape else shape
        data = data.replace(b"2023-12-31T23:59:59Z", cell.encode(), 1)
    stored = io.BytesIO()
    archive.write_part(_zip(tmp_path, data), stored, expected_rows=len(shapes), output_format="parquet")
    table = _read_parquet(stored.getvalue()).read()
    assert str(table.schema.field("expiration_date").type) == "timestamp[us, tz=UTC]"
    read = [value.isoformat() for value in table.column("expiration_date").to_pylist()]
    assert read == list(shapes.values())


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(LoyaltyValidationError, match=r"output_format: .*airflow-provider-loyalty\[parquet\]"):
        archive.write_part(_zip(tmp_path, _csv(1)), io.BytesIO(), expected_rows=1, output_format="parquet")
    assert check_output_format("parquet", need_dependencies=False) == "parquet"


def _warm_up(tmp_path) -> None:
    """Write a small part of each format first: what the first part imports (``pyarrow.compute``,
    about a MiB) is not memory the batch holds, and a test run alone must measure the same."""
    for output_format in ("csv.gz", "parquet"):
        archive.write_part(
            _zip(tmp_path, _csv(10), "warm.zip"), io.BytesIO(), expected_rows=10, output_format=output_format
        )


def _assert_flat_memory(tmp_path, path: str, rows: int, output_format: str) -> None:
    """Write the part of ``path`` (over 9 MiB of CSV) into ``tmp_path / "part"``; Python's and Arrow's
    peak memory meanwhile must each stay under 4 MiB."""
    _warm_up(tmp_path)
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        with (tmp_path / "part").open("wb") as out:
            stats = archive.write_part(path, out, expected_rows=rows, output_format=output_format)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    csv_bytes = zipfile.ZipFile(path).infolist()[0].file_size
    assert stats.rows == rows and csv_bytes > 9 * MiB
    assert peak < 4 * MiB, f"python peak {peak / MiB:.1f} MiB for {csv_bytes / MiB:.1f} MiB of CSV"
    assert pool.max_memory() < 4 * MiB, f"arrow peak {pool.max_memory() / MiB:.1f} MiB for {csv_bytes / MiB:.1f} MiB"


@pytest.mark.parametrize("output_format", ["csv.gz", "parquet"])
def test_memory_stays_flat_for_a_large_batch(tmp_path, monkeypatch, output_format):
    """Python and Arrow memory bounded by the row group, not by the batch."""
    monkeypatch.setattr(part_formats, "ROW_GROUP_ROWS", 2048)
    monkeypatch.setattr(part_formats, "ROW_GROUP_BYTES", 1 * MiB)
    monkeypatch.setattr(csv_records, "_ROWS_PER_CALL", 1024)
    rows = 40_000
    data = _csv(rows)
    path = _zip(tmp_path, data)
    del data
    _assert_flat_memory(tmp_path, path, rows, output_format)


def test_memory_stays_flat_for_long_rows(tmp_path, monkeypatch):
    """Rows went to the parquet writer 4,096 at a time whatever their size: 1,500 rows of 64 KiB
    took +533 MiB (probe of 2026-12-05). They now go at most ``_ROW_CHARS_PER_CALL`` at a time."""
    monkeypatch.setattr(part_formats, "ROW_GROUP_BYTES", 1 * MiB)
    monkeypatch.setattr(csv_records, "_ROW_CHARS_PER_CALL", 512 * 1024)
    rows, text = 600, "long description " * 1000  # 17 KiB a row
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for index in range(rows):
        writer.writerow(
            [text if name == "description" else value for name, value in zip(FIELDS, _row(index), strict=True)]
        )
    path = _zip(tmp_path, buffer.getvalue().encode("utf-8"))
    del buffer
    _assert_flat_memory(tmp_path, path, rows, "parquet")
    table = pq.read_table(tmp_path / "part")
    assert table.num_rows == rows and set(table.column("description").to_pylist()) == {text}


@pytest.mark.parametrize("bad", ["0x10", "0X1F", "0b101", "+5", " 7", "1e3"])
def test_an_integer_column_takes_decimal_digits_only(tmp_path, bad):
    """Arrow's cast read ``0x10`` as 16: a value the API never sends silently became another number."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for index in range(3):
        row = _row(index)
        row[FIELDS.index("promo_iid")] = bad if index == 1 else str(index)
        writer.writerow(row)
    data = buffer.getvalue().encode("utf-8")
    with pytest.raises(LoyaltyOutputFormatError, match="parquet column 'promo_iid' expects an integer") as caught:
        archive.write_part(_zip(tmp_path, data), io.BytesIO(), expected_rows=3, output_format="parquet")
    assert repr(bad) in str(caught.value)


def test_a_header_that_repeats_a_name_is_refused_for_parquet_and_kept_for_csv(tmp_path):
    """Arrow wrote a Parquet part with two ``amount`` columns that no reader opens (pq.read_table
    refuses duplicate field names): the export said done, the part was useless."""
    data = _csv(3, extra_column=True).replace(b"merchant_note", b"amount", 1)
    with pytest.raises(LoyaltyOutputFormatError, match="names the column\\(s\\) 'amount' more than once"):
        archive.write_part(_zip(tmp_path, data), io.BytesIO(), expected_rows=3, output_format="parquet")
    stored = io.BytesIO()
    archive.write_part(_zip(tmp_path, data, "again.zip"), stored, expected_rows=3, output_format="csv")
    assert stored.getvalue() == data
