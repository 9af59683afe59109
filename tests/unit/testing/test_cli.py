"""The ``loyalty-emulator`` CLI in a subprocess, and a large streamed download with flat server RSS."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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


def _cli_refusal(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_loyalty.testing", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--batch-size", "0", "--port", "0"], "batch_size"),
        (["--port", "70000"], "argument --port"),
        (["--port", "-1"], "argument --port"),
        (["--port", "abc"], "argument --port"),
        (["--log-level", "VERBOSE", "--port", "0"], "argument --log-level"),
    ],
)
def test_cli_rejects_bad_arguments_naming_them_without_a_traceback(arguments: list[str], named: str) -> None:
    result = _cli_refusal(*arguments)
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not found")


class LargeDownload:
    """One large export downloaded from a CLI emulator, with the server's RSS around it."""

    def __init__(self, served: Served, rows: int, target: Path) -> None:
        pid = served.process.pid
        self._served = served
        self._session = requests.Session()
        self._session.headers["Authorization"] = "Bearer test-token"
        self._download(self._completed_result("2023-09-01T00:10:00Z"), target)  # warm up the code paths
        requests.post(served.url + "/_emulator/reset", timeout=10).raise_for_status()
        self.baseline_kib = _rss_kib(pid, "VmRSS")
        result = self._completed_result("2023-09-30T23:59:59Z")
        assert result["total"] == rows
        assert result["next_from_id"] == ""
        self.headers = self._download(result, target)
        self.peak_kib = _rss_kib(pid, "VmHWM")
        self.stats = requests.get(served.url + "/_emulator/stats", timeout=10).json()["data"]
        self.csv_bytes = 0
        self.lines = 0
        with zipfile.ZipFile(target) as archive, archive.open(archive.namelist()[0]) as member:
            while block := member.read(8 << 20):  # CRC is checked at EOF
                self.csv_bytes += len(block)
                self.lines += block.count(b"\r\n")

    def _completed_result(self, date_to: str) -> dict[str, Any]:
        url = self._served.url
        params = {
            "loyalty_program_id": 123,
            "points_currency_iid": 1,
            "date_from": "2023-09-01T00:00:00Z",
            "date_to": date_to,
        }
        created = self._session.post(url + "/api/v1.1/loyalty/transactions_export", json=params, timeout=10)
        task_id = created.json()["data"]["task_id"]
        deadline = time.monotonic() + 300
        while True:  # a pre-built file completes its task only once it is on disk
            status = self._session.post(url + "/api/v1.1/tasks/status", json={"task_id": task_id}, timeout=10)
            data: dict[str, Any] = status.json()["data"]
            if data["status"] == "completed":
                return dict(data["result"])
            assert time.monotonic() < deadline, "the export task never completed"
            time.sleep(0.2)

    def _download(self, result: dict[str, Any], target: Path) -> dict[str, str]:
        path = "/".join(quote(p, safe="") for p in result["hashed_file"].split("/"))
        with self._session.get(self._served.url + "/api/download/" + path, stream=True, timeout=300) as response:
            assert response.status_code == 200
            with target.open("wb") as sink:
                for chunk in response.iter_content(1 << 20):
                    sink.write(chunk)
            return dict(response.headers)

    @property
    def growth_mib(self) -> float:
        """Peak RSS growth of the server over the download, in MiB."""
        return (self.peak_kib - self.baseline_kib) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_large_streamed_download_keeps_server_rss_flat(cli: Any, tmp_path: Path) -> None:
    rows = 300_000
    served = cli(
        "--transactions", str(rows), "--batch-size", str(rows), "--row-padding", "900",
        "--zip-compresslevel", "1", "--task-duration", "0",
    )  # fmt: skip
    download = LargeDownload(served, rows, tmp_path / "export.zip")
    assert stop_cli(served) == 0
    assert download.headers["Transfer-Encoding"] == "chunked"
    assert download.csv_bytes >= 256 * MiB, download.csv_bytes
    assert download.lines == rows + 1  # header + rows (descriptions' inner newlines are bare \n)
    assert download.stats["download_csv_bytes"] == download.csv_bytes
    print(f"streamed {download.csv_bytes / MiB:.0f} MiB CSV; server RSS grew {download.growth_mib:.1f} MiB")
    assert download.growth_mib < 64, f"server RSS grew by {download.growth_mib:.1f} MiB while streaming"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_large_prebuilt_download_keeps_server_rss_flat(cli: Any, tmp_path: Path) -> None:
    rows = 50_000
    served = cli(
        "--transactions", str(rows), "--batch-size", str(rows), "--row-padding", "2000",
        "--zip-compresslevel", "0", "--task-duration", "0", "--prebuilt-files",
    )  # fmt: skip
    target = tmp_path / "export.zip"
    download = LargeDownload(served, rows, target)
    assert stop_cli(served) == 0
    zip_mib = target.stat().st_size / MiB
    assert download.headers["Content-Length"] == str(target.stat().st_size)
    assert download.lines == rows + 1
    assert download.stats["prebuilt_files_built"] == 1
    assert download.stats["download_bytes"] == target.stat().st_size
    assert download.stats["download_csv_bytes"] == download.csv_bytes
    print(f"pre-built {zip_mib:.0f} MiB zip; server RSS grew {download.growth_mib:.1f} MiB")
    assert zip_mib > 96  # stored, not deflated: a build or send in memory would show
    assert download.growth_mib < 24, f"server RSS grew by {download.growth_mib:.1f} MiB for a {zip_mib:.0f} MiB file"


def test_new_flags_reach_the_config(cli: Any) -> None:
    served = cli(
        "--prebuilt-files", "--csv-bom", "--zip-members", "3", "--csv-style", "stray_quotes",
        "--csv-line-ending", "lf", "--empty-export-style", "zero_byte_csv", "--file-ttl", "60",
        "--expired-file-status", "200", "--max-concurrent-requests", "4", "--concurrency-retry-after", "0.5",
        "--progress-style", "decimal",
    )  # fmt: skip
    remote = requests.get(served.url + "/_emulator/config", timeout=5).json()["data"]
    assert stop_cli(served) == 0
    assert {k: remote[k] for k in ("prebuilt_files", "csv_bom", "zip_members", "csv_style")} == {
        "prebuilt_files": True,
        "csv_bom": True,
        "zip_members": 3,
        "csv_style": "stray_quotes",
    }
    assert (remote["csv_line_ending"], remote["empty_export_style"], remote["progress_style"]) == (
        "lf",
        "zero_byte_csv",
        "decimal",
    )
    assert (remote["file_ttl"], remote["expired_file_status"]) == (60, 200)
    assert (remote["max_concurrent_requests"], remote["concurrency_retry_after"]) == (4, 0.5)


def test_flags_left_out_keep_the_config_file(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    timeline = ["2023-09-01T00:00:00Z", "2023-09-30T12:00:00Z"]
    config.write_text(json.dumps({"prebuilt_files": True, "transactions": 2, "created_at_timeline": timeline}))
    served = cli("--config", str(config))
    remote = requests.get(served.url + "/_emulator/config", timeout=5).json()["data"]
    assert stop_cli(served) == 0
    assert remote["prebuilt_files"] is True  # no --prebuilt-files flag: the file's value stands
    assert remote["created_at_timeline"] == timeline


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("loyalty-emulator")
    if not script.exists() and shutil.which("loyalty-emulator") is None:
        pytest.skip("package not installed with its console script")
    result = subprocess.run(
        [str(script if script.exists() else "loyalty-emulator"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--cursor-mode" in result.stdout
