"""Small helpers shared by test modules (no fixtures: those live in conftest files)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_loyalty.testing import LoyaltyEmulator


def point_connection_at(
    monkeypatch: pytest.MonkeyPatch,
    emulator: LoyaltyEmulator,
    *,
    content_type: str = "json",
    conn_id: str = "loyalty_default",
    token: str | None = None,
    **extra: Any,
) -> str:
    """Set ``AIRFLOW_CONN_<ID>`` (JSON form) to the emulator; fast retries unless told otherwise."""
    options = {"content_type": content_type, "retry_backoff": 0.01, "max_retry_wait": 2, **extra}
    connection = {
        "conn_type": "loyalty",
        "host": emulator.url,
        "password": token if token is not None else emulator.token,
        "extra": options,
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return conn_id


def requests_seen(emulator: LoyaltyEmulator, endpoint: str | None = None) -> int:
    """Requests the emulator received, in all or for one endpoint."""
    stats = emulator.stats()
    if endpoint is None:
        return int(stats["requests_total"])
    return int(stats["requests"].get(endpoint, 0))


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def csv_ids(paths: list[str]) -> list[str]:
    """Transaction ids of CSV parts, in order (header rows skipped)."""
    import csv

    ids: list[str] = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            column = header.index("transaction_id")
            ids.extend(row[column] for row in reader if row)
    return ids


def all_transaction_ids(emulator: LoyaltyEmulator) -> list[str]:
    """Every transaction id of the emulator's program, in export order, straight from its data."""
    from airflow_provider_loyalty.testing.data import program_stream

    config = emulator.config
    stream = program_stream(config.seed, config.transactions, config.period_start, config.period_end)
    return [stream.transaction_id(index) for index in range(config.transactions)]
