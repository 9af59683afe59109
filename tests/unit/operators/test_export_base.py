"""What every loyalty operator shares: deadlines while deferred, and no name clash with BaseOperator."""

from __future__ import annotations

import inspect
import time
from datetime import timedelta
from types import SimpleNamespace

import pendulum
import pytest
from airflow.providers.common.compat.sdk import BaseOperator, BaseSensorOperator, TaskDeferred

from airflow_provider_loyalty.exceptions import LoyaltyError
from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator, LoyaltyExportOperator
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator
from tests.support.helpers import point_connection_at
from tests.support.operator_driver import context_for

EXPORT = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points"}
OPERATORS = [
    (LoyaltyExportOperator, BaseOperator, {**EXPORT, "output_path": "/tmp/out"}),
    (LoyaltyTransactionsToS3Operator, BaseOperator, {**EXPORT, "s3_bucket": "bucket"}),
    (
        LoyaltyAccountTransactionsOperator,
        BaseOperator,
        {**EXPORT, "matching": "email", "member_email": "m@example.com", "output_path": "/tmp/m.jsonl"},
    ),
    (LoyaltyExportTaskSensor, BaseSensorOperator, {"export_task_id": "task_1"}),
]


@pytest.mark.parametrize(("operator", "base", "required"), OPERATORS, ids=lambda value: getattr(value, "__name__", ""))
def test_no_parameter_or_attribute_shadows_the_base_operator(operator, base, required):
    """E.g. ``email`` on an operator is Airflow's alert recipient list: a member's address there
    would email a customer the task's error text. None of our parameters or attributes may be one
    of the base operator's (apart from the base's own parameters we pass on to it)."""
    forwarded = set(inspect.signature(base.__init__).parameters)
    parameters = set(inspect.signature(operator.__init__).parameters) - {"self", "kwargs"} - forwarded
    base_attributes = set(vars(base(task_id="base")))
    attributes = set(vars(operator(task_id="ours", **required))) - base_attributes
    clashes = sorted(name for name in parameters | attributes if hasattr(base, name) or name in base_attributes)
    assert clashes == [], f"{operator.__name__} shadows {base.__name__}: {clashes}"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    with LoyaltyEmulator(EmulatorConfig(transactions=500, batch_size=1000, task_duration=60.0)) as emulator:
        point_connection_at(monkeypatch, emulator)
        yield emulator


def _deferrable_export(tmp_path, **options) -> LoyaltyExportOperator:
    return LoyaltyExportOperator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        output_path=str(tmp_path),
        deferrable=True,
        poll_interval=1,
        **options,
    )


def test_a_deferral_carries_the_time_left_of_execution_timeout(emulator: LoyaltyEmulator, tmp_path):
    operator = _deferrable_export(tmp_path, execution_timeout=timedelta(seconds=120))
    started = pendulum.now("UTC").subtract(seconds=30)
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="export", map_index=-1, try_number=1, start_date=started)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context_for(ti=ti))
    left = deferred.value.timeout.total_seconds()
    assert 80 < left <= 90  # 120 s from the task's start, 30 s of which had passed
    assert abs(deferred.value.trigger.deadline - (started.timestamp() + 120)) < 1
    waited_for = deferred.value.kwargs["export_task_id"]

    # No triggerer ever answered: Airflow fails the deferral at its timeout; the message names the task.
    with pytest.raises(LoyaltyError, match=f"timed out waiting for export task {waited_for}"):
        operator.resume_execution("__fail__", {"error": "Trigger/execution timeout"}, context_for(ti=ti))
    # A triggerer did answer, with its own timeout event: the same words.
    event = {"status": "timeout", "export_task_id": waited_for, "message": "did not finish before the deadline"}
    with pytest.raises(LoyaltyError, match=f"timed out waiting for export task {waited_for}"):
        operator.execute_complete(context_for(ti=ti), event=event)


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        ({"error": "Trigger timeout"}, LoyaltyError),  # the scheduler timed the deferral out
        ({"error": "Trigger failure", "traceback": ["ModuleNotFoundError: x"]}, Exception),  # it could not run
    ],
    ids=["timeout", "trigger-failure"],
)
def test_a_deferral_airflow_fails_gives_the_location_up(emulator: LoyaltyEmulator, tmp_path, error, raised):
    """No execute_complete follows a deferral Airflow fails (``__fail__``): the lease, renewed past
    the wait's deadline at deferral, held every other export of the location off for up to
    batch_timeout (24 h). Now it is given up, as when the trigger's own timeout event fails the task;
    the checkpoint stays for a retry."""
    emulator.config.task_duration = 3600
    operator = _deferrable_export(tmp_path)
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="export", map_index=-1, try_number=1, start_date=None)
    with pytest.raises(TaskDeferred):
        operator.execute(context_for(ti=ti))
    assert (tmp_path / "_lease.json").exists()

    with pytest.raises(raised):
        operator.resume_execution("__fail__", error, context_for(ti=ti))
    assert not (tmp_path / "_lease.json").exists()
    assert (tmp_path / "_manifest.inprogress.json").exists()  # the checkpoint, for a retry


def test_a_failed_deferral_leaves_another_trys_lease_alone(emulator: LoyaltyEmulator, tmp_path):
    emulator.config.task_duration = 3600
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="export", map_index=-1, try_number=1, start_date=None)
    with pytest.raises(TaskDeferred):
        _deferrable_export(tmp_path).execute(context_for(ti=ti))
    retry = SimpleNamespace(**{**vars(ti), "try_number": 2})
    with pytest.raises(TaskDeferred):
        _deferrable_export(tmp_path).execute(context_for(ti=retry))  # try 2 took the location over
    held = (tmp_path / "_lease.json").read_text()

    with pytest.raises(LoyaltyError, match="timed out waiting"):  # try 1's deferral, failed late
        _deferrable_export(tmp_path).resume_execution("__fail__", {"error": "Trigger timeout"}, context_for(ti=ti))
    assert (tmp_path / "_lease.json").read_text() == held


def test_a_deadline_already_passed_fails_instead_of_deferring(emulator: LoyaltyEmulator, tmp_path):
    operator = LoyaltyExportOperator(
        task_id="export",
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        output_path=str(tmp_path),
        deferrable=True,
        execution_timeout=timedelta(seconds=5),
    )
    ti = SimpleNamespace(
        dag_id="d",
        run_id="r",
        task_id="export",
        map_index=-1,
        try_number=1,
        start_date=pendulum.from_timestamp(time.time() - 60),
    )
    with pytest.raises(LoyaltyError, match="timed out waiting for export task"):
        operator.execute(context_for(ti=ti))


def test_a_deferred_sensor_waits_no_longer_than_execution_timeout(emulator: LoyaltyEmulator):
    """Airflow does not cap a deferral by ``execution_timeout``: the sensor's 7-day ``timeout`` once
    went to the trigger as it was, where poke mode stops at ``execution_timeout``."""
    from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

    export_task_id = LoyaltyHook().create_transactions_export(
        loyalty_program_id=123,
        points_currency_eid="bonus_points",
        date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z",
    )
    sensor = LoyaltyExportTaskSensor(
        task_id="wait", export_task_id=export_task_id, deferrable=True, execution_timeout=timedelta(seconds=60)
    )
    started = pendulum.now("UTC").subtract(seconds=10)
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="wait", map_index=-1, try_number=1, start_date=started)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context_for(ti=ti))
    assert abs(deferred.value.trigger.deadline - (started.timestamp() + 60)) < 1
    assert deferred.value.timeout.total_seconds() <= 50 + 300  # the time left, plus the backstop's grace


@pytest.mark.parametrize(
    "event",
    [
        {"status": "timeout", "message": "did not finish before the deadline"},
        {"status": "success", "export_task_id": "task_another", "result": {}},
        None,
    ],
    ids=["timeout", "another-task", "no-event"],
)
def test_an_event_that_fails_a_deferred_export_gives_the_location_up(emulator: LoyaltyEmulator, tmp_path, event):
    """The lease was renewed past the deadline at deferral; a failing event once left it there, so
    another writer of the location (a manual re-run of the period) waited ten minutes, then failed."""
    from airflow_provider_loyalty.export.layout import LEASE_NAME

    operator = _deferrable_export(tmp_path)
    ti = SimpleNamespace(
        dag_id="d", run_id="r", task_id="export", map_index=-1, try_number=1, start_date=pendulum.now("UTC")
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context_for(ti=ti))
    assert (tmp_path / LEASE_NAME).exists()  # held while deferred
    waited_for = deferred.value.kwargs["export_task_id"]
    if event is not None and "export_task_id" not in event:
        event = {**event, "export_task_id": waited_for}
    with pytest.raises(LoyaltyError):
        operator.execute_complete(context_for(ti=ti), event=event, **deferred.value.kwargs)
    assert not (tmp_path / LEASE_NAME).exists()


@pytest.mark.parametrize(
    "period",
    [{"date_from": "", "date_to": "2023-09-02"}, {"date_from": "2023-09-01", "date_to": ""}, {"date_from": ""}],
    ids=["from-empty", "to-empty", "from-only-empty"],
)
@pytest.mark.parametrize("operator", [LoyaltyExportOperator, LoyaltyTransactionsToS3Operator])
def test_an_empty_period_end_is_the_data_intervals_when_parsed_as_at_run_time(operator, period):
    """``""`` is the data interval's end at run time, and when the other end came from it; with the
    other end literal the parse-time check refused it (``date_from: ... got ''``)."""
    required = {"output_path": "/tmp/out"} if operator is LoyaltyExportOperator else {"s3_bucket": "bucket"}
    task = operator(task_id="empty_end", **EXPORT, **required, **period)
    spec = task.export_spec(context_for())  # 2023-09-01 .. 2023-10-01, the helper's data interval
    expected_from = "2023-09-01T00:00:00Z"
    expected_to = "2023-09-02T23:59:59Z" if period.get("date_to") else "2023-09-30T23:59:59Z"
    assert (spec.period["date_from"], spec.period["date_to"]) == (expected_from, expected_to)
