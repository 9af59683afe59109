"""expected_transaction_ids: the oracle of what an export of a period must hold."""

from __future__ import annotations

import random

import pytest

from airflow_provider_loyalty.testing import EmulatorConfig, expected_transaction_ids
from airflow_provider_loyalty.testing.data import format_rfc3339, parse_rfc3339
from airflow_provider_loyalty.testing.dataset import program_stream_for


def _brute_force(config: EmulatorConfig, date_from: str, date_to: str) -> list[str]:
    stream = program_stream_for(config)
    start, end = parse_rfc3339(date_from), parse_rfc3339(date_to)
    return [stream.transaction_id(i) for i in range(config.transactions) if start <= stream.created_at_ts(i) <= end]


def test_defaults_cover_every_transaction_in_order() -> None:
    config = EmulatorConfig(transactions=500)
    ids = expected_transaction_ids(config)
    assert len(ids) == len(set(ids)) == 500
    assert ids == sorted(ids)


def test_a_timeline_over_many_days_with_bursts_and_gaps() -> None:
    rng = random.Random(7)
    start = int(parse_rfc3339("2024-01-01T00:00:00Z"))
    # bursts on exact midnights and noons, gaps of whole days, 14 days in all
    stamps = sorted(
        [start + day * 86400 + rng.choice([0, 0, 43200, 86399, rng.randrange(86400)]) for day in range(14)] * 3
        + [start + 5 * 86400] * 10
    )
    timeline = [format_rfc3339(ts) for ts in stamps]
    config = EmulatorConfig(transactions=len(timeline), created_at_timeline=timeline)
    days = [format_rfc3339(start + d * 86400) for d in range(15)]
    seen: list[str] = []
    for day in range(14):
        date_to = format_rfc3339(start + (day + 1) * 86400 - 1)
        ids = expected_transaction_ids(config, days[day], date_to)
        assert ids == _brute_force(config, days[day], date_to)
        seen += ids
    assert seen == expected_transaction_ids(config)
    assert len(expected_transaction_ids(config, days[5], days[5])) >= 10  # the burst at one instant


@pytest.mark.parametrize(
    ("date_from", "date_to"),
    [("2023-09-30T12:00:00Z", "2023-09-30T12:00:00Z"), ("2023-09-30T12:00:01Z", "2023-09-30T23:59:59Z")],
)
def test_ids_do_not_depend_on_the_timeline(date_from: str, date_to: str) -> None:
    spread = EmulatorConfig(transactions=3)
    pinned = EmulatorConfig(transactions=3, created_at_timeline=["2023-09-30T12:00:00Z"] * 3)
    assert expected_transaction_ids(pinned) == expected_transaction_ids(spread)
    inside = expected_transaction_ids(pinned, date_from, date_to)
    assert len(inside) == (3 if date_from.endswith("12:00:00Z") else 0)


def test_bad_dates_are_refused() -> None:
    with pytest.raises(ValueError):
        expected_transaction_ids(EmulatorConfig(transactions=1), "2023-09-30", None)
