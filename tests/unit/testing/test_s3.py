"""The loopback S3 server (moto's, in its own process) and its helpers."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request

import psutil
import pytest

from airflow_provider_loyalty.testing.s3 import (
    S3ServerUnavailable,
    aws_connection_json,
    moto_s3_server,
    require_moto_server,
    unique_bucket_name,
)

#: S3's rules for a bucket name: 3..63 characters, lowercase letters, digits and hyphens, alphanumeric ends.
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):  # noqa: S310 - loopback
            return True
    except OSError:
        return False


def test_server_stores_objects_and_is_gone_after_the_block() -> None:
    with moto_s3_server() as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        client = server.client()
        client.create_bucket(Bucket="round-trip")
        client.put_object(Bucket="round-trip", Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket="round-trip", Key="a/b.txt")["Body"].read() == b"hello"
        process = psutil.Process(server.pid)
    deadline = time.monotonic() + 15
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "moto's server still runs after the block"
        time.sleep(0.05)
    assert not _answers(server.url)


_HOLDER = """
import sys, time
from airflow_provider_loyalty.testing.s3 import moto_s3_server
with moto_s3_server() as server:
    print(server.pid, server.url, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_the_server_ends_with_a_process_killed_inside_the_block(signal_name: str) -> None:
    """A test session stopped by SIGTERM (a CI cancellation, ``timeout``) or SIGKILL never leaves
    its S3 server running, orphaned."""
    import signal
    import subprocess

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True)
    server: psutil.Process | None = None
    try:
        assert holder.stdout is not None
        pid_text, url = holder.stdout.readline().split()
        server = psutil.Process(int(pid_text))
        assert _answers(url)
        holder.send_signal(getattr(signal, signal_name))
        holder.wait(30)
        deadline = time.monotonic() + 15
        while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"moto's server outlived its parent's {signal_name}"
            time.sleep(0.05)
        assert not _answers(url)
    finally:
        holder.kill()
        holder.wait()
        if server is not None and server.is_running():
            server.kill()  # a failed run must not leave it behind either


def test_missing_moto_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto", None)  # as if moto were not installed
    with pytest.raises(S3ServerUnavailable, match=re.escape("pip install 'airflow-provider-loyalty[testing]'")):
        require_moto_server()
    with pytest.raises(S3ServerUnavailable, match="cannot import 'moto'"), moto_s3_server():
        pass  # pragma: no cover - the server must not start


def test_missing_flask_is_missing_moto_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)  # moto without its [server] extra
    with pytest.raises(S3ServerUnavailable, match=r"cannot import 'flask'.*airflow-provider-loyalty\[testing\]"):
        require_moto_server()


def test_aws_connection_points_at_the_endpoint() -> None:
    connection = json.loads(aws_connection_json("http://127.0.0.1:4567"))
    assert connection["conn_type"] == "aws"
    assert connection["extra"] == {"endpoint_url": "http://127.0.0.1:4567", "region_name": "us-east-1"}
    assert connection["login"] and connection["password"]


@pytest.mark.parametrize(
    "hint",
    ["test_export[csv.gz-2023_09_01]", "TestS3::test_x", "", "---", "x" * 200, "a"],
)
def test_unique_bucket_names_are_valid_and_new(hint: str) -> None:
    first, second = unique_bucket_name(hint), unique_bucket_name(hint)
    assert BUCKET_NAME.match(first), first
    assert BUCKET_NAME.match(second), second
    assert first != second


def test_unique_bucket_name_starts_with_the_hint() -> None:
    assert unique_bucket_name("test_daily_export[2023-09-01]").startswith("test-daily-export-2023-09-01-")
