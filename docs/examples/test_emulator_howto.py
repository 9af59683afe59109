"""How to test your own DAG code against the loyalty API emulator (included by docs/testing.rst).

Runs as an ordinary pytest module: the ``loyalty_connection`` fixture comes from the provider's
pytest plugin, which pytest loads by itself once the package is installed.
"""

from __future__ import annotations

import json

import pytest

from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator, LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule


# [START howto_emulator_config_fixture]
@pytest.fixture
def loyalty_emulator_config():
    # 2,500 transactions in batches of 1,000: three export tasks, three parts.
    return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.05)


# [END howto_emulator_config_fixture]


# [START howto_emulator_export_test]
def test_export_survives_faults(loyalty_connection, tmp_path):
    # loyalty_connection: a running emulator, with AIRFLOW_CONN_LOYALTY_DEFAULT pointing at it.
    loyalty_connection.set_faults(
        [
            FaultRule(endpoint="status", kind="rate_limit", count=2, params={"retry_after": 0.1}),
            FaultRule(endpoint="download", kind="truncate", count=1),
        ]
    )
    export = LoyaltyExportOperator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z",
        output_path=str(tmp_path),
        poll_interval=0.05,
        deferrable=False,
    )
    manifest = export.execute(context={})

    assert manifest["total_rows"] == 2500
    assert [part["rows"] for part in manifest["parts"]] == [1000, 1000, 500]
    assert json.loads((tmp_path / "_manifest.json").read_text())["total_rows"] == 2500
    stats = loyalty_connection.stats()
    assert stats["faults_applied"] == {"rate_limit": 2, "truncate": 1}
    assert stats["export_tasks_created"] == 3


# [END howto_emulator_export_test]


# [START howto_emulator_member_test]
def test_member_history(loyalty_connection, tmp_path):
    history = LoyaltyAccountTransactionsOperator(
        task_id="history",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        matching="email",
        member_email="member0@example.com",  # the emulator's member 0 has 250 transactions
        output_path=str(tmp_path / "member0.jsonl"),
    )
    assert history.execute(context={})["rows"] == 250


# [END howto_emulator_member_test]
