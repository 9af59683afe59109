"""Shared pieces of the benchmarks: figures, servers in their own processes, RSS sampling, children."""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Scratch space of the benchmarks (git-ignored, removed by ``make clean``).
WORK_ROOT = REPO_ROOT / ".bench"
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass
class Figure:
    """One measured figure, printed as one line and shown in the docs.

    :param bench: the benchmark it belongs to (``stream``, ``triggerer``, ``paging``).
    :param name: what was measured.
    :param value: the number.
    :param unit: its unit.
    :param target: the target as text (``None``: informational).
    :param ok: whether the target was met (``None``: no target).
    """

    bench: str
    name: str
    value: float
    unit: str
    target: str | None = None
    ok: bool | None = None

    def line(self) -> str:
        """``bench: name = value unit [target: ..., MET|MISSED]``."""
        value = f"{self.value:,.3f}".rstrip("0").rstrip(".") if isinstance(self.value, float) else f"{self.value:,}"
        text = f"{self.bench}: {self.name} = {value} {self.unit}".rstrip()
        if self.target is not None:
            text += f"  [target {self.target}: {'MET' if self.ok else 'MISSED'}]"
        return text


@dataclass
class BenchResult:
    """What one benchmark hands back to the runner.

    :param bench: its name.
    :param figures: the figures (targets included).
    :param markdown: the benchmark's section of ``docs/benchmarks.md`` (tables and explanations).
    :param wall_seconds: how long the benchmark took, setup included.
    :param load: ``os.getloadavg()`` before and after.
    :param data: series the charts are drawn from (see :mod:`benchmarks.charts`).
    """

    bench: str
    figures: list[Figure] = field(default_factory=list)
    markdown: str = ""
    wall_seconds: float = 0.0
    load: dict[str, list[float]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def missed(self) -> list[Figure]:
        """Figures whose target was missed."""
        return [f for f in self.figures if f.ok is False]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


#: Libraries whose versions every report records.
LIBRARIES = (
    "apache-airflow",
    "airflow-provider-loyalty",
    "apache-airflow-providers-amazon",
    "apache-airflow-providers-http",
    "requests",
    "aiohttp",
    "boto3",
    "botocore",
    "moto",
    "matplotlib",
)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; 0 for an empty sequence."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def median(values: Sequence[float]) -> float:
    """Median, 0 for an empty sequence."""
    return float(statistics.median(values)) if values else 0.0


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _raise_nofile() -> None:
    """Lift the soft open-files limit to the hard one (1,000 keep-alive sockets per process)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class EmulatorProcess:
    """The loyalty API emulator served by its own process (``python -m airflow_provider_loyalty.testing``).

    :param config: :class:`~airflow_provider_loyalty.testing.EmulatorConfig` fields.
    :param log_path: where the emulator's stderr goes.
    """

    def __init__(self, config: dict[str, Any], log_path: Path) -> None:
        self.config = dict(config)
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.token = str(self.config.get("token", "test-token"))

    def __enter__(self) -> EmulatorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        config_file = self.log_path.with_suffix(".config.json")
        config_file.write_text(json.dumps(self.config), encoding="utf-8")
        with open(self.log_path, "w", encoding="utf-8") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "airflow_provider_loyalty.testing", "--port", "0", "--config", str(config_file)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=REPO_ROOT,
                preexec_fn=_raise_nofile,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        prefix = "loyalty-emulator listening on "
        if not line.startswith(prefix):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator did not start: {line!r} (see {self.log_path})")
        self.url = line[len(prefix) :]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    @property
    def pid(self) -> int:
        """The emulator's process id."""
        assert self.process is not None
        return self.process.pid

    def _control(self, name: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.url}/_emulator/{name}",
            data=data,
            method="GET" if payload is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310 - loopback
            return json.loads(reply.read())["data"]

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats`` without the request log."""
        stats = self._control("stats")
        stats.pop("request_log", None)
        return dict(stats)

    def configure(self, **changes: Any) -> None:
        """``POST /_emulator/config`` (applies to export tasks created afterwards)."""
        self._control("config", changes)

    def reset(self) -> None:
        """``POST /_emulator/reset``: counters, request log and tasks."""
        self._control("reset", {})

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the emulator process has used."""
        return process_cpu_seconds(self.pid)


def loyalty_connection_json(url: str, token: str, content_type: str = "json") -> str:
    """A ``loyalty`` Airflow connection (JSON form) pointing at the emulator."""
    return json.dumps({"conn_type": "loyalty", "host": url, "password": token, "extra": {"content_type": content_type}})


def airflow_env(workdir: Path, **connections: str) -> dict[str, str]:
    """Environment of a child that runs Airflow code: its own ``AIRFLOW_HOME``, env-var connections.

    :param workdir: scratch directory; ``AIRFLOW_HOME`` is created below it.
    :param connections: conn id -> connection JSON, exported as ``AIRFLOW_CONN_<ID>``.
    """
    home = workdir / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # Children import Airflow afresh: compile it once into .bench/ rather than in every child
        # (with PYTHONDONTWRITEBYTECODE each child spends seconds compiling Airflow's sources).
        "PYTHONPYCACHEPREFIX": str(WORK_ROOT / "pycache"),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for conn_id, document in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = document
    return env


def run_child(module: str, payload: dict[str, Any], env: dict[str, str], log_path: Path, timeout: float) -> Any:
    """Run ``python -m <module> child '<json>'``; return the JSON of its last stdout line.

    :raises RuntimeError: the child failed (its stderr is in ``log_path``).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as stderr:
        completed = subprocess.run(
            [sys.executable, "-m", module, "child", json.dumps(payload)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=timeout,
            preexec_fn=_raise_nofile,
            check=False,
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{module} child failed (exit {completed.returncode}); stderr tail:\n{tail}")
    return json.loads(lines[-1])


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size (``VmRSS``) of a process, in bytes."""
    return _status_kib(pid, "VmRSS") * 1024


def hwm_bytes(pid: int | str = "self") -> int:
    """Peak resident set size (``VmHWM``) of a process, in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_hwm() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``/proc/self/clear_refs`` = 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def _status_kib(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def process_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (from ``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class RssSampler:
    """Samples a process's ``VmRSS`` in a daemon thread; ``peak`` is the largest sample.

    :param pid: the process (default: this one).
    :param interval: seconds between samples.
    :param keep: keep every sample with its time, for :meth:`timeline`.
    """

    def __init__(self, pid: int | str = "self", interval: float = 0.01, keep: bool = False) -> None:
        self.pid = pid
        self.interval = interval
        self.keep = keep
        self.peak = 0
        self.samples = 0
        self.kept: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = rss_bytes(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, value)
            self.samples += 1
            if self.keep:
                self.kept.append((time.perf_counter(), value))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))

    def timeline(self, origin: float, baseline: int, every: float) -> list[tuple[float, float]]:
        """``(seconds since origin, MiB above baseline)``: the largest sample of each ``every`` seconds.

        :param origin: ``time.perf_counter()`` at the start.
        :param baseline: RSS the growth is measured from.
        :param every: width of the time buckets.
        """
        buckets: dict[int, int] = {}
        for when, value in self.kept:
            slot = int((when - origin) / every)
            buckets[slot] = max(buckets.get(slot, 0), value)
        return [(round(slot * every, 3), round((value - baseline) / MIB, 2)) for slot, value in sorted(buckets.items())]


def machine_info() -> dict[str, str]:
    """CPU count, memory, CPU model, OS, Python, Airflow and library versions."""
    import platform
    from importlib import metadata

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    libraries = LIBRARIES
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "commit": commit,
        "nproc": str(os.cpu_count()),
        "memory": memory,
        "cpu": model,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **{name: version(name) for name in libraries},
    }


def load_average() -> list[float]:
    """1/5/15-minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def gzip_level() -> int | str:
    """The gzip level of the provider's ``csv.gz`` parts (``export/part_formats.py:GZIP_LEVEL``)."""
    from airflow_provider_loyalty.export import part_formats

    return getattr(part_formats, "GZIP_LEVEL", "unknown")


def human_bytes(count: float) -> str:
    """``123.4 MiB``-style text."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"
