"""Fixtures of the browser tests: Chromium, a real Airflow api-server (temp AIRFLOW_HOME) and the emulator.

* :func:`chromium` makes sure a system Chromium exists (``apt-get install chromium`` when we are
  root on a Debian-like machine, as in CI); Playwright drives it through ``executable_path``, so
  ``playwright install`` (a browser download) is never needed.
* :func:`airflow_api` runs only ``airflow api-server`` of an :class:`~tests.e2e.airflow_cluster.AirflowCluster`
  (SQLite, simple auth manager with every user an admin, so the UI needs no login) with the
  connection Test button enabled. The provider is importable there (editable install), so the
  Test button runs ``LoyaltyHook.test_connection`` in the api-server process.
* :func:`emulator` serves the loyalty API on loopback from this process; the api-server reaches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_loyalty.testing import LoyaltyEmulator
from tests.e2e.airflow_cluster import AirflowCluster

CHROMIUM = Path(os.environ.get("LOYALTY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 1080}  # tall enough for the whole Add Connection dialog


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system Chromium, installed with apt-get if missing (root only); skip only if that is impossible."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt_get, "update", "-q"], [apt_get, "install", "-y", "-q", "--no-install-recommends", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM


@pytest.fixture(scope="session")
def sync_playwright_api() -> Any:
    """``playwright.sync_api``; a missing package is a broken test environment, not a reason to skip."""
    try:
        import playwright.sync_api as api
    except ImportError:
        pytest.fail("the playwright package is missing: it belongs to the [test] extra (pip install -e '.[test]')")
    return api


@pytest.fixture(scope="module")
def emulator() -> Iterator[LoyaltyEmulator]:
    """The loyalty API emulator on loopback, in this process."""
    with LoyaltyEmulator() as emu:
        yield emu


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as reply:  # noqa: S310
            return bool(reply.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowCluster]:
    """A migrated temp AIRFLOW_HOME and ``airflow api-server`` on a free loopback port (nothing else)."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    dags = home / "dags"
    dags.mkdir()
    cluster = AirflowCluster(
        home=home,
        dags_folder=dags,
        env={
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            # Every user (including the anonymous browser) is an admin: no login page.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        },
    )
    started = time.monotonic()
    (home / "process-logs").mkdir()
    try:
        migrate = cluster.airflow("db", "migrate", timeout=240)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-4000:]}\n{migrate.stderr[-4000:]}")
        migrated = time.monotonic()
        cluster.start_component("api-server")
        cluster.wait_until(lambda: _healthy(cluster.api_url), 150, "the api-server to answer /api/v2/monitor/health")
    except BaseException:
        print(cluster.dump_logs())
        cluster.stop()
        raise
    print(
        f"db migrate {migrated - started:.1f} s, api-server up after {time.monotonic() - migrated:.1f} s "
        f"at {cluster.api_url}"
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def browser_context(
    chromium: Path, sync_playwright_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A headless Chromium (fresh profile) driven by Playwright; closed with the module."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
            locale="en-US",
            timezone_id="UTC",
        )
        try:
            yield context
        finally:
            context.close()
