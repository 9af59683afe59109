"""Deterministic synthetic data: pure functions of (seed, index), O(1) memory, arithmetic ranges."""

from __future__ import annotations

import csv
import io

import pytest

from airflow_provider_loyalty.testing import TRANSACTION_FIELDS
from airflow_provider_loyalty.testing.data import (
    csv_header,
    format_rfc3339,
    index_from_transaction_id,
    member_stream,
    parse_rfc3339,
    parse_timeline,
    program_stream,
    transaction_to_csv_row,
)

START, END = "2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z"


def test_fields_follow_the_account_transactions_endpoint() -> None:
    assert TRANSACTION_FIELDS[0] == "transaction_id"
    assert TRANSACTION_FIELDS[-1] == "canceled"
    assert len(TRANSACTION_FIELDS) == 21
    assert csv_header() == ",".join(TRANSACTION_FIELDS) + "\r\n"


def test_ids_encode_the_index_and_sort_like_it() -> None:
    stream = program_stream(0, 5000, START, END)
    ids = [stream.transaction_id(i) for i in range(0, 5000, 7)]
    assert ids == sorted(ids)
    assert [index_from_transaction_id(t) for t in ids] == list(range(0, 5000, 7))
    assert stream.transaction(123)["transaction_id"] == stream.transaction_id(123)
    assert program_stream(1, 5000, START, END).transaction_id(123) != stream.transaction_id(123)
    assert program_stream(0, 5000, START, END).transaction(4999) == stream.transaction(4999)


def test_created_at_spans_the_period_monotonically() -> None:
    stream = program_stream(0, 1000, START, END)
    stamps = [stream.created_at_ts(i) for i in range(1000)]
    assert stamps == sorted(stamps)
    assert format_rfc3339(stamps[0]) == START
    assert format_rfc3339(stamps[-1]) == END
    assert stream.transaction(0)["created_at"] == START


@pytest.mark.parametrize(
    ("date_from", "date_to"),
    [(START, END), ("2023-09-10T00:00:00Z", "2023-09-10T12:00:00Z"),
     ("2023-08-01T00:00:00Z", "2023-08-02T00:00:00Z"),
     ("2023-09-15T00:00:00+02:00", "2023-10-15T00:00:00Z"), ("2023-09-30T23:59:59Z", "2023-09-30T23:59:59Z")],
)  # fmt: skip
def test_index_range_matches_brute_force(date_from: str, date_to: str) -> None:
    stream = program_stream(5, 3000, START, END)
    lo, hi = stream.index_range(parse_rfc3339(date_from), parse_rfc3339(date_to))
    inside = [i for i in range(3000) if parse_rfc3339(date_from) <= stream.created_at_ts(i) <= parse_rfc3339(date_to)]
    assert (lo, hi) == ((inside[0], inside[-1] + 1) if inside else (lo, lo))


def test_huge_dataset_is_virtual() -> None:
    stream = program_stream(0, 50_000_000, START, END)
    lo, hi = stream.index_range(parse_rfc3339("2023-09-15T00:00:00Z"), parse_rfc3339(END))
    assert 0 < lo < hi == 50_000_000
    cursor = stream.transaction_id(lo + 10)
    assert stream.first_index_after(cursor, lo, hi, inclusive=False) == lo + 11
    assert stream.first_index_after(cursor, lo, hi, inclusive=True) == lo + 10


def test_members_have_their_own_ids() -> None:
    member = member_stream(0, 3, 42, START, END)
    ids = [member.transaction_id(i) for i in range(42)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 42
    assert index_from_transaction_id(ids[5]) == (4 << 32) | 5


def test_row_padding_and_csv_round_trip() -> None:
    plain = program_stream(0, 100, START, END)
    padded = program_stream(0, 100, START, END, row_padding=5000)
    for i in range(100):
        extra = len(padded.transaction(i)["description"]) - len(plain.transaction(i)["description"])
        assert extra == 5001
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    rows = [transaction_to_csv_row(padded.transaction(i)) for i in range(100)]
    writer.writerows(rows)
    assert list(csv.reader(io.StringIO(buf.getvalue(), newline=""))) == rows


@pytest.mark.parametrize(
    "bad", ["2023-09-01", "2023-09-01T00:00:00", "2023-09-01 00:00:00Z", "x", "2023-13-01T00:00:00Z"]
)
def test_parse_rfc3339_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(bad)


def test_parse_rfc3339_accepts_offsets_and_fractions() -> None:
    assert parse_rfc3339("2023-09-01T02:00:00+02:00") == parse_rfc3339(START)
    assert parse_rfc3339("2023-09-01T00:00:00.123456789Z") - parse_rfc3339(START) == pytest.approx(0.123456, abs=1e-6)


def test_timeline_sets_created_at_and_keeps_ids() -> None:
    timeline = ["2023-09-30T12:00:00Z", "2023-09-30T12:00:00Z", "2023-10-02T00:00:00Z"]
    pinned = program_stream(0, 3, START, END, created_at_timeline=timeline)
    spread = program_stream(0, 3, START, END)
    assert [pinned.transaction(i)["created_at"] for i in range(3)] == timeline
    assert [pinned.transaction_id(i) for i in range(3)] == [spread.transaction_id(i) for i in range(3)]
    assert pinned.index_range(parse_rfc3339("2023-09-30T12:00:00Z"), parse_rfc3339("2023-10-01T00:00:00Z")) == (0, 2)


@pytest.mark.parametrize(
    ("timeline", "message"),
    [
        (["2023-09-02T00:00:00Z", "2023-09-01T00:00:00Z"], "entry 1: .* non-decreasing"),
        (["2023-09-01T00:00:00.1Z"], "entry 0: .*whole seconds"),
        (["2023-09-01"], "RFC3339"),
    ],
)
def test_parse_timeline_rejects(timeline: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_timeline(timeline)


def test_stream_checks_timeline_length() -> None:
    with pytest.raises(ValueError, match="2 entries for 3 transactions"):
        program_stream(0, 3, START, END, created_at_timeline=[START, END])


@pytest.mark.parametrize(
    ("stamp", "text"),
    [
        (1693526400, START),
        (1693526400.0, START),
        (1693526400.25, "2023-09-01T00:00:00.25Z"),
        (1693526399.9999996, START),
    ],
)
def test_format_rfc3339(stamp: float, text: str) -> None:
    assert format_rfc3339(stamp) == text
