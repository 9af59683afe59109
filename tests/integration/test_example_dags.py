"""The example DAGs, run by Airflow itself (``dag.test()``) against the emulator and moto's S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.testing.s3 import aws_connection_json
from tests.support.dag_runner import REPO, run_dag_test

EXAMPLES = REPO / "example_dags"


def loyalty_env(emulator: LoyaltyEmulator, **extra: str) -> dict[str, str]:
    connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
    return {"AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection), "LOYALTY_EXAMPLE_POLL_INTERVAL": "0.2", **extra}


def test_example_dags_import_without_errors():
    from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert {
        "example_loyalty_transactions_to_s3",
        "example_loyalty_manifest_consumer",
        "example_loyalty_export_with_sensor",
        "example_loyalty_account_transactions",
    } <= set(bag.dag_ids)


def test_transactions_to_s3_example(airflow_db, s3_server, s3_bucket, s3_client):
    config = EmulatorConfig(transactions=6000, batch_size=1000, task_duration=0.5, period_end="2023-09-01T23:59:59Z")
    with LoyaltyEmulator(config) as emulator:
        env = loyalty_env(
            emulator, LOYALTY_EXAMPLE_BUCKET=s3_bucket, AIRFLOW_CONN_AWS_DEFAULT=aws_connection_json(s3_server)
        )
        outcome = run_dag_test(
            EXAMPLES / "example_loyalty_transactions_to_s3.py",
            "example_loyalty_transactions_to_s3",
            env,
            logical_date="2023-09-02T00:00:00Z",
        )
        token = emulator.token
    assert outcome.state == "success", outcome.output[-4000:]
    key = "loyalty/transactions/program=123/day=2023-09-01/_manifest.json"
    manifest = json.loads(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert manifest["total_rows"] == 6000
    assert len(manifest["parts"]) == 6
    assert "deferred" in outcome.output.lower() or "LoyaltyExportTaskTrigger" in outcome.output
    assert token not in outcome.output
    # The manifest's asset event carries the exact manifest key for downstream DAGs.
    import os
    import sqlite3

    with sqlite3.connect(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db") as db:
        extras = [json.loads(row[0]) for row in db.execute("SELECT extra FROM asset_event ORDER BY id")]
    assert {"manifest": f"s3://{s3_bucket}/{key}", "total_rows": 6000, "parts": 6} in extras


def test_export_with_sensor_example(airflow_db, tmp_path: Path):
    with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000, task_duration=1.0)) as emulator:
        outcome = run_dag_test(
            EXAMPLES / "example_loyalty_export_with_sensor.py",
            "example_loyalty_export_with_sensor",
            loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path)),
        )
        stats = emulator.stats()
    assert outcome.state == "success", outcome.output[-4000:]
    assert outcome.tasks == {
        "create_export_task": "success",
        "wait_for_export": "success",
        "download_export": "success",
    }
    (manifest_path,) = tmp_path.glob("*/_manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["total_rows"] == 2500
    assert stats["export_tasks_created"] == 3  # the sensor's task was adopted, not re-created


def test_account_transactions_example_maps_over_members(airflow_db, tmp_path: Path):
    with LoyaltyEmulator(EmulatorConfig(member_history_sizes=[250, 3, 0, 42, 1])) as emulator:
        outcome = run_dag_test(
            EXAMPLES / "example_loyalty_account_transactions.py",
            "example_loyalty_account_transactions",
            loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path)),
        )
    assert outcome.state == "success", outcome.output[-4000:]
    assert set(outcome.tasks) == {"member_history[0]", "member_history[1]", "member_history[2]"}
    files = sorted(tmp_path.glob("members/*/member-*.jsonl"))
    assert [sum(1 for _ in path.open()) for path in files] == [250, 3, 42]


@pytest.mark.parametrize("dag_file", sorted(EXAMPLES.glob("example_*.py")), ids=lambda p: p.stem)
def test_example_dags_parse_with_the_cli(dag_file: Path, airflow_db):
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLES)}
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "list-import-errors", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert dag_file.name not in done.stdout
