"""Member histories as JSON Lines, one mapped task per member (e.g. subject-access requests)."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator

OUTPUT = os.environ.get("LOYALTY_EXAMPLE_OUTPUT", "/tmp/loyalty-exports")  # noqa: S108 - an example
MEMBERS = ["member0@example.com", "member1@example.com", "member3@example.com"]

with DAG(
    dag_id="example_loyalty_account_transactions",
    schedule=None,
    start_date=pendulum.datetime(2023, 9, 1, tz="UTC"),
    catchup=False,
    tags=["example", "loyalty"],
) as dag:
    # [START howto_operator_loyalty_account_transactions]
    LoyaltyAccountTransactionsOperator.partial(
        task_id="member_history",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        matching="email",
        limit=100,
        output_path=OUTPUT + "/members/{{ run_id | replace(':', '_') }}/member-{{ ti.map_index }}.jsonl",
    ).expand(member_email=MEMBERS)
    # [END howto_operator_loyalty_account_transactions]
