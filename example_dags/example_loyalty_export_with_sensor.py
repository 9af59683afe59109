"""Create an export task, wait for it in the triggerer, then download it (and any further batches).

``LoyaltyExportTaskSensor`` waits without holding a worker slot (deferrable); the export operator
then adopts the finished task as its first batch and follows ``next_from_id`` for the rest,
writing verified CSV parts and ``_manifest.json`` under ``LOYALTY_EXAMPLE_OUTPUT``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor

OUTPUT = os.environ.get("LOYALTY_EXAMPLE_OUTPUT", "/tmp/loyalty-exports")  # noqa: S108 - an example
POLL_INTERVAL = float(os.environ.get("LOYALTY_EXAMPLE_POLL_INTERVAL", "30"))
PERIOD = {"date_from": "2023-09-01T00:00:00Z", "date_to": "2023-09-30T23:59:59Z"}

with DAG(
    dag_id="example_loyalty_export_with_sensor",
    schedule=None,
    start_date=pendulum.datetime(2023, 9, 1, tz="UTC"),
    catchup=False,
    tags=["example", "loyalty"],
) as dag:
    # [START howto_sensor_loyalty_export_task]
    @task
    def create_export_task() -> str:
        """Start the export on the platform; its task id goes to XCom."""
        return LoyaltyHook().create_transactions_export(
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            date_from=PERIOD["date_from"],
            date_to=PERIOD["date_to"],
        )

    export_task_id = create_export_task()

    wait_for_export = LoyaltyExportTaskSensor(
        task_id="wait_for_export",
        export_task_id=export_task_id,  # type: ignore[arg-type]  # an XComArg, rendered at run time
        poke_interval=POLL_INTERVAL,
        timeout=6 * 3600,
        deferrable=True,
    )
    # [END howto_sensor_loyalty_export_task]

    # [START howto_operator_loyalty_export]
    download = LoyaltyExportOperator(
        task_id="download_export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        export_task_id="{{ ti.xcom_pull(task_ids='create_export_task') }}",
        output_path=OUTPUT + "/{{ run_id | replace(':', '_') }}",
        poll_interval=POLL_INTERVAL,
        deferrable=True,
        **PERIOD,
    )
    # [END howto_operator_loyalty_export]

    wait_for_export >> download
