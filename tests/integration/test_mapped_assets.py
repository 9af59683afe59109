"""Mapped S3 exports get their asset outlet at parse time, and each emits its asset event."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.testing.s3 import aws_connection_json
from tests.support.dag_runner import REPO, run_dag_test

DAG_FILE = REPO / "tests" / "dags" / "loyalty_mapped_exports.py"
ASSET = "loyalty/transactions/program=123/currency=bonus_points/_manifest.json"


def test_each_mapped_export_emits_one_asset_event(airflow_db, s3_server, s3_bucket, s3_client):
    config = EmulatorConfig(transactions=900, batch_size=200, task_duration=0.1, period_end="2023-09-03T23:59:59Z")
    with LoyaltyEmulator(config) as emulator:
        connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
        env = {
            "AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection),
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_json(s3_server),
            "LOYALTY_TEST_BUCKET": s3_bucket,
        }
        outcome = run_dag_test(DAG_FILE, "loyalty_mapped_exports", env)
    assert outcome.state == "success", outcome.output[-4000:]
    assert set(outcome.tasks) == {"export_day[0]", "export_day[1]", "export_day[2]"}
    with sqlite3.connect(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute(
            "SELECT asset.uri, asset_event.extra FROM asset_event JOIN asset ON asset.id = asset_event.asset_id "
            "WHERE asset_event.source_dag_id = 'loyalty_mapped_exports'"
        ).fetchall()
    assert [uri for uri, _ in rows] == [f"s3://{s3_bucket}/{ASSET}"] * 3
    manifests = sorted(json.loads(extra)["manifest"] for _, extra in rows)
    days = [
        "20230901T000000Z_20230901T235959Z",
        "20230902T000000Z_20230902T235959Z",
        "20230903T000000Z_20230903T235959Z",
    ]
    assert manifests == [
        f"s3://{s3_bucket}/loyalty/transactions/program=123/currency=bonus_points/{day}/_manifest.json" for day in days
    ]
    for manifest in manifests:
        key = manifest.removeprefix(f"s3://{s3_bucket}/")
        assert json.loads(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())["total_rows"] > 0
