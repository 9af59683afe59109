"""Test DAG: create an export task, then wait for it with the deferrable sensor.

Used by ``tests/integration/test_sensor_dag.py`` (``dag.test()``, triggers run inline) and by the
end-to-end tests (real scheduler, workers and triggerer). ``LOYALTY_TEST_POKE_INTERVAL`` tunes the
trigger's poll interval. Run directly, it calls ``dag.test()`` and prints one ``LOYALTY_DAG_RESULT``
JSON line with the run's and its tasks' states.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from airflow.sdk import dag, task

from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor


@dag(dag_id="loyalty_export_wait", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def loyalty_export_wait() -> None:
    @task
    def create_export() -> str:
        hook = LoyaltyHook()
        try:
            return hook.create_transactions_export(
                loyalty_program_id=123,
                points_currency_eid="bonus_points",
                date_from="2023-09-01T00:00:00Z",
                date_to="2023-09-30T23:59:59Z",
            )
        finally:
            hook.close()

    LoyaltyExportTaskSensor(
        task_id="wait_for_export",
        export_task_id=create_export(),  # type: ignore[arg-type]  # an XComArg, rendered at run time
        poke_interval=float(os.environ.get("LOYALTY_TEST_POKE_INTERVAL", "1")),
        timeout=600,
        deferrable=True,
    )


export_wait_dag = loyalty_export_wait()

if __name__ == "__main__":
    run = export_wait_dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("LOYALTY_DAG_RESULT " + json.dumps({"state": str(run.state), "tasks": states}), flush=True)
