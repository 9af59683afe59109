"""loyalty-verify counts a part's rows block by block exactly as ``csv.reader`` counts its records.

The oracle is ``csv.reader`` over the whole part decoded at once (UTF-8, invalid bytes replaced,
lines as ``newline=""`` splits them): non-blank records minus the header. The counter reads blocks
of any size, holds a record open at a block's end for the next one, and hands the rest to
``csv.reader`` where a block is unusual; it must agree on the count and on what is unreadable.
"""

from __future__ import annotations

import csv
import gzip
import io
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from airflow_provider_loyalty import verify_parts
from airflow_provider_loyalty.export.csv_records import records_in_block


def _oracle(data: bytes) -> int | str:
    """Rows as csv.reader counts them over the whole text, or the error's class name."""
    try:
        text = data.decode("utf-8", errors="replace")
        records = sum(1 for record in csv.reader(io.StringIO(text, newline="")) if record)
    except csv.Error as error:
        return type(error).__name__
    return max(records - 1, 0)


def _counted(data: bytes, read_bytes: int, max_held: int) -> int | str:
    try:
        with mock.patch.multiple(verify_parts, _READ_BYTES=read_bytes, _MAX_HELD=max_held):
            return verify_parts._count_csv_rows(io.BytesIO(data))
    except csv.Error as error:
        return type(error).__name__


_PIECES = ['"', '""', '"""', ",", "\r", "\n", "\r\n", "a", "é", "😀", "\x00", "\ufeff", '"x,y"', '"p\nq"', ',"', '",']
_text = st.lists(st.sampled_from(_PIECES), max_size=60).map("".join)


@given(
    text=_text,
    invalid=st.booleans(),
    read_bytes=st.integers(1, 40),
    max_held=st.integers(0, 30),
)
@settings(max_examples=600, deadline=None)
@example(text='a,b\r\n"open\r\nstill",x\r\n""\r\n', invalid=False, read_bytes=5, max_held=3)
@example(text='h\r\n5" screen,"a""b"\r"\r\n', invalid=False, read_bytes=3, max_held=100)
@example(text="h\r\nx\x00y\r\nz\r\n", invalid=False, read_bytes=4, max_held=100)
def test_rows_counted_block_by_block_are_csv_readers(text, invalid, read_bytes, max_held):
    data = text.encode("utf-8")
    if invalid:
        data = data[: len(data) // 2] + b"\xff\xfe" + data[len(data) // 2 :]
    assert _counted(data, read_bytes, max_held) == _oracle(data)


def test_a_part_the_api_could_write_is_counted_by_the_fast_pass(monkeypatch):
    line = b'id-%d,"{""channel"":""pos""}","two\nlines, ""q""",%d\r\n'
    data = b"transaction_id,custom_json,description,amount\r\n" + b"".join(line % (i, i) for i in range(5000))
    calls = []

    def spy(binary):
        calls.append(binary)
        return 0

    monkeypatch.setattr(verify_parts, "_reader_records", spy)
    assert _counted(data, 4096, 64 * 1024) == 5000  # every row, and csv.reader never needed
    assert calls == []


def test_a_record_held_over_past_the_limit_goes_to_csv_reader():
    data = b'h,d\r\nid-1,"' + b"x\n" * 50_000 + b'"\r\nid-2,y\r\n'
    assert _counted(data, 1024, 4096) == 2 == _oracle(data)


def test_records_in_block_stops_before_a_record_whose_quoted_field_is_open():
    block = b'a,b\r\nc,"d\r\ne""\r\n'
    assert records_in_block(block) == (1, 5)
    assert records_in_block(b'"open\r\n') == (0, 0)
    assert records_in_block(b"a\x00b\r\n") is None


def test_csv_gz_parts_are_counted_gunzipped_and_a_broken_stream_is_unreadable(tmp_path):
    from airflow_provider_loyalty.verify_storage import LocalStore

    body = b"transaction_id,a\r\n" + b"".join(b'id-%d,"x,""y"""\r\n' % i for i in range(3000))
    (tmp_path / "good.csv.gz").write_bytes(gzip.compress(body, mtime=0))
    broken = bytearray(gzip.compress(body, mtime=0))
    broken[20:40] = b"\xff" * 20
    (tmp_path / "broken.csv.gz").write_bytes(bytes(broken))
    store = LocalStore()
    good = verify_parts.measure_part(store, str(tmp_path / "good.csv.gz"), "csv.gz")
    assert (good.rows, good.unreadable) == (3000, None)
    bad = verify_parts.measure_part(store, str(tmp_path / "broken.csv.gz"), "csv.gz")
    assert bad.unreadable and bad.bytes == len(broken)
