"""A deferred export must not outlive its ``execution_timeout``, even when no triggerer runs.

Both triggerers are stopped and the API's export task never finishes. The export task defers (the
trigger is never picked up), and the operator has passed its remaining ``execution_timeout`` to
``defer(timeout=...)``: the scheduler times the deferral out, the task resumes on a worker and
fails there, naming the export task it waited for. The deferral must end close to
``execution_timeout`` after the task started (not before it, and within the scheduler's timeout
check and a few seconds), and the failure follow within a bound that allows for a task start on a
loaded machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_provider_loyalty.testing import FaultRule
from tests.cluster.celery_cluster import CeleryAirflowCluster
from tests.cluster.expectations import DEADLINE_DAG, DEADLINE_TIMEOUT, EXPORT_TASK, day, prepare_emulator

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300, func_only=True)]

#: How late the deferral may end: the scheduler checks for expired deferrals every second here.
DEFERRAL_SLACK = 20.0
#: How late the failure may come: the deferral's end, then queueing the resumed task, a worker
#: starting it (seconds on a loaded 2-core machine) and the failure being recorded.
FAILURE_SLACK = 120.0


@pytest.fixture
def triggerers_stopped(cluster: CeleryAirflowCluster) -> Iterator[list[str]]:
    """Stop every triggerer (cleanly); afterwards, two run again."""
    stopped = cluster.running("triggerer")
    try:
        for name in stopped:
            cluster.stop_component(name)
        cluster.wait_until(lambda: not cluster.live_triggerers(), 60, "every triggerer's heartbeat to stop")
        yield stopped
    finally:
        cluster.ensure_running("triggerer", 2)


def test_deferred_export_fails_at_its_execution_timeout(
    cluster: CeleryAirflowCluster,
    emulator: Any,
    fresh_bucket: str,
    s3_client: Any,
    triggerers_stopped: list[str],
    cluster_figures: list[str],
) -> None:
    prepare_emulator(emulator)
    emulator.set_faults([FaultRule(endpoint="export", kind="task_never_finishes")])
    interval = day(0).date().isoformat()
    cluster.backfill(DEADLINE_DAG, interval, interval, max_active_runs=1, conf={"bucket": fresh_bucket})

    def export_state() -> tuple[str | None, Any, Any] | None:
        rows = cluster.query(
            "SELECT state, start_date, end_date FROM task_instance WHERE dag_id = :dag_id AND task_id = :task_id",
            dag_id=DEADLINE_DAG,
            task_id=EXPORT_TASK,
        )
        return rows[0] if rows else None

    seen: list[str | None] = []
    first_start: list[Any] = []  # the task's first start_date (a resume may record a later one)
    deferral_ended: list[datetime] = []  # when the task was first seen leaving ``deferred``

    def ended() -> bool:
        row = export_state()
        state = row[0] if row else None
        if not seen or seen[-1] != state:
            if seen and seen[-1] == "deferred" and not deferral_ended:
                deferral_ended.append(datetime.now(UTC))
            seen.append(state)
        if row and row[1] is not None and not first_start:
            first_start.append(row[1])
        return state in ("failed", "success", "up_for_retry")

    cluster.wait_until(ended, DEADLINE_TIMEOUT + FAILURE_SLACK + 30, "the deferred export task to end", interval=0.5)
    state, start_date, end_date = export_state() or (None, None, None)
    began = _aware(first_start[0] if first_start else start_date)
    elapsed = (_aware(end_date) - began).total_seconds()
    deferred_for = (deferral_ended[0] - began).total_seconds() if deferral_ended else float("nan")
    run_id = cluster.runs(DEADLINE_DAG)[0].run_id
    log = cluster.task_logs(DEADLINE_DAG, run_id, EXPORT_TASK)
    tasks = emulator.export_tasks()
    cluster_figures.append(
        f"triggerers stopped ({', '.join(triggerers_stopped)}); export task states {seen}; "
        f"execution_timeout {DEADLINE_TIMEOUT:.0f} s: the deferral ended {deferred_for:.1f} s after the task "
        f"started (allowed +{DEFERRAL_SLACK:.0f} s), the task failed after {elapsed:.1f} s "
        f"(allowed +{FAILURE_SLACK:.0f} s); export tasks created {len(tasks)}"
    )

    assert "deferred" in seen, f"the export task never deferred: {seen}"
    assert state == "failed", seen
    assert len(tasks) == 1, tasks
    export_task_id = tasks[0]["task_id"]
    assert f"timed out waiting for export task {export_task_id}" in log, log[-3000:]
    assert DEADLINE_TIMEOUT - 1 <= deferred_for <= DEADLINE_TIMEOUT + DEFERRAL_SLACK, deferred_for
    assert DEADLINE_TIMEOUT - 1 <= elapsed <= DEADLINE_TIMEOUT + FAILURE_SLACK, elapsed
    listing = s3_client.list_objects_v2(Bucket=fresh_bucket, Prefix=f"exports/{interval}/")
    assert not any(item["Key"].endswith("/_manifest.json") for item in listing.get("Contents", [])), listing


def _aware(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))
