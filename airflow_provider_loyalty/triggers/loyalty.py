"""LoyaltyExportTaskTrigger: waits for an export task in the triggerer, fully async.

The event contract (one event per run, then the trigger returns)::

    {"status": "success", "export_task_id": "task_…", "result": {"hashed_file": …, "total": …, …}}
    {"status": "error",   "export_task_id": "task_…", "message": "<API text>", "task_status": "failed"}
    {"status": "error",   "export_task_id": "task_…", "message": "…", "final": true}
    {"status": "timeout", "export_task_id": "task_…", "message": "…"}

``task_status`` is only present when the export task itself ended in a failure state (the API's
status word); other errors (auth refused, retries exhausted, malformed replies, connection
problems) carry only the message, and ``final`` when no retry can fix them (the token refused, a
redirect, a failed TLS handshake): the worker side fails the task at once instead of waiting on.
:func:`result_from_event` validates an event on the worker side and is shared by the sensor and
the export operators.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_loyalty.exceptions import (
    LoyaltyError,
    LoyaltyFinalError,
    LoyaltyNotFoundError,
    LoyaltyValidationError,
)
from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook, startup_slot
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.export_status import (
    MAX_RESULT_BYTES,
    ExportResult,
    ExportTaskState,
    ExportTaskStatus,
)
from airflow_provider_loyalty.utils.redaction import scrub
from airflow_provider_loyalty.utils.storable import storable

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator

EVENT_STATUSES = frozenset({"success", "error", "timeout"})

#: Time a first status check may take even when the deadline has already passed (a trigger resumed
#: late on another triggerer still looks once: a task that completed meanwhile is a success).
_FIRST_POLL_GRACE = 30.0
#: Time left below which a status check takes its grace instead (a check needs a moment to answer).
_MIN_CHECK_SECONDS = 1.0
#: Time the last status check may take once the deadline has cut a pause short: a task that
#: completed since the previous check is a success, not a timeout (poke mode checks once more too).
_LAST_POLL_GRACE = 10.0


class LoyaltyExportTaskTrigger(BaseTrigger):
    """
    Poll an export task's status (``POST /api/v1.1/tasks/status``) until it ends, asynchronously.

    Requests go through the event loop's shared ``aiohttp.ClientSession`` (left on exit and on
    cancellation; the last trigger to leave closes it); transient failures are
    retried with the provider's retry policy; the connection is read with the async connection
    API. Emits exactly one event (see the module docstring) and returns; never raises.

    :param export_task_id: the export task to wait for.
    :param loyalty_conn_id: the ``loyalty`` connection (Host = base URL, Password = API token).
    :param poll_interval: seconds between status checks. Each trigger checks on its own phase of the
        interval (derived from ``export_task_id``), so triggers deferred together, or held up
        together by a busy loop, do not check in step: the pause after the first check is between
        half an interval and one and a half, every later one a whole interval.
    :param deadline: absolute time (epoch seconds) after which a ``timeout`` event is emitted;
        ``None`` waits without limit. Absolute, so a trigger resumed on another triggerer keeps
        its budget.
    :param content_type: ``json`` or ``xml``; overrides the connection's extra.
    :param max_retries: retries of transient failures per check; overrides the connection's extra.
    :param first_check_after: seconds to wait before the first check (a wait deferred again after
        a failed check keeps its pace); by default the first check is at once.
    :param unknown_until: absolute time (epoch seconds) before which a task the API says it does not
        know is taken for one created a moment ago that its status reads do not show yet, and
        checked again; after it, "not found" is an error. ``None``: an error at once.
    """

    def __init__(
        self,
        export_task_id: str,
        loyalty_conn_id: str = "loyalty_default",
        poll_interval: float = 30.0,
        deadline: float | None = None,
        content_type: str | None = None,
        max_retries: int | None = None,
        first_check_after: float = 0.0,
        unknown_until: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.export_task_id = validation.check_task_id(export_task_id)
        self.loyalty_conn_id = loyalty_conn_id
        self.poll_interval = validation.check_positive_number(poll_interval, "poll_interval")
        self.deadline = _epoch_or_none(deadline, "deadline")
        self.unknown_until = _epoch_or_none(unknown_until, "unknown_until")
        self.content_type = content_type
        self.max_retries = max_retries
        self.first_check_after = (
            0.0 if not first_check_after else validation.check_positive_number(first_check_after, "first_check_after")
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and constructor kwargs of this trigger.

        The kwargs are stored in the metadata database and handed to whichever triggerer picks the
        trigger up (serialized with ``airflow.sdk.serde`` since Airflow 3.2), so they are JSON
        primitives only: no settings objects, no clients, no secrets. The deadline is absolute for
        the same reason: a trigger resumed elsewhere keeps the budget it had.
        """
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "export_task_id": self.export_task_id,
                "loyalty_conn_id": self.loyalty_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "content_type": self.content_type,
                "max_retries": self.max_retries,
                "first_check_after": self.first_check_after,
                "unknown_until": self.unknown_until,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the export task ends, the deadline passes or an error occurs; emit one event."""
        yield TriggerEvent(await self._wait())  # type: ignore[no-untyped-call]

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    @functools.cached_property
    def _phase(self) -> float:
        """Where in each poll interval this trigger checks, as a fraction in ``[0, 1)``.

        From the export task id: stable across resumptions, and spread evenly over the interval
        across the many triggers a triggerer runs, whenever each of them started.
        """
        digest = hashlib.blake2b(self.export_task_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _next_sleep(self, now: float) -> float:
        """Seconds from ``now`` (the loop's clock) to the next check, capped by the deadline.

        The next check is the first time on this trigger's grid (``(k + phase) * poll_interval``)
        at least half an interval away. After a stall (a busy loop, a long garbage collection)
        each trigger returns to its own phase: the checks of many triggers do not stay bunched.
        """
        interval = self.poll_interval
        offset = self._phase * interval
        next_check = math.ceil((now + interval / 2 - offset) / interval) * interval + offset
        return self._within_deadline(next_check - now)

    def _within_deadline(self, pause: float) -> float:
        """``pause`` seconds, or the time left until the deadline if that is shorter."""
        remaining = self._remaining()
        return pause if remaining is None else max(0.0, min(pause, remaining))

    def _event(self, status: str, **fields: Any) -> dict[str, Any]:
        """The event's payload; the server's text in it made storable (a lone surrogate in a
        message stopped the whole triggerer: its msgpack refused the event)."""
        return {"status": status, "export_task_id": self.export_task_id, **storable(fields)}

    def _timeout_event(self, last_status: str | None) -> dict[str, Any]:
        return self._event(
            "timeout",
            message=(
                f"Export task {self.export_task_id} did not finish before the deadline "
                f"(last status: {last_status or 'unknown'})"
            ),
        )

    async def _wait(self) -> dict[str, Any]:
        hook = LoyaltyAsyncHook(self.loyalty_conn_id, content_type=self.content_type, max_retries=self.max_retries)
        try:
            if self.first_check_after:
                await asyncio.sleep(self._within_deadline(self.first_check_after))
            async with startup_slot(self.loyalty_conn_id):  # the first step: connection, session, first request
                await hook.__aenter__()
                polls, status = 1, await self._poll(hook, grace=_FIRST_POLL_GRACE)
            loop = asyncio.get_running_loop()
            while status is not None and not status.state.is_terminal:
                await asyncio.sleep(self._next_sleep(loop.time()))
                if self.deadline is not None and self._remaining() <= 0:  # type: ignore[operator]
                    last = await self._poll(hook, grace=_LAST_POLL_GRACE)  # one look at the deadline
                    if last is not None and last.state.is_terminal:
                        return self._terminal_event(last)
                    return self._timeout_event((last or status).status)
                previous, status = status, await self._poll(hook)
                if status is None:  # the deadline passed during the check: the last status known
                    return self._timeout_event(previous.status)
                polls += 1
                if (status.status, status.progress) != (previous.status, previous.progress):
                    self.log.info("Export task %s: %s (check %d)", self.export_task_id, status.describe(), polls)
            return self._terminal_event(status)
        except Exception as err:
            # Any failure becomes the one error event: the sensor or operator decides what it means.
            settings = hook.settings
            message = str(scrub(err, settings.token if settings else None)) or type(err).__name__
            self.log.warning("Waiting for export task %s failed: %s", self.export_task_id, message)
            if isinstance(err, LoyaltyFinalError):
                return self._event("error", message=message, final=True)
            # The wait failed, not the task: the resumed task checks it and may defer again for it,
            # until this same deadline (a runner that hands back the event alone, as dag.test() does,
            # drops the deferral's kwargs where the operator kept it).
            return self._event("error", message=message, deadline=self.deadline)
        finally:
            await hook.aclose()

    async def _poll(self, hook: LoyaltyAsyncHook, *, grace: float = 0.0) -> ExportTaskStatus | None:
        """One status check within the time left (``None``: the deadline passed during it).

        A check that starts with less than :data:`_MIN_CHECK_SECONDS` left (a trigger resumed late,
        the last look at the deadline) may take up to ``grace`` seconds instead, so it can still see
        a task that completed; one that starts earlier ends by the deadline, whatever the server
        does (a hung reply, a ``Retry-After`` longer than the time left).
        """
        budget = self._remaining()
        if budget is not None and budget < _MIN_CHECK_SECONDS:
            budget = max(budget, grace)
        try:
            async with asyncio.timeout(budget):
                return await hook.get_export_task_status(self.export_task_id)
        except TimeoutError:
            return None
        except LoyaltyNotFoundError:
            if self.unknown_until is None or time.time() >= self.unknown_until:
                raise
            self.log.info("Export task %s is not known to the API yet; checking again", self.export_task_id)
            return not_known_yet(self.export_task_id)

    def _terminal_event(self, status: ExportTaskStatus | None) -> dict[str, Any]:
        """The one event for how the wait ended."""
        if status is None:
            return self._timeout_event(None)
        if status.state is ExportTaskState.FAILED:
            self.log.warning(
                "Export task %s ended with status %r: %s", self.export_task_id, status.status, status.failure_text
            )
            return self._event("error", message=status.failure_text, task_status=status.status)
        result = status.completed_result()
        self.log.info("Export task %s completed: %s rows", self.export_task_id, result.total)
        return self._event("success", result=self._bounded(result))

    def _bounded(self, result: ExportResult) -> dict[str, Any]:
        """The ``result`` as the event carries it (see :meth:`ExportResult.bounded_raw`): the event
        is stored in Airflow's database and read by the resuming task; a 20 MiB field would ride
        along with it."""
        kept, dropped = result.bounded_raw()
        if dropped:
            self.log.warning(
                "Export task %s: its result is over %d bytes as JSON; the event leaves out %s",
                self.export_task_id,
                MAX_RESULT_BYTES,
                ", ".join(dropped),
            )
        return kept


def _epoch_or_none(value: Any, parameter: str) -> float | None:
    """Epoch seconds, or ``None``; NaN never passes (a wait without end), and neither serializes as JSON."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LoyaltyValidationError(parameter, f"expected epoch seconds or None, got {value!r}")
    return float(value)


def not_known_yet(export_task_id: str) -> ExportTaskStatus:
    """The status of a task the API does not know yet: still running, as far as a wait goes."""
    return ExportTaskStatus(export_task_id=export_task_id, status=NOT_KNOWN_YET, state=ExportTaskState.RUNNING)


#: The status word a wait logs for a task the API does not know yet (see ``unknown_until``).
NOT_KNOWN_YET = "not known to the API yet"


def within_execution_timeout(task: BaseOperator, context: Any, deadline: float) -> float:
    """``deadline`` (epoch seconds), or earlier where the task's ``execution_timeout`` ends first.

    Airflow does not cap a deferral by ``execution_timeout`` itself, so every deferring task here
    hands the trigger the earlier of its own deadline and the end of its run time (counted from the
    task instance's start, which a resumed deferral keeps).

    :param task: the deferring operator.
    :param context: its task context (``ti.start_date``).
    :param deadline: the task's own deadline.
    """
    if task.execution_timeout is None:
        return deadline
    started = getattr(context.get("ti"), "start_date", None)
    began = started.timestamp() if started is not None else time.time()
    return min(deadline, began + task.execution_timeout.total_seconds())


def defer_until_done(
    task: BaseOperator,
    *,
    export_task_id: str,
    loyalty_conn_id: str,
    poll_interval: float,
    deadline: float,
    kwargs: dict[str, Any] | None = None,
    grace: float = 0.0,
    first_check_after: float = 0.0,
    unknown_until: float | None = None,
) -> NoReturn:
    """Defer ``task`` to a :class:`LoyaltyExportTaskTrigger` until the export task ends or ``deadline`` passes.

    The one place the sensor and the export operators defer: the trigger gets the deadline and the
    deferral a timeout of the time left (plus ``grace``), so ``execution_timeout`` holds while deferred.
    The task resumes in its ``execute_complete`` with the trigger's event and ``kwargs``.

    :param task: the deferring operator.
    :param export_task_id: the export task to wait for.
    :param loyalty_conn_id: the connection the trigger polls with.
    :param poll_interval: seconds between status polls.
    :param deadline: epoch seconds after which the trigger emits a ``timeout`` event.
    :param kwargs: passed to ``execute_complete`` besides the event.
    :param first_check_after: seconds the trigger waits before its first check.
    :param unknown_until: until when (epoch seconds) the API not knowing the task means a task too
        new for its status reads (see :class:`LoyaltyExportTaskTrigger`).
    :param grace: seconds the deferral's own timeout allows beyond ``deadline`` (so the trigger's
        event, which says what timed out, normally comes first). None by default: the task's
        ``execution_timeout`` holds while deferred; the trigger's last check at its deadline takes
        milliseconds, and if the scheduler times the deferral out first the task fails the same way.
    """
    # A sensor's timeout of centuries means "no limit": no deferral timeout can say that many days.
    deadline = min(deadline, time.time() + validation.MAX_WAIT_SECONDS)
    task.defer(
        trigger=LoyaltyExportTaskTrigger(
            export_task_id=export_task_id,
            loyalty_conn_id=loyalty_conn_id,
            poll_interval=poll_interval,
            deadline=deadline,
            first_check_after=first_check_after,
            unknown_until=unknown_until,
        ),
        method_name="execute_complete",
        kwargs=kwargs,
        timeout=timedelta(seconds=max(0.0, deadline - time.time()) + grace),
    )
    raise AssertionError("unreachable: defer() raises")  # pragma: no cover


def _checked_event(event: Any, export_task_id: str | None) -> tuple[str, str, str]:
    """The event's status, export task id and message, after checking it is one of this trigger's."""
    if not isinstance(event, Mapping):
        raise LoyaltyError(f"expected a trigger event dict, got {type(event).__name__}")
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise LoyaltyError(f"trigger event: expected status one of {sorted(EVENT_STATUSES)}, got {status!r}")
    event_task_id = event.get("export_task_id")
    if export_task_id is not None and event_task_id != export_task_id:
        raise LoyaltyError(f"trigger event: expected export_task_id {export_task_id!r}, got {event_task_id!r}")
    return str(status), str(event_task_id), str(event.get("message") or "no message")


def status_from_event(event: Any, export_task_id: str | None = None) -> ExportTaskStatus:
    """The export task's final status as a :class:`LoyaltyExportTaskTrigger` event reports it.

    For operators that wait per batch: a failed export task comes back as a ``FAILED`` status (the
    caller decides), anything else that went wrong raises.

    :param event: the event the trigger emitted (as handed to ``execute_complete``).
    :param export_task_id: the export task the caller waited for; checked against the event.
    :raises LoyaltyFinalError: an ``error`` event marked ``final`` (no retry can fix it).
    :raises LoyaltyError: a ``timeout`` event ("timed out waiting for export task …"), any other
        ``error`` event, or an event that is not of this trigger.
    """
    status, task_id, message = _checked_event(event, export_task_id)
    if status == "timeout":
        raise LoyaltyError(f"timed out waiting for export task {task_id}: {message}")
    if status == "error":
        task_status = event.get("task_status")
        if not task_status:
            failure = LoyaltyFinalError if event.get("final") is True else LoyaltyError
            raise failure(f"Waiting for export task {task_id} failed: {message}")
        return ExportTaskStatus(task_id, str(task_status), ExportTaskState.FAILED, failure_text=message)
    result = ExportResult.from_reply(task_id, event.get("result"))
    return ExportTaskStatus(task_id, "completed", ExportTaskState.COMPLETED, 100, result)


def wait_failed(event: Any) -> bool:
    """Whether a trigger event says the *wait* failed (the checks past their retries, the API
    forgetting the task), not the export task: the task's own failure carries its status word, and
    a failure no retry can fix (the token refused) is ``final``, not a wait to go on with."""
    return (
        isinstance(event, dict)
        and event.get("status") == "error"
        and not event.get("task_status")
        and event.get("final") is not True
    )


def wait_deadline(event: Any) -> float | None:
    """The deadline a failed wait's event carries (see :func:`wait_failed`): the operator's
    re-deferral for the same task keeps it when its own deferral kwargs are gone. ``None`` when
    the event carries none that reads as epoch seconds."""
    if not wait_failed(event):
        return None
    try:
        return _epoch_or_none(event.get("deadline"), "deadline")
    except LoyaltyValidationError:
        return None


def result_from_event(event: Any, export_task_id: str | None = None) -> dict[str, Any]:
    """Validate a :class:`LoyaltyExportTaskTrigger` event and return the export task's ``result``.

    For the sensor's ``execute_complete``.

    :param event: the event the trigger emitted (as handed to ``execute_complete``).
    :param export_task_id: the export task the caller waited for; checked against the event.
    :raises LoyaltyExportTaskFailed: the export task itself ended in a failure state.
    :raises LoyaltyFinalError: an ``error`` event no retry can fix (the token refused).
    :raises LoyaltyError: any other ``error`` event, or an event that is not of this trigger.
    :raises AirflowSensorTimeout: a ``timeout`` event.
    """
    from airflow.providers.common.compat.sdk import AirflowSensorTimeout

    status, _, message = _checked_event(event, export_task_id)
    if status == "timeout":
        raise AirflowSensorTimeout(message)
    final = status_from_event(event, export_task_id)
    return final.completed_result().raw
