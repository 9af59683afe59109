"""LoyaltyExportTaskTrigger: waits for an export task in the triggerer, fully async.

The event contract (one event per run, then the trigger returns)::

    {"status": "success", "export_task_id": "task_…", "result": {"hashed_file": …, "total": …, …}}
    {"status": "error",   "export_task_id": "task_…", "message": "<API text>", "task_status": "failed"}
    {"status": "timeout", "export_task_id": "task_…", "message": "…"}

``task_status`` is only present when the export task itself ended in a failure state (the API's
status word); other errors (auth refused, retries exhausted, malformed replies, connection
problems) carry only the message. :func:`result_from_event` validates an event on the worker side
and is shared by the sensor and the export operators.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyExportTaskFailed, LoyaltyValidationError
from airflow_provider_loyalty.hooks.loyalty_async import AsyncLoyaltyClient, async_settings
from airflow_provider_loyalty.utils.protocol import failure_text, redact, task_state

EVENT_STATUSES = frozenset({"success", "error", "timeout"})

#: Time a first status check may take even when the deadline has already passed (a trigger resumed
#: late on another triggerer still looks once: a task that completed meanwhile is a success).
_FIRST_POLL_GRACE = 30.0


def _check_task_id(export_task_id: Any) -> str:
    if not isinstance(export_task_id, str) or not export_task_id.strip():
        raise LoyaltyValidationError("export_task_id", f"expected a task id string, got {export_task_id!r}")
    return export_task_id


class LoyaltyExportTaskTrigger(BaseTrigger):
    """
    Poll an export task's status (``POST /api/v1.1/tasks/status``) until it ends, asynchronously.

    One ``aiohttp.ClientSession`` per run, closed on exit and on cancellation; transient failures are
    retried with the provider's retry policy; the connection is read with the async connection
    API. Emits exactly one event (see the module docstring) and returns; never raises.

    :param export_task_id: the export task to wait for.
    :param loyalty_conn_id: the ``loyalty`` connection (Host = base URL, Password = API token).
    :param poll_interval: seconds between status checks.
    :param deadline: absolute time (epoch seconds) after which a ``timeout`` event is emitted;
        ``None`` waits without limit. Absolute, so a trigger resumed on another triggerer keeps
        its budget.
    :param content_type: ``json`` or ``xml``; overrides the connection's extra.
    :param max_retries: retries of transient failures per check; overrides the connection's extra.
    """

    def __init__(
        self,
        export_task_id: str,
        loyalty_conn_id: str = "loyalty_default",
        poll_interval: float = 30.0,
        deadline: float | None = None,
        content_type: str | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.export_task_id = _check_task_id(export_task_id)
        self.loyalty_conn_id = loyalty_conn_id
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, int | float)
            or not math.isfinite(poll_interval)
            or poll_interval <= 0
        ):
            raise LoyaltyValidationError("poll_interval", f"expected seconds > 0, got {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
            raise LoyaltyValidationError("deadline", f"expected epoch seconds or None, got {deadline!r}")
        self.deadline = None if deadline is None else float(deadline)
        self.content_type = content_type
        self.max_retries = max_retries

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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the export task ends, the deadline passes or an error occurs; emit one event."""
        yield TriggerEvent(await self._wait())  # type: ignore[no-untyped-call]

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def _event(self, status: str, **fields: Any) -> dict[str, Any]:
        return {"status": status, "export_task_id": self.export_task_id, **fields}

    def _timeout_event(self, last_status: str | None) -> dict[str, Any]:
        return self._event(
            "timeout",
            message=(
                f"Export task {self.export_task_id} did not finish before the deadline "
                f"(last status: {last_status or 'unknown'})"
            ),
        )

    async def _wait(self) -> dict[str, Any]:
        token = ""
        last_status: str | None = None
        last_progress: Any = None
        try:
            settings = await async_settings(
                self.loyalty_conn_id, {"content_type": self.content_type, "max_retries": self.max_retries}
            )
            token = settings.token
            async with AsyncLoyaltyClient(settings, self.log) as client:
                polls = 0
                while True:
                    remaining = self._remaining()
                    if remaining is not None and remaining <= 0 and polls > 0:
                        return self._timeout_event(last_status)
                    budget = None if remaining is None else max(remaining, 0.0 if polls else _FIRST_POLL_GRACE)
                    try:
                        async with asyncio.timeout(budget):
                            data = await client.get_task_status(self.export_task_id)
                    except TimeoutError:
                        return self._timeout_event(last_status)
                    polls += 1
                    event = self._event_for(data, token)
                    if event is not None:
                        return event
                    status_now = (str(data.get("status")), data.get("progress", "?"))
                    if status_now != (last_status, last_progress):  # a log line per change, not per poll
                        self.log.info(
                            "Export task %s: %s, progress %s%% (check %d)", self.export_task_id, *status_now, polls
                        )
                    last_status, last_progress = status_now
                    remaining = self._remaining()
                    await asyncio.sleep(
                        self.poll_interval if remaining is None else max(0.0, min(self.poll_interval, remaining))
                    )
        except Exception as err:
            # Any failure becomes the one error event: the sensor or operator decides what it means.
            message = redact(str(err) or type(err).__name__, token)
            self.log.warning("Waiting for export task %s failed: %s", self.export_task_id, message)
            return self._event("error", message=message)

    def _event_for(self, data: Mapping[str, Any], token: str) -> dict[str, Any] | None:
        """The terminal event for one status reply, or ``None`` while the task still runs."""
        status = data.get("status")
        if not isinstance(status, str) or not status.strip():
            return self._event(
                "error", message=f"tasks/status: expected data.status to be a status word, got {status!r}"
            )
        state = task_state(status)
        if state == "success":
            result = data.get("result")
            if not isinstance(result, dict):
                return self._event(
                    "error",
                    message=f"tasks/status: expected data.result to be an object, got {type(result).__name__}",
                )
            self.log.info("Export task %s completed: %s rows", self.export_task_id, result.get("total", "?"))
            return self._event("success", result=result)
        if state == "failure":
            text = failure_text(data, token)
            self.log.warning("Export task %s ended with status %r: %s", self.export_task_id, status, text)
            return self._event("error", message=text, task_status=status)
        return None


def result_from_event(event: Any, export_task_id: str | None = None) -> dict[str, Any]:
    """Validate a :class:`LoyaltyExportTaskTrigger` event and return the export task's ``result``.

    For ``execute_complete`` methods (the sensor, the export operators).

    :param event: the event the trigger emitted (as handed to ``execute_complete``).
    :param export_task_id: the export task the caller waited for; checked against the event.
    :raises LoyaltyExportTaskFailed: the export task itself ended in a failure state.
    :raises LoyaltyError: any other ``error`` event, or an event that is not of this trigger.
    :raises AirflowSensorTimeout: a ``timeout`` event.
    """
    from airflow.providers.common.compat.sdk import AirflowSensorTimeout

    if not isinstance(event, Mapping):
        raise LoyaltyError(f"expected a trigger event dict, got {type(event).__name__}")
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise LoyaltyError(f"trigger event: expected status one of {sorted(EVENT_STATUSES)}, got {status!r}")
    event_task_id = event.get("export_task_id")
    if export_task_id is not None and event_task_id != export_task_id:
        raise LoyaltyError(f"trigger event: expected export_task_id {export_task_id!r}, got {event_task_id!r}")
    task_id = str(event_task_id)
    message = str(event.get("message") or "no message")
    if status == "timeout":
        raise AirflowSensorTimeout(message)
    if status == "error":
        task_status = event.get("task_status")
        if task_status:
            raise LoyaltyExportTaskFailed(task_id, str(task_status), message)
        raise LoyaltyError(f"Waiting for export task {task_id} failed: {message}")
    result = event.get("result")
    if not isinstance(result, dict):
        raise LoyaltyError(f"trigger event: expected 'result' to be an object, got {type(result).__name__}")
    return result
