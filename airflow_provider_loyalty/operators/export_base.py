"""What the two export operators share: parameters, the export loop, deferral per batch.

:class:`LoyaltyExportOperator` and :class:`LoyaltyTransactionsToS3Operator` differ only in the
:class:`~airflow_provider_loyalty.export.sinks.PartSink` they build (:meth:`build_sink`).
Only for internal usage.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.common.compat.sdk import BaseOperator, Context, conf

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyValidationError, LoyaltyVerificationError
from airflow_provider_loyalty.export.archive import ArchiveLimits
from airflow_provider_loyalty.export.layout import CHECKPOINT_NAME
from airflow_provider_loyalty.export.lease import WriterIdentity
from airflow_provider_loyalty.export.loop import ExportLoop, Finished, Step
from airflow_provider_loyalty.export.manifest import xcom_summary
from airflow_provider_loyalty.export.part_formats import check_output_format
from airflow_provider_loyalty.export.progress import ExportProgress
from airflow_provider_loyalty.export.sinks import PartSink
from airflow_provider_loyalty.export.spec import ExportSpec
from airflow_provider_loyalty.hooks.loyalty import DEFAULT_MAX_DOWNLOAD_BYTES, LoyaltyHook
from airflow_provider_loyalty.operators.lineage import operator_lineage
from airflow_provider_loyalty.operators.links import LoyaltyManifestLink, push_manifest_link
from airflow_provider_loyalty.triggers.loyalty import (
    defer_until_done,
    status_from_event,
    wait_deadline,
    wait_failed,
    within_execution_timeout,
)
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.export_status import ExportTaskStatus
from airflow_provider_loyalty.utils.periods import period_bound, unfinished_period_warning

#: How long a deferred export keeps its location beyond the trigger's deadline.
_LEASE_GRACE = 600.0
#: Trigger error events in a row (the triggerer could not follow the export task) the worker answers
#: by checking the task itself before the task fails with the trigger's error.
MAX_TRIGGER_ERRORS = 3


#: Parameters whose literal values are checked when the DAG is parsed.
_LITERAL_CHECKED = (
    "loyalty_program_id",
    "points_currency_eid",
    "points_currency_iid",
    "date_from",
    "date_to",
    "from_id",
    "output_format",
    "export_task_id",
    "loyalty_conn_id",
)
_SWITCHES = ("deferrable", "resume", "replace", "keep_zip", "fail_on_empty", "verify")


#: The settings (parameters never templated) and how each is checked and converted.
_SETTING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "max_batches": validation.check_optional_positive_int,
    "poll_interval": validation.check_duration,
    "batch_timeout": validation.check_duration,
    **dict.fromkeys(_SWITCHES, validation.parse_bool),
    "max_download_bytes": validation.check_byte_count,
    "max_uncompressed_bytes": validation.check_byte_count,
    "max_compression_ratio": validation.check_positive_number,
}


def checked_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The export settings among ``values``, checked and converted (others are left out): what the
    constructor keeps, and what ``partial()`` checks when the DAG is parsed. Errors name the parameter."""
    return {name: check(values[name], name) for name, check in _SETTING_CHECKS.items() if name in values}


def check_literal_export_values(values: Mapping[str, Any]) -> None:
    """Refuse literal export parameters that can never work, naming the parameter.

    :param values: parameters by name; a template is left for run time, and a parameter missing
        here (one ``.expand()`` will give) is not known yet: the pairs (currency ids, period ends)
        are checked together only when both are here.
    """

    def literal(name: str) -> bool:
        return validation.is_literal(values, name)

    def given(name: str) -> bool:  # "" is no date: the data interval's end, as at run time
        return literal(name) and values[name] != ""

    validation.check_literal_program_and_currency(values)
    if given("date_from") and given("date_to"):
        validation.check_period(values["date_from"], values["date_to"])
    else:  # one end from the data interval or mapped: the literal other end must still read
        for parameter, end in (("date_from", False), ("date_to", True)):
            if given(parameter):
                period_bound(values[parameter], parameter, end=end)
    if "from_id" in values and not validation.is_template(values["from_id"]):
        validation.check_cursor(values["from_id"])
    if "output_format" in values and not validation.is_template(values["output_format"]):
        check_output_format(values["output_format"])
    if literal("export_task_id"):
        validation.check_task_id(values["export_task_id"])
    validation.check_conn_ids(values)


class LoyaltyExportBaseOperator(BaseOperator):
    """
    Export a loyalty program's points transactions of a period, batch after batch, verified.

    :meta private:

    Subclasses decide where parts land. See :class:`LoyaltyExportOperator` and
    :class:`LoyaltyTransactionsToS3Operator` for the parameters they add.

    :param loyalty_program_id: the loyalty program. (templated)
    :param points_currency_eid: external points currency id; give this or the iid. (templated)
    :param points_currency_iid: internal points currency id; give this or the eid. (templated)
    :param date_from: period start, inclusive: a datetime, a date (its first second) or RFC3339.
        Defaults to the run's ``data_interval_start``. Naive values are read in
        ``[core] default_timezone``. (templated)
    :param date_to: period end, inclusive: a datetime, a date (its last second) or RFC3339.
        Defaults to one second before the run's ``data_interval_end``. (templated)
    :param from_id: start from this transaction id instead of the period's beginning. (templated)
    :param export_task_id: adopt an export task created elsewhere (e.g. waited for by
        :class:`LoyaltyExportTaskSensor`) as the first batch instead of creating one; it must have
        been created with the same program, currency, period and ``from_id``. (templated)
    :param output_format: ``csv`` (default), ``csv.gz`` or ``parquet`` (needs the ``[parquet]``
        extra). (templated)
    :param loyalty_conn_id: the ``loyalty`` connection. (templated)
    :param max_batches: fail instead of running more export batches than this (default: no cap).
    :param poll_interval: seconds between export task status checks.
    :param batch_timeout: seconds one export task may run before the operator fails.
    :param deferrable: wait for each export task in the triggerer instead of holding a worker
        slot. Defaults to ``[operators] default_deferrable``.
    :param resume: after a failed attempt, continue from its checkpoint instead of from scratch.
    :param replace: replace a finished export of the same period at the output location (else
        fail). An export of another period there is always an error.
    :param keep_zip: also store each batch's original archive next to its part.
    :param fail_on_empty: fail when the period holds no transactions (default: an empty period is
        a valid export, with a manifest of ``total_rows`` 0 and no parts).
    :param verify: re-read every part against the manifest right after it is written
        (:func:`~airflow_provider_loyalty.verify.verify_manifest`).
    :param max_download_bytes: the largest batch file accepted (streamed; the download stops there).
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
        "output_format",
        "loyalty_conn_id",
    )
    ui_color = "#f4e3ff"
    operator_extra_links = (LoyaltyManifestLink(),)

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
        output_format: str = "csv",
        loyalty_conn_id: str = LoyaltyHook.default_conn_name,
        max_batches: int | None = None,
        poll_interval: float = 30.0,
        batch_timeout: float | timedelta = timedelta(hours=24),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        resume: bool = True,
        replace: bool = True,
        keep_zip: bool = False,
        fail_on_empty: bool = False,
        verify: bool = False,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
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
        #: An export_task_id was given (a template may render to nothing: that is refused, not a new task).
        self._adopts_export_task = export_task_id is not None
        self.output_format = output_format
        self.loyalty_conn_id = loyalty_conn_id
        settings = checked_settings(
            {
                "max_batches": max_batches,
                "poll_interval": poll_interval,
                "batch_timeout": batch_timeout,
                "deferrable": deferrable,
                "resume": resume,
                "replace": replace,
                "keep_zip": keep_zip,
                "fail_on_empty": fail_on_empty,
                "verify": verify,
                "max_download_bytes": max_download_bytes,
                "max_uncompressed_bytes": max_uncompressed_bytes,
                "max_compression_ratio": max_compression_ratio,
            }
        )
        self.max_batches: int | None = settings["max_batches"]
        self.poll_interval: float = settings["poll_interval"]
        self.batch_timeout: float = settings["batch_timeout"]
        self.deferrable: bool = settings["deferrable"]
        self.resume: bool = settings["resume"]
        self.replace: bool = settings["replace"]
        self.keep_zip: bool = settings["keep_zip"]
        self.fail_on_empty: bool = settings["fail_on_empty"]
        self.verify: bool = settings["verify"]
        self.max_download_bytes: int = settings["max_download_bytes"]
        self.archive_limits = ArchiveLimits(
            max_uncompressed_bytes=settings["max_uncompressed_bytes"],
            max_compression_ratio=settings["max_compression_ratio"],
        )
        self._loop: ExportLoop | None = None
        self._manifest_url: str | None = None
        self._validate_literals()

    def _validate_literals(self) -> None:
        """Fail at DAG-parse time on literal values that can never work (templates wait for run time)."""
        check_literal_export_values({name: getattr(self, name) for name in _LITERAL_CHECKED})

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """As :meth:`BaseOperator.partial`, with the literal values given here checked at DAG-parse
        time as the operator's own constructor checks them (the mapped values wait for run time)."""
        check_literal_export_values({name: kwargs[name] for name in _LITERAL_CHECKED if name in kwargs})
        checked_settings(kwargs)
        return super().partial(**kwargs)

    # ------------------------------------------------------------------ to be provided by subclasses

    @abstractmethod
    def build_sink(self, context: Context, spec: ExportSpec) -> PartSink:
        """Where this operator lands parts, checkpoint and manifest."""

    def on_manifest(self, context: Context, manifest: dict[str, Any]) -> None:
        """Hook for subclasses (asset events, lineage), called once the manifest is written."""

    #: The connection-id parameters of this operator (templated; checked again once rendered).
    conn_id_parameters: tuple[str, ...] = ("loyalty_conn_id",)

    def verify_conn_id(self) -> str | None:
        """The connection :func:`~airflow_provider_loyalty.verify.verify_manifest` reads the location with."""
        return None

    # ------------------------------------------------------------------ the export

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
            date_from = pendulum.instance(start)  # type: ignore[arg-type]
        if date_to in (None, ""):
            # Airflow's interval end is exclusive; the API's date_to is inclusive (to the second).
            date_to = pendulum.instance(end).subtract(seconds=1)  # type: ignore[arg-type]
        return ExportSpec.build(
            loyalty_program_id=self.loyalty_program_id,
            points_currency_eid=self.points_currency_eid,
            points_currency_iid=self.points_currency_iid,
            date_from=date_from,
            date_to=date_to,
            from_id=self.from_id,
            output_format=self.output_format,
        )

    def export_loop(self, context: Context) -> ExportLoop:
        """The loop for this task's rendered parameters and sink."""
        spec = self.export_spec(context)
        validation.check_conn_ids({name: getattr(self, name) for name in self.conn_id_parameters})  # rendered
        self.hook.settings  # noqa: B018 - a connection that cannot be read fails before the location is touched
        return ExportLoop(
            hook=self.hook,
            spec=spec,
            sink=self.build_sink(context, spec),
            identity=WriterIdentity.from_context(context, retries=self.retries),
            max_batches=self.max_batches,
            poll_interval=self.poll_interval,
            batch_timeout=self.batch_timeout,
            resume=self.resume,
            replace=self.replace,
            keep_zip=self.keep_zip,
            fail_on_empty=self.fail_on_empty,
            limits=self.archive_limits,
            max_download_bytes=self.max_download_bytes,
            log=self.log,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the export: in this worker (batch N+1 fetched while N lands), or deferring per batch."""
        push_manifest_link(context, "")  # the link's XCom exists from the start (see MANIFEST_LINK_KEY)
        loop = self._loop = self.export_loop(context)
        if (warning := unfinished_period_warning(loop.spec.date_to)) is not None:
            self.log.warning("%s", warning)  # once: not again as each deferral resumes
        with _closing_unless_deferred(loop):
            progress = loop.begin()
            if self._adopts_export_task:
                loop.adopt_task(progress, validation.check_task_id(self.export_task_id))
            if not self.deferrable:
                return self._finish(context, loop.run(progress))
            return self._after(context, loop, loop.advance(progress))

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any] | None = None,
        export_task_id: str | None = None,
        trigger_errors: int = 0,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Resume after the trigger fired: land the batch, create the next, defer again or finish.

        When the trigger could not follow the export task (its ``error`` event without a task
        status: the API forgot the task, or the triggerer's requests failed past their retries),
        the worker checks the task itself, with the loop's own handling: a forgotten task is created
        again from its cursor. :data:`MAX_TRIGGER_ERRORS` such events in a row for one export task
        fail the task; a wait deferred again for the same export task keeps its ``deadline``
        (``batch_timeout`` counts once per export task, not once per deferral).
        """
        if export_task_id is None and isinstance(event, dict):  # resumed with the event alone (dag.test())
            export_task_id = event.get("export_task_id")
            deadline = deadline if deadline is not None else wait_deadline(event)
        loop = self._loop = self.export_loop(context)
        with _closing_unless_deferred(loop):
            # The location is taken back first, so an event that fails the task (a timeout, an
            # event about another task) gives it up, as the same failure does in a worker: the
            # lease was renewed past the deadline at deferral and would hold off other writers.
            progress = loop.begin(after_deferral=True)
            status: ExportTaskStatus | None = None
            if wait_failed(event) and trigger_errors < MAX_TRIGGER_ERRORS:
                self.log.warning(
                    "The triggerer could not follow export task %s (%s); checking it from the worker",
                    export_task_id,
                    (event or {}).get("message"),
                )
                trigger_errors += 1
            else:
                status, trigger_errors = status_from_event(event, export_task_id), 0
            step = loop.advance(progress, completed=status)
            if isinstance(step, Finished) or step.export_task_id != export_task_id:
                trigger_errors, deadline = 0, None  # a batch landed: the next export task's wait starts afresh
            return self._after(context, loop, step, trigger_errors=trigger_errors, deadline=deadline)

    def _after(
        self,
        context: Context,
        loop: ExportLoop,
        step: Step,
        *,
        trigger_errors: int = 0,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Finish, or defer exactly where the wait for an export task starts (until ``deadline``,
        when the wait for the same export task goes on; else for one ``batch_timeout``)."""
        if isinstance(step, Finished):
            return self._finish(context, step.manifest)
        if deadline is None:
            deadline = self._deadline(context)
        remaining = deadline - time.time()
        if remaining <= 0:
            raise LoyaltyError(f"timed out waiting for export task {step.export_task_id} (the task's deadline passed)")
        loop.lease.renew(until=deadline + _LEASE_GRACE)
        self.log.info("Deferring: export task %s still runs (poll every %g s)", step.export_task_id, self.poll_interval)
        defer_until_done(
            self,
            export_task_id=step.export_task_id,
            loyalty_conn_id=self.loyalty_conn_id,
            poll_interval=self.poll_interval,
            deadline=deadline,
            kwargs={
                "export_task_id": step.export_task_id,
                "deadline": deadline,
                **({"trigger_errors": trigger_errors} if trigger_errors else {}),
            },
        )

    def _deadline(self, context: Context) -> float:
        """When waiting must end: one batch's timeout, and never past ``execution_timeout``."""
        return within_execution_timeout(self, context, time.time() + self.batch_timeout)

    def _finish(self, context: Context, manifest: dict[str, Any]) -> dict[str, Any]:
        self._manifest_url = str(manifest["manifest"])
        push_manifest_link(context, self._manifest_url)
        self.on_manifest(context, manifest)
        if self.verify:
            self._verify(manifest)
        return xcom_summary(manifest)

    def _verify(self, manifest: dict[str, Any]) -> None:
        from airflow_provider_loyalty.verify import CannotVerifyError, verify_manifest

        try:
            report = verify_manifest(manifest, conn_id=self.verify_conn_id())
        except CannotVerifyError as error:
            raise CannotVerifyError(
                f"verify=True could not check the export at {manifest['manifest']}: {error} (the export "
                "itself finished: its manifest is in place)"
            ) from error
        if not report.intact:
            earlier = self._loop is not None and self._loop.adopted_own
            hint = (
                " (it is the export an earlier try of this task finished, returned rather than exported again: "
                "clear the task to export the period anew)"
                if earlier
                else ""
            )
            raise LoyaltyVerificationError(
                f"the export at {manifest['manifest']} does not verify{hint}:\n{report.to_text()}"
            )
        self.log.info("Verified %s: %d part(s) intact", manifest["manifest"], report.parts_checked)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """When Airflow fails the deferral (``__fail__``: its timeout passed with no triggerer
        answering, or the triggerer could not run the trigger), give the location up, as a failure
        in a worker does, and name the export task waited for at a timeout."""
        if next_method != "__fail__":
            return super().resume_execution(next_method, next_kwargs, context)
        waited_for = self._give_up_after_failed_deferral(context)
        error = str((next_kwargs or {}).get("error") or "")
        if "timeout" in error.lower():
            raise LoyaltyError(
                f"timed out waiting for export task {waited_for}: the deferral reached the task's "
                f"deadline (execution_timeout={self.execution_timeout}, batch_timeout={self.batch_timeout:.0f}s) "
                "and no triggerer reported the task as finished"
            )
        return super().resume_execution(next_method, next_kwargs, context)

    def _give_up_after_failed_deferral(self, context: Context) -> str:
        """Release the lease this try left at its deferral (renewed past the wait's deadline, it held
        other exports of the location off for up to ``batch_timeout``); return the export task the
        checkpoint waits for, for the failure's message. The checkpoint stays: a retry resumes it."""
        try:
            loop = self.export_loop(context)
        except Exception:
            return "(unknown: the export's parameters do not render)"
        try:
            try:
                document = loop.sink.read_json(CHECKPOINT_NAME)
                pending = ExportProgress.from_dict(document or {}).pending
                waited_for = pending[0].task_id if pending else "(unknown)"
            except Exception:
                waited_for = "(unknown: the checkpoint could not be read)"
            try:
                if loop.lease.release_left_at_deferral():
                    self.log.info("Gave up %s: the deferral failed", loop.sink.describe())
            except Exception as error:  # the deferral's failure is the task's; this one only delays others
                self.log.warning("Could not give up %s after the failed deferral: %s", loop.sink.describe(), error)
            return waited_for
        finally:
            loop.close(release=False)

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage: the API's transactions as input; the output is known once the export landed."""
        return operator_lineage(self.loyalty_conn_id, self.loyalty_program_id, None)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the API's transactions as input, the export's location as the one output
        (none after a failure before the manifest was written)."""
        location = self._manifest_url.rsplit("/", 1)[0] if self._manifest_url else None
        return operator_lineage(self.loyalty_conn_id, self.loyalty_program_id, location)

    def on_kill(self) -> None:
        """Stop the export promptly; the checkpoint keeps the pending export task for the next try."""
        if self._loop is not None:
            self._loop.stop()


class _closing_unless_deferred:
    """Clean the loop's temporary files on the way out; give the location up unless the task defers."""

    def __init__(self, loop: ExportLoop) -> None:
        self.loop = loop

    def __enter__(self) -> ExportLoop:
        return self.loop

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        from airflow.providers.common.compat.sdk import TaskDeferred

        deferred = exc_type is not None and issubclass(exc_type, TaskDeferred)
        self.loop.close(release=not deferred)
