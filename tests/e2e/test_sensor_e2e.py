"""The deferrable sensor on real Airflow processes: scheduler, LocalExecutor, triggerer, api-server.

One cluster (temp AIRFLOW_HOME, SQLite) serves both cases; the emulator runs in this process and
the cluster reaches it through ``AIRFLOW_CONN_LOYALTY_DEFAULT``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.e2e.airflow_cluster import AirflowCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "tests" / "dags"
DAG_ID = "loyalty_export_wait"
SENSOR = "wait_for_export"


@pytest.fixture(scope="module")
def emulator() -> Iterator[LoyaltyEmulator]:
    with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000)) as emu:
        yield emu


@pytest.fixture(scope="module")
def cluster(emulator: LoyaltyEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowCluster]:
    connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection),
        "LOYALTY_TEST_POKE_INTERVAL": "0.5",
    }
    started = time.monotonic()
    cluster = AirflowCluster(home=tmp_path_factory.mktemp("airflow_home"), dags_folder=DAGS, env=env)
    try:
        cluster.start()
        cluster.wait_for_dag(DAG_ID)
    except BaseException:
        print(cluster.dump_logs())
        cluster.stop()
        raise
    print(f"cluster up in {time.monotonic() - started:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, cluster: AirflowCluster) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.dump_logs())


def sensor_xcom(cluster: AirflowCluster, run_id: str) -> dict[str, object]:
    rows = cluster.query(
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = 'return_value'",
        (DAG_ID, run_id, SENSOR),
    )
    assert rows, "the sensor pushed no XCom"
    value = rows[0][0]
    decoded = json.loads(value.decode() if isinstance(value, bytes) else value)
    while isinstance(decoded, str):  # stored JSON-encoded, possibly twice
        decoded = json.loads(decoded)
    assert isinstance(decoded, dict)
    return decoded


def test_sensor_defers_and_succeeds(cluster: AirflowCluster, emulator: LoyaltyEmulator) -> None:
    emulator.reset()
    emulator.config.task_duration = 4.0
    run_id = "e2e_deferred"
    cluster.trigger(DAG_ID, run_id)

    history = cluster.watch_run(DAG_ID, run_id, timeout=150)

    assert cluster.run_state(DAG_ID, run_id) == "success", history
    assert history["create_export"][-1] == "success"
    assert "deferred" in history[SENSOR], history
    assert history[SENSOR][-1] == "success", history
    assert sensor_xcom(cluster, run_id)["total"] == 1000
    stats = emulator.stats()
    assert stats["export_tasks_created"] == 1
    assert stats["requests"]["status"] >= 3


def test_sensor_survives_a_killed_triggerer(cluster: AirflowCluster, emulator: LoyaltyEmulator) -> None:
    emulator.reset()
    emulator.config.task_duration = 20.0
    run_id = "e2e_triggerer_killed"
    killed: dict[str, float] = {}

    def trigger_owner() -> int | None:
        rows = cluster.query(
            "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
            "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = ?",
            (DAG_ID, run_id, SENSOR),
        )
        return rows[0][0] if rows else None

    owners: set[int] = set()

    def kill_when_polling(states: dict[str, str | None]) -> None:
        owner = trigger_owner() if states.get(SENSOR) == "deferred" else None
        if owner is not None:
            owners.add(owner)
        if "at" in killed or states.get(SENSOR) != "deferred" or trigger_owner() is None:
            return
        polls = emulator.stats()["requests"]["status"]
        if "first_seen" not in killed:
            killed["first_seen"] = polls
            return
        if polls < killed["first_seen"] + 2:  # the trigger is really polling in the triggerer
            return
        cluster.kill("triggerer")  # SIGKILL to the process group: no cleanup, no handover
        killed["at_polls"] = emulator.stats()["requests"]["status"]
        killed["at"] = time.monotonic()
        cluster.start_component("triggerer")

    cluster.trigger(DAG_ID, run_id)
    history = cluster.watch_run(DAG_ID, run_id, timeout=180, on_poll=kill_when_polling)

    assert "at" in killed, f"the sensor never reached a polling trigger: {history}"
    assert cluster.run_state(DAG_ID, run_id) == "success", history
    assert "deferred" in history[SENSOR], history
    assert history[SENSOR][-1] == "success", history
    assert emulator.stats()["requests"]["status"] > killed["at_polls"]  # the new triggerer polled on
    assert len(owners) == 2, owners  # the trigger moved from the killed triggerer to the new one
    assert sensor_xcom(cluster, run_id)["total"] == 1000
