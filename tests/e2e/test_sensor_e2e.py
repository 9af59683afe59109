"""The deferrable sensor on real Airflow processes: scheduler, LocalExecutor, triggerer, api-server.

One cluster (temp AIRFLOW_HOME, SQLite) serves both cases; the emulator runs in this process and
the cluster reaches it through ``AIRFLOW_CONN_LOYALTY_DEFAULT``.

The export task is held ``in_progress`` (pinned in the emulator from the moment it exists) until
the scheduler has processed the executor's "success" event of the sensor's deferring attempt. A
trigger that fired earlier would race that event: the resumed attempt could already be running
when the stale event arrives, and Airflow then fails the task instance ("finished with state
success, but the task instance's state attribute is running"). Releasing the export task only
after that event keeps what the tests prove (defer, poll in the triggerer, resume with the
result) without depending on how fast the scheduler is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from tests.e2e.airflow_cluster import AirflowCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400, func_only=True)]

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "tests" / "dags"
DAG_ID = "loyalty_export_wait"
SENSOR = "wait_for_export"
#: Seconds an export task would take if nothing held it; the pin must land well within it.
TASK_DURATION = 5.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[LoyaltyEmulator]:
    with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000)) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow_home(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The cluster's AIRFLOW_HOME, outside pytest's numbered temp dirs (other pytest sessions on the
    machine prune those, running cluster or not); removed afterwards unless a test failed."""
    home = Path(tempfile.mkdtemp(prefix="loyalty-e2e-airflow-home-"))
    failed_before = request.session.testsfailed
    yield home
    if request.session.testsfailed == failed_before:
        shutil.rmtree(home, ignore_errors=True)
    else:
        print(f"Airflow home and process logs kept in {home}")


@pytest.fixture(scope="module")
def cluster(emulator: LoyaltyEmulator, airflow_home: Path) -> Iterator[AirflowCluster]:
    connection = {"conn_type": "loyalty", "host": emulator.url, "password": emulator.token}
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection),
        "LOYALTY_TEST_POKE_INTERVAL": "0.5",
    }
    started = time.monotonic()
    cluster = AirflowCluster(home=airflow_home, dags_folder=DAGS, env=env)
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
        "SELECT value FROM xcom WHERE dag_id = :dag_id AND run_id = :run_id AND task_id = :task_id "
        "AND key = 'return_value'",
        dag_id=DAG_ID,
        run_id=run_id,
        task_id=SENSOR,
    )
    assert rows, "the sensor pushed no XCom"
    value = rows[0][0]
    decoded = json.loads(value.decode() if isinstance(value, bytes) else value)
    while isinstance(decoded, str):  # stored JSON-encoded, possibly twice
        decoded = json.loads(decoded)
    assert isinstance(decoded, dict)
    return decoded


def pin_export_task_when_created(emulator: LoyaltyEmulator, cluster: AirflowCluster, timeout: float = 120) -> str:
    """Hold the run's export task ``in_progress`` from (almost) the moment the emulator creates it.

    :returns: the export task id.
    :raises AssertionError: if the pin might have come after the task could have completed.
    """
    deadline = time.monotonic() + timeout
    while True:
        polled_at = time.monotonic()  # the task did not exist before this poll read the store
        tasks = emulator.export_tasks()
        if tasks:
            task_id = str(tasks[0]["task_id"])
            emulator.set_faults(
                [FaultRule(endpoint="status", kind="task_never_finishes", params={"task_ids": [task_id]})]
            )
            latency = time.monotonic() - polled_at
            assert latency < TASK_DURATION / 2, f"pinned {latency:.2f} s after creation: the task may have completed"
            return task_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"no export task was created within {timeout} s")
        cluster.check_alive()
        time.sleep(0.02)


def deferral_event_processed(cluster: AirflowCluster, run_id: str) -> bool:
    """Whether the scheduler has taken the executor's event of the sensor's deferring attempt."""
    pattern = re.compile(
        r"Received executor event with state success for task instance "
        rf"TaskInstanceKey\(dag_id='{DAG_ID}', task_id='{SENSOR}', run_id='{re.escape(run_id)}'"
    )
    return bool(pattern.search(cluster.process_log("scheduler")))


def release(emulator: LoyaltyEmulator) -> None:
    """Let the pinned export task complete (its duration has long passed)."""
    emulator.set_faults([])


def test_sensor_defers_and_succeeds(cluster: AirflowCluster, emulator: LoyaltyEmulator) -> None:
    emulator.reset()
    emulator.set_faults([])
    emulator.config.task_duration = TASK_DURATION
    run_id = "e2e_deferred"
    cluster.trigger(DAG_ID, run_id)
    pin_export_task_when_created(emulator, cluster)
    released: dict[str, int] = {}

    def release_after_deferral(states: dict[str, str | None]) -> None:
        """Release once the trigger polls the still-running task and the deferral is processed."""
        if "status_polls" in released or states.get(SENSOR) != "deferred":
            return
        polls = emulator.stats()["requests"]["status"]
        released.setdefault("deferred_at_polls", polls)  # the sensor's own first check is done by now
        if polls > released["deferred_at_polls"] and deferral_event_processed(cluster, run_id):
            released["status_polls"] = polls
            release(emulator)

    history = cluster.watch_run(DAG_ID, run_id, timeout=150, on_poll=release_after_deferral)

    assert "status_polls" in released, f"the sensor never deferred to a polling trigger: {history}"
    assert cluster.run_state(DAG_ID, run_id) == "success", history
    assert history["create_export"][-1] == "success"
    assert "deferred" in history[SENSOR], history
    assert history[SENSOR][-1] == "success", history
    assert sensor_xcom(cluster, run_id)["total"] == 1000
    stats = emulator.stats()
    assert stats["export_tasks_created"] == 1
    assert stats["requests"]["status"] > released["status_polls"]  # the trigger saw the task complete
    assert stats["requests"]["status"] >= 3


def test_sensor_survives_a_killed_triggerer(cluster: AirflowCluster, emulator: LoyaltyEmulator) -> None:
    emulator.reset()
    emulator.set_faults([])
    emulator.config.task_duration = TASK_DURATION
    run_id = "e2e_triggerer_killed"
    killed: dict[str, float] = {}

    def trigger_owner() -> int | None:
        rows = cluster.query(
            "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
            "WHERE ti.dag_id = :dag_id AND ti.run_id = :run_id AND ti.task_id = :task_id",
            dag_id=DAG_ID,
            run_id=run_id,
            task_id=SENSOR,
        )
        return rows[0][0] if rows else None

    owners: set[int] = set()

    def kill_when_polling(states: dict[str, str | None]) -> None:
        owner = trigger_owner() if states.get(SENSOR) == "deferred" else None
        if owner is not None:
            owners.add(owner)
        polls = emulator.stats()["requests"]["status"]
        if "at" in killed:
            # Release the export task once the new triggerer polls it and the deferral is processed.
            if (
                "released" not in killed
                and polls >= killed["at_polls"] + 2
                and deferral_event_processed(cluster, run_id)
            ):
                killed["released"] = polls
                release(emulator)
            return
        if states.get(SENSOR) != "deferred" or owner is None:
            return
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
    pin_export_task_when_created(emulator, cluster)
    history = cluster.watch_run(DAG_ID, run_id, timeout=180, on_poll=kill_when_polling)

    assert "at" in killed, f"the sensor never reached a polling trigger: {history}"
    assert "released" in killed, f"the new triggerer never polled the export task: {history}"
    assert cluster.run_state(DAG_ID, run_id) == "success", history
    assert "deferred" in history[SENSOR], history
    assert history[SENSOR][-1] == "success", history
    assert emulator.stats()["requests"]["status"] > killed["at_polls"]  # the new triggerer polled on
    assert len(owners) == 2, owners  # the trigger moved from the killed triggerer to the new one
    assert sensor_xcom(cluster, run_id)["total"] == 1000
