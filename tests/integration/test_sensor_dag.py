"""The deferrable sensor in a real DAG run: ``dag.test()`` (Airflow 3 runs triggers inline).

``dag.test()`` runs in a subprocess against the session's migrated SQLite database (the
``airflow_db`` fixture), so its output can be checked; the emulator serves the API from this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "tests" / "dags" / "loyalty_export_wait.py"


def test_create_export_then_deferrable_sensor_under_dag_test(airflow_db: str) -> None:
    with LoyaltyEmulator(EmulatorConfig(task_duration=8.0)) as emulator:
        env = {
            **os.environ,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "LOYALTY_TEST_POKE_INTERVAL": "0.5",
            "AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(
                {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
            ),
        }
        run = subprocess.run(
            [sys.executable, str(DAG_FILE)], env=env, capture_output=True, text=True, timeout=240, check=False
        )
        output = run.stdout + run.stderr
        stats = emulator.stats()

    lines = [line for line in run.stdout.splitlines() if line.startswith("LOYALTY_DAG_RESULT ")]
    if run.returncode != 0 or not lines:
        pytest.fail(f"dag.test() failed (exit {run.returncode}):\n{output[-6000:]}")
    result = json.loads(lines[-1].removeprefix("LOYALTY_DAG_RESULT "))
    assert result == {"state": "success", "tasks": {"create_export": "success", "wait_for_export": "success"}}, output[
        -6000:
    ]
    assert "Deferring: waiting for export task" in output  # the sensor deferred ...
    assert "LoyaltyExportTaskTrigger" in output  # ... and the trigger polled
    assert stats["export_tasks_created"] == 1
    assert stats["requests"]["status"] >= 3
    assert emulator.token not in output
