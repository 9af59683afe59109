"""Test DAG: member histories mapped over members, into one file path and into a directory.

Used by ``tests/integration/test_mapped_members.py``. ``LOYALTY_TEST_OUTPUT`` is where they go.
Mapped over the member with one literal file path, every mapped task would write that file, each
replacing the others' history; the operator refuses that before any request.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import ObjectStoragePath, dag, task_group

from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator

OUTPUT = os.environ.get("LOYALTY_TEST_OUTPUT", "/tmp/loyalty-mapped-members")
MEMBERS = ["member0@example.com", "member3@example.com"]
PROGRAM = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "matching": "email"}


@dag(dag_id="loyalty_mapped_members", schedule=None, start_date=datetime(2024, 1, 1), catchup=False)
def loyalty_mapped_members() -> None:
    LoyaltyAccountTransactionsOperator.partial(
        task_id="one_file", output_path=f"{OUTPUT}/one/history.jsonl", **PROGRAM
    ).expand(member_email=MEMBERS)
    LoyaltyAccountTransactionsOperator.partial(
        task_id="directory", output_path=f"{OUTPUT}/directory/", **PROGRAM
    ).expand(member_email=MEMBERS)
    # An ObjectStoragePath of one file, and of a directory not made yet (it drops the trailing "/").
    LoyaltyAccountTransactionsOperator.partial(
        task_id="one_file_osp", output_path=ObjectStoragePath(f"file://{OUTPUT}/osp/history.jsonl"), **PROGRAM
    ).expand(member_email=MEMBERS)
    LoyaltyAccountTransactionsOperator.partial(
        task_id="new_dir_osp", output_path=ObjectStoragePath(f"file://{OUTPUT}/osp-dir/"), **PROGRAM
    ).expand(member_email=MEMBERS)
    # expand_kwargs: the path fixed by partial() (strict: no dict may change it), or the same in each dict.
    LoyaltyAccountTransactionsOperator.partial(
        task_id="kwargs_partial", output_path=f"{OUTPUT}/kwargs/history.jsonl", **PROGRAM
    ).expand_kwargs([{"member_email": member} for member in MEMBERS])
    LoyaltyAccountTransactionsOperator.partial(task_id="kwargs_same", **PROGRAM).expand_kwargs(
        [{"member_email": member, "output_path": f"{OUTPUT}/same/history.jsonl"} for member in MEMBERS]
    )
    LoyaltyAccountTransactionsOperator.partial(task_id="file_each", **PROGRAM).expand_kwargs(
        [
            {"member_email": member, "output_path": f"{OUTPUT}/each/{index}.jsonl"}
            for index, member in enumerate(MEMBERS)
        ]
    )

    @task_group
    def in_a_group(address: str) -> None:
        LoyaltyAccountTransactionsOperator(
            task_id="history", member_email=address, output_path=f"{OUTPUT}/group/history.jsonl", **PROGRAM
        )

    in_a_group.expand(address=MEMBERS)


mapped_members_dag = loyalty_mapped_members()
