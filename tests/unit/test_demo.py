"""``scripts/demo.py --help``: usage without running anything."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.support.dag_runner import REPO


def test_demo_help_prints_usage_and_starts_nothing():
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout.lower() and "--keep" in done.stdout
    assert "LOYALTY_DEMO_KEEP" in done.stdout
    assert time.monotonic() - started < 60  # no servers, no Airflow run
