"""Test DAG: the operators' parameters given as TaskFlow outputs and as a mapped task group's arguments.

Used by ``tests/integration/test_taskflow_inputs.py``. ``LOYALTY_TEST_OUTPUT`` is the directory the
exports and histories go to. Airflow resolves these values when the task runs, like a template; the
operators refused them when the DAG was parsed, taking them for literal values of the wrong type.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import dag, task, task_group

from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator, LoyaltyExportOperator

OUTPUT = os.environ.get("LOYALTY_TEST_OUTPUT", "/tmp/loyalty-taskflow-inputs")


@dag(dag_id="loyalty_taskflow_inputs", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def loyalty_taskflow_inputs() -> None:
    @task
    def day() -> str:
        return "2023-09-01"

    @task
    def export_directory() -> str:
        return f"{OUTPUT}/export"

    @task
    def program() -> int:
        return 123

    the_day = day()
    LoyaltyExportOperator(
        task_id="export_day",
        loyalty_program_id=program(),  # type: ignore[arg-type]  # XComArgs, resolved at run time
        points_currency_eid="bonus_points",
        date_from=the_day,  # type: ignore[arg-type]
        date_to=the_day,  # type: ignore[arg-type]
        output_path=export_directory(),  # type: ignore[arg-type]
        poll_interval=0.1,
    )

    @task_group
    def member_history(address: str) -> None:
        LoyaltyAccountTransactionsOperator(
            task_id="history",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            matching="email",
            member_email=address,
            output_path=f"{OUTPUT}/members/",
        )

    member_history.expand(address=["member0@example.com", "member3@example.com"])


taskflow_inputs_dag = loyalty_taskflow_inputs()
