"""Drive an operator through Airflow's deferral protocol in-process, with the real trigger.

``execute`` raises ``TaskDeferred``; the trigger it carries is serialized and re-created from its
kwargs (as a triggerer would), run on an asyncio loop against the loopback server, and its event
handed to the method the operator named — until the operator returns. ``dag.test()`` tests cover
the same path through Airflow itself; this driver keeps unit tests fast and lets them count
deferrals.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import TaskDeferred


def local_export_operator(output: Any, **kwargs: Any) -> Any:
    """A worker-mode ``LoyaltyExportOperator`` of program 123 / bonus_points into ``output``."""
    from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator

    params = {
        "task_id": "export",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "output_path": str(output),
        "poll_interval": 0.05,
        "deferrable": False,
        **kwargs,
    }
    return LoyaltyExportOperator(**params)


def stop_with_on_kill(operator: Any, worker: Any, outcome: dict[str, Any]) -> None:
    """Call ``on_kill`` while ``worker`` (a thread running the export) waits; check it stopped
    promptly with :class:`LoyaltyExportStopped` and removed its temporary batch directory."""
    import os

    from airflow_provider_loyalty.exceptions import LoyaltyExportStopped

    assert operator._loop is not None
    workdir = operator._loop.workdir
    assert os.path.isdir(workdir)
    operator.on_kill()
    worker.join(10)
    assert not worker.is_alive(), "on_kill did not stop the export"
    assert isinstance(outcome.get("error"), LoyaltyExportStopped)
    assert not os.path.exists(workdir)  # temporary batch files removed


def task_instance(
    task_id: str = "export",
    run_id: str = "run",
    dag_id: str = "tests",
    map_index: int = -1,
    try_number: int = 1,
    max_tries: int | None = None,
) -> SimpleNamespace:
    """A stand-in for the task instance in a context: who writes, for the location's lease.
    ``max_tries`` as Airflow keeps it (``retries`` at first, a cleared task instance's try number
    plus ``retries``); left out when ``None``, as a context that does not say."""
    ti = SimpleNamespace(
        dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, try_number=try_number, start_date=None
    )
    if max_tries is not None:
        ti.max_tries = max_tries
    return ti


def context_for(start: str = "2023-09-01T00:00:00Z", end: str = "2023-10-01T00:00:00Z", **extra: Any) -> dict[str, Any]:
    """A minimal task context: the data interval the export operators default to (``ti=`` adds a
    task instance, see :func:`task_instance`)."""
    return {
        "data_interval_start": pendulum.parse(start),
        "data_interval_end": pendulum.parse(end),
        "outlet_events": None,
        **extra,
    }


@dataclass
class DeferralLog:
    """What happened while driving: how many times the operator deferred, and the events."""

    deferrals: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    trigger_kwargs: list[dict[str, Any]] = field(default_factory=list)


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def run_with_deferrals(
    operator: Any,
    context: dict[str, Any],
    log: DeferralLog | None = None,
    before_trigger: Callable[[int], None] | None = None,
    *,
    event_only: bool = False,
) -> Any:
    """Run ``operator`` to completion, resolving every deferral with its real trigger.

    :param before_trigger: called with the deferral's number (1, 2, ...) before its trigger runs.
    :param event_only: resume with the event alone, the deferral's kwargs dropped (as ``dag.test()``
        does: it sets ``next_kwargs`` to ``{"event": ...}``).
    """
    log = log if log is not None else DeferralLog()
    call = lambda: operator.execute(context)  # noqa: E731
    while True:
        try:
            return call()
        except TaskDeferred as deferred:
            log.deferrals += 1
            if before_trigger is not None:
                before_trigger(log.deferrals)
            classpath, kwargs = deferred.trigger.serialize()
            module_name, class_name = classpath.rsplit(".", 1)
            trigger = getattr(importlib.import_module(module_name), class_name)(**kwargs)
            log.trigger_kwargs.append(kwargs)
            event = asyncio.run(_first_event(trigger))
            log.events.append(event)
            method = getattr(operator, deferred.method_name)
            method_kwargs = {} if event_only else deferred.kwargs or {}
            call = lambda m=method, e=event, k=method_kwargs: m(context, event=e, **k)  # noqa: E731
