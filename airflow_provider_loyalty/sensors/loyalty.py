"""LoyaltyExportTaskSensor: waits for one export task, in a worker or deferred to the triggerer."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

try:  # the Task SDK's own since Airflow 3.2; airflow.exceptions' before
    from airflow.sdk.exceptions import AirflowTaskTimeout
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowTaskTimeout  # type: ignore[no-redef,attr-defined]

from airflow_provider_loyalty.exceptions import LoyaltyExportTaskFailed, LoyaltyNotFoundError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.triggers.loyalty import (
    defer_until_done,
    result_from_event,
    wait_failed,
    within_execution_timeout,
)
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.export_status import NOT_YET_KNOWN_SECONDS, ExportTaskState

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Extra time the scheduler gives a deferred sensor beyond the trigger's own deadline before it
#: times the deferral out itself (a backstop if no triggerer runs the trigger at all).
_DEFERRAL_GRACE = 300.0


class LoyaltyExportTaskSensor(BaseSensorOperator):
    """
    Wait for a loyalty export task to finish; return (XCom) the task's ``result`` dict.

    In poke / reschedule mode each poke calls ``tasks/status`` through :class:`LoyaltyHook`. With
    ``deferrable=True`` the sensor checks once, then hands a :class:`LoyaltyExportTaskTrigger`
    (carrying an absolute deadline) to the triggerer and frees the worker slot.

    A task ending ``failed`` / ``error`` / ``canceled`` raises :class:`LoyaltyExportTaskFailed`
    with the API's text; a wait longer than ``timeout`` raises ``AirflowSensorTimeout``. With
    ``soft_fail=True`` both skip the task instead, as does an error no retry can fix (the token
    refused), in every mode; a check that failed past its retries fails the task.

    .. seealso:: :ref:`howto/operator:LoyaltyExportTaskSensor`

    :param export_task_id: the export task to wait for (templated), e.g. an upstream XCom.
    :param loyalty_conn_id: the ``loyalty`` connection. (templated)
    :param poke_interval: seconds between status checks (also the trigger's poll interval).
    :param timeout: seconds to wait in total before timing out (default 7 days).
    :param deferrable: wait in the triggerer instead of a worker slot
        (default ``[operators] default_deferrable``).
    """

    template_fields = ("export_task_id", "loyalty_conn_id")
    ui_color = "#f4e9d8"

    def __init__(
        self,
        *,
        export_task_id: str,
        loyalty_conn_id: str = LoyaltyHook.default_conn_name,
        poke_interval: timedelta | float = 30,
        timeout: timedelta | float = 7 * 24 * 3600,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        if not validation.is_template(export_task_id):  # a literal id that can never work fails the DAG's parse
            export_task_id = validation.check_task_id(export_task_id)
        self.export_task_id = export_task_id
        self.loyalty_conn_id = validation.check_conn_id(loyalty_conn_id, "loyalty_conn_id")
        self.deferrable = validation.parse_bool(deferrable, "deferrable")
        #: Until when (epoch seconds) the API not knowing the task means one created a moment ago.
        self._unknown_until: float | None = None
        if self.deferrable:  # the trigger polls at this interval: zero would poll without pause
            validation.check_positive_number(self.poke_interval, "poke_interval")

    @cached_property
    def hook(self) -> LoyaltyHook:
        """The sync hook used by pokes."""
        return LoyaltyHook(self.loyalty_conn_id)

    def poke(self, context: Context) -> PokeReturnValue:
        """Check the export task once.

        :param context: the task context.
        :raises LoyaltyExportTaskFailed: the task ended in a failure state (skips with ``soft_fail``).
        """
        try:
            status = self.hook.get_export_task_status(self.export_task_id)
        except LoyaltyNotFoundError:
            if self._unknown_until is None or time.time() >= self._unknown_until:
                raise
            self.log.info("Export task %s is not known to the API yet; checking again", self.export_task_id)
            return PokeReturnValue(is_done=False)
        if status.state is ExportTaskState.FAILED:
            try:
                status.raise_for_failure()
            except LoyaltyExportTaskFailed as error:
                if self.soft_fail:
                    raise AirflowSkipException(f"Skipping (soft_fail): {error}") from error
                if getattr(self, "silent_fail", False):  # the base sensor would log it and poke on, until timeout
                    raise AirflowFailException(
                        f"{error} (silent_fail waits past a check that fails, not past the export task's failure)"
                    ) from error
                raise
        if status.state is ExportTaskState.COMPLETED:
            result = status.completed_result()
            self.log.info("Export task %s completed: %s rows", self.export_task_id, result.total)
            kept, dropped = result.bounded_raw()  # as the trigger's event carries it: one XCom in every mode
            if dropped:
                self.log.warning(
                    "Export task %s: its result is too large for XCom; leaving out %s",
                    self.export_task_id,
                    ", ".join(dropped),
                )
            return PokeReturnValue(is_done=True, xcom_value=kept)
        self.log.info("Export task %s: %s", self.export_task_id, status.describe())
        return PokeReturnValue(is_done=False)

    def execute(self, context: Context) -> Any:
        """Wait for the export task: poke in the worker, or check once and defer.

        :param context: the task context.
        """
        started = time.time()
        self.export_task_id = validation.check_task_id(self.export_task_id)  # rendered: checked before any request
        validation.check_conn_id(self.loyalty_conn_id, "loyalty_conn_id")
        self._unknown_until = self._first_check_time(context, started) + NOT_YET_KNOWN_SECONDS
        try:
            if not self.deferrable:
                return super().execute(context)
            first = self._first_check(context)
            if first.is_done:
                return first.xcom_value
        finally:
            self.hook.close()
        deadline, ends_execution = self._wait_deadline(context, started)
        self._defer(deadline, ends_execution=ends_execution)

    def _wait_deadline(self, context: Context, started: float) -> tuple[float, bool]:
        """When the wait begun at ``started`` (epoch seconds) ends, and whether that is the task's
        ``execution_timeout`` (before the sensor's own ``timeout``)."""
        own_deadline = started + self.timeout
        deadline = within_execution_timeout(self, context, own_deadline)
        return deadline, deadline < own_deadline

    def _first_check_time(self, context: Context, now: float) -> float:
        """When this wait began: now, or in reschedule mode the first try's time (each reschedule
        is a new run of ``execute``: the grace for a task too new to be known must not restart)."""
        ti = _task_instance(context)
        if self.reschedule and ti is not None and hasattr(ti, "get_first_reschedule_date"):
            first = ti.get_first_reschedule_date(context)
            if first is not None:
                return float(first.timestamp())
        return now

    def _defer(self, deadline: float, first_check_after: float = 0.0, *, ends_execution: bool = False) -> None:
        """Hand the wait to the triggerer until ``deadline`` (epoch seconds); its first check
        ``first_check_after`` seconds from now."""
        self.log.info(
            "Deferring: waiting for export task %s in the triggerer (poll every %g s, for at most %.0f s)",
            self.export_task_id,
            self.poke_interval,
            max(0.0, deadline - time.time()),
        )
        defer_until_done(
            self,
            export_task_id=self.export_task_id,
            loyalty_conn_id=self.loyalty_conn_id,
            poll_interval=self.poke_interval,
            deadline=deadline,
            kwargs={"deadline": deadline, **({"ends_execution": True} if ends_execution else {})},
            grace=_DEFERRAL_GRACE,
            first_check_after=first_check_after,
            unknown_until=self._unknown_until,
        )

    def _first_check(self, context: Context) -> PokeReturnValue:
        """The check before deferring, with what the base sensor does when a poke raises (in poke
        mode it does it itself): ``never_fail`` skips; ``silent_fail`` logs the error and waits on."""
        try:
            return self.poke(context)
        except AirflowSkipException:
            raise
        except Exception as error:
            if getattr(self, "silent_fail", False) and not isinstance(error, AirflowFailException):
                self.log.error("Sensor poke failed (silent_fail): %s", error)
                return PokeReturnValue(is_done=False)
            if getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping (never_fail): {error}") from error
            if self.soft_fail and _soft_fail_skips(error):  # as the base sensor's poke mode
                raise AirflowSkipException(f"Skipping (soft_fail): {error}") from error
            raise

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """As ``BaseSensorOperator``'s, except that ``soft_fail`` skips what it skips in poke mode
        only (see :func:`_soft_fail_skips`): the base skips any error of a deferred wait, so a check
        that failed past its retries (the API down) skipped the task deferred and failed it in poke
        mode. ``never_fail`` still skips every error."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSkipException as skipped:
            error = skipped.__cause__
            if (
                self.soft_fail
                and not getattr(self, "never_fail", False)
                and isinstance(error, Exception)
                and not _soft_fail_skips(error)
            ):
                raise error from None
            raise

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        deadline: float | None = None,
        ends_execution: bool = False,
    ) -> dict[str, Any]:
        """Resume after the trigger fired: return the result, or raise what the event says.

        With ``silent_fail``, a wait that failed (the trigger's checks past their retries, not the
        export task's failure) is logged and deferred again until the same deadline, its next check
        one ``poke_interval`` later, as poke mode pokes on. A failure no retry can fix (the token
        refused) fails the task at once, and the export task's own failure fails it without
        retries, as in poke mode.

        :param context: the task context.
        :param event: the :class:`LoyaltyExportTaskTrigger` event.
        :param deadline: when the wait ends (epoch seconds), as the deferral set it.
        :param ends_execution: the deadline is the task's ``execution_timeout``, before the
            sensor's own ``timeout``: reaching it is the task timing out (retried, never skipped),
            as in poke mode, not the sensor's timeout.
        :raises LoyaltyExportTaskFailed: the export task failed.
        :raises AirflowSensorTimeout: the deadline passed.
        :raises AirflowTaskTimeout: ``execution_timeout`` passed first.
        :raises AirflowSkipException: either of the first two with ``soft_fail=True``.
        """
        if deadline is None:  # resumed with the event alone (dag.test() does): the deferral's arguments again
            ti_start = getattr(_task_instance(context), "start_date", None)
            deadline, ends_execution = self._wait_deadline(
                context, ti_start.timestamp() if ti_start is not None else time.time()
            )
        if ends_execution and isinstance(event, dict) and event.get("status") == "timeout":
            raise AirflowTaskTimeout(
                f"export task {self.export_task_id} did not finish within the task's execution_timeout "
                f"({self.execution_timeout}), before the sensor's timeout ({self.timeout:g} s)"
            )
        try:
            result = result_from_event(event, validation.check_task_id(self.export_task_id))
        except AirflowSkipException:
            raise
        except Exception as error:
            failure: Exception = error
            silent_fail = getattr(self, "silent_fail", False)
            if silent_fail and wait_failed(event) and deadline is not None:
                if deadline > time.time():
                    self.log.error("Sensor check failed (silent_fail): %s; waiting on", error)
                    self._defer(deadline, first_check_after=self.poke_interval, ends_execution=ends_execution)
                failure = AirflowSensorTimeout(
                    f"export task {self.export_task_id} did not finish by the deadline; the last check failed: {error}"
                )
            elif silent_fail and isinstance(error, LoyaltyExportTaskFailed):
                failure = AirflowFailException(
                    f"{error} (silent_fail waits past a check that fails, not past the export task's failure)"
                )
            if self.soft_fail and _soft_fail_skips(failure):
                raise AirflowSkipException(f"Skipping (soft_fail): {failure}") from error
            if failure is error:
                raise
            raise failure from error
        self.log.info("Export task %s completed: %s rows", self.export_task_id, result.get("total", "?"))
        return result


def _task_instance(context: Any) -> Any:
    """The context's task instance, if it has one (a context made by hand may not)."""
    return context.get("ti") if hasattr(context, "get") else None


def _soft_fail_skips(error: BaseException) -> bool:
    """Whether ``soft_fail`` turns ``error`` into a skip, in every mode as ``BaseSensorOperator``
    does in poke mode: the export task's failure, the sensor's timeout, an error no retry can fix
    (``AirflowFailException``: the token refused, a wrong Base URL). A check that failed past its
    retries, and the task's ``execution_timeout``, fail the task (its retries may help)."""
    if isinstance(error, AirflowSkipException):
        return True
    if isinstance(error, AirflowTaskTimeout):
        return False
    return isinstance(error, LoyaltyExportTaskFailed | AirflowSensorTimeout | AirflowFailException)
