"""What the two export operators share: parameters, the export loop, deferral per batch.

:class:`LoyaltyExportOperator` and :class:`LoyaltyTransactionsToS3Operator` differ only in the
:class:`~airflow_provider_loyalty.export.sinks.PartSink` they build (:meth:`build_sink`).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.compat.sdk import conf
from airflow.sdk import BaseOperator, Context

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyExportTaskFailed, LoyaltyValidationError
from airflow_provider_loyalty.export.archive import ArchiveLimits
from airflow_provider_loyalty.export.loop import ExportLoop, ExportProgress, ExportSpec, result_of
from airflow_provider_loyalty.export.sinks import PartSink
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger, result_from_event
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.protocol import failure_text, task_state


class LoyaltyExportBaseOperator(BaseOperator):
    """
    Export a loyalty program's points transactions of a period, batch after batch, verified.

    Subclasses decide where parts land. See :class:`LoyaltyExportOperator` and
    :class:`LoyaltyTransactionsToS3Operator` for the parameters they add.

    :param loyalty_program_id: the loyalty program. (templated)
    :param points_currency_eid: external points currency id; give this or the iid. (templated)
    :param points_currency_iid: internal points currency id; give this or the eid. (templated)
    :param date_from: period start, inclusive; datetime or RFC3339. Defaults to the run's
        ``data_interval_start``. (templated)
    :param date_to: period end, inclusive; datetime or RFC3339. Defaults to one second before the
        run's ``data_interval_end`` (the API's end is inclusive, Airflow's is not). (templated)
    :param from_id: start from this transaction id instead of the period's beginning. (templated)
    :param export_task_id: adopt an export task created elsewhere (e.g. waited for by
        :class:`LoyaltyExportTaskSensor`) as the first batch instead of creating one; it must have
        been created with the same program, currency, period and ``from_id``. (templated)
    :param loyalty_conn_id: the ``loyalty`` connection.
    :param max_batches: fail instead of running more export batches than this (default: no cap).
    :param poll_interval: seconds between export task status checks.
    :param batch_timeout: seconds one export task may run before the operator fails.
    :param deferrable: wait for each export task in the triggerer instead of holding a worker
        slot. Defaults to ``[operators] default_deferrable``.
    :param resume: after a failed attempt, continue from its checkpoint instead of from scratch.
    :param replace: replace a finished export already at the output location (else fail).
    :param keep_zip: also store each batch's original archive next to its part.
    :param max_uncompressed_bytes: zip bomb cap: largest uncompressed size of one batch.
    :param max_compression_ratio: zip bomb cap: largest expansion ratio of an archive member.
    """

    template_fields: Sequence[str] = (
        "loyalty_program_id",
        "points_currency_eid",
        "points_currency_iid",
        "date_from",
        "date_to",
        "from_id",
        "export_task_id",
    )
    ui_color = "#f4e3ff"

    def __init__(
        self,
        *,
        loyalty_program_id: int | str,
        points_currency_eid: str | None = None,
        points_currency_iid: int | str | None = None,
        date_from: Any = None,
        date_to: Any = None,
        from_id: str | None = None,
        export_task_id: str | None = None,
        loyalty_conn_id: str = LoyaltyHook.default_conn_name,
        max_batches: int | None = None,
        poll_interval: float = 30.0,
        batch_timeout: float | timedelta = timedelta(hours=24),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        resume: bool = True,
        replace: bool = True,
        keep_zip: bool = False,
        max_uncompressed_bytes: int = ArchiveLimits.max_uncompressed_bytes,
        max_compression_ratio: float = ArchiveLimits.max_compression_ratio,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loyalty_program_id = loyalty_program_id
        self.points_currency_eid = points_currency_eid
        self.points_currency_iid = points_currency_iid
        self.date_from = date_from
        self.date_to = date_to
        self.from_id = from_id
        self.export_task_id = export_task_id
        self.loyalty_conn_id = loyalty_conn_id
        self.max_batches = max_batches
        self.poll_interval = validation.check_positive_number(poll_interval, "poll_interval")
        seconds = batch_timeout.total_seconds() if isinstance(batch_timeout, timedelta) else batch_timeout
        self.batch_timeout = validation.check_positive_number(seconds, "batch_timeout")
        self.deferrable = deferrable
        self.resume = resume
        self.replace = replace
        self.keep_zip = keep_zip
        self.archive_limits = ArchiveLimits(
            max_uncompressed_bytes=int(max_uncompressed_bytes), max_compression_ratio=float(max_compression_ratio)
        )
        if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)):
            raise LoyaltyValidationError("max_batches", f"expected a positive integer or None, got {max_batches!r}")
        if max_batches is not None and max_batches < 1:
            raise LoyaltyValidationError("max_batches", f"expected a positive integer or None, got {max_batches!r}")
        self._validate_literals()

    def _validate_literals(self) -> None:
        """Fail at DAG-parse time on literal values that can never work (templates wait for run time)."""
        fields = (self.loyalty_program_id, self.points_currency_eid, self.points_currency_iid)
        if not validation.is_template(self.loyalty_program_id):
            validation.check_program_id(self.loyalty_program_id)
        if not any(validation.is_template(value) for value in fields[1:]):
            validation.check_currency(self.points_currency_eid, self.points_currency_iid)
        ends = (self.date_from, self.date_to)
        if all(value is not None and not validation.is_template(value) for value in ends):
            validation.check_period(*ends)
        if not validation.is_template(self.from_id):
            validation.check_cursor(self.from_id)

    # ------------------------------------------------------------------ to be provided by subclasses

    @abstractmethod
    def build_sink(self, context: Context, spec: ExportSpec) -> PartSink:
        """Where this operator lands parts, checkpoint and manifest."""

    # ------------------------------------------------------------------ shared machinery

    @property
    def hook(self) -> LoyaltyHook:
        """The API hook (one per task attempt, so one HTTP session)."""
        if not hasattr(self, "_hook"):
            self._hook = LoyaltyHook(self.loyalty_conn_id)
        return self._hook

    def export_spec(self, context: Context) -> ExportSpec:
        """The rendered parameters, validated; the period defaults to the run's data interval."""
        date_from, date_to = self.date_from, self.date_to
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if date_from in (None, "") or date_to in (None, ""):
            if start is None or end is None:
                missing = "date_from" if date_from in (None, "") else "date_to"
                raise LoyaltyValidationError(missing, "not given, and the DAG run has no data interval to default to")
            if start == end:
                raise LoyaltyValidationError(
                    "date_from/date_to",
                    f"not given, and the run's data interval is a single instant ({start}); schedule the DAG "
                    "with a data-interval timetable (CronDataIntervalTimetable) or pass the period explicitly",
                )
        if date_from in (None, ""):
            date_from = start
        if date_to in (None, ""):
            # Airflow's interval end is exclusive; the API's date_to is inclusive (to the second).
            date_to = validation.to_utc(end, "date_to").subtract(seconds=1)
        return ExportSpec.build(
            loyalty_program_id=self.loyalty_program_id,
            points_currency_eid=self.points_currency_eid,
            points_currency_iid=self.points_currency_iid,
            date_from=date_from,
            date_to=date_to,
            from_id=self.from_id,
        )

    def export_loop(self, context: Context) -> ExportLoop:
        """The loop for this task's rendered parameters and sink."""
        spec = self.export_spec(context)
        return ExportLoop(
            hook=self.hook,
            spec=spec,
            sink=self.build_sink(context, spec),
            max_batches=self.max_batches,
            poll_interval=self.poll_interval,
            batch_timeout=self.batch_timeout,
            resume=self.resume,
            replace=self.replace,
            keep_zip=self.keep_zip,
            limits=self.archive_limits,
            log=self.log,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the export; in deferrable mode, defer once per batch that is not ready at once."""
        loop = self.export_loop(context)
        progress = loop.begin()
        if self.export_task_id and not progress.parts and not progress.pending_task_id:
            progress.pending_task_id = str(self.export_task_id)  # adopted: re-attached like a resumed task
        if not self.deferrable:
            return self.on_manifest(context, loop.run(progress))
        return self._advance(context, loop, progress)

    def _advance(self, context: Context, loop: ExportLoop, progress: ExportProgress) -> dict[str, Any]:
        """Start batches and land those already complete; defer on the first that is still running."""
        while True:
            if progress.exhausted:  # resumed after a crash between the last part and the manifest
                return self.on_manifest(context, loop.finish(progress))
            export_task_id = loop.start_batch(progress)
            status = self.hook.get_task_status(export_task_id)
            state = task_state(status.get("status"))
            if state == "failure":
                raise LoyaltyExportTaskFailed(
                    export_task_id, str(status.get("status")), failure_text(status, self.hook.settings.token)
                )
            if state == "running":
                self.defer(
                    trigger=LoyaltyExportTaskTrigger(
                        export_task_id=export_task_id,
                        loyalty_conn_id=self.loyalty_conn_id,
                        poll_interval=self.poll_interval,
                        deadline=time.time() + self.batch_timeout,
                    ),
                    method_name="execute_complete",
                    kwargs={"progress": progress.to_dict(), "export_task_id": export_task_id},
                )
            if not loop.land_batch(progress, export_task_id, result_of(export_task_id, status)):
                return self.on_manifest(context, loop.finish(progress))

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
        export_task_id: str | None = None,
    ) -> dict[str, Any]:
        """Resume after the trigger fired: land the batch, then start the next or finish.

        ``progress`` and ``export_task_id`` are the primitives the operator deferred with. Where a
        runner hands back only the event (``dag.test()`` in Airflow 3.3 does), the export task id
        comes from the event and the progress from the checkpoint the loop wrote before deferring.
        """
        if export_task_id is None and isinstance(event, dict):
            export_task_id = event.get("export_task_id")
        if not export_task_id:
            raise LoyaltyError("execute_complete: no export_task_id in the deferral kwargs or the trigger event")
        try:
            result = result_from_event(event, export_task_id)
        except LoyaltyError:
            raise
        except Exception as err:  # AirflowSensorTimeout is for sensors; an operator just fails (and may retry)
            raise LoyaltyError(f"Waiting for export task {export_task_id} failed: {err}") from None
        loop = self.export_loop(context)
        state = ExportProgress.from_dict(progress) if progress else loop.checkpointed_progress()
        if state.spec != loop.begin_spec():
            raise LoyaltyError("the rendered export parameters changed while the task was deferred")
        if state.pending_task_id != export_task_id:
            raise LoyaltyError(
                f"execute_complete: the trigger reported export task {export_task_id}, "
                f"but the export was waiting for {state.pending_task_id}"
            )
        if not loop.land_batch(state, export_task_id, result):
            return self.on_manifest(context, loop.finish(state))
        return self._advance(context, loop, state)

    def on_manifest(self, context: Context, manifest: dict[str, Any]) -> dict[str, Any]:
        """Hook for subclasses (asset events, lineage); returns the manifest pushed to XCom."""
        return manifest
