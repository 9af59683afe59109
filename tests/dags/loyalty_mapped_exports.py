"""Mapped S3 exports (one per program day), for the test that each emits its asset event."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

BUCKET = os.environ.get("LOYALTY_TEST_BUCKET", "loyalty-test")
DAYS = ["2023-09-01", "2023-09-02", "2023-09-03"]

with DAG(
    "loyalty_mapped_exports",
    schedule=None,
    start_date=pendulum.datetime(2023, 9, 1, tz="UTC"),
    catchup=False,
) as dag:
    LoyaltyTransactionsToS3Operator.partial(
        task_id="export_day",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        s3_bucket=BUCKET,
        poll_interval=0.2,
        deferrable=False,
    ).expand_kwargs([{"date_from": day, "date_to": day} for day in DAYS])
