"""Export zips and their CSV: quoting, types, styles, members, determinism, compression, ZIP64."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_loyalty.testing import TRANSACTION_FIELDS
from airflow_provider_loyalty.testing.archive import ArchiveSpec, BatchRows, FillerMembers, csv_line, write_export_zip
from airflow_provider_loyalty.testing.data import program_stream


def test_csv_quoting_and_types(json_client: Any) -> None:
    result, rows = json_client.export_batch()
    with zipfile.ZipFile(io.BytesIO(json_client.download(result["hashed_file"]).content)) as archive:
        raw = archive.read(archive.namelist()[0])
    assert raw.count(b"\r\n") >= len(rows) + 1
    descriptions = {r[9] for r in rows}
    assert any("," in d for d in descriptions)
    assert any('"' in d for d in descriptions)
    assert any("\n" in d for d in descriptions)
    for row in rows:
        assert len(row) == len(TRANSACTION_FIELDS)
        record = dict(zip(TRANSACTION_FIELDS, row, strict=True))
        assert record["is_temp"] in ("true", "false")
        assert record["canceled"] in ("true", "false")
        assert isinstance(json.loads(record["custom_json"]), dict)
        float(record["amount"])
        assert record["created_at"].endswith("Z")


def test_same_seed_same_bytes(emulator_factory: Any, client_factory: Any) -> None:
    contents = []
    for seed in (7, 7, 8):
        c = client_factory(emulator_factory(transactions=1500, seed=seed))
        result = c.wait(c.export())["result"]
        first = c.download(result["hashed_file"]).content
        assert c.download(result["hashed_file"]).content == first  # re-download identical
        contents.append((first, result["next_from_id"]))
    assert contents[0] == contents[1]
    assert contents[0][0] != contents[2][0]


def test_compresslevel(emulator_factory: Any, client_factory: Any) -> None:
    sizes = []
    for level in (0, 9):
        c = client_factory(emulator_factory(transactions=500, zip_compresslevel=level))
        result, rows = c.export_batch()
        sizes.append(len(c.download(result["hashed_file"]).content))
        assert len(rows) == 500
    assert sizes[0] > sizes[1] * 2


def test_zip64_when_the_csv_may_exceed_4_gib(
    emulator_factory: Any, client_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client_factory(emulator_factory(transactions=300, row_padding=100))
    result = c.wait(c.export())["result"]
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP64_LIMIT", 1000)  # every export now "may exceed" the limit
        content = c.download(result["hashed_file"]).content
    _, rows, _ = c.read_csv_from_zip(content)
    assert len(rows) == 300
    assert b"PK\x06\x06" in content  # ZIP64 end of central directory record


# --- CSV styles -------------------------------------------------------------------------------------
def _raw_csv(c: Any) -> tuple[dict[str, Any], bytes]:
    result = c.wait(c.export())["result"]
    ((_, raw),) = c.zip_members(c.download(result["hashed_file"]).content)
    return result, raw


def test_stray_quotes_are_unquoted_and_read_by_csv_reader(emulator_factory: Any, client_factory: Any) -> None:
    standard = client_factory(emulator_factory(transactions=300, batch_size=300))
    stray = client_factory(emulator_factory(transactions=300, batch_size=300, csv_style="stray_quotes"))
    _, plain_raw = _raw_csv(standard)
    result, raw = _raw_csv(stray)
    assert re.search(rb',prod_\d+ 5" screen,', raw)  # a quote inside an unquoted field
    assert re.search(rb',prod_\d+ 12",', raw)  # and one at its end
    plain_rows, rows = standard.csv_rows(plain_raw), stray.csv_rows(raw)
    assert len(rows) - 1 == result["total"] == 300
    column = TRANSACTION_FIELDS.index("product_eid")
    changed = 0
    for index, (plain, row) in enumerate(zip(plain_rows[1:], rows[1:], strict=True)):
        assert len(row) == len(TRANSACTION_FIELDS)
        suffix = ' 5" screen' if index % 3 == 1 else (' 12"' if index % 7 == 2 else "")
        assert row[column] == plain[column] + suffix
        assert row[:column] + row[column + 1 :] == plain[:column] + plain[column + 1 :]
        changed += bool(suffix)
    assert changed > 100
    # the other quoted fields (descriptions with commas, quotes, newlines) are still quoted
    assert b'"Bonus for order, ""welcome"" campaign"' in raw


def test_bom_and_lf_line_endings(emulator_factory: Any, client_factory: Any) -> None:
    standard = client_factory(emulator_factory(transactions=200, batch_size=200))
    variant = client_factory(emulator_factory(transactions=200, batch_size=200, csv_bom=True, csv_line_ending="lf"))
    _, plain_raw = _raw_csv(standard)
    _, raw = _raw_csv(variant)
    assert raw.startswith(b"\xef\xbb\xbftransaction_id,")
    assert b"\r" not in raw
    assert raw.count(b"\n") == plain_raw.count(b"\n")  # same lines, only the terminators differ
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows == standard.csv_rows(plain_raw)


@pytest.mark.parametrize(("members", "rows", "sizes"), [(3, 1000, [334, 333, 333]), (4, 2, [1, 1, 0, 0])])
def test_zip_members_split_the_batch(
    emulator_factory: Any, client_factory: Any, members: int, rows: int, sizes: list[int]
) -> None:
    emulator = emulator_factory(transactions=rows, batch_size=1000, zip_members=members)
    c = client_factory(emulator)
    result = c.wait(c.export())["result"]
    content = c.download(result["hashed_file"]).content
    found = c.zip_members(content)
    stem = result["hashed_file"].rsplit("/", 1)[1].removesuffix(".zip")
    assert [name for name, _ in found] == [f"{stem}_{k:03d}.csv" for k in range(1, members + 1)]
    ids: list[str] = []
    for (_, raw), size in zip(found, sizes, strict=True):
        header, *body = c.csv_rows(raw)
        assert header == list(TRANSACTION_FIELDS)
        assert len(body) == size
        ids += [r[0] for r in body]
    assert ids == emulator.expected_ids()
    assert result["total"] == rows


def test_short_batch_and_filler_shapes_written_directly() -> None:
    stream = program_stream(0, 10, "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z")
    batch = BatchRows(stream, 2, 7, "Transactions")
    sink = io.BytesIO()
    csv_bytes = write_export_zip(
        _Unseekable(sink), batch, ArchiveSpec(), drop_last_row=True, filler=FillerMembers(count=3, size=1000, byte=b"x")
    )
    with zipfile.ZipFile(io.BytesIO(sink.getvalue())) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        text = archive.read("Transactions.csv")
        assert [archive.read(n) for n in names[1:]] == [b"x" * 1000] * 3
    assert names == ["Transactions.csv", "filler_0000.csv", "filler_0001.csv", "filler_0002.csv"]
    assert len(text) == csv_bytes
    ids = [row[0] for row in csv.reader(io.StringIO(text.decode(), newline=""))][1:]
    assert ids == [stream.transaction_id(i) for i in range(2, 6)]  # row 6, the last, left out


class _Unseekable:
    """A write-only view of a buffer, as the HTTP writer is."""

    def __init__(self, buffer: io.BytesIO) -> None:
        self._buffer = buffer

    def write(self, data: bytes, /) -> int:
        return self._buffer.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(
        st.text(alphabet=st.sampled_from(['"', ",", "\r", "\n", " ", "a", "é", "'"]), max_size=8), min_size=2
    ),
    terminator=st.sampled_from(["\r\n", "\n"]),
)
def test_csv_line_is_csv_writer(cells: list[str], terminator: str) -> None:
    expected = io.StringIO()
    csv.writer(expected, lineterminator=terminator, quoting=csv.QUOTE_MINIMAL).writerow(cells)
    line = csv_line(cells, terminator)
    if terminator == "\n" and any("\r" in c and not any(q in c for q in '",\n') for c in cells):
        # csv.writer only quotes the terminator's own characters; quoting a lone \r too is safer
        assert next(csv.reader(io.StringIO(line, newline=""))) == cells
        return
    assert line == expected.getvalue()
    assert next(csv.reader(io.StringIO(line, newline=""))) == cells
