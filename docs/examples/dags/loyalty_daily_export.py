"""A daily compliance export to S3, written as in your own project (tested by ../test_loyalty_daily_export.py).

Each run exports every points transaction of its data interval (one whole day) to
``s3://<bucket>/loyalty/<day>/``: ``part-00000.csv``, ``part-00001.csv``, … and ``_manifest.json``
last. The bucket is the Airflow Variable ``loyalty_export_bucket``; the connections are
``loyalty_default`` (the loyalty API) and ``aws_default`` (S3).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

try:  # Airflow >= 3.2
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable  # type: ignore[no-redef]

from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

# [START howto_test_dag_daily_export]
with DAG(
    dag_id="loyalty_daily_export",
    # Each run covers one whole day: [day 00:00, next day 00:00).
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2023, 9, 1, tz="UTC"),
    catchup=False,
):
    LoyaltyTransactionsToS3Operator(
        task_id="export_transactions",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        s3_bucket="{{ var.value.loyalty_export_bucket }}",
        s3_key_prefix="loyalty/{{ data_interval_start | ds }}",
        deferrable=True,
    )
# [END howto_test_dag_daily_export]
