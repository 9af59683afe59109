"""EmulatorStats: counters, per-period export tasks and the in-flight gate, without a server."""

from __future__ import annotations

import threading
from typing import Any

from airflow_provider_loyalty.testing.stats import API_ENDPOINTS, EmulatorStats


def test_snapshot_has_every_counter_from_the_start() -> None:
    snapshot = EmulatorStats(10).snapshot(tasks=0, open_connections=0)
    assert snapshot["requests"] == dict.fromkeys((*API_ENDPOINTS, "control"), 0)  # as testing.rst lists them
    for name in ("export_tasks_created", "downloads_gone", "concurrency_rejections", "prebuilt_files_built"):
        assert snapshot[name] == 0
    assert snapshot["export_tasks_by_period"] == {}


def test_export_tasks_counted_per_period() -> None:
    stats = EmulatorStats(10)
    for period in ("a/b", "a/b", "c/d"):
        stats.count_export_task(period)
    snapshot = stats.snapshot(tasks=3, open_connections=0)
    assert snapshot["export_tasks_created"] == 3
    assert snapshot["export_tasks_by_period"] == {"a/b": 2, "c/d": 1}


def test_gate_admits_up_to_the_limit_and_counts_refusals() -> None:
    stats = EmulatorStats(10)
    assert stats.begin_request(2)
    assert stats.begin_request(2)
    assert not stats.begin_request(2)
    assert stats.begin_request(None)  # no limit
    stats.end_request()
    assert not stats.begin_request(2)  # still two in flight
    stats.end_request()
    assert stats.begin_request(2)
    snapshot = stats.snapshot(tasks=0, open_connections=0)
    assert snapshot["concurrency_rejections"] == 2
    assert snapshot["requests_in_flight"] == 2
    assert snapshot["requests_in_flight_peak"] == 3


def test_clear_keeps_requests_in_flight() -> None:
    stats = EmulatorStats(10)
    stats.begin_request(None)
    stats.count("download_bytes", 5)
    stats.record({"status": 200})
    stats.clear(request_log_limit=1)
    snapshot = stats.snapshot(tasks=0, open_connections=0)
    assert snapshot["download_bytes"] == 0
    assert snapshot["request_log"] == []
    assert snapshot["requests_in_flight"] == snapshot["requests_in_flight_peak"] == 1
    stats.record({"status": 200, "n": 1})
    stats.record({"status": 500, "n": 2})
    assert [e["n"] for e in stats.snapshot(0, 0)["request_log"]] == [2]  # the new log size applies


def test_counters_are_thread_safe() -> None:
    stats = EmulatorStats(10)

    def work() -> None:
        for _ in range(2000):
            stats.count("download_bytes", 1)
            if stats.begin_request(None):
                stats.end_request()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = stats.snapshot(0, 0)
    assert snapshot["download_bytes"] == 16_000
    assert snapshot["requests_in_flight"] == 0


def test_a_request_log_limit_changed_while_it_runs_applies_to_the_next_request(json_client: Any) -> None:
    """Documented as applying to the next request; it applied only after ``reset()``."""

    def requests_logged(count: int) -> int:
        for _ in range(count):
            json_client.call(json_client.STATUS, {"task_id": "task_unknown"})
        return len(json_client.emulator.stats()["request_log"])

    assert requests_logged(5) == 5
    json_client.emulator.config.request_log_limit = 3
    assert requests_logged(1) == 3  # the newest three
    json_client.emulator.config.request_log_limit = 10
    assert requests_logged(4) == 7  # kept ones stay, room for more
