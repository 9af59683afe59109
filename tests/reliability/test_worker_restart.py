"""Worker restart mid-wait: a deferred export resumes on a fresh operator from the checkpoint alone.

After ``execute`` defers, the worker that ran it may be gone; Airflow resumes ``execute_complete`` on
whatever worker picks the task up, from a freshly built operator. This drives every deferral that
way: a new operator object per resumption, the real trigger's event, and no ``next_kwargs`` (no
``progress``, no ``export_task_id`` kwarg) — only the event's ``export_task_id`` and the checkpoint
in S3. The set and manifest must be exactly those of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import importlib

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.reliability.support import assert_true_manifest, make_s3_operator
from tests.support.helpers import all_transaction_ids, point_connection_at
from tests.support.operator_driver import context_for

N = 3500
PREFIX = "restart/deferrable"


@pytest.fixture
def emulator(monkeypatch) -> LoyaltyEmulator:
    with LoyaltyEmulator(EmulatorConfig(transactions=N, batch_size=1000, task_duration=3.0)) as emulator:
        point_connection_at(monkeypatch, emulator)
        yield emulator


async def _first_event(trigger) -> dict:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def fire(deferred: TaskDeferred) -> dict:
    """What a triggerer does: rebuild the trigger from its serialized kwargs and run it."""
    classpath, kwargs = deferred.trigger.serialize()
    module_name, class_name = classpath.rsplit(".", 1)
    trigger = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    return asyncio.run(_first_event(trigger))


def test_execute_complete_on_a_fresh_operator_uses_only_the_checkpoint(emulator, s3_bucket, s3_client):
    context = context_for()
    resumptions = 0
    try:
        make_s3_operator(s3_bucket, PREFIX, deferrable=True).execute(context)
        pytest.fail("the first batch should have deferred (task_duration > 0)")
    except TaskDeferred as first:
        deferred = first
    while True:
        assert "export_task_id" in deferred.kwargs  # what a runner *could* hand back; we drop it
        event = fire(deferred)
        assert event["status"] == "success" and event["export_task_id"]
        fresh = make_s3_operator(s3_bucket, PREFIX, deferrable=True)  # the worker restarted: nothing in memory
        resumptions += 1
        try:
            manifest = fresh.execute_complete(context, event=event)  # no next_kwargs at all
            break
        except TaskDeferred as again:
            deferred = again
    # One per batch still running when the operator checked (on a busy machine a batch may already
    # have finished by then, and is landed without a deferral).
    assert resumptions >= 2
    assert manifest["total_rows"] == N
    assert_true_manifest(s3_client, s3_bucket, PREFIX, all_transaction_ids(emulator))
    assert emulator.stats()["export_tasks_created"] == 4  # no batch re-created by a restart


def test_fresh_operator_with_a_stale_event_does_not_land_it(emulator, s3_bucket, s3_client, capfd):
    """An event for a task the checkpoint is not waiting for is never landed: the operator says so and
    checks the task it does wait for instead; the export ends exact."""
    context = context_for()
    with pytest.raises(TaskDeferred) as caught:
        make_s3_operator(s3_bucket, PREFIX, deferrable=True).execute(context)
    event = fire(caught.value)
    stale = {**event, "export_task_id": "task_not-the-pending-one"}
    deferred: TaskDeferred | None = None
    try:
        make_s3_operator(s3_bucket, PREFIX, deferrable=True).execute_complete(context, event=stale)
    except TaskDeferred as again:
        deferred = again
    captured = capfd.readouterr()
    assert "Ignoring a trigger event for export task task_not-the-pending-one" in captured.out + captured.err
    while deferred is not None:
        try:
            manifest = make_s3_operator(s3_bucket, PREFIX, deferrable=True).execute_complete(
                context, event=fire(deferred)
            )
            deferred = None
        except TaskDeferred as again:
            deferred = again
    assert manifest["total_rows"] == N
    assert_true_manifest(s3_client, s3_bucket, PREFIX, all_transaction_ids(emulator))
    assert "task_not-the-pending-one" not in {part["export_task_id"] for part in manifest["parts"]}
