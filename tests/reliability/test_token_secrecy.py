"""Token secrecy end to end: the API token never shows up in anything Airflow keeps or prints.

Example DAGs run through Airflow itself (``dag.test()`` in a subprocess, see
``tests/support/dag_runner.py``) with a long, distinctive token, in a passing run and in failing ones,
including a server that echoes the token back in its error texts. Then everything Airflow produced
is scanned: the captured stdout/stderr, every file under ``AIRFLOW_HOME/logs``, the metadata DB's
``xcom`` and ``rendered_task_instance_fields`` rows (and the raw DB files as a whole), and the
exception texts of the failing tasks. Zero hits allowed.

In-process tests cover the worker-side paths that turn server text into exceptions (the
non-deferrable operator and the sensor's poke) directly.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyError
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from tests.reliability.support import PROGRAM
from tests.support.dag_runner import REPO, run_dag_test
from tests.support.helpers import point_connection_at
from tests.support.operator_driver import context_for

TOKEN = "lyl-SECRET-7c1e9a4b2d8f-token-0f3e6a9c5b1d4e7a8b2c-END"
EXAMPLES = REPO / "example_dags"
SENSOR_DAG = (EXAMPLES / "example_loyalty_export_with_sensor.py", "example_loyalty_export_with_sensor")


def loyalty_env(emulator: LoyaltyEmulator, token: str = TOKEN, **extra: str) -> dict[str, str]:
    connection = {
        "conn_type": "loyalty",
        "host": emulator.url,
        "password": token,
        "extra": {"retry_backoff": 0.01, "max_retries": 1},
    }
    return {"AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection), "LOYALTY_EXAMPLE_POLL_INTERVAL": "0.2", **extra}


def scan_airflow_home(home: Path) -> list[str]:
    """Every place under AIRFLOW_HOME that holds the token: log files, DB rows, raw DB files."""
    hits: list[str] = []
    needle = TOKEN.encode()
    for path in sorted((home / "logs").rglob("*")) if (home / "logs").exists() else []:
        if path.is_file() and needle in path.read_bytes():
            hits.append(f"log file {path}")
    db = home / "airflow.db"
    with sqlite3.connect(db) as conn:
        for table in ("xcom", "rendered_task_instance_fields"):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            assert columns, f"no table {table} in the metadata DB"
            for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
                for column, value in zip(columns, row, strict=True):
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    if TOKEN in text:
                        hits.append(f"{table}.{column}")
    for path in home.glob("airflow.db*"):
        if needle in path.read_bytes():
            hits.append(f"raw DB file {path.name}")
    return hits


def assert_no_token(outcome_output: str, home: Path) -> None:
    assert TOKEN not in outcome_output, "the token appears in Airflow's stdout/stderr"
    hits = scan_airflow_home(home)
    assert hits == [], f"the token was found in: {hits}"


def run(dag: tuple[Path, str], env: dict[str, str], **kwargs):
    return run_dag_test(dag[0], dag[1], env, **kwargs)


# --------------------------------------------------------------------------------------- through Airflow


def test_sensor_dag_success_and_echoed_token_failure_leak_nothing(airflow_db, tmp_path):
    home = Path(os.environ["AIRFLOW_HOME"])
    config = EmulatorConfig(transactions=1500, batch_size=1000, task_duration=0.3, token=TOKEN)
    with LoyaltyEmulator(config) as emulator:
        ok = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "ok")))
        assert ok.state == "success", ok.output[-4000:]
        assert ok.tasks["download_export"] == "success"

        # The server fails the export task and echoes the token in its text: still nowhere.
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": f"quota for {TOKEN}"})])
        failed = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "failed")))
    assert failed.state == "failed", failed.output[-4000:]
    assert failed.tasks["wait_for_export"] == "failed"
    assert "quota for" in failed.output  # the API's reason is shown, just not the token
    assert_no_token(ok.output + failed.output, home)


@pytest.mark.slow
def test_auth_error_and_echoing_api_error_leak_nothing(airflow_db, tmp_path):
    home = Path(os.environ["AIRFLOW_HOME"])
    config = EmulatorConfig(transactions=500, task_duration=0.1, token="the-emulators-own-token")
    with LoyaltyEmulator(config) as emulator:
        refused = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "a")))
        emulator.config.token = TOKEN
        emulator.set_faults(
            [FaultRule(endpoint="export", kind="api_error", params={"code": 1001, "text": f"bad {TOKEN}"})]
        )
        echoed = run(SENSOR_DAG, loyalty_env(emulator, LOYALTY_EXAMPLE_OUTPUT=str(tmp_path / "b")))
    assert refused.state == "failed" and refused.tasks["create_export_task"] == "failed"
    assert "Authentication failed" in refused.output or "401" in refused.output
    assert echoed.state == "failed" and echoed.tasks["create_export_task"] == "failed"
    assert_no_token(refused.output + echoed.output, home)


# -------------------------------------------------------------------------------------------- in-process


@pytest.fixture
def echoing_emulator(monkeypatch) -> LoyaltyEmulator:
    """An emulator whose export tasks fail with the caller's token in the failure text."""
    with LoyaltyEmulator(EmulatorConfig(transactions=100, task_duration=0.0, token=TOKEN)) as emulator:
        point_connection_at(monkeypatch, emulator, max_retries=1)
        emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": f"denied: {TOKEN}"})])
        yield emulator


@pytest.mark.parametrize("deferrable", [False, True])
def test_export_operator_failure_text_is_redacted(echoing_emulator, tmp_path, deferrable):
    operator = LoyaltyExportOperator(
        task_id="secret", **PROGRAM, output_path=str(tmp_path), date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z", poll_interval=0.05, deferrable=deferrable,
    )  # fmt: skip
    with pytest.raises(LoyaltyError) as caught:
        operator.execute(context_for())
    assert "denied" in str(caught.value)
    assert TOKEN not in str(caught.value), f"token in the exception: {caught.value}"
    assert TOKEN not in repr(caught.value.__dict__)


def test_sensor_poke_failure_text_is_redacted(echoing_emulator):
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    task_id = LoyaltyHook().create_transactions_export(
        **PROGRAM, date_from="2023-09-01T00:00:00Z", date_to="2023-09-30T23:59:59Z"
    )
    sensor = LoyaltyExportTaskSensor(task_id="wait", export_task_id=task_id, poke_interval=0.05, timeout=5)
    with pytest.raises(LoyaltyError) as caught:
        sensor.poke(context_for())
    assert "denied" in str(caught.value)
    assert TOKEN not in str(caught.value), f"token in the exception: {caught.value}"
