"""moto's S3 server on a loopback port, beside the emulator: S3 for offline DAG tests and demos.

Needs ``moto[server]`` (in the package's ``testing`` extra); nothing here is imported by the provider
itself. Used by the pytest fixtures ``loyalty_s3`` / ``loyalty_s3_bucket``, the test suite,
``make demo`` and the benchmarks, and open to users' own tests.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LoopbackS3",
    "S3ServerUnavailable",
    "aws_connection_json",
    "moto_s3_server",
    "require_moto_server",
    "unique_bucket_name",
]

#: Credentials the loopback server accepts (moto accepts any; these are what clients send).
ACCESS_KEY = "testing"
SECRET_KEY = "testing"  # noqa: S105 - a local test server's well-known key
REGION = "us-east-1"
#: What to install when moto's server is missing.
INSTALL_HINT = (
    "pip install 'airflow-provider-loyalty[testing]' (the extra for your own tests: moto's server, and the "
    "amazon provider LoyaltyTransactionsToS3Operator needs)"
)
#: Modules ``python -m moto.server`` needs: moto itself and its ``server`` extra (Flask).
_SERVER_MODULES = ("moto", "flask", "flask_cors")


class S3ServerUnavailable(RuntimeError):
    """moto's S3 server cannot run here: a module it needs is not installed. Says what to install."""


@dataclass(frozen=True)
class LoopbackS3:
    """A running loopback S3 server.

    :param url: its endpoint URL, e.g. ``http://127.0.0.1:40123``.
    :param pid: the server process id (for resource measurements).
    """

    url: str
    pid: int

    def client(self) -> Any:
        """A boto3 S3 client of this server (``boto3`` comes with the ``amazon`` extra)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )


def require_moto_server() -> None:
    """Check that ``python -m moto.server`` can run in this environment.

    :raises S3ServerUnavailable: naming the missing module and the extra to install.
    """
    for name in _SERVER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise S3ServerUnavailable(
                f"moto's S3 server is not installed here (cannot import {name!r}: {err}); {INSTALL_HINT}"
            ) from None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_s3_server(log_path: str | Path | None = None, timeout: float = 60.0) -> Iterator[LoopbackS3]:
    """Start ``moto.server`` in its own process group on a free loopback port; stop it on exit.

    The server keeps everything in memory: its buckets and objects are gone once it stops. It
    also stops when this process ends without leaving the context (SIGTERM, SIGKILL, a crash):
    it watches a pipe only this process holds (``testing/s3_server_child.py``).

    :param log_path: where the server's output goes (discarded when ``None``).
    :param timeout: seconds to wait for it to answer.
    :raises S3ServerUnavailable: moto's server is not installed (see :func:`require_moto_server`).
    """
    require_moto_server()
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w", encoding="utf-8") if log_path is not None else None  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", f"{__package__}.s3_server_child", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.PIPE,  # its end of file tells the server this process is gone
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
        if process.stdin is not None:
            process.stdin.close()
        if log is not None:
            log.close()


def aws_connection_json(endpoint_url: str) -> str:
    """An ``aws`` Airflow connection (JSON form, for ``AIRFLOW_CONN_AWS_DEFAULT``) to the loopback S3.

    :param endpoint_url: the server's URL (:attr:`LoopbackS3.url`).
    """
    return json.dumps(
        {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }
    )


def unique_bucket_name(hint: str) -> str:
    """A valid S3 bucket name that starts with ``hint`` (e.g. a test's name) and is new each call.

    :param hint: any text; lowered, and every run of other characters than ``a-z0-9`` becomes ``-``.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "bucket"
    return f"{stem}-{uuid.uuid4().hex[:12]}"
