"""The export loop, once: create → wait → download → verify → land the part → next cursor.

Both export operators drive this loop and differ only in their :class:`PartSink`. The loop's
state (:class:`ExportProgress`) holds primitives only, so it can ride in trigger kwargs across
deferrals and be checkpointed to the sink after every part; a retry after a crash resumes from
the checkpoint instead of re-exporting from the start, and re-attaches to an export task that
was still running.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pendulum

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportTaskFailed,
    LoyaltyNotFoundError,
    LoyaltyResponseError,
)
from airflow_provider_loyalty.export.archive import TAIL_WINDOW, ArchiveLimits, write_part
from airflow_provider_loyalty.export.sinks import CHECKPOINT_NAME, MANIFEST_NAME, PartSink, part_name
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.protocol import failure_text, task_state

MANIFEST_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportSpec:
    """What to export: validated, in the API's formats, JSON-safe.

    :param loyalty_program_id: the loyalty program.
    :param points_currency_eid: external currency id (or ``None``).
    :param points_currency_iid: internal currency id (or ``None``).
    :param date_from: period start, RFC3339 UTC.
    :param date_to: period end, RFC3339 UTC.
    :param from_id: the cursor the export starts from (``None``: the beginning of the period).
    """

    loyalty_program_id: int
    points_currency_eid: str | None
    points_currency_iid: int | None
    date_from: str
    date_to: str
    from_id: str | None = None

    @classmethod
    def build(
        cls,
        *,
        loyalty_program_id: Any,
        points_currency_eid: Any,
        points_currency_iid: Any,
        date_from: Any,
        date_to: Any,
        from_id: Any = None,
    ) -> ExportSpec:
        """Validate user input (rendered templates) into a spec; errors name the parameter."""
        currency = validation.check_currency(points_currency_eid, points_currency_iid)
        start, end = validation.check_period(date_from, date_to)
        return cls(
            loyalty_program_id=validation.check_program_id(loyalty_program_id),
            points_currency_eid=currency.get("points_currency_eid"),
            points_currency_iid=currency.get("points_currency_iid"),
            date_from=start,
            date_to=end,
            from_id=validation.check_cursor(from_id),
        )


@dataclass
class ExportProgress:
    """Where an export stands; primitives only (deferral kwargs and checkpoint document).

    :param spec: the export it belongs to (as a dict).
    :param parts: manifest entries of the parts landed so far.
    :param cursor: ``from_id`` of the next batch.
    :param pending_task_id: an export task created for the next batch, not yet landed.
    :param tail_ids: trailing transaction ids of the last part (boundary de-duplication).
    :param duplicates_dropped: boundary duplicates left out so far.
    :param started_at: when the export began (RFC3339).
    """

    spec: dict[str, Any]
    parts: list[dict[str, Any]] = field(default_factory=list)
    cursor: str | None = None
    pending_task_id: str | None = None
    tail_ids: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0
    started_at: str = ""

    @property
    def exhausted(self) -> bool:
        """Every batch has landed (the last part had no ``next_from_id``): only sealing is left.

        A checkpoint in this state is what a crash between the last part and the manifest leaves.
        """
        return bool(self.parts) and not self.parts[-1].get("next_from_id") and not self.pending_task_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for trigger kwargs and the checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ExportProgress:
        """Rebuild from :meth:`to_dict`'s output."""
        return cls(**{key: document[key] for key in cls.__dataclass_fields__ if key in document})


class ExportLoop:
    """Runs one export through a :class:`PartSink`.

    :param hook: the API hook.
    :param spec: what to export.
    :param sink: where parts, checkpoint and manifest land.
    :param max_batches: fail rather than run more batches than this (``None``: no cap).
    :param poll_interval: seconds between status polls when waiting in the worker.
    :param batch_timeout: seconds one export task may take before the loop gives up.
    :param resume: continue from a checkpoint of the same export left by a failed attempt.
    :param replace: replace a finished export already at the location (else fail).
    :param keep_zip: also store each batch's original archive as ``part-NNNNN.zip``.
    :param limits: zip bomb caps.
    :param log: logger for the per-batch lines.
    """

    def __init__(
        self,
        *,
        hook: LoyaltyHook,
        spec: ExportSpec,
        sink: PartSink,
        max_batches: int | None = None,
        poll_interval: float = 30.0,
        batch_timeout: float = 24 * 3600.0,
        resume: bool = True,
        replace: bool = True,
        keep_zip: bool = False,
        limits: ArchiveLimits | None = None,
        log: Any,
    ) -> None:
        self.hook = hook
        self.spec = spec
        self.sink = sink
        self.max_batches = max_batches
        self.poll_interval = poll_interval
        self.batch_timeout = batch_timeout
        self.resume = resume
        self.replace = replace
        self.keep_zip = keep_zip
        self.limits = limits or ArchiveLimits()
        self.log = log

    # ------------------------------------------------------------------ lifecycle

    def begin_spec(self) -> dict[str, Any]:
        """The spec as it is stored in progress and checkpoint documents."""
        return asdict(self.spec)

    def begin(self) -> ExportProgress:
        """Resume from a checkpoint of this same export, or start afresh at the location."""
        spec = self.begin_spec()
        checkpoint = self.sink.read_json(CHECKPOINT_NAME) if self.resume else None
        if checkpoint and checkpoint.get("spec") == spec:
            progress = self._verified_resume(ExportProgress.from_dict(checkpoint))
            if progress is not None:
                self.log.info(
                    "Resuming export at %s after %d landed part(s), cursor %s%s",
                    self.sink.describe(),
                    len(progress.parts),
                    progress.cursor,
                    f", re-attaching to export task {progress.pending_task_id}" if progress.pending_task_id else "",
                )
                return progress
        if self.sink.read_json(MANIFEST_NAME) is not None:
            if not self.replace:
                raise LoyaltyError(
                    f"{self.sink.describe()} already holds a finished export ({MANIFEST_NAME}); "
                    "set replace=True to replace it"
                )
            # The old set stops being "complete" now; a failure from here on leaves no manifest.
            self.sink.delete([MANIFEST_NAME])
        progress = ExportProgress(
            spec=spec, cursor=self.spec.from_id, started_at=pendulum.now("UTC").to_iso8601_string()
        )
        self._checkpoint(progress)
        return progress

    def checkpointed_progress(self) -> ExportProgress:
        """The progress of this export as last checkpointed at the sink (the source of truth)."""
        checkpoint = self.sink.read_json(CHECKPOINT_NAME)
        if not checkpoint or checkpoint.get("spec") != self.begin_spec():
            raise LoyaltyError(
                f"no checkpoint of this export at {self.sink.describe()}; it was removed while the task waited"
            )
        return ExportProgress.from_dict(checkpoint)

    def _verified_resume(self, progress: ExportProgress) -> ExportProgress | None:
        """Trust the checkpoint only if every part it lists is stored with its recorded size.

        A part that vanished means the location was tampered with; the boundary ids needed to
        continue exactly-once are then gone too, so the export starts afresh instead.
        """
        for part in progress.parts:
            if self.sink.size_of(part["name"]) != part["bytes"]:
                self.log.warning("Part %s of the checkpoint is missing or resized; starting afresh", part["name"])
                return None
        return progress

    def run(self, progress: ExportProgress | None = None) -> dict[str, Any]:
        """The whole export in this worker (non-deferrable mode); returns the manifest.

        :param progress: where to start (from :meth:`begin`); begins afresh or resumes if omitted.
        """
        progress = progress or self.begin()
        while not progress.exhausted:
            export_task_id = self.start_batch(progress)
            result = self.wait(export_task_id)
            if not self.land_batch(progress, export_task_id, result):
                break
        return self.finish(progress)

    def start_batch(self, progress: ExportProgress) -> str:
        """Create the next batch's export task, or re-attach to the one a crashed attempt made."""
        if len(progress.parts) >= (self.max_batches or float("inf")):
            raise LoyaltyCursorError(
                f"max_batches={self.max_batches} reached and the API still returns a next_from_id "
                f"({progress.cursor!r}); raise max_batches or check the cursor"
            )
        if progress.pending_task_id and self._still_usable(progress.pending_task_id):
            return progress.pending_task_id
        progress.pending_task_id = self.hook.create_transactions_export(
            loyalty_program_id=self.spec.loyalty_program_id,
            points_currency_eid=self.spec.points_currency_eid,
            points_currency_iid=self.spec.points_currency_iid,
            date_from=self.spec.date_from,
            date_to=self.spec.date_to,
            from_id=progress.cursor,
        )
        self._checkpoint(progress)
        return progress.pending_task_id

    def _still_usable(self, export_task_id: str) -> bool:
        try:
            status = self.hook.get_task_status(export_task_id)
        except (LoyaltyNotFoundError, LoyaltyApiError) as err:
            self.log.warning("Cannot re-attach to export task %s (%s); creating a new one", export_task_id, err)
            return False
        if task_state(status.get("status")) == "failure":
            self.log.warning("Export task %s had failed; creating a new one", export_task_id)
            return False
        self.log.info("Re-attached to export task %s (status %s)", export_task_id, status.get("status"))
        return True

    def wait(self, export_task_id: str) -> dict[str, Any]:
        """Poll the task in this worker until it completes; return its ``result``."""
        deadline = time.monotonic() + self.batch_timeout
        while True:
            status = self.hook.get_task_status(export_task_id)
            state = task_state(status.get("status"))
            if state == "success":
                return result_of(export_task_id, status)
            if state == "failure":
                raise LoyaltyExportTaskFailed(
                    export_task_id, str(status.get("status")), failure_text(status, self.hook.settings.token)
                )
            self.log.info("Export task %s: %s, %s%%", export_task_id, status.get("status"), status.get("progress"))
            if time.monotonic() + self.poll_interval > deadline:
                raise LoyaltyError(
                    f"Export task {export_task_id} did not complete within batch_timeout={self.batch_timeout:.0f}s"
                )
            time.sleep(self.poll_interval)

    def land_batch(self, progress: ExportProgress, export_task_id: str, result: dict[str, Any]) -> bool:
        """Download, verify and store one completed batch; return whether another batch follows."""
        total = result.get("total")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise LoyaltyResponseError(f"export task {export_task_id}: expected result.total >= 0, got {total!r}")
        next_from_id = result.get("next_from_id") or None
        if next_from_id is not None and not isinstance(next_from_id, str):
            raise LoyaltyResponseError(f"export task {export_task_id}: result.next_from_id is not a string")
        index = len(progress.parts)
        name = part_name(index)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="loyalty-batch-") as workdir:
            archive = os.path.join(workdir, "batch.zip")
            part_file = os.path.join(workdir, name)
            downloaded = self.hook.download_export(result.get("hashed_file"), archive)  # type: ignore[arg-type]
            with open(part_file, "wb") as sink:
                stats = write_part(
                    archive,
                    sink,
                    expected_rows=total,
                    skip_ids=frozenset(progress.tail_ids),
                    limits=self.limits,
                )
            location = self.sink.put_file(name, part_file)
            if self.keep_zip:
                self.sink.put_file(part_name(index, "zip"), archive)
        elapsed = max(time.monotonic() - started, 1e-6)
        self._check_cursor(progress, next_from_id)
        progress.parts.append(
            {
                "key": location,
                "name": name,
                "rows": stats.rows,
                "bytes": stats.bytes,
                "sha256": stats.sha256,
                "export_task_id": export_task_id,
                "from_id": progress.cursor,
                "next_from_id": next_from_id or "",
                "duplicates_dropped": stats.duplicates_dropped,
            }
        )
        progress.duplicates_dropped += stats.duplicates_dropped
        progress.tail_ids = stats.tail_ids[-TAIL_WINDOW:] if stats.tail_ids else progress.tail_ids
        progress.cursor = next_from_id
        progress.pending_task_id = None
        self._checkpoint(progress)
        self.log.info(
            "batch %d: %s, %d rows, %.1f MiB, %.1f MiB/s%s",
            index,
            export_task_id,
            stats.rows,
            stats.bytes / 2**20,
            (downloaded + stats.bytes) / 2**20 / elapsed,
            f", {stats.duplicates_dropped} boundary duplicate(s) dropped" if stats.duplicates_dropped else "",
        )
        return next_from_id is not None

    def _check_cursor(self, progress: ExportProgress, next_from_id: str | None) -> None:
        if next_from_id is None:
            return
        used = {part["from_id"] for part in progress.parts} | {progress.cursor}
        if next_from_id in used:
            raise LoyaltyCursorError(
                f"the API returned next_from_id {next_from_id!r}, a cursor already used; the export would loop"
            )

    def finish(self, progress: ExportProgress) -> dict[str, Any]:
        """Remove stale parts, write the manifest last, drop the checkpoint; return the manifest."""
        manifest = build_manifest(self.spec, progress)
        keep = {part["name"] for part in progress.parts}
        if self.keep_zip:
            keep |= {part_name(index, "zip") for index in range(len(progress.parts))}
        stale = self.sink.stale_parts(keep)
        if stale:
            self.log.info("Deleting %d stale part(s) of an earlier export: %s", len(stale), ", ".join(stale[:5]))
            self.sink.delete(stale)
        manifest["manifest"] = self.sink.write_json(MANIFEST_NAME, manifest)
        self.sink.delete([CHECKPOINT_NAME])
        self.log.info(
            "Export complete: %d part(s), %d rows, %.1f MiB, manifest %s",
            len(progress.parts),
            manifest["total_rows"],
            manifest["total_bytes"] / 2**20,
            manifest["manifest"],
        )
        return manifest

    def _checkpoint(self, progress: ExportProgress) -> None:
        self.sink.write_json(CHECKPOINT_NAME, progress.to_dict())


def result_of(export_task_id: str, status: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` object of a completed task's status, or a clear error."""
    result = status.get("result")
    if not isinstance(result, dict):
        raise LoyaltyResponseError(f"export task {export_task_id} completed without a result object")
    return result


def build_manifest(spec: ExportSpec, progress: ExportProgress) -> dict[str, Any]:
    """The manifest (DESIGN.md schema): metadata only, never rows."""
    parts = [
        {key: part[key] for key in ("key", "rows", "bytes", "sha256", "export_task_id", "from_id", "next_from_id")}
        for part in progress.parts
    ]
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "loyalty_program_id": spec.loyalty_program_id,
        "points_currency_eid": spec.points_currency_eid,
        "points_currency_iid": spec.points_currency_iid,
        "date_from": spec.date_from,
        "date_to": spec.date_to,
        "parts": parts,
        "total_rows": sum(part["rows"] for part in progress.parts),
        "total_bytes": sum(part["bytes"] for part in progress.parts),
        "duplicates_dropped": progress.duplicates_dropped,
        "started_at": progress.started_at,
        "completed_at": pendulum.now("UTC").to_iso8601_string(),
    }
