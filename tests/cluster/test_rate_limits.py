"""Eight backfill runs at once against an API that answers 429 above N concurrent requests.

The recipe of docs/production.rst: one Airflow pool per loyalty connection, as many slots as the
API allows concurrent requests. The DAG's export task runs in the ``loyalty_default`` pool of
:data:`API_CONCURRENCY` slots, so at most that many exports download, upload or create export
tasks at once; the deferred waits do not hold a slot, and their status polls (from both
triggerers, against an API that takes 0.4 s per request) push it over its limit:
those 429s carry ``Retry-After`` and the provider's retry policy absorbs them. Every run must end
exact, and the API must really have refused requests.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_loyalty.testing import FaultRule
from tests.cluster.celery_cluster import CeleryAirflowCluster, RunInfo
from tests.cluster.expectations import (
    EXPORT_TASK,
    RATE_LIMITED_DAG,
    ROWS_PER_DAY,
    check_exact_export,
    day,
    expected_ids,
    prepare_emulator,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(360, func_only=True)]

RUNS = 8
#: Requests the API serves at once; above that it answers 429 with ``Retry-After``.
API_CONCURRENCY = 2
POOL = "loyalty_default"
#: Seconds the API takes to answer each request.
API_LATENCY = 0.4


def test_eight_runs_at_once_within_the_api_rate_limit(
    cluster: CeleryAirflowCluster, emulator: Any, s3_client: Any, fresh_bucket: str, cluster_figures: list[str]
) -> None:
    # One batch a day here: the point is runs at once, and every batch costs two task starts. Export
    # tasks that run long enough for all eight runs to wait at once, and an API that takes
    # API_LATENCY seconds per request, as a real one does: the polls overlap and pass the limit.
    prepare_emulator(
        emulator,
        batch_size=ROWS_PER_DAY,
        task_duration=12.0,
        max_concurrent_requests=API_CONCURRENCY,
        concurrency_retry_after=0.5,
    )
    emulator.set_faults([FaultRule(endpoint="*", kind="slow", params={"seconds": API_LATENCY})])
    cluster.ensure_running("triggerer", 2)
    cluster.ensure_running("worker", 2)
    cluster.set_pool(POOL, API_CONCURRENCY)
    started = time.monotonic()
    cluster.backfill(
        RATE_LIMITED_DAG,
        day(0).date().isoformat(),
        day(RUNS - 1).date().isoformat(),
        max_active_runs=RUNS,
        conf={"bucket": fresh_bucket},
    )
    peaks = {"runs": 0, "in_pool": 0, "deferred": 0}

    def watch(runs: list[RunInfo]) -> None:
        peaks["runs"] = max(peaks["runs"], sum(run.state == "running" for run in runs))
        states = [state for _run, state, _host, _try in cluster.export_tasks(RATE_LIMITED_DAG, EXPORT_TASK)]
        peaks["in_pool"] = max(peaks["in_pool"], sum(state in ("queued", "running") for state in states))
        peaks["deferred"] = max(peaks["deferred"], states.count("deferred"))

    runs = cluster.wait_for_runs(RATE_LIMITED_DAG, RUNS, timeout=300, on_poll=watch)
    wall = time.monotonic() - started
    stats = emulator.stats()
    cluster_figures.extend(
        [
            f"{RUNS} runs, max_active_runs={RUNS} (peak {peaks['runs']} running at once), pool {POOL} of "
            f"{API_CONCURRENCY} slots (peak {peaks['in_pool']} export tasks queued/running in it, "
            f"{peaks['deferred']} deferred at once), wall time {wall:.1f} s",
            f"API limit {API_CONCURRENCY} concurrent requests: {stats['concurrency_rejections']} answered 429 "
            f"(peak {stats['requests_in_flight_peak']} in flight), {stats['requests_total']} requests, "
            f"{stats['export_tasks_created']} export tasks",
        ]
    )

    failed = [run.run_id for run in runs if run.state != "success"]
    assert not failed, f"runs that did not succeed: {failed}"
    for run in runs:
        start, end = run.interval_start, run.interval_end
        check_exact_export(
            s3_client, fresh_bucket, f"exports/{start.date().isoformat()}", expected_ids(emulator, start, end)
        )
    assert peaks["runs"] == RUNS, f"the {RUNS} runs never ran all at once (peak {peaks['runs']})"
    assert peaks["in_pool"] <= API_CONCURRENCY, peaks
    assert stats["concurrency_rejections"] > 0, "the API's limit was never reached: the test proved nothing"
