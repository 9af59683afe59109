"""Daily compliance export: every points transaction of the data interval, landed in S3.

Parts, then ``_manifest.json`` last, under a per-day prefix; the manifest is an Airflow Asset, so
``example_loyalty_manifest_consumer`` below runs whenever a day's export is complete.

Configuration by environment (so the same file runs in the demo, the tests and your deployment):
``LOYALTY_EXAMPLE_BUCKET`` (default ``loyalty-exports``), ``LOYALTY_EXAMPLE_PROGRAM_ID`` (123),
``LOYALTY_EXAMPLE_CURRENCY_EID`` (``bonus_points``), ``LOYALTY_EXAMPLE_POLL_INTERVAL`` (30 s),
``LOYALTY_EXAMPLE_ALERT_WEBHOOK`` (unset: a failed export is only logged; set: its alert is also
POSTed there as JSON). Connections: ``loyalty_default`` and ``aws_default``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pendulum
import requests
from airflow.sdk import DAG, Asset, task

try:  # Airflow >= 3.2
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable  # type: ignore[no-redef,assignment]

from airflow_provider_loyalty.exceptions import LoyaltyFinalError
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

BUCKET = os.environ.get("LOYALTY_EXAMPLE_BUCKET", "loyalty-exports")
PROGRAM_ID = int(os.environ.get("LOYALTY_EXAMPLE_PROGRAM_ID", "123"))
CURRENCY_EID = os.environ.get("LOYALTY_EXAMPLE_CURRENCY_EID", "bonus_points")
POLL_INTERVAL = float(os.environ.get("LOYALTY_EXAMPLE_POLL_INTERVAL", "30"))
ALERT_WEBHOOK = os.environ.get("LOYALTY_EXAMPLE_ALERT_WEBHOOK")
log = logging.getLogger(__name__)


# [START howto_notify_loyalty_export_failure]
def notify_export_failure(context: Any) -> None:
    """Tell the compliance team that a day's export failed: which, where, why, and whether it is final.

    Airflow calls it once the task has failed for good: after its last retry, or at once for an
    error no retry can fix (LoyaltyFinalError: bad input, a refused token, a wrong Base URL, another
    period's export at the location...). The location then still holds the previous export's
    manifest, if it had one; no manifest of this run was written.
    """
    ti, task, error = context["ti"], context["task"], context.get("exception")
    alert = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "period": [str(context["data_interval_start"]), str(context["data_interval_end"])],
        "location": f"s3://{task.s3_bucket}/{task.s3_key_prefix}/",
        "error": f"{type(error).__name__}: {error}",  # the provider's messages never hold the API token
        "final": isinstance(error, LoyaltyFinalError),  # True: retrying will not help, fix the cause
    }
    log.error("Loyalty export failed: %s", json.dumps(alert))
    if ALERT_WEBHOOK:
        requests.post(ALERT_WEBHOOK, json=alert, timeout=10).raise_for_status()


# [END howto_notify_loyalty_export_failure]

# [START howto_asset_loyalty_manifest]
# One asset per program and currency: each event's extra names the exact day's manifest. (Its name
# defaults to the URI, so a second bucket is a second asset rather than a clash of names.)
LOYALTY_MANIFESTS = Asset(uri=f"s3://{BUCKET}/loyalty/transactions/program={PROGRAM_ID}/_manifest.json")
# [END howto_asset_loyalty_manifest]

with DAG(
    dag_id="example_loyalty_transactions_to_s3",
    # A data-interval timetable: each run covers [day, next day). (Airflow 3's plain "@daily" is a
    # CronTriggerTimetable whose data interval is a single instant: nothing to export.)
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2023, 9, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "loyalty"],
) as dag:
    # [START howto_transfer_loyalty_transactions_to_s3]
    export_to_s3 = LoyaltyTransactionsToS3Operator(
        task_id="export_transactions_to_s3",
        loyalty_program_id=PROGRAM_ID,
        points_currency_eid=CURRENCY_EID,
        # date_from / date_to default to the run's data interval (date_to inclusive: end - 1 s).
        s3_bucket=BUCKET,
        s3_key_prefix="loyalty/transactions/program={{ params.program_id }}/day={{ data_interval_start | ds }}",
        params={"program_id": PROGRAM_ID},
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        outlets=[LOYALTY_MANIFESTS],
        retries=2,
        on_failure_callback=notify_export_failure,
    )
    # [END howto_transfer_loyalty_transactions_to_s3]


with DAG(
    dag_id="example_loyalty_manifest_consumer",
    schedule=[LOYALTY_MANIFESTS],
    start_date=pendulum.datetime(2023, 9, 1, tz="UTC"),
    catchup=False,
    tags=["example", "loyalty"],
) as consumer_dag:
    # [START howto_consume_loyalty_manifest]
    @task(inlets=[LOYALTY_MANIFESTS])
    def read_manifest(triggering_asset_events=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        """Downstream work starts from the manifest: its parts, rows and checksums."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        events = [event for events in (triggering_asset_events or {}).values() for event in events]
        location = events[-1].extra["manifest"] if events else None
        if location is None:
            return {}
        bucket, key = location.removeprefix("s3://").split("/", 1)
        manifest = json.loads(S3Hook().read_key(key, bucket_name=bucket))
        return {"parts": len(manifest["parts"]), "total_rows": manifest["total_rows"]}

    read_manifest()
    # [END howto_consume_loyalty_manifest]
