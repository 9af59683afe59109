"""The export loop, once: create → wait → download → verify → land → checkpoint, until the period ends.

Both export operators drive it through one step function, :meth:`ExportLoop.advance`: it lands
every batch it can and returns :class:`Finished` (the manifest) or :class:`Waiting` (an export task
still runs). A worker waits by handing it a :class:`~airflow_provider_loyalty.export.fetch.Prefetcher`
(then it never returns ``Waiting``: batch N+1 is created, waited for and downloaded in the
background while batch N is verified and landed); a deferrable operator defers on ``Waiting``
— exactly where the wait would start — having landed batch N and created batch N+1 first.

State lives in the checkpoint at the location (:mod:`~airflow_provider_loyalty.export.progress`),
written after every change a retry must know about, so a retry after a crash resumes after the last
landed part and re-attaches to the export tasks already created. A batch whose file is gone or that
fails verification is created again from the same cursor (at most :data:`MAX_RECREATIONS` times),
never replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import pendulum

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyBatchUnusableError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportStopped,
    LoyaltyFinalError,
    LoyaltyNotFoundError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyVerificationError,
)
from airflow_provider_loyalty.export.archive import ArchiveLimits, PartStats, write_part
from airflow_provider_loyalty.export.fetch import BatchFetcher, FetchedBatch, Prefetcher, file_gone
from airflow_provider_loyalty.export.layout import (
    CHECKPOINT_NAME,
    MANIFEST_NAME,
    RECORDS_DIR,
    STAGING_DIR,
    is_part_name,
    part_name,
    record_name,
    staged,
)
from airflow_provider_loyalty.export.lease import LeasedSink, LocationLease, WriterIdentity
from airflow_provider_loyalty.export.manifest import starting_cursor
from airflow_provider_loyalty.export.progress import CLEANUP, EXPORTING, ExportProgress, PartRecord, PendingTask
from airflow_provider_loyalty.export.seal import Sealer, finish_interrupted_switch
from airflow_provider_loyalty.export.sinks import PartSink, UnreadableDocument
from airflow_provider_loyalty.export.spec import ExportSpec, describe_period, period_of
from airflow_provider_loyalty.export.verify_ahead import VerifyAhead
from airflow_provider_loyalty.hooks.loyalty import DEFAULT_MAX_DOWNLOAD_BYTES, LoyaltyHook
from airflow_provider_loyalty.utils.export_status import ExportResult, ExportTaskState, ExportTaskStatus

#: How many times a batch whose file is gone, or that fails verification, is created again.
MAX_RECREATIONS = 2


@dataclass(frozen=True)
class Waiting:
    """The export waits for an export task that is still running."""

    export_task_id: str


@dataclass(frozen=True)
class Finished:
    """The export is sealed: its manifest."""

    manifest: dict[str, Any]


Step = Waiting | Finished


def columns_digest(columns: list[str] | None) -> str | None:
    """SHA-256 of a CSV header's column names: what the checkpoint keeps of it (a header of any width
    keeps the checkpoint small)."""
    if columns is None:
        return None
    return hashlib.sha256(json.dumps(columns, ensure_ascii=False).encode("utf-8")).hexdigest()


def _check_columns(progress: ExportProgress, task: PendingTask, stats: PartStats) -> str | None:
    """A part's columns are those of the parts landed before it: the zips' members are held to one
    header, and so are the batches, or a table reading the parts by position would mix columns.
    Returns the part's :func:`columns_digest`, for the checkpoint."""
    digest = columns_digest(stats.columns)
    if progress.columns_sha256 is not None and digest != progress.columns_sha256:
        shown = [name if len(name) <= 60 else f"{name[:57]}..." for name in (stats.columns or [])[:40]]
        raise LoyaltyVerificationError(
            f"the file of export task {task.task_id} (batch {progress.batches_done}) has the CSV columns "
            f"{shown!r}{' and more' if len(stats.columns or []) > 40 else ''}, not those of the parts landed "
            "before it: the API changed its columns during the export, and one export's parts must read "
            "alike; export the period again from its start (replace=True)"
        )
    return digest


class _BatchUnusable(Exception):
    """This batch cannot be landed (file gone, verification failed, or an earlier try's task ended
    with a reply that cannot be used): create it again."""


class ExportLoop:
    """Runs one export into a :class:`~airflow_provider_loyalty.export.sinks.PartSink`.

    :param hook: the API hook.
    :param spec: what to export.
    :param sink: where parts, checkpoint and manifest land.
    :param identity: who writes (for the location's lease).
    :param max_batches: fail rather than run more batches than this (``None``: no cap).
    :param poll_interval: seconds between status polls when waiting in the worker.
    :param batch_timeout: seconds one export task may take before the loop gives up.
    :param resume: continue from a checkpoint of the same export left by a failed attempt.
    :param replace: replace a finished export of the same period at the location (else fail).
    :param keep_zip: also store each batch's original archive as ``part-NNNNN.zip``.
    :param fail_on_empty: a period without transactions is an error instead of an empty manifest.
    :param limits: zip bomb caps.
    :param max_download_bytes: the largest batch file accepted.
    :param log: logger for the per-batch lines.
    """

    def __init__(
        self,
        *,
        hook: LoyaltyHook,
        spec: ExportSpec,
        sink: PartSink,
        identity: WriterIdentity,
        max_batches: int | None = None,
        poll_interval: float = 30.0,
        batch_timeout: float = 24 * 3600.0,
        resume: bool = True,
        replace: bool = True,
        keep_zip: bool = False,
        fail_on_empty: bool = False,
        limits: ArchiveLimits | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
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
        self.max_download_bytes = max_download_bytes
        self.log = log
        self.stop_event = threading.Event()
        self.lease = LocationLease(sink, identity, spec.period, log, stop=self.stop_event)
        self.sink = sink = LeasedSink(sink, self.lease)  # every write of the export checks the lease first
        self.sealer = Sealer(
            sink,
            spec,
            fail_on_empty=fail_on_empty,
            log=log,
            written_by=identity.task,
            written_by_try=identity.try_number,
        )
        self.workdir = tempfile.mkdtemp(prefix="loyalty-export-")
        self.fetcher = self._fetcher(hook)
        self.adopted: dict[str, Any] | None = None
        self.adopted_own = False  # the adopted export is this task instance's own earlier try's
        self._created: set[str] = set()  # export tasks created by this attempt
        self.ahead: VerifyAhead | None = None  # in a worker: the next batch verified while this one uploads

    def _fetcher(self, hook: LoyaltyHook) -> BatchFetcher:
        return BatchFetcher(
            hook,
            self.workdir,
            poll_interval=self.poll_interval,
            batch_timeout=self.batch_timeout,
            max_download_bytes=self.max_download_bytes,
            stop=self.stop_event,
            log=self.log,
        )

    # ------------------------------------------------------------------ lifecycle

    def begin(self, *, max_wait: float | None = None, after_deferral: bool = False) -> ExportProgress:
        """Take the location, then resume this export's checkpoint or start afresh.

        :param max_wait: seconds to wait for another export of the same period writing there.
        :param after_deferral: this try comes back from the triggerer (``execute_complete``): its own
            checkpoint is resumed whatever ``resume`` says (``resume`` is about an earlier try's),
            and the batch's attempts so far still count.
        """
        self.lease.acquire(max_wait=self.batch_timeout if max_wait is None else max_wait)
        if self.lease.waited_since is not None:
            self.adopted = self._manifest_finished_since(self.lease.waited_since, self.lease.waited_for)
        elif (earlier := self.lease.left_by_earlier_try) is not None and self._returns_as_own(
            earlier.get("task"), earlier.get("try_number"), unknown_run=True
        ):
            # An earlier try of this task held the location until it died: if it finished the
            # export before that (manifest written, lease not yet released), its manifest is ours.
            self.adopted = self._manifest_finished_since(_epoch(earlier.get("acquired_at")))
            self.adopted_own = self.adopted is not None
        if self.adopted is None:
            self.adopted = self._own_finished_export()
            self.adopted_own = self.adopted is not None
        if self.adopted is not None and (sealing := self._unfinished_seal()) is not None:
            # The export that wrote that manifest died before its seal ended (a re-run's manifest may
            # still point into the staging area; its checkpoint and records are still here): finish it.
            self.log.info("The export that finished at %s died while sealing; finishing its seal", self.sink.describe())
            self.adopted, self.adopted_own = None, False
            return sealing
        progress = self._resumable_checkpoint(after_deferral) if self.adopted is None else None
        if progress is not None and progress.phase != EXPORTING:
            self._finish_earlier_seal(progress)
            progress = None
        if progress is not None:
            if not after_deferral:
                progress.recreations = []  # each try gets its own attempts at a batch
            self.log.info(
                "Resuming the export at %s after %d landed part(s), cursor %s%s",
                self.sink.describe(),
                progress.parts_landed,
                progress.cursor,
                f"; re-attaching to export task(s) {[task.task_id for task in progress.pending]}"
                if progress.pending
                else "",
            )
            return progress
        staged_run = False
        if self.adopted is None:
            listed = finish_interrupted_switch(self.sink, self.log)  # before the staging area is cleared
            staged_run = self._check_finished_export()
            staging, records = self.sink.sizes(STAGING_DIR), self.sink.sizes(RECORDS_DIR)
            if not staged_run and not staging and not records:
                self._refuse_parts_no_export_wrote()
            abandoned = [name for name in staging if self.sink.key(name) not in listed]
            self.sink.delete([*records, *abandoned])  # an abandoned export's
        progress = ExportProgress(
            spec=self.spec.to_dict(),
            writer=self.lease.identity.describe(),
            staged=staged_run,
            started_at=pendulum.now("UTC").to_iso8601_string(),
            cursor=self.spec.from_id,
            keep_zip=self.keep_zip,
        )
        if self.adopted is None:
            self._checkpoint(progress)
        return progress

    def _finish_earlier_seal(self, progress: ExportProgress) -> None:
        """A checkpoint of an export that died while sealing: finish its seal now (the location then
        holds that export whole), then return it if it is this try's own; else (a re-run after a
        clear, another task instance's) this export replaces it, or refuses it (``replace=False``)."""
        manifest = self.sink.read_json(MANIFEST_NAME) if progress.sealed_by is None else None
        owner, owner_try = (
            (progress.sealed_by, progress.sealed_by_try)
            if progress.sealed_by is not None or manifest is None
            else (manifest.get("written_by"), manifest.get("written_by_try"))
        )
        self.log.info("The export at %s died while sealing; finishing its seal", self.sink.describe())
        sealed = self.sealer.seal(progress)
        if self._returns_as_own(owner, owner_try, unknown_run=True):
            self.adopted, self.adopted_own = sealed, True

    def _returns_as_own(self, task: Any, try_number: Any, *, unknown_run: bool) -> bool:
        """Whether an export finished by ``task`` (try ``try_number``) is this try's to return: it is
        this task instance's, and with ``replace=True`` of this run of the task (not from before a
        clear: a re-run replaces it). ``unknown_run``: the answer when the context does not say."""
        if task != self.lease.identity.task:
            return False
        if not self.replace:
            return True
        same = self.lease.identity.same_run(try_number)
        return unknown_run if same is None else same

    def _refuse_parts_no_export_wrote(self) -> None:
        """Refuse a location that no export has written to (no manifest, no checkpoint) but that holds
        files named like parts (``part-00007.csv``): this export would overwrite them, and its seal
        deletes the part names its manifest does not list. They are someone else's files."""
        names = self.sink.sizes()
        if MANIFEST_NAME in names or CHECKPOINT_NAME in names:
            return  # an export was here: its part names are its own
        foreign = sorted(name for name in names if is_part_name(name))
        if foreign:
            raise LoyaltyFinalError(
                f"{self.sink.describe()} holds {len(foreign)} file(s) named like export parts "
                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}) that no export wrote there "
                "(no manifest, no checkpoint): an export would overwrite or delete them. Move them, or give the "
                "export a location of its own"
            )

    def adopt_task(self, progress: ExportProgress, export_task_id: str) -> None:
        """Use an export task created elsewhere (same spec and cursor) as the first batch; nothing
        when :meth:`begin` found the export finished (then nothing is written at the location)."""
        if self.adopted is None and progress.batches_done == 0 and not progress.pending:
            progress.pending = [PendingTask(export_task_id, progress.cursor)]
            self._checkpoint(progress)

    def run(self, progress: ExportProgress | None = None) -> dict[str, Any]:
        """The whole export in this worker, batch N+1 fetched while batch N lands, and verified
        while N uploads; the manifest."""
        progress = progress or self.begin()
        prefetcher = Prefetcher(self._fetcher(self.hook.fork()))
        self.ahead = VerifyAhead(prefetcher, self.workdir, self._write_part, self.stop_event)
        try:
            step = self.advance(progress, prefetcher=prefetcher)
        except Exception as error:
            if self.stop_event.is_set() and not isinstance(error, LoyaltyExportStopped):
                # on_kill removed the work directory under a running step: say it was stopped
                raise LoyaltyExportStopped(f"the export at {self.sink.describe()} was stopped") from error
            raise
        finally:
            prefetcher.close()
            self.ahead.close()
            self.ahead = None
        assert isinstance(step, Finished)
        return step.manifest

    def stop(self) -> None:
        """Stop promptly (``on_kill``): waits and downloads end, temporary files go."""
        self.stop_event.set()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self, *, release: bool = True) -> None:
        """Remove the temporary files; give the location up unless the export only paused (deferral)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        if release:
            with contextlib.suppress(LoyaltyError):
                self.lease.release()
        self.hook.close()

    # ------------------------------------------------------------------ the step function

    def advance(
        self,
        progress: ExportProgress,
        *,
        prefetcher: Prefetcher | None = None,
        completed: ExportTaskStatus | None = None,
    ) -> Step:
        """Land every batch that can be landed now; stop when finished or when a task still runs.

        :param progress: where the export stands (from :meth:`begin`).
        :param prefetcher: fetch in the background and wait in this worker (never ``Waiting``).
        :param completed: the final status of the current task, as a trigger reported it.
        """
        if self.adopted is not None:
            self.lease.release()
            return Finished(self.adopted)
        while True:
            self._check_stop()
            self.lease.renew()
            if progress.phase != EXPORTING or progress.exhausted:
                try:  # each of the seal's writes checks the lease first (LeasedSink)
                    return Finished(self.sealer.seal(progress))
                except LoyaltyError:
                    self.lease.check()  # taken over meanwhile (its records gone with the other's seal): the cause
                    raise
            current = self._current_task(progress)
            if completed is not None and completed.export_task_id != current.task_id:
                self.log.warning(
                    "Ignoring a trigger event for export task %s: the export waits for %s (checking it instead)",
                    completed.export_task_id,
                    current.task_id,
                )
                completed = None
            try:
                fetched = self._fetched_or_waiting(current, prefetcher, completed)
                completed = None
                if fetched is None:
                    return Waiting(current.task_id)
                self._land_fetched(progress, current, fetched, prefetcher)
            except _BatchUnusable as unusable:
                if prefetcher is not None:
                    prefetcher.discard()
                if self.ahead is not None:
                    self.ahead.discard()
                self._recreate(progress, current, str(unusable))

    def _fetched_or_waiting(
        self, task: PendingTask, prefetcher: Prefetcher | None, completed: ExportTaskStatus | None
    ) -> FetchedBatch | None:
        """The task's final status (and its file, when a prefetcher got it), or ``None`` if it runs."""
        try:
            if completed is not None and completed.export_task_id == task.task_id:
                return FetchedBatch(task, completed)
            if prefetcher is not None:
                return prefetcher.take(task, on_wait=self.lease.renew)
            status = self.fetcher.status(task)
        except (LoyaltyExportStopped, LoyaltyAuthError, LoyaltyTransientError):
            raise
        except (LoyaltyNotFoundError, LoyaltyVerificationError) as error:
            raise _BatchUnusable(str(error)) from None
        except LoyaltyResponseError as error:  # its status reply (read ahead, too) cannot be used
            raise self._unusable_reply(task, error) from None
        except LoyaltyApiError as error:
            if file_gone(error):
                raise _BatchUnusable(str(error)) from None
            raise
        return FetchedBatch(task, status) if status.state.is_terminal else None

    def _land_fetched(
        self, progress: ExportProgress, current: PendingTask, fetched: FetchedBatch, prefetcher: Prefetcher | None
    ) -> None:
        status = fetched.status
        if status.state is ExportTaskState.FAILED:
            if self._created_by_this_try(current):
                status.raise_for_failure()  # the API's own failure: the task fails (a retry creates it again)
            raise _BatchUnusable(
                f"export task {current.task_id} had ended with status {status.status!r}: {status.failure_text}"
            )
        try:
            result = status.completed_result()
            self._check_cursor(progress, current, result)
        except (LoyaltyResponseError, LoyaltyCursorError) as error:
            raise self._unusable_reply(current, error) from None
        following = self._create_next(progress, result)
        if prefetcher is not None and following is not None:
            prefetcher.start(following)
        if fetched.archive is None and result.hashed_file is not None:
            fetched = self._download(current, status)
        self._land(progress, current, result, fetched, following)

    # ------------------------------------------------------------------ batches

    def _current_task(self, progress: ExportProgress) -> PendingTask:
        """The export task of the next batch: one already created (re-attached), or a new one."""
        if progress.pending:
            return progress.pending[0]
        if self.max_batches is not None and progress.batches_done >= self.max_batches:
            raise LoyaltyCursorError(
                f"max_batches={self.max_batches} reached and the API still returns a next_from_id "
                f"({progress.cursor!r}); raise max_batches or check the cursor"
            )
        task = self._pending(self._create(progress.cursor), progress.cursor)
        progress.pending = [task]
        self._checkpoint(progress)
        return task

    def _create_next(self, progress: ExportProgress, result: ExportResult) -> PendingTask | None:
        """Create the following batch's export task now, before this batch lands (the server works
        while we verify); recorded in the checkpoint, so a retry re-attaches to it."""
        cursor = result.next_from_id
        if cursor is None or (self.max_batches is not None and progress.batches_done + 1 >= self.max_batches):
            return None
        if len(progress.pending) > 1:
            if progress.pending[1].from_id == cursor:
                return progress.pending[1]
            del progress.pending[1:]
        task = self._pending(self._create(cursor), cursor)
        progress.pending.append(task)
        self._checkpoint(progress)
        return task

    def _unusable_reply(self, task: PendingTask, error: LoyaltyError) -> LoyaltyError | _BatchUnusable:
        """What to raise for a task whose final reply cannot be used (rows without a file, a cursor
        already used): its error when this try created the task (the task fails; a retry creates the
        batch again), else the batch is unusable, so a retry never replays an earlier try's failure."""
        if self._created_by_this_try(task):
            return error
        return _BatchUnusable(f"export task {task.task_id} had ended with a reply that cannot be used: {error}")

    def _pending(self, task_id: str, cursor: str | None) -> PendingTask:
        identity = self.lease.identity
        return PendingTask(task_id, cursor, identity.try_number, identity.task, round(time.time(), 3))

    def _created_by_this_try(self, task: PendingTask) -> bool:
        """Whether this try created the export task (before a deferral too), so its failure is this try's."""
        identity = self.lease.identity
        return task.task_id in self._created or (
            identity.try_number is not None
            and task.created_in_try == identity.try_number
            and task.created_by == identity.task
        )

    def _create(self, cursor: str | None) -> str:
        task_id = self.hook.create_transactions_export(
            loyalty_program_id=self.spec.loyalty_program_id,
            points_currency_eid=self.spec.points_currency_eid,
            points_currency_iid=self.spec.points_currency_iid,
            date_from=self.spec.date_from,
            date_to=self.spec.date_to,
            from_id=cursor,
        )
        self._created.add(task_id)
        return task_id

    def _download(self, task: PendingTask, status: ExportTaskStatus) -> FetchedBatch:
        try:
            return self.fetcher.download(task, status)
        except LoyaltyApiError as error:
            if file_gone(error):  # a "not found" among them
                raise _BatchUnusable(f"the file of export task {task.task_id} cannot be downloaded: {error}") from None
            raise

    def _land(
        self,
        progress: ExportProgress,
        task: PendingTask,
        result: ExportResult,
        fetched: FetchedBatch,
        following: PendingTask | None = None,
    ) -> None:
        """Verify the batch, store its part and record, and move the checkpoint past it (in a
        worker, the ``following`` batch is verified meanwhile, once this one's boundary is known)."""
        started = time.monotonic()
        index = progress.parts_landed
        name = part_name(index, self.spec.output_format)
        skip = frozenset(progress.tail_ids)
        stats, part_file = self._verify(task, result, fetched, os.path.join(self.workdir, name), skip)
        if self.ahead is not None and following is not None:
            self.ahead.start(following, skip if stats.is_empty else frozenset(stats.tail_ids))
        if not stats.is_empty:
            columns = _check_columns(progress, task, stats)
            self._store(progress, name, part_file, stats.sha256, fetched.archive)
            record = PartRecord(
                index,
                name,
                stats.rows,
                stats.bytes,
                stats.sha256,
                task.task_id,
                task.from_id,
                result.next_from_id or "",
                stats.duplicates_dropped,
                progress.batches_done,
            )
            self.sink.write_json(record_name(index), record.to_dict())
            progress.parts_landed += 1
            progress.rows += stats.rows
            progress.bytes += stats.bytes
            progress.tail_ids = stats.tail_ids
            progress.columns_sha256 = columns
        progress.batches_done += 1
        progress.duplicates_dropped += stats.duplicates_dropped
        progress.remember_cursor(task.from_id)
        progress.cursor = result.next_from_id
        progress.exhausted = result.next_from_id is None
        progress.pending = progress.pending[1:]
        progress.recreations = []
        self._checkpoint(progress)
        for path in (part_file, fetched.archive):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._log_batch(progress.batches_done - 1, task, stats, fetched, time.monotonic() - started)

    def _verify(
        self, task: PendingTask, result: ExportResult, fetched: FetchedBatch, part_file: str, skip: frozenset[str]
    ) -> tuple[PartStats, str]:
        """The batch's part: its stats and file (verified ahead, or now into ``part_file``)."""
        try:
            verified = self.ahead.take(task, skip) if self.ahead is not None else None
            if fetched.archive is None:  # an empty batch without a file (total 0, checked by ExportResult)
                return PartStats(), part_file
            if verified is not None:
                return verified
            return self._write_part(fetched.archive, result.total, skip, part_file), part_file
        except LoyaltyVerificationError as error:
            raise _BatchUnusable(f"the file of export task {task.task_id} failed verification: {error}") from None

    def _write_part(self, archive: str, expected_rows: int, skip: frozenset[str], part_file: str) -> PartStats:
        """Verify ``archive`` into ``part_file`` (any thread: it only reads the zip and writes the
        file); a verification that fails leaves no part file behind."""
        try:
            with open(part_file, "wb") as sink:
                return write_part(
                    archive,
                    sink,
                    expected_rows=expected_rows,
                    skip_ids=skip,
                    limits=self.limits,
                    output_format=self.spec.output_format,
                )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part_file)
            raise

    def _store(self, progress: ExportProgress, name: str, part_file: str, sha256: str, archive: str | None) -> None:
        """Upload the verified part (given its SHA-256) and, with ``keep_zip``, the API's zip."""
        index = progress.parts_landed
        self.sink.put_file(staged(name) if progress.staged else name, part_file, sha256)
        if self.keep_zip and archive:
            zip_name = part_name(index, "zip")
            self.sink.put_file(staged(zip_name) if progress.staged else zip_name, archive)

    def _recreate(self, progress: ExportProgress, task: PendingTask, reason: str) -> None:
        """Give up an unusable batch and create it again from the same cursor, a bounded number of times."""
        progress.recreations.append({"export_task_id": task.task_id, "reason": reason[:500]})
        progress.pending = []  # the next batch was created from this one's result: drop it too
        self._checkpoint(progress)
        if len(progress.recreations) > MAX_RECREATIONS:
            tried = "; ".join(f"{item['export_task_id']}: {item['reason']}" for item in progress.recreations)
            raise LoyaltyBatchUnusableError(
                f"the batch from cursor {progress.cursor!r} could not be landed after creating it "
                f"{len(progress.recreations)} times ({tried})"
            )
        self.log.warning(
            "%s; creating the batch again from cursor %s (attempt %d of %d)",
            reason,
            progress.cursor,
            len(progress.recreations) + 1,
            MAX_RECREATIONS + 1,
        )

    def _check_cursor(self, progress: ExportProgress, task: PendingTask, result: ExportResult) -> None:
        following = result.next_from_id
        if following is not None and (following == task.from_id or following in progress.recent_cursors):
            raise LoyaltyCursorError(
                f"export task {task.task_id} returned next_from_id {following!r}, a cursor already used; "
                "the export would loop"
            )

    def _log_batch(
        self, number: int, task: PendingTask, stats: PartStats, fetched: FetchedBatch, seconds: float
    ) -> None:
        rate = (fetched.downloaded + stats.bytes) / 2**20 / max(seconds + fetched.seconds, 1e-6)
        dropped = f", {stats.duplicates_dropped} boundary duplicate(s) dropped" if stats.duplicates_dropped else ""
        self.log.info(
            "batch %d: %s, %d rows, %.1f MiB, %.1f MiB/s%s",
            number,
            task.task_id,
            stats.rows,
            stats.bytes / 2**20,
            rate,
            dropped,
        )

    # ------------------------------------------------------------------ the location

    def _resumable_checkpoint(self, after_deferral: bool = False) -> ExportProgress | None:
        """This export's checkpoint, if it can be trusted; anything else is logged and ignored.

        :param after_deferral: the checkpoint is this try's own (see :meth:`begin`).
        """
        if not (self.resume or after_deferral):
            return None
        progress = self._stored_checkpoint(quiet=False)
        if progress is None:
            return None
        if progress.phase != EXPORTING:
            return progress  # sealing or cleaning up: the sealer knows what is where
        if progress.keep_zip != self.keep_zip:
            # Its parts so far were landed with (or without) their archives: sealing them as this
            # try asks would list archives never stored, or leave stored ones unlisted.
            self.log.warning(
                "The checkpoint at %s was written with keep_zip=%s; this try asks keep_zip=%s: starting afresh",
                self.sink.describe(),
                progress.keep_zip,
                self.keep_zip,
            )
            return None
        if progress.staged and not self.replace:
            return None  # another run's re-run, half staged: replace=False does not finish it (refused below)
        if not (after_deferral or progress.staged) and self._finished_export_at_location():
            # Written in place beside a finished export, which only a stray checkpoint can say (an
            # export over a finished one stages its parts): resuming it would overwrite listed parts.
            # (This try's own checkpoint, after a deferral, needs no such look: it wrote it itself.)
            self.log.warning(
                "The checkpoint at %s writes parts in place beside a finished export; starting afresh, staged",
                self.sink.describe(),
            )
            return None
        area = STAGING_DIR if progress.staged else ""
        stored, records = self.sink.sizes(area), self.sink.sizes(RECORDS_DIR)
        for index in range(progress.parts_landed):
            name = part_name(index, self.spec.output_format)
            if (staged(name) if area else name) not in stored or record_name(index) not in records:
                self.log.warning("Part %s of the checkpoint is missing; starting the export afresh", name)
                return None
        return progress

    def _stored_checkpoint(self, *, quiet: bool) -> ExportProgress | None:
        """The checkpoint at the location if it is this export's; ``None`` when there is none, it
        cannot be read or it is of another export (said in the log unless ``quiet``)."""
        try:
            document = self.sink.read_json(CHECKPOINT_NAME)
            if document is None:
                return None
            progress = ExportProgress.from_dict(document)
        except (UnreadableDocument, ValueError, KeyError, TypeError) as error:
            if not quiet:
                self.log.warning(
                    "The checkpoint at %s cannot be read (%s); starting the export afresh", self.sink.describe(), error
                )
            return None
        if progress.spec != self.spec.to_dict():
            if not quiet:
                self.log.info("The checkpoint at %s is of another export; starting afresh", self.sink.describe())
            return None
        return progress

    def _unfinished_seal(self) -> ExportProgress | None:
        """The checkpoint of this export if it got as far as sealing (every part landed), else ``None``."""
        progress = self._stored_checkpoint(quiet=True)
        if progress is None:
            return None
        if progress.phase == EXPORTING and not progress.exhausted:
            return None
        if progress.phase == EXPORTING and not progress.staged:
            progress.phase = CLEANUP  # its manifest, written from these records, is the one adopted
        return progress

    def _check_finished_export(self) -> bool:
        """Whether a finished export of this period is at the location (then this one is staged);
        a finished export of another period, or one not to be replaced, is an error."""
        location = self.sink.describe()
        try:
            manifest = self.sink.read_json(MANIFEST_NAME)
        except UnreadableDocument as error:
            if not self.replace:
                raise LoyaltyFinalError(
                    f"{location} holds an unreadable {MANIFEST_NAME} ({error}); set replace=True to replace it"
                ) from None
            self.log.warning("%s holds an unreadable %s (%s); it will be replaced", location, MANIFEST_NAME, error)
            return False
        if manifest is None:
            return False
        if period_of(manifest) != self.spec.period:
            raise LoyaltyFinalError(
                f"{location} holds a finished export of another period ({describe_period(period_of(manifest))}); "
                f"this export is {self.spec.describe_period()}. replace=True only replaces an export of the same "
                "period: give each period its own location"
            )
        if not self.replace:
            raise LoyaltyFinalError(
                f"{location} already holds a finished export of this period ({MANIFEST_NAME}); "
                "set replace=True to replace it"
            )
        self.log.info("A finished export of this period is at %s; the new parts are staged until complete", location)
        return True

    def _manifest_finished_since(self, since: float, writer: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The manifest an export of the same period, ``from_id`` and output format finished while we
        waited for it, if any (one in another format, or from another cursor, is what this export
        replaces, not what it asked for).

        :param since: when the wait began: a manifest completed since then is that export's.
        :param writer: the lease of the export waited for: a manifest it wrote is its export, also
            one completed before the wait began (a re-run's seal stamps its manifest, then copies
            every staged part into place: a wait that began during the copies turned away the
            export it waited for, and failed, or exported the whole period again).
        """
        manifest = self._finished_export_asked_for()
        if manifest is None:
            return None
        by_writer = (
            writer is not None
            and writer.get("task") is not None
            and (manifest.get("written_by"), manifest.get("written_by_try"))
            == (writer.get("task"), writer.get("try_number"))
        )
        if not by_writer and _epoch(manifest.get("completed_at")) < since:
            return None
        self.log.info(
            "The export of the same period that held %s finished meanwhile; using its manifest", self.sink.describe()
        )
        return manifest

    def _own_finished_export(self) -> dict[str, Any] | None:
        """The finished export an earlier try of this task instance wrote, if that is what is at the
        location: this task's own output to return (that try ended, or died, after writing its
        manifest: a failed ``verify=True``, a worker lost before Airflow heard of the success).

        With ``replace=False`` any try's is (it is not another's to refuse). With ``replace=True``
        only an earlier try of this run of the task (this try is its retry): a re-run after the task
        instance was cleared replaces it, as asked."""
        identity = self.lease.identity
        manifest = self._finished_export_asked_for() if identity.task is not None else None
        if manifest is None or not self._returns_as_own(
            manifest.get("written_by"), manifest.get("written_by_try"), unknown_run=False
        ):
            return None
        self.log.info(
            "An earlier try of this task (try %s) finished the export at %s (completed at %s); using its manifest",
            manifest.get("written_by_try", "?"),
            self.sink.describe(),
            manifest.get("completed_at"),
        )
        return manifest

    def _finished_export_at_location(self) -> bool:
        """Whether a readable manifest is at the location (an unreadable one lists nothing to keep:
        with ``replace=True`` an export writes over it in place, and may resume doing so)."""
        try:
            return self.sink.read_json(MANIFEST_NAME) is not None
        except UnreadableDocument:
            return False

    def _finished_export_asked_for(self) -> dict[str, Any] | None:
        """The manifest at the location if it is of this export: the same period, ``from_id`` and
        output format (one in another format, or from another cursor, is what this export replaces)."""
        try:
            manifest = self.sink.read_json(MANIFEST_NAME)
        except UnreadableDocument:
            return None
        if manifest is None or period_of(manifest) != self.spec.period:
            return None
        if manifest.get("output_format", "csv") != self.spec.output_format:
            return None
        if starting_cursor(manifest) != self.spec.from_id:  # another export's rows, not this one's
            return None
        parts = [part for part in manifest.get("parts") or [] if isinstance(part, dict)]
        if parts and any("archive_key" in part for part in parts) != self.keep_zip:
            return None  # kept (or not) each batch's archive, where this export asks the other
        return manifest

    def _checkpoint(self, progress: ExportProgress) -> None:
        self.sink.write_json(CHECKPOINT_NAME, progress.to_dict())  # checks the lease first (LeasedSink)

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise LoyaltyExportStopped(f"the export at {self.sink.describe()} was stopped")


def _epoch(timestamp: Any) -> float:
    """Epoch seconds of an ISO timestamp in a bookkeeping document; 0 when absent or unreadable."""
    try:
        parsed = pendulum.parse(str(timestamp)) if timestamp else None
    except (ValueError, TypeError):
        return 0.0
    return parsed.timestamp() if isinstance(parsed, pendulum.DateTime) else 0.0
