"""TaskFlow outputs and mapped task group arguments as the operators' parameters, under ``dag.test()``."""

from __future__ import annotations

import json

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.support.dag_runner import REPO, run_dag_test

DAG_FILE = REPO / "tests" / "dags" / "loyalty_taskflow_inputs.py"


def test_taskflow_outputs_and_mapped_arguments_are_resolved_when_the_task_runs(airflow_db, tmp_path) -> None:
    """An ``XComArg`` (``date_from=day()``) or a ``MappedArgument`` (``member_email`` inside an
    expanded task group) was refused when the DAG was parsed, as a literal of the wrong type."""
    config = EmulatorConfig(
        transactions=600, batch_size=200, task_duration=0.1, member_history_sizes=[250, 3, 0, 42, 1]
    )
    with LoyaltyEmulator(config) as emulator:
        connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
        env = {"AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection), "LOYALTY_TEST_OUTPUT": str(tmp_path)}
        outcome = run_dag_test(DAG_FILE, "loyalty_taskflow_inputs", env)
        created = emulator.stats()["export_tasks_created"]
    assert outcome.state == "success", outcome.output[-4000:]
    assert outcome.tasks["export_day"] == "success"
    assert {key: state for key, state in outcome.tasks.items() if key.startswith("member_history")} == {
        "member_history.history[0]": "success",
        "member_history.history[1]": "success",
    }
    manifest = json.loads((tmp_path / "export" / "_manifest.json").read_text())
    assert manifest["date_from"] == "2023-09-01T00:00:00Z" and manifest["date_to"] == "2023-09-01T23:59:59Z"
    assert manifest["loyalty_program_id"] == 123 and created >= 1
    histories = sorted(len(path.read_text().splitlines()) for path in (tmp_path / "members").iterdir())
    assert histories == [42, 250]
