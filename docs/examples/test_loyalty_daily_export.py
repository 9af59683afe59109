"""Test your own daily S3 export DAG offline, with the provider's pytest fixtures only.

The DAG is ``dags/loyalty_daily_export.py``; ``dag.test()`` runs it through real Airflow against the
loyalty API emulator, moto's S3 server and a migrated SQLite metadata DB, all on this machine.
Included by docs/testing.rst.
"""

from __future__ import annotations

import json
from pathlib import Path

import pendulum
import pytest
from botocore.exceptions import ClientError

from airflow_provider_loyalty.exceptions import LoyaltyStorageError
from airflow_provider_loyalty.testing import EmulatorConfig
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

DAY = "2023-09-01"


# [START howto_test_dag_fixtures]
@pytest.fixture
def loyalty_dags_folder():
    # Where dag.test() finds the DAG (default: <rootdir>/dags).
    return Path(__file__).parent / "dags"


@pytest.fixture
def loyalty_emulator_config():
    # 2,500 transactions on 2023-09-01, in batches of 1,000: three export tasks, three parts.
    return EmulatorConfig(
        transactions=2500,
        batch_size=1000,
        task_duration=0.05,
        period_start=f"{DAY}T00:00:00Z",
        period_end=f"{DAY}T23:59:59Z",
    )


# [END howto_test_dag_fixtures]


# [START howto_test_dag_run]
def test_daily_export_lands_in_s3(loyalty_airflow_db, loyalty_connection, loyalty_s3, loyalty_s3_bucket, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_LOYALTY_EXPORT_BUCKET", loyalty_s3_bucket)
    dag = loyalty_airflow_db.get_dag("loyalty_daily_export")
    dag.get_task("export_transactions").poll_interval = 0.1  # 30 s in production; the emulator is quick

    run = dag.test(logical_date=pendulum.datetime(2023, 9, 2, tz="UTC"))  # the run for 2023-09-01

    assert run.state == "success"
    manifest_url = f"s3://{loyalty_s3_bucket}/loyalty/{DAY}/_manifest.json"
    # The XCom: the manifest's location and totals.
    xcom = run.get_task_instance("export_transactions").xcom_pull(task_ids="export_transactions")
    assert xcom["manifest"] == manifest_url
    assert xcom["total_rows"] == 2500
    # The manifest in S3, written last: the day's period, every part with its rows.
    s3 = loyalty_s3.client()
    stored = s3.get_object(Bucket=loyalty_s3_bucket, Key=f"loyalty/{DAY}/_manifest.json")
    manifest = json.loads(stored["Body"].read())
    assert manifest["manifest"] == manifest_url
    assert (manifest["date_from"], manifest["date_to"]) == (f"{DAY}T00:00:00Z", f"{DAY}T23:59:59Z")
    assert [part["rows"] for part in manifest["parts"]] == [1000, 1000, 500]
    listing = s3.list_objects_v2(Bucket=loyalty_s3_bucket, Prefix=f"loyalty/{DAY}/part-")["Contents"]
    assert sorted(item["Key"] for item in listing) == [part["key"] for part in manifest["parts"]]
    # Every transaction of the day, exactly once.
    assert manifest["total_rows"] == len(loyalty_connection.expected_ids(f"{DAY}T00:00:00Z", f"{DAY}T23:59:59Z"))


# [END howto_test_dag_run]


# [START howto_test_missing_bucket]
def test_a_missing_bucket_names_the_bucket_prefix_and_connection(loyalty_connection, loyalty_s3_bucket):
    # aws_default points at the loopback S3, which has no bucket "compliance-typo".
    export = LoyaltyTransactionsToS3Operator(
        task_id="export_transactions",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        date_from=DAY,
        date_to=DAY,
        s3_bucket="compliance-typo",
        s3_key_prefix=f"loyalty/{DAY}",
        poll_interval=0.1,
    )
    with pytest.raises(LoyaltyStorageError) as failure:
        export.execute(context={})

    message = str(failure.value)
    assert f"s3://compliance-typo/loyalty/{DAY}/" in message
    assert "aws_conn_id='aws_default'" in message
    assert "NoSuchBucket" in message
    assert "create the bucket, or fix s3_bucket" in message
    assert "\n" not in message  # one line, not botocore's traceback
    assert isinstance(failure.value.__cause__, ClientError)  # which stays chained for debugging


# [END howto_test_missing_bucket]
