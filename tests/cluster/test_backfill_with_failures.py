"""A 14-day backfill of the deferrable S3 export on CeleryExecutor while a worker and a triggerer die.

``airflow backfill create`` makes one run per daily interval, five at a time. Each run exports its
day in three batches, deferring to a triggerer for every one. During the backfill the test
SIGKILLs the triggerer that holds the most triggers, and later a worker in the middle of a batch,
starting a replacement for each. Every interval must still end with its own exact manifest, and
the API must have been asked for at most one extra export task per interrupted batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.cluster.celery_cluster import CeleryAirflowCluster, RunInfo
from tests.cluster.expectations import (
    BACKFILL_DAG,
    BATCHES_PER_DAY,
    DAYS,
    EXPORT_TASK,
    check_exact_export,
    day,
    expected_ids,
    period_key,
    prepare_emulator,
)
from tests.cluster.memory import MemorySampler

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(540, func_only=True)]

MAX_ACTIVE_RUNS = 5


@dataclass
class Kill:
    """One SIGKILL: what, when (seconds into the backfill and runs done by then), which runs' batches
    it interrupted, and the replacement started."""

    component: str
    at: float
    runs_done: int
    interrupted_runs: list[str]
    replacement: str


@dataclass
class KillPlan:
    """Kills a triggerer holding triggers once two runs are done, then a worker running a batch.

    :param cluster: the deployment.
    :param started: monotonic start of the backfill.
    """

    cluster: CeleryAirflowCluster
    started: float
    kills: list[Kill] = field(default_factory=list)

    def on_poll(self, runs: list[RunInfo]) -> None:
        """Called at every poll of the backfill's runs."""
        done = sum(run.state == "success" for run in runs)
        if not self.kills and done >= 2:
            self._kill_busiest_triggerer(done)
        elif len(self.kills) == 1 and done >= self.kills[0].runs_done + 3:
            self._kill_busy_worker(done)

    def _kill_busiest_triggerer(self, done: int) -> None:
        holders = self.cluster.trigger_holders(BACKFILL_DAG, EXPORT_TASK)
        counts: dict[str, list[str]] = {}
        for run_id, triggerer in holders.items():
            if triggerer in self.cluster.processes:
                counts.setdefault(triggerer, []).append(run_id)
        if not counts:
            return
        victim, runs = max(counts.items(), key=lambda item: len(item[1]))
        self._kill(victim, runs, "triggerer", done)

    def _kill_busy_worker(self, done: int) -> None:
        running: dict[str, list[str]] = {}
        for run_id, state, hostname, _try in self.cluster.export_tasks(BACKFILL_DAG, EXPORT_TASK):
            if state == "running" and hostname in self.cluster.processes:
                running.setdefault(str(hostname), []).append(run_id)
        if not running:
            return
        victim, runs = max(running.items(), key=lambda item: len(item[1]))
        self._kill(victim, runs, "worker", done)

    def _kill(self, victim: str, runs: list[str], kind: str, done: int) -> None:
        at = time.monotonic() - self.started
        self.cluster.kill(victim)  # SIGKILL to the process group and every descendant: no cleanup at all
        replacement = self.cluster.start_replacement(kind)
        self.kills.append(Kill(victim, at, done, sorted(runs), replacement))


def test_backfill_survives_a_killed_worker_and_triggerer(
    cluster: CeleryAirflowCluster, emulator: Any, s3_client: Any, fresh_bucket: str, cluster_figures: list[str]
) -> None:
    prepare_emulator(emulator)
    cluster.ensure_running("triggerer", 2)
    cluster.ensure_running("worker", 2)
    processes_before = len(cluster.processes)
    started = time.monotonic()
    cluster.backfill(
        BACKFILL_DAG,
        day(0).date().isoformat(),
        day(DAYS - 1).date().isoformat(),
        max_active_runs=MAX_ACTIVE_RUNS,
        conf={"bucket": fresh_bucket},
    )
    plan = KillPlan(cluster, started)
    memory = MemorySampler(cluster)
    peak_active = 0

    def watch(runs: list[RunInfo]) -> None:
        nonlocal peak_active
        peak_active = max(peak_active, sum(run.state == "running" for run in runs))
        plan.on_poll(runs)
        memory.sample()

    runs: list[RunInfo] = []
    try:
        runs = cluster.wait_for_runs(BACKFILL_DAG, DAYS, timeout=420, on_poll=watch)
    finally:  # the figures, also of a backfill that did not finish
        done = sum(run.state == "success" for run in runs or cluster.runs(BACKFILL_DAG))
        cluster_figures.extend(
            [
                f"processes started: {processes_before} Airflow processes + {len(plan.kills)} replacements "
                f"(+ PostgreSQL, Redis, moto S3, emulator)",
                f"backfill: {DAYS} daily intervals, {done} succeeded, max_active_runs={MAX_ACTIVE_RUNS} "
                f"(peak {peak_active} runs running at once), wall time {time.monotonic() - started:.1f} s",
            ]
            + [
                f"SIGKILL {kill.component} at {kill.at:.1f} s ({kill.runs_done} runs done), interrupting the "
                f"batches of {len(kill.interrupted_runs)} runs; replacement {kill.replacement}"
                for kill in plan.kills
            ]
            + memory.figures()
        )

    assert [kill.component.split("-")[0] for kill in plan.kills] == ["triggerer", "worker"], (
        f"the backfill ended before both kills could happen: {plan.kills}"
    )
    assert all(kill.interrupted_runs for kill in plan.kills), plan.kills
    assert len(runs) == DAYS, [run.run_id for run in runs]
    failed = [run.run_id for run in runs if run.state != "success"]
    assert not failed, f"runs that did not succeed: {failed}"

    landed: dict[str, Any] = {}
    for run in runs:
        start, end = run.interval_start, run.interval_end
        prefix = f"exports/{start.date().isoformat()}"
        landed[run.run_id] = check_exact_export(s3_client, fresh_bucket, prefix, expected_ids(emulator, start, end))
    prefixes = sorted(export.prefix for export in landed.values())
    assert prefixes == [f"exports/{day(i).date().isoformat()}" for i in range(DAYS)], prefixes

    # Export tasks the API was asked for, per interval: one per landed batch, plus at most one for
    # each batch a kill interrupted in that run.
    stats = emulator.stats()
    by_period = stats["export_tasks_by_period"]
    interruptions = {run.run_id: sum(run.run_id in kill.interrupted_runs for kill in plan.kills) for run in runs}
    extra_by_run = {}
    for run in runs:
        key = period_key(run.interval_start, run.interval_end)
        extra_by_run[run.run_id] = int(by_period.get(key, 0)) - landed[run.run_id].parts
    created = int(stats["export_tasks_created"])
    batches = sum(export.parts for export in landed.values())
    tries = sorted(attempt for _run, _state, _host, attempt in cluster.export_tasks(BACKFILL_DAG, EXPORT_TASK))
    cluster_figures.extend(
        [
            f"export tasks created {created} vs intervals x batches {DAYS} x {BATCHES_PER_DAY} = "
            f"{DAYS * BATCHES_PER_DAY}; parts landed {batches}; extra {created - batches} "
            f"(allowed <= {sum(interruptions.values())} interrupted batches)",
            f"rows landed {sum(export.rows for export in landed.values())}, every interval exact, no stray keys; "
            f"export task tries per run: {tries}",
        ]
    )
    assert batches == DAYS * BATCHES_PER_DAY
    assert sum(by_period.values()) == created, by_period
    over = {run_id: extra for run_id, extra in extra_by_run.items() if extra > interruptions[run_id]}
    assert not over, f"runs that created more than one extra export task per interrupted batch: {over}"
