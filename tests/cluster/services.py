"""PostgreSQL and Redis from Debian's packages, each a private instance on a free loopback port.

:func:`postgres_server` runs ``initdb`` and ``postgres`` as the ``postgres`` system user when the
tests run as root (PostgreSQL refuses to run as root), with its data directory and unix socket
directory in a temp directory that user owns; fsync is off (a throwaway database). It yields a
:class:`PostgresServer` whose ``url`` is a SQLAlchemy URL of an ``airflow`` database.

:func:`redis_server` runs ``redis-server`` without persistence and yields its ``redis://`` URL.

Both stop what they started (by process id) when the ``with`` block ends, and keep their logs in
``log_dir`` for a failing test's report. ``scripts/install-system-packages cluster`` installs the
packages (``postgresql``, ``redis-server``) when missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.airflow_cluster import free_port


@dataclass(frozen=True)
class PostgresServer:
    """A running loopback PostgreSQL.

    :param port: its TCP port on 127.0.0.1.
    :param url: SQLAlchemy URL of the ``airflow`` database (psycopg2 driver).
    :param pid: the postmaster's process id.
    :param version: the server's version string.
    """

    port: int
    url: str
    pid: int
    version: str


@dataclass(frozen=True)
class RedisServer:
    """A running loopback Redis.

    :param port: its TCP port on 127.0.0.1.
    :param url: ``redis://127.0.0.1:<port>/0``.
    :param pid: the server's process id.
    """

    port: int
    url: str
    pid: int


def postgres_bindir() -> Path:
    """The directory of Debian's ``initdb`` / ``postgres`` (not on PATH by default)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install-system-packages cluster")
    return Path(candidates[-1]).parent


def _version_key(path: str) -> int:
    version = Path(path).parents[1].name
    return int(version) if version.isdigit() else 0


def _run_as_user() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def postgres_server(log_dir: Path, timeout: float = 60.0) -> Iterator[PostgresServer]:
    """Start a private PostgreSQL on a free loopback port; stop it and delete its data on exit.

    :param log_dir: where ``initdb.log`` and ``postgres.log`` go.
    :param timeout: seconds to wait for it to accept connections.
    """
    bindir = postgres_bindir()
    as_user = _run_as_user()
    # Not under pytest's tmp dirs: those are 0700 root, and the postgres user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="loyalty-cluster-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, sockets = root / "data", root / "sockets"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(log_dir / "initdb.log", "wb") as initdb_log:
            subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                stdout=initdb_log,
                stderr=subprocess.STDOUT,
                check=True,
                cwd=root,
                env={**os.environ, "LC_ALL": "C.UTF-8"},
                timeout=120,
                **as_user,
            )
        sockets.mkdir()
        if as_user:
            os.chown(sockets, as_user["user"], as_user["group"])
        settings = ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300"]
        argv = [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets)]
        for setting in settings:
            argv += ["-c", setting]
        with open(log_dir / "postgres.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
                start_new_session=True,
                **as_user,
            )
        base = f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
        version = _wait_for_postgres(f"{base}/postgres", process, timeout)
        _create_database(f"{base}/postgres", "airflow")
        yield PostgresServer(port=port, url=f"{base}/airflow", pid=process.pid, version=version)
    finally:
        if process is not None:
            _stop(process, signal.SIGINT)  # SIGINT: PostgreSQL's "fast" shutdown
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_postgres(url: str, process: subprocess.Popen[bytes], timeout: float) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as connection:
                    return str(connection.execute(text("SHOW server_version")).scalar())
            except OperationalError:
                if process.poll() is not None:
                    raise RuntimeError(f"postgres exited with {process.returncode} (see postgres.log)") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"postgres did not accept connections within {timeout} s") from None
                time.sleep(0.2)
    finally:
        engine.dispose()


def _create_database(url: str, name: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


@contextmanager
def redis_server(log_dir: Path, timeout: float = 30.0) -> Iterator[RedisServer]:
    """Start a private ``redis-server`` (no persistence) on a free loopback port; stop it on exit.

    :param log_dir: where ``redis.log`` goes.
    :param timeout: seconds to wait for it to answer ``PING``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run scripts/install-system-packages cluster")
    log_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="loyalty-cluster-redis-"))
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes"]
    with open(log_dir / "redis.log", "wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not _redis_pong(port):
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode} (see redis.log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer PING within {timeout} s")
            time.sleep(0.1)
        yield RedisServer(port=port, url=f"redis://127.0.0.1:{port}/0", pid=process.pid)
    finally:
        _stop(process, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes], sig: int, grace: float = 20.0) -> None:
    """Signal a server's process group, wait ``grace`` seconds, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # Server children (PostgreSQL's background workers) share the group: make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
