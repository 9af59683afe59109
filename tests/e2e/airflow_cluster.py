"""A throwaway Airflow 3 "cluster" of real processes for end-to-end tests.

:class:`AirflowCluster` creates a temp ``AIRFLOW_HOME`` with a SQLite metadata database
(``airflow db migrate``), then runs ``api-server``, ``scheduler`` (LocalExecutor), ``dag-processor``
and ``triggerer`` as subprocesses on free loopback ports, each in its own process group so that
:meth:`AirflowCluster.kill` (e.g. SIGKILL of the triggerer) and :meth:`AirflowCluster.stop` reach
its children too. Intervals are shortened so a DAG run takes seconds, and a triggerer counts as
dead after a few seconds so its triggers move to a new one.

State is read straight from the SQLite database (read-only, one short query at a time), which is
quick enough to observe a task passing through ``deferred``. Each process writes to its own log
file under ``<home>/process-logs``; :meth:`AirflowCluster.dump_logs` returns their tails and the
task logs for a failing test.

Reusable: nothing in here knows about the loyalty provider except what the caller puts in
``env`` (connections, ``PYTHONPATH``) and the DAGs folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class AirflowCluster:
    """Real Airflow processes around a temp home; use as a context manager.

    :param home: an empty directory to become ``AIRFLOW_HOME``.
    :param dags_folder: the DAGs folder the dag-processor parses.
    :param env: extra environment for every process (connections, ``PYTHONPATH``...).
    :param python: the interpreter whose ``airflow`` console script is used.
    """

    home: Path
    dags_folder: Path
    env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    api_port: int = field(default_factory=free_port)
    processes: dict[str, _Process] = field(default_factory=dict)
    _generation: int = 0

    @property
    def db_path(self) -> Path:
        """The SQLite metadata database."""
        return self.home / "airflow.db"

    @property
    def airflow_bin(self) -> str:
        """The ``airflow`` console script next to :attr:`python`."""
        return str(Path(self.python).with_name("airflow"))

    @property
    def api_url(self) -> str:
        """Base URL of the api-server."""
        return f"http://127.0.0.1:{self.api_port}"

    def environment(self) -> dict[str, str]:
        """The environment of every Airflow process of this cluster."""
        base = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
        base.pop("AIRFLOW_HOME", None)
        settings = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": _stable_secret(self.home, "api"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _stable_secret(self.home, "jwt"),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        return {**base, **settings, **self.env}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> AirflowCluster:
        """Migrate the database and start every component."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop every process this cluster started."""
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        """Migrate the database, start all components and wait until the api-server is healthy.

        :param timeout: seconds to wait for the api-server.
        """
        (self.home / "process-logs").mkdir(parents=True, exist_ok=True)
        migrate = self.airflow("db", "migrate", timeout=180)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-4000:]}\n{migrate.stderr[-4000:]}")
        for name in COMPONENTS:
            self.start_component(name)
        self.wait_until(self._api_healthy, timeout, "the api-server to answer /api/v2/monitor/health")

    def start_component(self, name: str) -> None:
        """Start one component (``airflow <name>``) in its own process group.

        :param name: one of :data:`COMPONENTS`; a running one of the same name must be gone first.
        """
        self._generation += 1
        log_path = self.home / "process-logs" / f"{name}.{self._generation}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [self.airflow_bin, name],
                env=self.environment(),
                cwd=self.home,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = _Process(name, popen, log_path)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a component's whole process group and reap it.

        :param name: the component.
        :param sig: the signal (SIGKILL: a crash without any cleanup).
        """
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=15)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every component: SIGTERM to each process group, SIGKILL what is left after ``grace``.

        :param grace: seconds for a clean shutdown.
        """
        processes = list(self.processes.values())
        self.processes.clear()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in processes:
            # The group leader may be gone while its children (task runners, trigger runner) live on.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)

    # ------------------------------------------------------------------ commands and state

    def airflow(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command against this cluster.

        :param args: the command's arguments.
        :param timeout: seconds before the command is killed.
        """
        return subprocess.run(
            [self.airflow_bin, *args],
            env=self.environment(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One read-only query of the metadata database (retried briefly while it is locked).

        :param sql: the statement.
        :param params: its parameters.
        """
        for attempt in range(20):
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
                ) as connection:
                    return connection.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_for_dag(self, dag_id: str, timeout: float = 90.0) -> None:
        """Wait until the dag-processor has serialized ``dag_id``.

        :param dag_id: the DAG.
        :param timeout: seconds.
        """
        self.wait_until(
            lambda: bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", (dag_id,))),
            timeout,
            f"DAG {dag_id} to be parsed",
        )

    def trigger(self, dag_id: str, run_id: str) -> None:
        """Create a DAG run with ``airflow dags trigger``.

        :param dag_id: the DAG.
        :param run_id: the run id to give it.
        """
        result = self.airflow("dags", "trigger", dag_id, "--run-id", run_id)
        if result.returncode != 0:
            raise RuntimeError(f"airflow dags trigger failed:\n{result.stdout}\n{result.stderr}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``task_id -> state`` of a DAG run's task instances.

        :param dag_id: the DAG.
        :param run_id: the run.
        """
        rows = self.query("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return {task_id: state for task_id, state in rows}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """The DAG run's state (``None`` before it exists).

        :param dag_id: the DAG.
        :param run_id: the run.
        """
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return rows[0][0] if rows else None

    def watch_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        on_poll: Callable[[dict[str, str | None]], None] | None = None,
        interval: float = 0.2,
    ) -> dict[str, list[str | None]]:
        """Poll a DAG run until it ends; return each task's distinct states in the order seen.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param timeout: seconds before :class:`TimeoutError`.
        :param on_poll: called with the current states at each poll (e.g. to kill a component).
        :param interval: seconds between polls.
        """
        history: dict[str, list[str | None]] = {}
        deadline = time.monotonic() + timeout
        while True:
            states = self.task_states(dag_id, run_id)
            for task_id, state in states.items():
                seen = history.setdefault(task_id, [])
                if not seen or seen[-1] != state:
                    seen.append(state)
            if on_poll is not None:
                on_poll(states)
            if self.run_state(dag_id, run_id) in ("success", "failed"):
                return history
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG run {dag_id}/{run_id} still running after {timeout} s: {history}")
            self._check_alive()
            time.sleep(interval)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` until true, failing early if a component died.

        :param condition: the check.
        :param timeout: seconds before :class:`TimeoutError`.
        :param what: what is awaited, for the error message.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for process in self.processes.values():
            if process.popen.poll() is not None:
                raise RuntimeError(f"airflow {process.name} exited with {process.popen.returncode}")

    def _api_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=2) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except OSError:
            return False

    def dump_logs(self, tail_bytes: int = 6000) -> str:
        """The tails of every process log and task log, for a failing test's report.

        :param tail_bytes: bytes kept from the end of each file.
        """
        parts: list[str] = []
        paths = sorted((self.home / "process-logs").glob("*.log"))
        paths += sorted(p for p in (self.home / "logs").rglob("*") if p.is_file() and "dag_id=" in str(p))
        for path in paths:
            data = path.read_bytes()[-tail_bytes:].decode("utf-8", "replace")
            parts.append(f"===== {path.relative_to(self.home)} =====\n{data}")
        return "\n".join(parts)


def _stable_secret(home: Path, purpose: str) -> str:
    """One random secret per cluster and purpose, the same for every process of the cluster."""
    path = home / f".{purpose}-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text()
