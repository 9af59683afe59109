"""LoyaltyExportTaskSensor in poke and deferrable mode, against the real emulator (no mocked methods)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyExportTaskFailed, LoyaltyValidationError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.sensors.loyalty import LoyaltyExportTaskSensor
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

EXPORT = {
    "loyalty_program_id": 123,
    "points_currency_eid": "bonus_points",
    "date_from": "2023-09-01T00:00:00Z",
    "date_to": "2023-09-30T23:59:59Z",
}
CONTEXT: Any = {}  # poke() and execute() of this sensor read nothing from the context


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoyaltyEmulator]:
    """A running emulator with ``loyalty_default`` pointing at it (fast retries)."""
    with LoyaltyEmulator(EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.0)) as emu:
        connection = {
            "conn_type": "loyalty",
            "host": emu.url,
            "password": emu.token,
            "extra": {"retry_backoff": 0.01, "max_retries": 2, "timeout": 5},
        }
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        yield emu


def create_export() -> str:
    hook = LoyaltyHook()
    try:
        return hook.create_transactions_export(**EXPORT)
    finally:
        hook.close()


def make_sensor(task_id: str, **kwargs: Any) -> LoyaltyExportTaskSensor:
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("timeout", 10)
    return LoyaltyExportTaskSensor(task_id="wait_for_export", export_task_id=task_id, **kwargs)


def test_template_fields_and_defaults() -> None:
    sensor = LoyaltyExportTaskSensor(task_id="s", export_task_id="{{ ti.xcom_pull('create') }}")
    assert LoyaltyExportTaskSensor.template_fields == ("export_task_id", "loyalty_conn_id")
    assert sensor.loyalty_conn_id == "loyalty_default"
    assert sensor.poke_interval == 30
    assert sensor.timeout == 7 * 24 * 3600
    assert sensor.deferrable is False  # [operators] default_deferrable is unset


# ---------------------------------------------------------------------------------------- poke mode


def test_poke_mode_returns_the_result(emulator: LoyaltyEmulator) -> None:
    emulator.config.task_duration = 0.3
    task_id = create_export()
    result = make_sensor(task_id).execute(CONTEXT)
    assert result["total"] == 1000
    assert result["hashed_file"].endswith(".zip")
    assert emulator.stats()["requests"]["status"] >= 2


def test_poke_mode_failure_raises_with_api_text(emulator: LoyaltyEmulator) -> None:
    task_id = create_export()
    emulator.set_faults(
        [FaultRule(endpoint="status", kind="task_failed", params={"status": "error", "text": "quota exceeded"})]
    )
    with pytest.raises(LoyaltyExportTaskFailed, match="quota exceeded") as caught:
        make_sensor(task_id).execute(CONTEXT)
    assert caught.value.status == "error"
    assert caught.value.export_task_id == task_id


def test_poke_mode_failure_with_soft_fail_skips(emulator: LoyaltyEmulator) -> None:
    task_id = create_export()
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "quota exceeded"})])
    with pytest.raises(AirflowSkipException, match="quota exceeded"):
        make_sensor(task_id, soft_fail=True).execute(CONTEXT)


@pytest.mark.parametrize("soft_fail", [False, True])
def test_poke_mode_timeout(emulator: LoyaltyEmulator, soft_fail: bool) -> None:
    emulator.set_faults([FaultRule(endpoint="export", kind="task_never_finishes")])
    task_id = create_export()
    expected = AirflowSkipException if soft_fail else AirflowSensorTimeout
    started = time.monotonic()
    with pytest.raises(expected):
        make_sensor(task_id, timeout=0.4, soft_fail=soft_fail).execute(CONTEXT)
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------------- deferrable mode


def test_deferrable_returns_at_once_when_already_done(emulator: LoyaltyEmulator) -> None:
    task_id = create_export()
    result = make_sensor(task_id, deferrable=True).execute(CONTEXT)
    assert result["total"] == 1000
    assert emulator.stats()["requests"]["status"] == 1


def test_deferrable_defers_with_the_right_trigger(emulator: LoyaltyEmulator) -> None:
    emulator.config.task_duration = 60
    task_id = create_export()
    sensor = make_sensor(task_id, deferrable=True, poke_interval=7, timeout=3600, loyalty_conn_id="loyalty_default")
    before = time.time()
    with pytest.raises(TaskDeferred) as caught:
        sensor.execute(CONTEXT)
    deferred = caught.value
    assert deferred.method_name == "execute_complete"
    trigger = deferred.trigger
    assert isinstance(trigger, LoyaltyExportTaskTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_loyalty.triggers.loyalty.LoyaltyExportTaskTrigger"
    assert kwargs["export_task_id"] == task_id
    assert kwargs["loyalty_conn_id"] == "loyalty_default"
    assert kwargs["poll_interval"] == 7
    assert before + 3600 - 1 <= kwargs["deadline"] <= time.time() + 3600
    assert deferred.timeout is not None
    assert deferred.timeout >= timedelta(seconds=3600)  # a backstop behind the trigger's deadline


@pytest.mark.parametrize("resumed_with", ["kwargs", "event-only"])
@pytest.mark.parametrize("soft_fail", [False, True])
def test_execution_timeout_before_the_sensors_timeout_is_a_task_timeout_when_deferred(
    emulator: LoyaltyEmulator, soft_fail: bool, resumed_with: str
) -> None:
    """Poke mode meets ``execution_timeout`` as ``AirflowTaskTimeout`` (retried, never skipped);
    deferred, the trigger's deadline (the earlier of the two) ended as the sensor's own timeout:
    never retried, and skipped with ``soft_fail``. ``event-only``: ``dag.test()`` resumes a task
    with the trigger's event and not the deferral's arguments; it still was the sensor's timeout."""
    from airflow.providers.common.compat.sdk import AirflowSensorTimeout

    try:
        from airflow.sdk.exceptions import AirflowTaskTimeout
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import AirflowTaskTimeout  # type: ignore[no-redef,attr-defined]

    emulator.config.task_duration = 60
    task_id = create_export()
    sensor = make_sensor(
        task_id, deferrable=True, timeout=3600, execution_timeout=timedelta(seconds=1), soft_fail=soft_fail
    )
    with pytest.raises(TaskDeferred) as caught:
        sensor.execute(CONTEXT)
    assert caught.value.kwargs["ends_execution"] is True
    event = asyncio.run(_fire(caught.value.trigger))
    assert event["status"] == "timeout"
    resumed = caught.value.kwargs if resumed_with == "kwargs" else {}
    with pytest.raises(AirflowTaskTimeout, match="execution_timeout"):
        getattr(sensor, caught.value.method_name)(CONTEXT, event=event, **resumed)
    # the sensor's own timeout first: the sensor's timeout, as before
    own = make_sensor(task_id, deferrable=True, timeout=1, execution_timeout=timedelta(hours=1), soft_fail=soft_fail)
    with pytest.raises(TaskDeferred) as deferred:
        own.execute(CONTEXT)
    assert "ends_execution" not in deferred.value.kwargs
    expected = AirflowSkipException if soft_fail else AirflowSensorTimeout
    with pytest.raises(expected):
        own.execute_complete(CONTEXT, event=event, **(deferred.value.kwargs if resumed_with == "kwargs" else {}))


async def _fire(trigger: LoyaltyExportTaskTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def test_deferrable_failure_at_first_check_raises(emulator: LoyaltyEmulator) -> None:
    task_id = create_export()
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "bad period"})])
    with pytest.raises(LoyaltyExportTaskFailed, match="bad period"):
        make_sensor(task_id, deferrable=True).execute(CONTEXT)


@pytest.mark.parametrize("deferrable", [False, True])
def test_never_fail_skips_a_failed_export_task_in_both_modes(emulator: LoyaltyEmulator, deferrable: bool) -> None:
    """``never_fail`` skipped in poke mode and failed the task in deferrable mode, when the export
    task had already failed at the first check."""
    task_id = create_export()
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "bad period"})])
    with pytest.raises(AirflowSkipException, match="never_fail") as caught:
        make_sensor(task_id, deferrable=deferrable, never_fail=True).execute(CONTEXT)
    assert isinstance(caught.value.__cause__, LoyaltyExportTaskFailed)


@pytest.mark.parametrize("deferrable", [False, True])
def test_silent_fail_does_not_wait_past_the_export_tasks_failure(emulator: LoyaltyEmulator, deferrable: bool) -> None:
    """In poke mode the base sensor logged LoyaltyExportTaskFailed and poked on until the timeout
    (7 days by default), then reported a timeout instead of the failure."""
    task_id = create_export()
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "disk full"})])
    with pytest.raises(AirflowFailException, match="disk full"):
        make_sensor(task_id, deferrable=deferrable, silent_fail=True, timeout=60).execute(CONTEXT)


def test_silent_fail_waits_past_a_failing_first_check_in_deferrable_mode(emulator: LoyaltyEmulator) -> None:
    """A first check that fails for another reason than the export task (here the API's 500s,
    after the hook's retries) is logged and waited past, as the base sensor does when poking."""
    task_id = create_export()
    emulator.set_faults([FaultRule(endpoint="status", kind="http_500")])
    with pytest.raises(TaskDeferred) as caught:
        make_sensor(task_id, deferrable=True, silent_fail=True).execute(CONTEXT)
    assert isinstance(caught.value.trigger, LoyaltyExportTaskTrigger)
    with pytest.raises(LoyaltyError, match="500"):
        make_sensor(task_id, deferrable=True).execute(CONTEXT)


def test_silent_fail_waits_past_a_trigger_whose_checks_failed(emulator: LoyaltyEmulator) -> None:
    """In deferrable mode as in poke mode: the trigger's checks failing past their retries (the
    API's 500s) is logged and the sensor defers again until the same deadline; without
    ``silent_fail`` it fails, and past the deadline it is a timeout."""
    sensor, first, failed = deferred_then_fired(emulator, FaultRule(endpoint="status", kind="http_500"))
    task_id = sensor.export_task_id
    assert failed["status"] == "error" and not failed.get("task_status")
    resume = getattr(sensor, first.method_name)
    with pytest.raises(LoyaltyError, match="500"):
        getattr(make_sensor(task_id, deferrable=True), first.method_name)(CONTEXT, event=failed, **first.kwargs)
    with pytest.raises(AirflowSensorTimeout, match="the last check failed"):
        resume(CONTEXT, event=failed, deadline=time.time() - 1)
    with pytest.raises(TaskDeferred) as again:
        resume(CONTEXT, event=failed, **first.kwargs)
    assert again.value.kwargs == first.kwargs  # the same deadline
    with pytest.raises(TaskDeferred):  # resumed with the event alone, as dag.test() does: it failed
        resume(CONTEXT, event=failed)
    emulator.set_faults([])
    result = resume(CONTEXT, event=fire(again.value), **again.value.kwargs)
    assert result["total"] == 1000


def deferred_then_fired(emulator: LoyaltyEmulator, fault: FaultRule) -> tuple[Any, TaskDeferred, dict[str, Any]]:
    """A ``silent_fail`` sensor deferred on a running export task, then its trigger run once under
    ``fault``: the sensor, its deferral and the trigger's event."""
    emulator.config.task_duration = 1.0
    sensor = make_sensor(create_export(), deferrable=True, silent_fail=True, timeout=60)
    with pytest.raises(TaskDeferred) as first:
        sensor.execute(CONTEXT)
    emulator.set_faults([fault])
    return sensor, first.value, fire(first.value)


def fire(deferred: TaskDeferred) -> dict[str, Any]:
    """Run the deferral's trigger in this process; its one event."""

    async def run() -> list[Any]:
        return [event async for event in deferred.trigger.run()]

    (event,) = asyncio.run(run())
    return dict(event.payload)


@pytest.mark.parametrize("silent_fail", [False, True])
def test_a_token_refused_while_deferred_fails_the_task_at_once(emulator: LoyaltyEmulator, silent_fail: bool) -> None:
    """The trigger's checks refused (the token revoked meanwhile) end the wait as in poke mode: a
    final error, not a failed wait that ``silent_fail`` defers again or that spends retries."""
    emulator.config.task_duration = 1.0
    task_id = create_export()
    sensor = make_sensor(task_id, deferrable=True, silent_fail=silent_fail, timeout=60)
    with pytest.raises(TaskDeferred) as first:
        sensor.execute(CONTEXT)
    emulator.config.token = "rotated-token"
    refused = fire(first.value)
    assert refused["status"] == "error" and refused.get("final") is True and "401" in refused["message"]
    with pytest.raises(AirflowFailException, match="401"):
        getattr(sensor, first.value.method_name)(CONTEXT, event=refused, **first.value.kwargs)


def test_a_timeout_of_centuries_defers_without_overflow(emulator: LoyaltyEmulator) -> None:
    """``timeout=1e12`` (no limit, in effect): the deferral's timeout is capped at ten years instead
    of overflowing ``timedelta`` after the first check was sent."""
    emulator.config.task_duration = 30.0
    with pytest.raises(TaskDeferred) as caught:
        make_sensor(create_export(), deferrable=True, timeout=1e12).execute(CONTEXT)
    assert timedelta(days=3600) < caught.value.timeout < timedelta(days=3700)
    assert caught.value.trigger.deadline < time.time() + 3700 * 86400


def test_silent_fail_defers_again_one_poke_interval_later(emulator: LoyaltyEmulator) -> None:
    """A wait deferred again after a failed check keeps its pace: the trigger's first check comes
    one ``poke_interval`` later, not at once (which would poll the failing API in a tight loop)."""
    emulator.config.task_duration = 30.0
    task_id = create_export()
    sensor = make_sensor(task_id, deferrable=True, silent_fail=True, poke_interval=0.5, timeout=60)
    with pytest.raises(TaskDeferred) as first:
        sensor.execute(CONTEXT)
    assert first.value.trigger.first_check_after == 0.0
    emulator.set_faults([FaultRule(endpoint="status", kind="http_500")])
    failed = fire(first.value)
    with pytest.raises(TaskDeferred) as again:
        getattr(sensor, first.value.method_name)(CONTEXT, event=failed, **first.value.kwargs)
    trigger = again.value.trigger
    assert trigger.first_check_after == 0.5
    assert type(trigger)(**trigger.serialize()[1]).first_check_after == 0.5
    checks = emulator.stats()["requests"].get("status", 0)
    started = time.monotonic()
    fire(again.value)
    assert time.monotonic() - started >= 0.5
    assert emulator.stats()["requests"].get("status", 0) - checks == 3  # one check and its two retries


def test_silent_fail_does_not_wait_past_the_export_tasks_own_failure_when_deferred(emulator: LoyaltyEmulator) -> None:
    """As in poke mode: ``silent_fail`` waits past failing checks, not past the export task's failure,
    which fails the task without retries."""
    sensor, first, failed = deferred_then_fired(emulator, FaultRule(endpoint="status", kind="task_failed"))
    assert failed.get("task_status")
    with pytest.raises(AirflowFailException, match="not past the export task's failure"):
        getattr(sensor, first.method_name)(CONTEXT, event=failed, **first.kwargs)


def test_deferred_trigger_event_feeds_execute_complete(emulator: LoyaltyEmulator) -> None:
    """The whole deferrable path in one process: defer, run the trigger, resume."""
    emulator.config.task_duration = 0.5
    task_id = create_export()
    sensor = make_sensor(task_id, deferrable=True)
    with pytest.raises(TaskDeferred) as caught:
        sensor.execute(CONTEXT)

    async def fire() -> dict[str, Any]:
        events = [event async for event in caught.value.trigger.run()]
        assert len(events) == 1
        return dict(events[0].payload)

    event = asyncio.run(fire())
    result = getattr(sensor, caught.value.method_name)(CONTEXT, event=event)
    assert result["total"] == 1000


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_an_export_task_id_pasted_with_a_newline_is_that_task(emulator: LoyaltyEmulator, deferrable: bool) -> None:
    """A fresh sensor resumes (as after a worker restart) with the id as rendered, newline and all."""
    emulator.config.task_duration = 0.5
    task_id = create_export()
    sensor = make_sensor(f" {task_id}\n", deferrable=deferrable)
    if not deferrable:
        assert sensor.execute(CONTEXT)["total"] == 1000
        return
    with pytest.raises(TaskDeferred) as caught:
        sensor.execute(CONTEXT)
    assert caught.value.trigger.export_task_id == task_id

    async def fire() -> dict[str, Any]:
        async for event in caught.value.trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    event = asyncio.run(fire())
    resumed = make_sensor(f" {task_id}\n", deferrable=True)
    assert getattr(resumed, caught.value.method_name)(CONTEXT, event=event)["total"] == 1000


@pytest.mark.parametrize("literal", [" \n", "None", "task_a\nb", "t" * 300, 42], ids=str)
def test_a_literal_export_task_id_that_cannot_work_fails_when_the_dag_is_parsed(
    emulator: LoyaltyEmulator, literal: Any
) -> None:
    """As the export operators refuse it: the sensor accepted these and failed only once it ran."""
    with pytest.raises(LoyaltyValidationError, match=r"^export_task_id: "):
        make_sensor(literal)
    assert emulator.stats()["requests_total"] == 0


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_an_xcom_pull_of_nothing_fails_naming_the_id_before_any_request(
    emulator: LoyaltyEmulator, deferrable: bool
) -> None:
    """``{{ ti.xcom_pull(...) }}`` of an upstream that pushed nothing renders the text ``None``."""
    sensor = make_sensor("{{ params.task }}", deferrable=deferrable)
    context = {**CONTEXT, "params": {"task": None}}
    sensor.render_template_fields(context)
    assert sensor.export_task_id == "None"
    with pytest.raises(LoyaltyValidationError, match=r"^export_task_id: rendered to the text 'None'"):
        sensor.execute(context)
    assert emulator.stats()["requests_total"] == 0


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_a_templated_connection_id_is_rendered_for_the_poke_and_the_trigger(
    emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, deferrable: bool
) -> None:
    """``loyalty_conn_id`` was in no ``template_fields``: "loyalty_{{ params.region }}" was looked
    up as written (and handed to the trigger so) (probe)."""
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_EU", os.environ["AIRFLOW_CONN_LOYALTY_DEFAULT"])
    emulator.config.task_duration = 60 if deferrable else 0.0
    sensor = make_sensor(create_export(), deferrable=deferrable, loyalty_conn_id="loyalty_{{ params.region }}")
    context = {**CONTEXT, "params": {"region": "eu"}}
    sensor.render_template_fields(context)
    if deferrable:
        with pytest.raises(TaskDeferred) as caught:
            sensor.execute(context)
        assert caught.value.trigger.serialize()[1]["loyalty_conn_id"] == "loyalty_eu"
    else:
        assert sensor.execute(context)["total"] == 1000
    refused = make_sensor("task_1", loyalty_conn_id="{{ params.region }}")
    refused.render_template_fields({**CONTEXT, "params": {"region": None}})
    seen = emulator.stats()["requests_total"]
    with pytest.raises(LoyaltyValidationError, match=r"^loyalty_conn_id: rendered to the text 'None'"):
        refused.execute(CONTEXT)
    assert emulator.stats()["requests_total"] == seen


def success_event(task_id: str = "task_1") -> dict[str, Any]:
    return {"status": "success", "export_task_id": task_id, "result": {"total": 5, "hashed_file": "a/b.zip"}}


def test_execute_complete_success_returns_result() -> None:
    sensor = make_sensor("task_1")
    assert sensor.execute_complete(CONTEXT, success_event()) == {"total": 5, "hashed_file": "a/b.zip"}


@pytest.mark.parametrize(
    ("event", "error", "match"),
    [
        (
            {"status": "error", "export_task_id": "task_1", "message": "disk full", "task_status": "failed"},
            LoyaltyExportTaskFailed,
            "disk full",
        ),
        ({"status": "error", "export_task_id": "task_1", "message": "HTTP 401"}, LoyaltyError, "HTTP 401"),
        ({"status": "timeout", "export_task_id": "task_1", "message": "deadline"}, AirflowSensorTimeout, "deadline"),
        ({"status": "success", "export_task_id": "task_2", "result": {}}, LoyaltyError, "task_2"),
        ({"status": "success", "export_task_id": "task_1", "result": "x"}, LoyaltyError, "result"),
        ({"status": "weird", "export_task_id": "task_1"}, LoyaltyError, "weird"),
        (None, LoyaltyError, "NoneType"),
    ],
    ids=["task-failed", "error", "timeout", "other-task", "bad-result", "bad-status", "no-event"],
)
def test_execute_complete_raises_on_anything_but_success(
    event: dict[str, Any] | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make_sensor("task_1").execute_complete(CONTEXT, event)


@pytest.mark.parametrize(
    "event",
    [
        {"status": "error", "export_task_id": "task_1", "message": "disk full", "task_status": "failed"},
        {"status": "timeout", "export_task_id": "task_1", "message": "deadline"},
    ],
    ids=["error", "timeout"],
)
def test_execute_complete_soft_fail_skips(event: dict[str, Any]) -> None:
    with pytest.raises(AirflowSkipException):
        make_sensor("task_1", soft_fail=True).execute_complete(CONTEXT, event)


def test_a_deferrable_sensor_with_no_pause_between_checks_is_refused_naming_poke_interval(
    emulator: LoyaltyEmulator,
) -> None:
    """The trigger refused it after the first request, naming its own ``poll_interval``."""
    with pytest.raises(LoyaltyValidationError, match=r"^poke_interval: expected a number > 0, got 0"):
        make_sensor("task_1", deferrable=True, poke_interval=0)
    assert make_sensor("task_1", deferrable=False, poke_interval=0).poke_interval == 0  # poking may
    assert emulator.stats()["requests_total"] == 0


@pytest.mark.parametrize("failure", ["api-down", "token-refused"])
@pytest.mark.parametrize("where", ["poke", "first-check", "trigger"])
def test_soft_fail_skips_the_same_errors_in_every_mode(
    emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, where: str, failure: str
) -> None:
    """``soft_fail`` skips what the base sensor's poke mode skips (the export task's failure, the
    timeout, an error no retry can fix) and nothing else, wherever the check ran. A refused token
    skipped in poke mode and failed in the check before deferring; an API down past the retries
    failed in poke mode and skipped when the trigger saw it (the base skips any deferred error)."""
    emulator.config.task_duration = 60.0
    task_id = create_export()
    sensor = make_sensor(task_id, soft_fail=True, deferrable=where != "poke", timeout=30)

    def break_it() -> None:
        if failure == "api-down":
            emulator.set_faults([FaultRule(endpoint="status", kind="http_500")])
        else:
            connection = {"conn_type": "loyalty", "host": emulator.url, "password": "not-the-token"}
            monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps({**connection, "extra": {"max_retries": 0}}))

    if where == "trigger":
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(CONTEXT)  # the task runs: the first check passes
        break_it()
        _path, kwargs = deferred.value.trigger.serialize()
        event = asyncio.run(_fire(LoyaltyExportTaskTrigger(**kwargs)))
        next_kwargs = {**(deferred.value.kwargs or {}), "event": event}

        def run() -> Any:
            return sensor.resume_execution(deferred.value.method_name, next_kwargs, CONTEXT)
    else:
        break_it()

        def run() -> Any:
            return sensor.execute(CONTEXT)

    expected = AirflowSkipException if failure == "token-refused" else LoyaltyError
    with pytest.raises(expected) as caught:
        run()
    assert not isinstance(caught.value, AirflowSkipException) or failure == "token-refused"


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_a_task_the_api_does_not_know_yet_is_waited_for(emulator: LoyaltyEmulator, mode: str) -> None:
    """A platform whose status reads lag its writes answers "not found" (error 1003) for a task
    created a moment ago: the usual create-then-sensor DAG failed its sensor at the first check,
    and the trigger at its first poll, where the export operators ask again."""
    emulator.config.update({"status_lag": 1.0, "task_duration": 0.0})
    task_id = create_export()
    sensor = make_sensor(task_id, deferrable=mode == "deferrable")
    if mode == "poke":
        result = sensor.execute(CONTEXT)
    else:
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(CONTEXT)  # the check before deferring: not known yet, so it defers
        _path, kwargs = deferred.value.trigger.serialize()
        assert kwargs["unknown_until"] is not None
        event = asyncio.run(_fire(LoyaltyExportTaskTrigger(**kwargs)))
        result = sensor.execute_complete(CONTEXT, event, **(deferred.value.kwargs or {}))
    assert result["total"] == 1000


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_a_task_the_api_never_knows_fails_once_the_grace_is_over(
    emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    import airflow_provider_loyalty.sensors.loyalty as sensor_module

    monkeypatch.setattr(sensor_module, "NOT_YET_KNOWN_SECONDS", 0.3)
    sensor = make_sensor("task_never_created", deferrable=mode == "deferrable")
    started = time.monotonic()
    with pytest.raises(LoyaltyError, match="not found") as caught:
        if mode == "poke":
            sensor.execute(CONTEXT)
        else:
            with pytest.raises(TaskDeferred) as deferred:
                sensor.execute(CONTEXT)
            _path, kwargs = deferred.value.trigger.serialize()
            event = asyncio.run(_fire(LoyaltyExportTaskTrigger(**kwargs)))
            sensor.execute_complete(CONTEXT, event, **(deferred.value.kwargs or {}))
    assert time.monotonic() - started < 8, caught.value  # not the sensor's timeout
    assert emulator.stats()["requests"]["status"] >= 2  # asked again within the grace
