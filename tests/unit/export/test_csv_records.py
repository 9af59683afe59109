"""Batch verification reads CSV exactly as ``csv.reader`` does, in time linear in the bytes.

The oracle is ``csv.reader`` (excel dialect, default settings, the module's field limit) over the
whole member decoded at once; the implementation reads blocks of any size. They must agree on
acceptance, row count, the rows themselves, and the part must be the member's bytes.
"""

from __future__ import annotations

import csv
import io
import os
import random
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_provider_loyalty.exceptions import LoyaltyVerificationError
from airflow_provider_loyalty.export import archive
from airflow_provider_loyalty.export.csv_records import FIELD_SIZE_LIMIT, line_blocks, plain_rows

MiB = 1024 * 1024


def _zip(members: dict[str, bytes], directory: str) -> str:
    path = os.path.join(directory, "batch.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return path


def _write_part(data: bytes, block: int, expected_rows: int, skip_ids: frozenset[str] = frozenset()):
    with tempfile.TemporaryDirectory() as directory, mock.patch.object(archive, "_BLOCK", block):
        part = io.BytesIO()
        stats = archive.write_part(
            _zip({"t.csv": data}, directory), part, expected_rows=expected_rows, skip_ids=skip_ids
        )
        return stats, part.getvalue()


# ---------------------------------------------------------------------------------------- oracle


@dataclass
class Expected:
    """What verification must give for one member, derived from csv.reader over the whole text."""

    rows: int  # data rows in the member
    written: list[list[str]]  # rows that reach the part
    duplicates: int
    part: bytes


def _records_with_raw_text(text: str) -> Iterator[tuple[list[str], str]]:
    """csv.reader over the whole text, each record with the exact text it was read from."""
    kept: list[str] = []

    def lines() -> Iterator[str]:
        for line in io.StringIO(text, newline=""):
            kept.append(line)
            yield line

    for record in csv.reader(lines()):
        raw = "".join(kept)
        kept.clear()
        yield record, raw


def oracle(data: bytes, skip_ids: frozenset[str]) -> Expected | None:
    """None when verification must refuse the member (not UTF-8, not CSV, a quote never closed, a
    row of another width)."""
    try:
        text = data.decode("utf-8-sig")
        records = list(_records_with_raw_text(text))
    except (UnicodeDecodeError, csv.Error):
        return None
    assert [record for record, _ in records] == list(csv.reader(io.StringIO(text, newline="")))
    if _ends_inside_quotes(text):  # a quote never closed: CSV cut short, refused whatever the count
        return None
    body = records
    header_at = next((i for i, (record, _) in enumerate(body) if record), None)
    if header_at is None:
        return Expected(0, [], 0, b"")
    header, raw_header = body[header_at]
    if "transaction_id" not in header:
        return None
    data_records = body[header_at + 1 :]
    if any(record and len(record) != len(header) for record, _ in data_records):
        return None
    id_at = header.index("transaction_id")
    rows = sum(1 for record, _ in data_records if record)
    duplicates = 0
    first = None
    for i, (record, _) in enumerate(data_records):
        if not record:
            continue
        if record[id_at] in skip_ids:
            duplicates += 1
            continue
        first = i
        break
    if first is None:
        return Expected(rows, [], duplicates, b"")
    written = [record for record, _ in data_records[first:] if record]
    line_end = "\r\n" if raw_header.endswith("\r\n") else "\n"
    part = raw_header if raw_header.endswith(("\r", "\n")) else raw_header + line_end
    tail_text = "".join(raw for _, raw in data_records[first:])
    part += tail_text if tail_text.endswith(("\r", "\n")) else tail_text + line_end
    return Expected(rows, written, duplicates, part.encode("utf-8"))


def _ends_inside_quotes(text: str) -> bool:
    """Whether csv.reader still has a quoted field open at the end of ``text``: more text joins it."""
    more = "\nx"
    return len(list(csv.reader(io.StringIO(text + more, newline="")))) == len(
        list(csv.reader(io.StringIO(text, newline="")))
    )


# ---------------------------------------------------------------------------------------- random CSV

_PIECES = ["a", "b", "xyz", " ", ",", '"', '""', "\r", "\n", "\r\n", "é", "€", "😀", "\x0b", "\u2028", "\x00"]
_piece_soup = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join)
_plain = st.text(alphabet="abcxyz 0123456789é€😀-", max_size=12)
_stray = st.builds(lambda a, b: f'{a}"{b}', _plain.filter(lambda s: s != ""), _plain)  # 5" screen
_quoted = st.lists(st.sampled_from(["a", ",", '""', "\r\n", "\n", "\r", " ", "😀"]), max_size=6).map(
    lambda parts: '"' + "".join(parts) + '"'
)
_field = st.one_of(_plain, _plain, _stray, _quoted, _piece_soup)
_line_end = st.sampled_from(["\r\n", "\n", "\r"])


@st.composite
def csv_members(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A member the API might send, or a mangled one: header, rows of mostly the header's width."""
    width = draw(st.integers(1, 4))
    header = ["transaction_id", *(f"c{i}" for i in range(1, width))]
    if draw(st.booleans()):
        random_column = draw(st.integers(0, width - 1))
        header[0], header[random_column] = header[random_column], header[0]
    out = []
    if draw(st.integers(0, 9)) == 0:
        out.append(draw(_line_end))  # a blank line before the header
    out.append(",".join(header) + draw(_line_end))
    ids = []
    for index in range(draw(st.integers(0, 12))):
        fields = [draw(_field) for _ in range(width)]
        if draw(st.integers(0, 5)):  # usually a clean id, so rows can be boundary duplicates
            fields[header.index("transaction_id")] = f"id-{index}"
            ids.append(f"id-{index}")
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(_line_end))  # a blank line
        out.append(",".join(fields) + draw(_line_end))
    text = "".join(out)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # the last record without a line break
    data = text.encode("utf-8")
    if draw(st.integers(0, 4)) == 0:
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 19)) == 0:
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + b"\xff" + data[cut:]  # not UTF-8
    return data, ids


@given(member=csv_members(), block=st.integers(1, 96), skip_count=st.integers(0, 4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(member=(b'transaction_id,d\r\nid-1,5" screen\r\nid-2,"x\r\ny"\r\n', ["id-1", "id-2"]), block=3, skip_count=0)
@example(member=(b'transaction_id,d\r\nid-1,"open\r\nid-2,x', ["id-1"]), block=5, skip_count=0)
@example(member=("transaction_id,d\nid-1,é😀€\n".encode(), ["id-1"]), block=1, skip_count=0)
def test_verification_agrees_with_csv_reader_at_any_block_size(member, block, skip_count):
    raw, ids = member
    skip_ids = frozenset(ids[:skip_count])
    expected = oracle(raw, skip_ids)
    if expected is None:
        with pytest.raises(LoyaltyVerificationError) as refused:
            _write_part(raw, block, expected_rows=0, skip_ids=skip_ids)
        assert "row count mismatch" not in str(refused.value)  # refused for what it is, not its count
        return
    stats, part = _write_part(raw, block, expected_rows=expected.rows, skip_ids=skip_ids)
    assert (stats.archive_rows, stats.rows, stats.duplicates_dropped) == (
        expected.rows,
        len(expected.written),
        expected.duplicates,
    )
    assert part == expected.part  # byte for byte
    assert (stats.bytes, stats.is_empty) == (len(part), not expected.written)
    id_at = None
    if expected.written:
        reread = [record for record in csv.reader(io.StringIO(part.decode(), newline="")) if record]
        assert reread[1:] == expected.written  # the part reads back to the same rows
        id_at = reread[0].index("transaction_id")
        assert stats.tail_ids == [record[id_at] for record in expected.written][-archive.TAIL_WINDOW :]
    with pytest.raises(LoyaltyVerificationError, match="row count mismatch"):
        _write_part(raw, block, expected_rows=expected.rows + 1, skip_ids=skip_ids)


def test_a_stray_quote_in_an_unquoted_field_is_valid():
    """``5" screen`` is one field to csv.reader, also before a quoted field that spans lines."""
    data = b"transaction_id,product_eid\r\n" + b'id-1,prod_12 5" screen\r\nid-2,"two\nlines, ""q"""\r\nid-3,x\r\n' * 3
    for block in (1, 4, 50, 1 << 20):
        stats, part = _write_part(data, block, expected_rows=9)
        assert (stats.rows, part) == (9, data)


def test_a_row_of_another_width_names_the_member_and_row():
    data = b'transaction_id,a\r\nid-1,"x\r\ny"\r\nid-2\r\n'
    for block in (3, 1 << 20):
        with pytest.raises(LoyaltyVerificationError, match=r"'t\.csv', data row 2: 1 fields, the header has 2"):
            _write_part(data, block, expected_rows=2)


def test_width_is_checked_after_the_head_too():
    rows = b"".join(b"id-%d,%d\r\n" % (i, i) for i in range(2000))
    data = b"transaction_id,a\r\n" + rows + b"id-x,1,2\r\n" + rows
    with pytest.raises(LoyaltyVerificationError, match=r"data row 2001: 3 fields"):
        _write_part(data, 4096, expected_rows=4001)


def test_a_line_longer_than_max_line_bytes_is_refused_before_it_is_held():
    data = b"transaction_id,a\r\nid-1," + b"x" * 5000 + b"\r\n"
    with tempfile.TemporaryDirectory() as directory:
        path = _zip({"t.csv": data}, directory)
        limits = archive.ArchiveLimits(max_line_bytes=4096)
        with (
            mock.patch.object(archive, "_BLOCK", 1000),
            pytest.raises(LoyaltyVerificationError, match="max_line_bytes"),
        ):
            archive.write_part(path, io.BytesIO(), expected_rows=1, limits=limits)
        assert archive.write_part(path, io.BytesIO(), expected_rows=1).rows == 1


@pytest.mark.parametrize("over", [1, 200, 999])
def test_a_too_long_line_ending_in_the_next_read_is_refused_too(over: int):
    """The read that completes a held line may make it too long: checked there as well."""
    line = b"id-1," + b"x" * (4096 + over - 5)
    data = b"transaction_id,a\n" + line + b"\nid-2,y\n"
    for block in (1000, 1024, 4096):
        stream = io.BytesIO(data)
        with pytest.raises(LoyaltyVerificationError, match="max_line_bytes"):
            list(line_blocks(stream, block, 4096, "t.csv"))
    exact = b"transaction_id,a\nid-1," + b"x" * (4096 - 5) + b"\nid-2,y\n"
    assert b"".join(line_blocks(io.BytesIO(exact), 1000, 4096, "t.csv")) == exact


def test_line_blocks_cut_only_after_certain_line_breaks():
    data = b"a\r\nb\rc\nd\r\r\ne"
    for size in range(1, len(data) + 1):
        blocks = list(line_blocks(io.BytesIO(data), size, 1 << 20, "t.csv"))
        assert b"".join(blocks) == data
        for block in blocks[:-1]:
            assert block.endswith((b"\n", b"\r"))
            rest = data[len(b"".join(blocks[: blocks.index(block) + 1])) :]
            assert not (block.endswith(b"\r") and rest.startswith(b"\n")), (size, blocks)


# ---------------------------------------------------------------------------------------- scaling


def _stray_quotes(size: int) -> tuple[bytes, int]:
    """One stray quote, then rows of two each: quote parity never comes back even."""
    row = b'id-%d,prod 5" screen,12" x y,a b c\r\n'
    out, rows = [b"transaction_id,a,b,c\r\n", b'id-x,a 5" b,c,d\r\n'], 1
    total = 0
    while total < size:
        line = row % rows
        out.append(line)
        total += len(line)
        rows += 1
    return b"".join(out), rows


def _huge_quoted_field(size: int) -> tuple[bytes, int]:
    body = b'a ""quoted"" line, with commas\n' * (size // 30)
    return b'transaction_id,a\r\nid-1,"' + body + b'"\r\n', 1


def _alternating_quotes(size: int) -> tuple[bytes, int]:
    out, rows, total = [b"transaction_id,a\r\n"], 0, 0
    rng = random.Random(5)
    while total < size:
        line = b'id-%d,"' % rows + b'""' * rng.randint(1, 400) + b'"\r\n'
        out.append(line)
        total += len(line)
        rows += 1
    return b"".join(out), rows


def _quote_runs(size: int) -> tuple[bytes, int]:
    """Runs of quotes of every length at field starts, inside fields and after closing quotes."""
    out, rows, total = [b"transaction_id,a,b\r\n"], 0, 0
    rng = random.Random(7)
    while total < size:
        runs = [b'"' * rng.randint(1, 9) + b"x" * rng.randint(0, 3) for _ in range(rng.randint(1, 6))]
        line = b'id-%d,"' % rows + b"".join(runs) + b'",' + b'"' * (2 * rng.randint(0, 4)) + b"\r\n"
        out.append(line)
        total += len(line)
        rows += 1
    return b"".join(out), len(list(csv.reader(io.StringIO(b"".join(out).decode(), newline="")))) - 1


def _seconds_per_mib(data: bytes, rows: int, rounds: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        path = _zip({"t.csv": data}, directory)
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            archive.write_part(path, io.BytesIO(), expected_rows=rows)
            best = min(best, time.process_time() - started)
    return best / (len(data) / MiB)


@pytest.mark.parametrize("pattern", [_stray_quotes, _huge_quoted_field, _alternating_quotes, _quote_runs])
def test_time_per_mib_does_not_grow_with_the_batch(pattern):
    """Adversarial quoting at 1 MiB and 8 MiB in one run: the larger may not cost 3x more per MiB."""
    small = _seconds_per_mib(*pattern(1 * MiB), rounds=5)
    large = _seconds_per_mib(*pattern(8 * MiB), rounds=2)
    assert large < 3 * small, f"{large * 1000:.1f} ms/MiB at 8 MiB vs {small * 1000:.1f} ms/MiB at 1 MiB"


def test_the_field_limit_is_the_modules():
    assert csv.field_size_limit() >= FIELD_SIZE_LIMIT
    field = os.urandom(FIELD_SIZE_LIMIT // 8).hex().encode()  # a 4 MiB field that does not compress
    stats, _ = _write_part(b"transaction_id,a\r\nid-1," + field + b"\r\n", 1 << 18, expected_rows=1)
    assert stats.rows == 1


_plain_alphabet = st.sampled_from(
    ['"', '""', ",", "\r", "\n", "\r\n", "a", "b", " ", "é", "\x00", "\x0b", '"x,y"', '"p\nq"', ',"', '",']
)


@given(
    text=st.one_of(
        csv_members().map(lambda member: member[0].decode("utf-8", "replace").lstrip("\ufeff")),
        st.lists(_plain_alphabet, max_size=40).map("".join),
    ),
    width=st.integers(1, 4),
)
@settings(max_examples=500, deadline=None)
@example(text='a,"b\r\nc"\r\n"x""y",z\r\n\r\n', width=2)
@example(text=',", \r\n\u00e9\r ,,"\r \u00e9  \n', width=2)  # a \r and a \n with text between are two line ends
@example(text="a,b\r\nc\r\n", width=2)  # a one-field row after a full one, both ending alike
@example(text="a,b\rx\nc,d\r\n", width=2)  # no quote at all, and text between a \r and a \n
@example(text=',"a"\r\n""', width=2)  # a quoted empty field ends the member: a record of one field
@example(text=',\n""""x,y"\n', width=2)  # text after a closing quote, then a quote that is text
@example(text='a,"b\r\n""\r\n', width=2)  # ends inside a quoted field holding a line of ""
def test_a_block_counted_without_a_parse_reads_the_same_with_csv_reader(text, width):
    """When plain_rows answers, csv.reader agrees on what it counted: accepted, same rows, same width."""
    block = text.encode()
    plain = plain_rows(block, width)
    if plain is None:
        return
    rows, end = plain
    counted = block[:end].decode()
    records = [record for record in csv.reader(io.StringIO(counted, newline="")) if record]
    assert len(records) == rows
    assert all(len(record) == width for record in records)
    assert not _ends_inside_quotes(counted)  # it ends where a record ends (the rest waits for more)


def test_plain_blocks_are_most_blocks_of_ordinary_csv():
    rows = b"".join(b'id-%d,"{""k"":""v%d""}","two\nlines, ""q"""\r\n' % (i, i) for i in range(3000))
    data = b"transaction_id,json,text\r\n" + rows
    counted = []
    real = plain_rows

    def spy(block: bytes, width: int):
        counted.append(real(block, width))
        return counted[-1]

    with mock.patch("airflow_provider_loyalty.export.csv_records.plain_rows", spy):
        stats, part = _write_part(data, 1000, expected_rows=3000)
    assert (stats.rows, part) == (3000, data)
    assert sum(1 for plain in counted if plain is not None) > 0.8 * len(counted) > 50
    assert stats.tail_ids == [f"id-{i}" for i in range(2000, 3000)]
    bad = data + b'id-x,"{}"\r\n'
    with pytest.raises(LoyaltyVerificationError, match=r"data row 3001: 2 fields"):
        _write_part(bad, 1000, expected_rows=3001)


def test_the_quoted_fields_pass_counts_every_ordinary_block_as_csv_reader_does():
    """The API's CSV (quoted JSON with doubled quotes, descriptions with line breaks): the pass that
    replaces whole quoted fields answers for every block, also one cut inside a quoted field, and
    agrees with csv.reader."""
    from airflow_provider_loyalty.export import csv_records

    line = b'id-%d,"{""channel"":""pos"",""n"":%d}",%s,"a, b"\r\n'
    notes = [b"plain", b'"two\nlines, ""q"""', b'""', b'"x"" y"']
    data = b"".join(line % (i, i, notes[i % 4]) for i in range(400))
    answered = 0
    for cut in range(200, len(data), 97):  # blocks cut after a line break, some inside a quoted note
        cut = data.rindex(b"\n", 0, cut) + 1
        block = data[:cut]
        fast = csv_records.plain_rows(block, 4)
        assert fast is not None
        rows, end = fast
        assert len([r for r in csv.reader(io.StringIO(block[:end].decode(), newline="")) if r]) == rows
        answered += end < len(block)
    assert answered > 20  # many of the blocks ended inside a quoted field


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ('a"b,c\r\n', 2),  # a quote inside an unquoted field is text
        ('"a"b"c,d\r\n', 2),  # text after a closing quote; the quotes after it are text
        ('x,"a,""b"""\r\n', 2),  # a field ending with a doubled quote, then its closing quote
        (',"",""""\r\n', 3),  # an empty quoted field and one holding a quote
    ],
)
def test_quotes_that_are_text_to_csv_reader_are_text_to_the_count(text, width):
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    assert all(len(record) == width for record in records)
    assert plain_rows(text.encode(), width) == (len(records), len(text.encode()))


@pytest.mark.parametrize("line_break", [b"\r\n", b"\n"])
def test_a_field_of_many_lines_at_the_head_is_held_as_its_text(line_break):
    """The head of a batch is read line by line and each line kept until its record ends: a quoted
    field of a million line breaks in the first row was held as a million strings (about 50 bytes
    each; a 15 MiB field peaked at +627 MiB, probe of 2026-12-05). Kept lines are joined in pieces."""
    import tracemalloc

    field = line_break * 1_000_000
    data = b'transaction_id,description\r\nid-1,"' + field + b'"\r\nid-2,x\r\n'
    _write_part(b"transaction_id,d\r\nid-0,x\r\n", 1 << 16, expected_rows=1)  # imports, caches
    with tempfile.TemporaryDirectory() as directory:
        path = _zip({"t.csv": data}, directory)
        limits = archive.ArchiveLimits(max_compression_ratio=1e9)  # a line break compresses very well
        tracemalloc.start()
        try:
            with open(os.devnull, "wb") as part:
                stats = archive.write_part(path, part, expected_rows=2, limits=limits)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert stats.rows == 2 and stats.bytes == len(data)

    assert peak < 12 * len(field), f"peak {peak / 2**20:.0f} MiB for a {len(field) / 2**20:.0f} MiB field"


def test_kept_lines_are_joined_once_however_many_blocks_a_record_spans():
    """Each block's ``_KeptLines`` joined the pieces kept before it again: a first record of 8 fields
    of 15 MiB line breaks took 19 CPU-seconds (review of 2026-12-05). Every character is joined once."""
    from airflow_provider_loyalty.export.csv_records import _KEPT_LINES_JOINED, _KeptLines

    class CountingList(list):
        joined = 0

        def __setitem__(self, index, value):
            if isinstance(index, slice):
                CountingList.joined += sum(map(len, value))
            super().__setitem__(index, value)

    kept: list[str] = CountingList()
    blocks, lines_per_block = 40, 3 * _KEPT_LINES_JOINED
    for _ in range(blocks):
        for _line in _KeptLines(iter(["\r\n"] * lines_per_block), kept):
            pass
    text = 2 * blocks * lines_per_block
    assert "".join(kept) == "\r\n" * (blocks * lines_per_block)
    assert CountingList.joined <= text, f"{CountingList.joined / text:.1f} times the text joined"
