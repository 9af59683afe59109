"""Airflow as production runs it: PostgreSQL metadata database, Redis broker, CeleryExecutor.

:class:`CeleryAirflowCluster` is the end-to-end :class:`~tests.e2e.airflow_cluster.AirflowCluster`
with a different set of processes: ``api-server``, ``scheduler``, ``dag-processor``, two
triggerers (``triggerer-1``, ``triggerer-2``) and two Celery workers (``worker-1``, ``worker-2``),
each its own process group. :meth:`CeleryAirflowCluster.start_replacement` starts a new worker or
triggerer (``worker-3`` ...) after one was killed.

Failure detection is shortened so a test sees recovery in seconds, not the production defaults'
minutes: a task whose worker died is failed (and retried) after ``task_instance_heartbeat_timeout``
(20 s), a task lost in a dead worker's prefetch is re-queued after ``task_queued_timeout`` (60 s),
a triggerer without heartbeat for 10 s loses its triggers to the other one, and expired deferrals
are checked every second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.e2e.airflow_cluster import AirflowCluster, Component

#: Celery worker slots per worker process (``--concurrency``).
WORKER_CONCURRENCY = 2
#: Seconds without a task heartbeat before the scheduler fails the task instance (it then retries).
TASK_HEARTBEAT_TIMEOUT = 20
#: Seconds without a triggerer heartbeat before its triggers go to another triggerer.
TRIGGERER_HEALTH_CHECK_THRESHOLD = 10


def worker_component(name: str) -> Component:
    """A Celery worker named ``name`` (its Celery hostname ``<name>@localhost``).

    :param name: unique in the cluster, e.g. ``worker-3``.
    """
    args = ("celery", "worker", "--celery-hostname", f"{name}@localhost", "--concurrency", str(WORKER_CONCURRENCY))
    return Component(name, (*args, "--skip-serve-logs", "--without-gossip", "--without-mingle"))


def triggerer_component(name: str) -> Component:
    """A triggerer named ``name``.

    :param name: unique in the cluster, e.g. ``triggerer-3``.
    """
    return Component(name, ("triggerer", "--skip-serve-logs"))


def celery_components() -> tuple[Component, ...]:
    """The production set: api-server, scheduler, dag-processor, two triggerers, two workers."""
    return (
        Component("api-server", ("api-server",)),
        Component("scheduler", ("scheduler", "--skip-serve-logs")),
        Component("dag-processor", ("dag-processor",)),
        triggerer_component("triggerer-1"),
        triggerer_component("triggerer-2"),
        worker_component("worker-1"),
        worker_component("worker-2"),
    )


def celery_settings(broker_url: str, database_url: str) -> dict[str, str]:
    """``AIRFLOW__*`` settings of every process: Celery on Redis, results in the metadata database.

    :param broker_url: the Redis broker, ``redis://127.0.0.1:<port>/0``.
    :param database_url: the metadata database (SQLAlchemy URL).
    """
    return {
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "tests.cluster.celery_config.CELERY_CONFIG",
        "AIRFLOW__CORE__PARALLELISM": "32",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "32",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "1",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_CHECK_THRESHOLD),
        "AIRFLOW__SCHEDULER__CATCHUP_BY_DEFAULT": "false",
        # The DAG files do not change during a session: parse them once, not every five seconds.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
    }


@dataclass(frozen=True)
class RunInfo:
    """One DAG run as the metadata database holds it.

    :param run_id: the run id.
    :param state: ``queued``, ``running``, ``success`` or ``failed``.
    :param interval_start: ``data_interval_start``.
    :param interval_end: ``data_interval_end``.
    """

    run_id: str
    state: str
    interval_start: datetime
    interval_end: datetime


@dataclass
class CeleryAirflowCluster(AirflowCluster):
    """An :class:`AirflowCluster` on PostgreSQL and CeleryExecutor with two workers and two triggerers.

    :param broker_url: the Redis broker of the Celery executor.
    """

    broker_url: str = ""
    replacements: dict[str, int] = field(default_factory=lambda: {"worker": 2, "triggerer": 2})

    def __post_init__(self) -> None:
        if not self.database_url or not self.broker_url:
            raise ValueError("CeleryAirflowCluster needs a database_url and a broker_url")
        self.executor = "CeleryExecutor"
        self.components = celery_components()
        self.env = {**celery_settings(self.broker_url, self.database_url), **self.env}

    def start_replacement(self, kind: str) -> str:
        """Start a new ``worker`` or ``triggerer`` (``worker-3``, ``worker-4`` ...) and return its name.

        :param kind: ``worker`` or ``triggerer``.
        """
        self.replacements[kind] += 1
        name = f"{kind}-{self.replacements[kind]}"
        self.add_component(worker_component(name) if kind == "worker" else triggerer_component(name))
        self.start_component(name)
        return name

    def ensure_running(self, kind: str, count: int = 2) -> None:
        """Start replacements until ``count`` workers or triggerers run, and wait until they are ready.

        :param kind: ``worker`` or ``triggerer``.
        :param count: how many must run.
        """
        while len(self.running(kind)) < count:
            self.start_replacement(kind)
        for name in self.running(kind):
            if kind == "worker":
                self.wait_for_worker(name)
            else:
                self.wait_for_triggerer(name)

    def live_triggerers(self) -> list[str]:
        """Triggerers whose heartbeat is fresh (a SIGKILLed one stays ``running`` in the job table)."""
        rows = self.query(
            "SELECT hostname, latest_heartbeat FROM job WHERE job_type = 'TriggererJob' AND state = 'running'"
        )
        now = datetime.now(UTC)
        return sorted(
            str(hostname)
            for hostname, heartbeat in rows
            if heartbeat is not None and (now - _utc(heartbeat)).total_seconds() < TRIGGERER_HEALTH_CHECK_THRESHOLD
        )

    def running(self, kind: str) -> list[str]:
        """Names of the running components of a kind (``worker``, ``triggerer``).

        :param kind: the name's prefix.
        """
        return sorted(name for name in self.processes if name.startswith(f"{kind}-"))

    # ------------------------------------------------------------------ readiness

    def wait_until_ready(self, timeout: float = 300.0) -> None:
        """Wait for the api-server, both triggerers' heartbeats and every worker's Celery readiness.

        :param timeout: seconds.
        """
        self.wait_until(self._api_healthy, timeout, "the api-server to answer /api/v2/monitor/health")
        for name in self.running("triggerer"):
            self.wait_for_triggerer(name, timeout)
        for name in self.running("worker"):
            self.wait_for_worker(name, timeout)

    def wait_for_triggerer(self, name: str, timeout: float = 120.0) -> None:
        """Wait until the triggerer ``name`` heartbeats in the ``job`` table.

        :param name: the component (its hostname).
        :param timeout: seconds.
        """
        self.wait_until(lambda: name in self.live_triggerers(), timeout, f"{name} to heartbeat")

    def wait_for_worker(self, name: str, timeout: float = 120.0) -> None:
        """Wait until the Celery worker ``name`` has logged that it is ready for tasks.

        :param name: the component.
        :param timeout: seconds.
        """
        self.wait_until(lambda: f"{name}@localhost ready" in self.process_log(name), timeout, f"{name} to be ready")

    # ------------------------------------------------------------------ commands

    def set_pool(self, pool: str, slots: int, include_deferred: bool = False) -> None:
        """Create or update an Airflow pool.

        :param pool: its name.
        :param slots: its slots.
        :param include_deferred: whether deferred tasks hold a slot too.
        """
        args = ["pools", "set", pool, str(slots), f"loyalty cluster test pool {pool}"]
        if include_deferred:
            args.append("--include-deferred")
        self.check_cli(*args)

    def backfill(
        self, dag_id: str, from_date: str, to_date: str, max_active_runs: int, conf: Mapping[str, Any]
    ) -> None:
        """``airflow backfill create``: one DAG run per data interval starting within the dates.

        :param dag_id: the DAG.
        :param from_date: first interval start (inclusive), ``YYYY-MM-DD``.
        :param to_date: last interval start (inclusive), ``YYYY-MM-DD``.
        :param max_active_runs: runs of the backfill active at once.
        :param conf: the runs' ``dag_run.conf`` (JSON).
        """
        self.check_cli(
            "backfill",
            "create",
            "--dag-id",
            dag_id,
            "--from-date",
            from_date,
            "--to-date",
            to_date,
            "--max-active-runs",
            str(max_active_runs),
            "--dag-run-conf",
            json.dumps(dict(conf)),
        )

    def check_cli(self, *args: str) -> str:
        """Run an ``airflow`` command and fail with its output unless it exits 0.

        :param args: the command's arguments.
        """
        result = self.airflow(*args)
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    # ------------------------------------------------------------------ state

    def runs(self, dag_id: str) -> list[RunInfo]:
        """The DAG's runs, by data interval.

        :param dag_id: the DAG.
        """
        rows = self.query(
            "SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run "
            "WHERE dag_id = :dag_id ORDER BY data_interval_start",
            dag_id=dag_id,
        )
        return [RunInfo(run_id, state, _utc(start), _utc(end)) for run_id, state, start, end in rows]

    def wait_for_runs(
        self,
        dag_id: str,
        count: int,
        timeout: float,
        on_poll: Callable[[list[RunInfo]], None] | None = None,
        interval: float = 0.5,
    ) -> list[RunInfo]:
        """Poll until the DAG has ``count`` runs and none is still queued or running.

        :param dag_id: the DAG.
        :param count: runs expected.
        :param timeout: seconds before :class:`TimeoutError` (which names the unfinished runs).
        :param on_poll: called with the runs at each poll (e.g. to kill a component).
        :param interval: seconds between polls.
        """
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(dag_id)
            if on_poll is not None:
                on_poll(runs)
            if len(runs) >= count and all(run.state in ("success", "failed") for run in runs):
                return runs
            if time.monotonic() > deadline:
                unfinished = [(run.run_id, run.state) for run in runs if run.state not in ("success", "failed")]
                raise TimeoutError(f"{dag_id}: {len(runs)}/{count} runs, unfinished after {timeout} s: {unfinished}")
            self.check_alive()
            time.sleep(interval)

    def export_tasks(self, dag_id: str, task_id: str) -> list[tuple[str, str | None, str | None, int]]:
        """``(run_id, state, hostname, try_number)`` of one task in every run of the DAG.

        :param dag_id: the DAG.
        :param task_id: the task.
        """
        rows = self.query(
            "SELECT run_id, state, hostname, try_number FROM task_instance WHERE dag_id = :dag_id AND task_id = :task_id",
            dag_id=dag_id,
            task_id=task_id,
        )
        return [(run_id, state, hostname, int(try_number or 0)) for run_id, state, hostname, try_number in rows]

    def trigger_holders(self, dag_id: str, task_id: str) -> dict[str, str]:
        """``run_id -> triggerer name`` of the task's deferred instances whose trigger a triggerer runs.

        :param dag_id: the DAG.
        :param task_id: the task.
        """
        rows = self.query(
            "SELECT ti.run_id, job.hostname FROM task_instance ti "
            "JOIN trigger t ON ti.trigger_id = t.id JOIN job ON t.triggerer_id = job.id "
            "WHERE ti.dag_id = :dag_id AND ti.task_id = :task_id AND ti.state = 'deferred'",
            dag_id=dag_id,
            task_id=task_id,
        )
        return {run_id: hostname for run_id, hostname in rows}


def _utc(value: Any) -> datetime:
    """A timestamp from the metadata database as an aware UTC datetime."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
