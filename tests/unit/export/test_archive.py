"""A batch counts only when its archive is sound: blocks, members, zip bomb caps, empty batches.

The CSV reading itself (exact as csv.reader, linear) is tested in ``test_csv_records.py``, the
part formats in ``test_part_formats.py``.
"""

from __future__ import annotations

import csv
import io
import random
import struct
import tracemalloc
import zipfile

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyUnsafeDataError, LoyaltyVerificationError
from airflow_provider_loyalty.export import archive

MiB = 1024 * 1024


def _csv(rows: int, seed: int, line_end: str = "\r\n") -> bytes:
    rng = random.Random(seed)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(["transaction_id", "description", "amount"])
    for index in range(rows):
        text = rng.choice(["plain", "a, comma", 'say "hi"', "two\nlines", '"\n"', "x" * rng.randint(0, 90), ""])
        writer.writerow([f"id-{index:06d}", text, f"{rng.randint(0, 9999)}.{rng.randint(0, 9)}"])
    return buffer.getvalue().encode("utf-8")


def _archive(tmp_path, members: dict[str, bytes], compresslevel: int | None = None) -> str:
    path = tmp_path / "batch.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return str(path)


def _ids(data: bytes) -> list[str]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    return [row[0] for row in rows[1:] if row]


@pytest.mark.parametrize("block", [7, 64, 1000, 1 << 20])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_block_size_gives_the_same_part(tmp_path, monkeypatch, block, seed):
    monkeypatch.setattr(archive, "_BLOCK", block)
    data = _csv(300, seed)
    out = io.BytesIO()
    stats = archive.write_part(_archive(tmp_path, {"t.csv": data}), out, expected_rows=300)
    assert out.getvalue() == data  # byte for byte
    assert stats.rows == stats.archive_rows == 300
    assert stats.tail_ids == _ids(data)[-archive.TAIL_WINDOW :]


@pytest.mark.parametrize("block", [5, 100, 1 << 20])
def test_members_join_under_one_header_and_head_duplicates_drop(tmp_path, monkeypatch, block):
    monkeypatch.setattr(archive, "_BLOCK", block)
    first, second = _csv(50, 7, "\n"), _csv(40, 8, "\n")
    second = second.replace(b"id-0", b"id-9")  # other ids in the second member
    second = second.rstrip(b"\n")  # its last record has no line break
    out = io.BytesIO()
    skip = frozenset({"id-000000", "id-000001"})
    stats = archive.write_part(
        _archive(tmp_path, {"a.csv": first, "b.csv": second}), out, expected_rows=90, skip_ids=skip
    )
    ids = _ids(out.getvalue())
    assert ids == [i for i in _ids(first) if i not in skip] + _ids(second + b"\n")
    assert (stats.rows, stats.duplicates_dropped, stats.archive_rows) == (88, 2, 90)
    assert out.getvalue().endswith(b"\n")
    assert out.getvalue().count(b"transaction_id") == 1


@pytest.mark.parametrize("block", [16, 1 << 16])
def test_a_quote_never_closed_is_refused_not_landed_cut_off(tmp_path, monkeypatch, block):
    """csv.reader (strict=False) ends an open quoted field at the end of input: the cut-off value
    ``{"key": "val`` landed as data when the row count matched (probe of 2026-12-05). A quote never
    closed is CSV cut short, whatever the count."""
    monkeypatch.setattr(archive, "_BLOCK", block)
    cut = b'transaction_id,custom_json\r\nid-1,"{""key"": ""value""}"\r\nid-2,"{""key"": ""val'
    swallowed = b'transaction_id,description\r\nid-1,"never closed\r\nid-2,x\r\n'  # one row to the reader
    for data, rows in ((cut, 2), (swallowed, 1)):
        with pytest.raises(LoyaltyVerificationError, match=r"'t.csv' ends inside an open quoted field"):
            archive.write_part(_archive(tmp_path, {"t.csv": data}), io.BytesIO(), expected_rows=rows)
    closed = archive.write_part(_archive(tmp_path, {"t.csv": cut + b'ue""}"'}), io.BytesIO(), expected_rows=2)
    assert closed.tail_ids[-1] == "id-2"


def test_a_member_that_ends_inside_quotes_is_refused_whatever_follows(tmp_path):
    """Joined in one part, the next member's rows would become part of the open field; alone (or
    before a header-only member) its last value would land cut off."""
    first = b'transaction_id,d\r\nid-1,"open\r\n'
    for second in (b"transaction_id,d\r\nid-2,x\r\n", b"transaction_id,d\r\n"):
        with pytest.raises(LoyaltyVerificationError, match=r"'a.csv' ends inside an open quoted field"):
            archive.write_part(_archive(tmp_path, {"a.csv": first, "b.csv": second}), io.BytesIO(), expected_rows=1)


def test_non_utf8_is_refused(tmp_path):
    with pytest.raises(LoyaltyVerificationError, match="UTF-8"):
        archive.write_part(
            _archive(tmp_path, {"t.csv": b"transaction_id\r\n\xff\xfe\r\n"}), io.BytesIO(), expected_rows=1
        )


def test_a_bom_is_dropped_and_every_member_may_have_one(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "_BLOCK", 4)
    bom = b"\xef\xbb\xbf"
    first, second = b"transaction_id,a\r\nid-1,x\r\n", b"transaction_id,a\r\nid-2,y\r\n"
    out = io.BytesIO()
    archive.write_part(_archive(tmp_path, {"a.csv": bom + first, "b.csv": bom + second}), out, expected_rows=2)
    assert out.getvalue() == first + b"id-2,y\r\n"


def test_boundary_duplicates_are_dropped_at_the_start_of_the_batch_only(tmp_path):
    data = b"transaction_id\r\nid-1\r\n\r\nid-2\r\nid-3\r\nid-1\r\n"
    out = io.BytesIO()
    stats = archive.write_part(_archive(tmp_path, {"t.csv": data}), out, expected_rows=4, skip_ids=["id-1", "id-2"])
    assert (stats.rows, stats.duplicates_dropped, stats.tail_ids) == (2, 2, ["id-3", "id-1"])
    assert out.getvalue() == b"transaction_id\r\nid-3\r\nid-1\r\n"


def test_a_macs_resource_forks_beside_the_csv_are_not_data(tmp_path):
    data = b"transaction_id,a\r\nid-1,x\r\n"
    members = {"t.csv": data, "__MACOSX/._t.csv": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"}
    out = io.BytesIO()
    assert archive.write_part(_archive(tmp_path, members), out, expected_rows=1).rows == 1
    assert out.getvalue() == data
    with pytest.raises(LoyaltyVerificationError, match=r"'notes/readme\.txt' is not a \.csv file"):
        archive.write_part(_archive(tmp_path, {"t.csv": data, "notes/readme.txt": b"x"}), io.BytesIO(), expected_rows=1)


@pytest.mark.parametrize("spelling", ["Transaction ID", "TRANSACTION_ID", "transactionId", " transaction-id "])
def test_the_id_column_is_found_whatever_its_case_and_separators(tmp_path, spelling):
    """The API documents no CSV header: an id column spelled another way is still the id column
    (boundary duplicates are found by it), and the header is kept as the API wrote it."""
    header = f'amount,"{spelling}"\r\n'.encode()
    data = header + b"1,id-1\r\n2,id-2\r\n3,id-3\r\n"
    out = io.BytesIO()
    stats = archive.write_part(_archive(tmp_path, {"t.csv": data}), out, expected_rows=3, skip_ids=["id-1"])
    assert (stats.rows, stats.duplicates_dropped, stats.tail_ids) == (2, 1, ["id-2", "id-3"])
    assert out.getvalue() == header + b"2,id-2\r\n3,id-3\r\n"


def test_a_csv_separated_by_semicolons_is_refused_saying_so(tmp_path):
    data = b"transaction_id;amount\r\nid-1;5\r\n"
    with pytest.raises(LoyaltyVerificationError, match="separated by ';', and only comma-separated CSV is read"):
        archive.write_part(_archive(tmp_path, {"t.csv": data}), io.BytesIO(), expected_rows=1)


def test_an_id_column_spelled_two_ways_at_once_is_refused(tmp_path):
    data = b"Transaction ID,transaction-id\r\nid-1,x\r\n"
    with pytest.raises(LoyaltyVerificationError, match="no 'transaction_id' column"):
        archive.write_part(_archive(tmp_path, {"t.csv": data}), io.BytesIO(), expected_rows=1)


# ---------------------------------------------------------------------------------------- empty batches


def _empty_batches(tmp_path) -> dict[str, str]:
    return {
        "header only": _archive(tmp_path / "a", {"t.csv": b"transaction_id,amount\r\n"}),
        "0-byte member": _archive(tmp_path / "b", {"t.csv": b""}),
        "no member": _archive(tmp_path / "c", {}),
        "blank lines only": _archive(tmp_path / "d", {"t.csv": b"\r\n\r\n"}),
    }


@pytest.mark.parametrize("output_format", ["csv", "csv.gz", "parquet"])
def test_an_empty_batch_is_valid_when_the_api_says_zero_rows(tmp_path, output_format):
    for directory in "abcd":
        (tmp_path / directory).mkdir()
    for kind, path in _empty_batches(tmp_path).items():
        out = io.BytesIO()
        stats = archive.write_part(path, out, expected_rows=0, output_format=output_format)
        assert (stats.rows, stats.archive_rows, stats.bytes, stats.is_empty) == (0, 0, 0, True), kind
        assert out.getvalue() == b"", kind  # nothing to land
        with pytest.raises(LoyaltyVerificationError, match=r"row count mismatch.*total says 1"):
            archive.write_part(path, io.BytesIO(), expected_rows=1, output_format=output_format)


def test_boundary_duplicates_only_write_nothing(tmp_path):
    out = io.BytesIO()
    stats = archive.write_part(
        _archive(tmp_path, {"t.csv": b"transaction_id\r\nid-1\r\n"}), out, expected_rows=1, skip_ids={"id-1"}
    )
    assert (stats.rows, stats.duplicates_dropped, stats.is_empty, out.getvalue()) == (0, 1, True, b"")


# ---------------------------------------------------------------------------------------- zip bomb caps


def test_many_members_just_under_1_mib_at_a_high_ratio_are_refused(tmp_path):
    """The old cap skipped members under 1 MiB: many of them at ~1000x each passed."""
    member = b"transaction_id\r\n" + b"0" * (MiB - 64)
    path = _archive(tmp_path, {f"m{i:02d}.csv": member for i in range(8)}, compresslevel=9)
    with pytest.raises(
        LoyaltyUnsafeDataError, match=r"zip member 'm00.csv' expands \d+x .* over the cap of 200x"
    ) as caught:
        archive.write_part(path, io.BytesIO(), expected_rows=0)
    assert "zip bomb" in str(caught.value)


def test_a_small_member_over_the_ratio_is_refused(tmp_path):
    path = _archive(tmp_path, {"t.csv": b"transaction_id\r\n" + b"\r\n" * 40_000}, compresslevel=9)
    with pytest.raises(LoyaltyUnsafeDataError, match=r"zip member 't\.csv' expands"):
        archive.write_part(path, io.BytesIO(), expected_rows=0)
    assert (
        archive.write_part(
            path, io.BytesIO(), expected_rows=0, limits=archive.ArchiveLimits(max_compression_ratio=1e6)
        ).rows
        == 0
    )


def _info(name: str, size: int, compressed: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.file_size, info.compress_size = size, compressed
    return info


def test_caps_hold_for_the_archive_as_a_whole():
    limits = archive.ArchiveLimits(max_uncompressed_bytes=1000, max_compression_ratio=10)
    archive.check_archive_caps([_info("a.csv", 600, 100), _info("b.csv", 400, 100)], 10_000, limits)
    with pytest.raises(LoyaltyUnsafeDataError, match=r"the archive expands to 1001 bytes, over the cap of 1000 bytes"):
        archive.check_archive_caps([_info("a.csv", 601, 100), _info("b.csv", 400, 100)], 10_000, limits)
    with pytest.raises(LoyaltyUnsafeDataError, match=r"zip member 'b.csv' expands to 1001 bytes, over the cap of 1000"):
        archive.check_archive_caps([_info("a.csv", 1, 1), _info("b.csv", 1001, 1000)], 10_000, limits)
    # A directory claiming more compressed bytes than the file holds: the file's size counts.
    claims = [_info("a.csv", 500, 5000), _info("b.csv", 500, 5000)]
    archive.check_archive_caps(claims, 10_000, limits)
    with pytest.raises(
        LoyaltyUnsafeDataError, match=r"the archive as a whole expands 12x \(1000 bytes from 80\), over the cap of 10x"
    ):
        archive.check_archive_caps(
            claims, 80, archive.ArchiveLimits(max_uncompressed_bytes=10_000, max_compression_ratio=10)
        )


def test_a_member_lying_about_its_size_is_read_no_further_than_declared(tmp_path):
    data = b"transaction_id\r\n" + b"0123456789abcdef\r\n" * (4 * MiB // 18)
    blob = bytearray(_zip_bytes({"t.csv": data}))
    declared = 4096
    struct.pack_into("<I", blob, blob.index(b"PK\x03\x04") + 22, declared)  # local header
    struct.pack_into("<I", blob, blob.index(b"PK\x01\x02") + 24, declared)  # central directory
    path = tmp_path / "liar.zip"
    path.write_bytes(bytes(blob))
    out = io.BytesIO()
    tracemalloc.start()
    try:
        with pytest.raises(LoyaltyVerificationError, match="corrupt"):
            archive.write_part(str(path), out, expected_rows=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out.getvalue()) <= declared
    assert peak < 2 * MiB


def _zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_members_whose_inflation_zipfile_does_not_bound_are_refused(tmp_path, method):
    path = tmp_path / "a.zip"
    path.write_bytes(_zip_bytes({"t.csv": b"transaction_id\r\nid-1\r\n"}, method))
    with pytest.raises(LoyaltyUnsafeDataError, match="compression method"):
        archive.write_part(str(path), io.BytesIO(), expected_rows=1)


def test_memory_stays_bounded_whatever_the_batch_size(tmp_path):
    rng = random.Random(3)
    rows = [b"id-%08d,%s,%d.%d\r\n" % (i, rng.randbytes(40).hex().encode(), i, i % 10) for i in range(120_000)]
    data = b"transaction_id,description,amount\r\n" + b"".join(rows)
    path = _archive(tmp_path, {"t.csv": data}, compresslevel=1)
    del rows
    sink = _CountingSink()
    tracemalloc.start()
    try:
        stats = archive.write_part(path, sink, expected_rows=120_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (stats.rows, stats.bytes, sink.size) == (120_000, len(data), len(data))
    assert len(data) > 11 * MiB and peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB for {len(data) / MiB:.0f} MiB of CSV"


class _CountingSink(io.RawIOBase):
    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.size += len(data)
        return len(data)


# ------------------------------------------------------------- moved from the operator's tests


def _zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _verify(tmp_path, data: bytes, expected_rows: int = 1, **kwargs):
    from airflow_provider_loyalty.export.archive import write_part

    path = tmp_path / "a.zip"
    path.write_bytes(data)
    return write_part(str(path), io.BytesIO(), expected_rows=expected_rows, **kwargs)


CSV = b'transaction_id,description\r\nid-1,"a, ""quoted""\nline"\r\n'


def test_verification_accepts_quoted_newlines(tmp_path):
    stats = _verify(tmp_path, _zip_of({"t.csv": CSV}))
    assert (stats.rows, stats.tail_ids) == (1, ["id-1"])


@pytest.mark.parametrize("name", ["../evil.csv", "/abs.csv", "a/../../b.csv", "C:\\x.csv", "dir\\x.csv"])
def test_unsafe_member_names(tmp_path, name):
    with pytest.raises(LoyaltyUnsafeDataError):
        _verify(tmp_path, _zip_of({name: CSV}))


@pytest.mark.parametrize("name", ["./Transactions.csv", "exports/./Transactions.csv"])
def test_a_member_name_with_a_dot_segment_is_read(tmp_path, name):
    """A '.' segment names no other place (PHP's ``ZipArchive::addFile('./x.csv')`` writes one): it
    was refused as unsafe, and every retry of the batch refused it again."""
    stats = _verify(tmp_path, _zip_of({name: CSV}))
    assert (stats.rows, stats.tail_ids) == (1, ["id-1"])


def test_corrupt_zip_and_bad_crc(tmp_path):
    with pytest.raises(LoyaltyVerificationError, match="corrupt"):
        _verify(tmp_path, b"PK\x03\x04 definitely not a zip")
    good = bytearray(_zip_of({"t.csv": CSV * 50}))
    start = good.find(b"t.csv") + len(b"t.csv")
    good[start + 10] ^= 0xFF  # flip a byte of the compressed data
    with pytest.raises(LoyaltyVerificationError):
        _verify(tmp_path, bytes(good), expected_rows=50)


def test_damaged_bytes_that_break_the_csv_are_named_a_corrupt_download(tmp_path):
    """The zip checks a member's CRC-32 at its end; a damaged byte breaks the CSV long before. The
    error says the download is damaged, not that the API wrote a malformed row."""
    data = _csv(40_000, seed=3)  # several of the verifier's blocks: the damage is read before the end
    blob = bytearray(_zip_bytes({"t.csv": data}, zipfile.ZIP_STORED))
    start = blob.find(data[:40])
    end = blob.index(b"\r\nid-", start + 4000)
    blob[end : end + 2] = b",x"  # two bytes damaged in transit: two rows read as one of five fields
    with pytest.raises(LoyaltyVerificationError) as caught:
        _verify(tmp_path, bytes(blob), expected_rows=40_000)
    assert str(caught.value).startswith("the downloaded archive is corrupt: Bad CRC-32")
    assert "damaged bytes read as malformed CSV" in str(caught.value)
    with pytest.raises(LoyaltyVerificationError, match="fields") as undamaged:  # a malformed row as the API wrote it
        _verify(tmp_path, _zip_of({"t.csv": b"transaction_id,a\r\nx\r\n"}))
    assert "corrupt" not in str(undamaged.value)


def test_zip_bomb_caps(tmp_path):
    from airflow_provider_loyalty.export.archive import ArchiveLimits

    bomb = _zip_of({"t.csv": b"transaction_id\r\n" + b"x" * (8 * 1024 * 1024)})
    with pytest.raises(LoyaltyUnsafeDataError, match="zip bomb"):
        _verify(tmp_path, bomb)
    with pytest.raises(LoyaltyUnsafeDataError, match="over the cap"):
        _verify(tmp_path, _zip_of({"t.csv": CSV}), limits=ArchiveLimits(max_uncompressed_bytes=10))


def test_wrong_field_count_and_missing_id_column(tmp_path):
    with pytest.raises(LoyaltyVerificationError, match="fields"):
        _verify(tmp_path, _zip_of({"t.csv": b"transaction_id,a\r\nx\r\n"}))
    with pytest.raises(LoyaltyVerificationError, match="transaction_id"):
        _verify(tmp_path, _zip_of({"t.csv": b"id,a\r\nx,y\r\n"}))


# ------------------------------------------------------------------ inflating (ISA-L)


@pytest.mark.parametrize("compresslevel", [1, 6, 9])
def test_a_deflated_member_is_inflated_by_isal_to_zlibs_bytes(tmp_path, compresslevel):
    from airflow_provider_loyalty.export.inflate import inflated_by_isal, open_member

    data = _csv(20_000, seed=compresslevel) + random.Random(compresslevel).randbytes(300_000).hex().encode()
    path = _archive(tmp_path, {"t.csv": data, "u.csv": b""}, compresslevel=compresslevel)
    with zipfile.ZipFile(path) as opened:
        for info in opened.infolist():
            with opened.open(info) as by_zlib, open_member(opened, info) as by_isal:
                assert inflated_by_isal(by_isal) and not inflated_by_isal(by_zlib)
                assert b"".join(iter(lambda: by_isal.read(4096), b"")) == by_zlib.read()


def test_a_stored_member_is_read_as_zipfile_reads_it(tmp_path):
    from airflow_provider_loyalty.export.inflate import inflated_by_isal, open_member

    path = tmp_path / "stored.zip"
    path.write_bytes(_zip_bytes({"t.csv": CSV}, zipfile.ZIP_STORED))
    with zipfile.ZipFile(path) as opened, open_member(opened, opened.infolist()[0]) as member:
        assert not inflated_by_isal(member)
        assert member.read() == CSV
    assert _verify(tmp_path, path.read_bytes()).rows == 1


def test_a_broken_deflate_stream_is_a_corrupt_archive_not_an_isal_error(tmp_path):
    data = _csv(2000, seed=9)
    blob = bytearray(_zip_of({"t.csv": data}))
    start = blob.find(b"t.csv") + len(b"t.csv")
    blob[start : start + 64] = b"\xff" * 64  # the first deflate block's header: an invalid block type
    with pytest.raises(LoyaltyVerificationError, match=r"the downloaded archive is corrupt: .*[Ii]nvalid"):
        _verify(tmp_path, bytes(blob), expected_rows=2000)
