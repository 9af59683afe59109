"""Block-wise verification must equal a plain CSV parse, wherever block boundaries fall."""

from __future__ import annotations

import csv
import io
import random
import zipfile

import pytest

from airflow_provider_loyalty.export import archive
from airflow_provider_loyalty.exceptions import LoyaltyVerificationError


def _csv(rows: int, seed: int, line_end: str = "\r\n") -> bytes:
    rng = random.Random(seed)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(["transaction_id", "description", "amount"])
    for index in range(rows):
        text = rng.choice(["plain", "a, comma", 'say "hi"', "two\nlines", '"\n"', "x" * rng.randint(0, 90), ""])
        writer.writerow([f"id-{index:06d}", text, f"{rng.randint(0, 9999)}.{rng.randint(0, 9)}"])
    return buffer.getvalue().encode("utf-8")


def _archive(tmp_path, members: dict[str, bytes]) -> str:
    path = tmp_path / "batch.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
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


def test_unterminated_quote_is_not_valid_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "_BLOCK", 16)
    data = b'transaction_id,description\r\nid-1,"never closed\r\nid-2,x\r\n'
    with pytest.raises(LoyaltyVerificationError):
        archive.write_part(_archive(tmp_path, {"t.csv": data}), io.BytesIO(), expected_rows=2)


def test_non_utf8_is_refused(tmp_path):
    with pytest.raises(LoyaltyVerificationError, match="UTF-8"):
        archive.write_part(
            _archive(tmp_path, {"t.csv": b"transaction_id\r\n\xff\xfe\r\n"}), io.BytesIO(), expected_rows=1
        )
