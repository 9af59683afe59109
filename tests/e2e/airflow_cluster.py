"""A throwaway Airflow 3 "cluster" of real processes for end-to-end tests.

:class:`AirflowCluster` creates a temp ``AIRFLOW_HOME``, migrates its metadata database (SQLite in
the home by default, or any ``database_url`` such as a loopback PostgreSQL) and runs each
:class:`Component` (``api-server``, ``scheduler``, ``dag-processor``, one or more ``triggerer`` and,
for the CeleryExecutor, ``celery worker`` processes) as a subprocess on free loopback ports, each in
its own process group so that :meth:`AirflowCluster.kill` (e.g. SIGKILL of a triggerer) and
:meth:`AirflowCluster.stop` reach its children too. Intervals are shortened so a DAG run takes
seconds, and a triggerer counts as dead after a few seconds so its triggers move to another one.

Every process reports its component name as its hostname (``[core] hostname_callable`` is
:func:`component_hostname`), so the metadata database tells which triggerer holds a trigger
(``job.hostname``) and which worker runs a task (``task_instance.hostname``).

State is read straight from the metadata database (one short read per call, SQLite opened
read-only), which is quick enough to observe a task passing through ``deferred``. Each process
writes to its own log file under ``<home>/process-logs``; :meth:`AirflowCluster.dump_logs` returns
their tails and the task logs for a failing test.

Reusable: nothing in here knows about the loyalty provider except what the caller puts in
``env`` (connections, ``PYTHONPATH``) and the DAGs folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]
#: The environment variable that carries a process's component name (see :func:`component_hostname`).
COMPONENT_ENV = "LOYALTY_E2E_COMPONENT"


def component_hostname() -> str:
    """``[core] hostname_callable`` of cluster processes: the component's name, e.g. ``triggerer-2``.

    Task processes inherit it from their worker, so ``task_instance.hostname`` names the worker.
    """
    return os.environ.get(COMPONENT_ENV) or socket.getfqdn()


@dataclass(frozen=True)
class Component:
    """One long-running Airflow process.

    :param name: unique within the cluster (``triggerer-2``); also the process's hostname.
    :param args: arguments of the ``airflow`` command (``("triggerer", "--skip-serve-logs")``).
    """

    name: str
    args: tuple[str, ...]


#: The classic single-machine set: LocalExecutor inside the scheduler, one triggerer.
LOCAL_COMPONENTS: tuple[Component, ...] = (
    Component("api-server", ("api-server",)),
    Component("scheduler", ("scheduler",)),
    Component("dag-processor", ("dag-processor",)),
    Component("triggerer", ("triggerer",)),
)
#: Names of :data:`LOCAL_COMPONENTS` (kept for callers that only need the names).
COMPONENTS: tuple[str, ...] = tuple(component.name for component in LOCAL_COMPONENTS)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Process:
    component: Component
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float


@dataclass
class AirflowCluster:
    """Real Airflow processes around a temp home; use as a context manager.

    :param home: an empty directory to become ``AIRFLOW_HOME``.
    :param dags_folder: the DAGs folder the dag-processor parses.
    :param env: extra environment for every process (connections, ``PYTHONPATH``, settings...).
    :param python: the interpreter whose ``airflow`` console script is used.
    :param database_url: SQLAlchemy URL of the metadata database (default: SQLite in ``home``).
    :param executor: ``[core] executor``.
    :param components: the processes :meth:`start` runs; more can be added with :meth:`add_component`.
    """

    home: Path
    dags_folder: Path
    env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    database_url: str = ""
    executor: str = "LocalExecutor"
    components: tuple[Component, ...] = LOCAL_COMPONENTS
    api_port: int = field(default_factory=free_port)
    processes: dict[str, _Process] = field(default_factory=dict)
    _generation: int = 0
    _engine: Any = None
    _log_ports: dict[str, int] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        """The SQLite metadata database (when no ``database_url`` is given)."""
        return self.home / "airflow.db"

    @property
    def sql_alchemy_conn(self) -> str:
        """``[database] sql_alchemy_conn`` of every process."""
        return self.database_url or f"sqlite:///{self.db_path}"

    @property
    def airflow_bin(self) -> str:
        """The ``airflow`` console script next to :attr:`python`."""
        return str(Path(self.python).with_name("airflow"))

    @property
    def api_url(self) -> str:
        """Base URL of the api-server."""
        return f"http://127.0.0.1:{self.api_port}"

    def environment(self, component: str = "cli") -> dict[str, str]:
        """The environment of one process of this cluster.

        :param component: the component's name (its hostname); ``cli`` for commands.
        """
        base = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
        base.pop("AIRFLOW_HOME", None)
        if not self._log_ports:  # never the default 8793/8794: other clusters may run beside this one
            self._log_ports = {"worker": free_port(), "trigger": free_port()}
        settings = {
            "AIRFLOW_HOME": str(self.home),
            COMPONENT_ENV: component,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.component_hostname",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            # Default 5 s: on a loaded 2-core machine the api-server can take longer, and a task
            # whose calls time out fails for reasons that have nothing to do with the test.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__API__SECRET_KEY": _stable_secret(self.home, "api"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _stable_secret(self.home, "jwt"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._log_ports["worker"]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._log_ports["trigger"]),
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
        merged = {**base, **settings, **self.env}
        # The hostname callable lives beside this file: make it importable whatever the caller's path.
        merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), merged.get("PYTHONPATH")]))
        return merged

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

    def migrate(self, timeout: float = 240) -> None:
        """``airflow db migrate`` of the metadata database.

        :param timeout: seconds before the command is killed.
        """
        (self.home / "process-logs").mkdir(parents=True, exist_ok=True)
        migrate = self.airflow("db", "migrate", timeout=timeout)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-4000:]}\n{migrate.stderr[-4000:]}")

    def start(self, timeout: float = 240.0) -> None:
        """Migrate the database, start all components and wait until the api-server is healthy.

        :param timeout: seconds to wait for the api-server.
        """
        self.migrate()
        for component in self.components:
            self.start_component(component.name)
        self.wait_until(self._api_healthy, timeout, "the api-server to answer /api/v2/monitor/health")

    def add_component(self, component: Component) -> None:
        """Make another component known (e.g. a replacement worker), without starting it.

        :param component: its name must be new.
        """
        if any(known.name == component.name for known in self.components):
            raise ValueError(f"component {component.name} already exists")
        self.components = (*self.components, component)

    def start_component(self, name: str) -> None:
        """Start one component in its own process group.

        :param name: a name of :attr:`components`; a running one of the same name must be gone first.
        """
        component = next((known for known in self.components if known.name == name), None)
        if component is None:
            raise KeyError(f"unknown component {name!r}; known: {[known.name for known in self.components]}")
        if name in self.processes:
            raise RuntimeError(f"component {name} is already running")
        self._generation += 1
        log_dir = self.home / "process-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.{self._generation}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [self.airflow_bin, *component.args],
                env=self.environment(name),
                cwd=self.home,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = _Process(component, popen, log_path, time.monotonic())

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a component's process group and all its descendants, and reap it.

        :param name: the component.
        :param sig: the signal (SIGKILL: a crash without any cleanup).
        """
        process = self.processes.pop(name)
        descendants = _descendants(process.popen.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.popen.pid, sig)
        _signal_all(descendants, sig)  # children that left the group (new sessions) die too
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=15)

    def stop_component(self, name: str, grace: float = 20.0) -> None:
        """Stop one component cleanly: SIGTERM, then SIGKILL whatever is left after ``grace``.

        :param name: the component.
        :param grace: seconds for a clean shutdown.
        """
        self._terminate([self.processes.pop(name)], grace)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every component: SIGTERM to each process group, SIGKILL what is left after ``grace``.

        :param grace: seconds for a clean shutdown.
        """
        processes = list(self.processes.values())
        self.processes.clear()
        self._terminate(processes, grace)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @staticmethod
    def _terminate(processes: list[_Process], grace: float) -> None:
        descendants = {process.popen.pid: _descendants(process.popen.pid) for process in processes}
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in processes:
            # The group leader may be gone while its children (task runners, trigger runner) live on.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            _signal_all(descendants[process.popen.pid], signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)

    # ------------------------------------------------------------------ commands and state

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
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

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """One read of the metadata database (retried briefly while SQLite is locked).

        :param sql: the statement, with ``:name`` placeholders.
        :param params: their values.
        """
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        for attempt in range(20):
            try:
                with self._database().connect() as connection:
                    return [tuple(row) for row in connection.execute(text(sql), params)]
            except OperationalError:
                if attempt == 19 or self.database_url:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")  # pragma: no cover

    def _database(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            if self.database_url:
                self._engine = create_engine(self.database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
            else:
                self._engine = create_engine(
                    f"sqlite:///file:{self.db_path}?mode=ro&uri=true",
                    poolclass=NullPool,
                    connect_args={"timeout": 5},
                )
        return self._engine

    def wait_for_dag(self, dag_id: str, timeout: float = 90.0) -> None:
        """Wait until the dag-processor has serialized ``dag_id``.

        :param dag_id: the DAG.
        :param timeout: seconds.
        """

        def parsed() -> bool:
            if self.query("SELECT 1 FROM serialized_dag WHERE dag_id = :dag_id", dag_id=dag_id):
                return True
            errors = self.query("SELECT filename, stacktrace FROM import_error")
            if errors:  # fail now with the reason, not after the timeout
                raise RuntimeError(f"DAG {dag_id} not parsed; import errors: {errors}")
            return False

        self.wait_until(parsed, timeout, f"DAG {dag_id} to be parsed")

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
        rows = self.query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = :dag_id AND run_id = :run_id",
            dag_id=dag_id,
            run_id=run_id,
        )
        return {task_id: state for task_id, state in rows}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        """The DAG run's state (``None`` before it exists).

        :param dag_id: the DAG.
        :param run_id: the run.
        """
        rows = self.query(
            "SELECT state FROM dag_run WHERE dag_id = :dag_id AND run_id = :run_id", dag_id=dag_id, run_id=run_id
        )
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
            self.check_alive()
            time.sleep(interval)

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
        """Poll ``condition`` until it returns something truthy (returned), failing early if a component died.

        :param condition: the check.
        :param timeout: seconds before :class:`TimeoutError`.
        :param what: what is awaited, for the error message.
        :param interval: seconds between polls.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    def check_alive(self) -> None:
        """Raise if a component this cluster runs has exited."""
        for process in self.processes.values():
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"airflow {process.component.name} exited with {process.popen.returncode} (log: {process.log_path})"
                )

    def _api_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=2) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except OSError:
            return False

    def process_log(self, name: str) -> str:
        """Everything the running (or last) process of a component wrote so far.

        :param name: the component.
        """
        paths = sorted((self.home / "process-logs").glob(f"{name}.*.log"), key=lambda path: int(path.suffixes[-2][1:]))
        return paths[-1].read_text(errors="replace") if paths else ""

    def task_logs(self, dag_id: str, run_id: str, task_id: str) -> str:
        """All attempts' task logs of one task instance, in attempt order.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param task_id: the task.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        paths = sorted(folder.rglob("attempt=*.log")) if folder.exists() else []
        return "\n".join(path.read_text(errors="replace") for path in paths)

    def dump_logs(self, tail_bytes: int = 6000) -> str:
        """The tails of every process log and task log, for a failing test's report.

        :param tail_bytes: bytes kept from the end of each file.
        """
        parts: list[str] = []
        paths = sorted((self.home / "process-logs").glob("*.log"))
        logs = self.home / "logs"
        paths += sorted(p for p in logs.rglob("*") if p.is_file() and "dag_id=" in str(p)) if logs.exists() else []
        for path in paths:
            data = path.read_bytes()[-tail_bytes:].decode("utf-8", "replace")
            parts.append(f"===== {path.relative_to(self.home)} =====\n{data}")
        return "\n".join(parts)


def _descendants(pid: int) -> list[Any]:
    """The descendants of ``pid`` right now, as ``psutil.Process`` objects (empty when it is gone).

    ``psutil`` checks a process's identity (its start time) before signalling it, so a pid reused
    by an unrelated process after ours exited is never hit.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a test dependency
        return []
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _signal_all(processes: list[Any], sig: int) -> None:
    """Send ``sig`` to each ``psutil.Process`` that still runs (gone or reused pids are skipped)."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def _stable_secret(home: Path, purpose: str) -> str:
    """One random secret per cluster and purpose, the same for every process of the cluster."""
    path = home / f".{purpose}-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(64))  # >= 64 bytes: what HS512 JWTs want
    return path.read_text()
