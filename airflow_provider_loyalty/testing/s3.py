"""moto's S3 server on a loopback port, beside the emulator: S3 for offline DAG tests and demos.

Needs ``moto[server]`` (in the package's ``test`` extra); nothing here is imported by the provider
itself. Used by the test suite, ``make demo`` and the benchmarks, and open to users' own tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoopbackS3", "aws_connection_json", "moto_s3_server"]

#: Credentials the loopback server accepts (moto accepts any; these are what clients send).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # noqa: S105 - a local test server's well-known key


@dataclass(frozen=True)
class LoopbackS3:
    """A running loopback S3 server.

    :param url: its endpoint URL, e.g. ``http://127.0.0.1:40123``.
    :param pid: the server process id (for resource measurements).
    """

    url: str
    pid: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_s3_server(log_path: str | Path | None = None, timeout: float = 60.0) -> Iterator[LoopbackS3]:
    """Start ``moto.server`` in its own process group on a free loopback port; stop it on exit.

    :param log_path: where the server's output goes (discarded when ``None``).
    :param timeout: seconds to wait for it to answer.
    """
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w", encoding="utf-8") if log_path is not None else None  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):  # noqa: S310 - loopback
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    where = f" (see {log_path})" if log_path is not None else ""
                    raise RuntimeError(f"moto S3 server did not start{where}") from None
                time.sleep(0.1)
        yield LoopbackS3(url=url, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not None:
            log.close()


def aws_connection_json(endpoint_url: str) -> str:
    """An ``aws`` Airflow connection (JSON form, for ``AIRFLOW_CONN_AWS_DEFAULT``) to the loopback S3."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": endpoint_url, "region_name": "us-east-1"},
        }
    )
