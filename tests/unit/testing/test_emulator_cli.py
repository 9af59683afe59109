"""The ``loyalty-emulator`` CLI in a subprocess, and a large streamed download with flat server RSS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

import airflow_provider_loyalty.testing as emulator_package

REPO_ROOT = Path(emulator_package.__file__).resolve().parents[2]
LINE_RE = re.compile(r"^loyalty-emulator listening on (http://127\.0\.0\.1:(\d+))$")
MiB = 1024 * 1024


class Served:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url


def start_cli(*args: str, timeout: float = 30) -> Served:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_loyalty.testing", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # the CLI prints one flushed line once bound
    match = LINE_RE.match(line)
    if not match:
        process.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {process.communicate(timeout=timeout)[1]}")
    assert int(match.group(2)) > 0
    return Served(process, match.group(1))


def stop_cli(served: Served, timeout: float = 10) -> int:
    served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout=timeout)
    finally:
        if served.process.poll() is None:
            served.process.kill()


@pytest.fixture
def cli() -> Iterator[Any]:
    started: list[Served] = []

    def start(*args: str) -> Served:
        started.append(start_cli(*args))
        return started[-1]

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait(timeout=10)


def test_cli_serves_and_stops_on_sigterm(cli: Any, tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([{"endpoint": "status", "kind": "http_503", "count": 1}]))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batch_size": 7, "member_history_sizes": [1, 2]}))
    served = cli("--transactions", "20", "--token", "s3cret", "--faults", str(faults), "--config", str(config))
    remote = requests.get(served.url + "/_emulator/config", timeout=5).json()["data"]
    assert remote["batch_size"] == 7
    assert remote["transactions"] == 20
    assert remote["token"] == "s3cret"
    headers = {"Authorization": "Bearer s3cret"}
    r = requests.post(served.url + "/api/v1.1/tasks/status", json={"task_id": "x"}, headers=headers, timeout=5)
    assert r.status_code == 503
    assert stop_cli(served) == 0


def test_cli_sigint(cli: Any) -> None:
    served = cli("--cursor-mode", "next_row", "--task-duration", "0")
    assert requests.get(served.url + "/_emulator/health", timeout=5).status_code == 200
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=10) == 0


def test_cli_rejects_bad_arguments() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_loyalty.testing", "--batch-size", "0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2
    assert "batch_size" in result.stderr


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not found")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_large_streamed_download_keeps_server_rss_flat(cli: Any, tmp_path: Path) -> None:
    rows = 300_000
    served = cli(
        "--transactions", str(rows), "--batch-size", str(rows), "--row-padding", "900",
        "--zip-compresslevel", "1", "--task-duration", "0",
    )  # fmt: skip
    pid = served.process.pid
    session = requests.Session()
    session.headers["Authorization"] = "Bearer test-token"
    params = {
        "loyalty_program_id": 123,
        "points_currency_iid": 1,
        "date_from": "2023-09-01T00:00:00Z",
        "date_to": "2023-09-30T23:59:59Z",
    }
    # warm up the code paths (small export) before measuring
    small = session.post(served.url + "/api/v1.1/loyalty/transactions_export", json=params, timeout=10)
    assert small.status_code == 200
    baseline = _rss_kib(pid, "VmRSS")

    task_id = session.post(served.url + "/api/v1.1/loyalty/transactions_export", json=params, timeout=10).json()[
        "data"
    ]["task_id"]
    result = session.post(served.url + "/api/v1.1/tasks/status", json={"task_id": task_id}, timeout=10).json()["data"][
        "result"
    ]
    assert result["total"] == rows
    assert result["next_from_id"] == ""
    target = tmp_path / "export.zip"
    path = "/".join(quote(p, safe="") for p in result["hashed_file"].split("/"))
    with session.get(served.url + "/api/download/" + path, stream=True, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        with target.open("wb") as sink:
            for chunk in response.iter_content(1 << 20):
                sink.write(chunk)
    peak = _rss_kib(pid, "VmHWM")
    stats = requests.get(served.url + "/_emulator/stats", timeout=10).json()["data"]
    assert stop_cli(served) == 0

    csv_bytes = 0
    lines = 0
    with zipfile.ZipFile(target) as archive, archive.open(archive.namelist()[0]) as member:
        while block := member.read(8 << 20):  # CRC is checked at EOF
            csv_bytes += len(block)
            lines += block.count(b"\r\n")
    assert csv_bytes >= 256 * MiB, csv_bytes
    assert lines == rows + 1  # header + rows (descriptions' inner newlines are bare \n)
    assert stats["download_csv_bytes"] == csv_bytes
    growth_mib = (peak - baseline) / 1024
    print(f"streamed {csv_bytes / MiB:.0f} MiB CSV; server RSS {baseline / 1024:.1f} MiB -> peak {peak / 1024:.1f} MiB")
    assert growth_mib < 64, f"server RSS grew by {growth_mib:.1f} MiB while streaming {csv_bytes / MiB:.0f} MiB"
