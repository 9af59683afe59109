"""What the loyalty API means: export tasks, their status, downloads and member histories.

:class:`LoyaltyApi` answers decoded, authenticated requests; the HTTP layer
(:mod:`~airflow_provider_loyalty.testing.transport`) only moves bytes and calls its public methods:
:meth:`~LoyaltyApi.handle` for the three POST endpoints and :meth:`~LoyaltyApi.download` for
``GET /api/download/<hashed_file>``. Errors are raised as
:class:`~airflow_provider_loyalty.testing.errors.ApiError`.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from airflow_provider_loyalty.testing.accounts import account_transactions_page
from airflow_provider_loyalty.testing.archive import ArchiveSpec, BatchRows, FillerMembers, ZipSink, write_export_zip
from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.dataset import program_stream_for
from airflow_provider_loyalty.testing.errors import ApiError, success
from airflow_provider_loyalty.testing.exports import (
    ExportTask,
    ExportTaskStore,
    hashed_file_name,
    period_key,
    plan_batch,
)
from airflow_provider_loyalty.testing.faults import DOWNLOAD_KINDS, FaultRule, FaultSet
from airflow_provider_loyalty.testing.prebuilt import PrebuiltFiles
from airflow_provider_loyalty.testing.stats import EmulatorStats
from airflow_provider_loyalty.testing.validation import (
    RequestParams,
    check_program_and_currency,
    parse_from_id,
    parse_period,
)

__all__ = ["Download", "LoyaltyApi"]


@dataclass
class Download:
    """What a download answers: the task's zip, built now or already on disk.

    :param task: the export task.
    :param drop_last_row: build a short batch (one row fewer than ``total``).
    :param filler: extra compressible members after the CSV.
    :param file: the pre-built zip, open for reading (the caller closes it).
    :param size: the pre-built zip's size.
    :param csv_bytes: the pre-built zip's CSV bytes.
    """

    task: ExportTask
    drop_last_row: bool = False
    filler: FillerMembers | None = None
    file: IO[bytes] | None = None
    size: int = 0
    csv_bytes: int = 0

    @property
    def filename(self) -> str:
        """The file name for ``Content-Disposition``."""
        return self.task.hashed_file.rsplit("/", 1)[-1].replace('"', "")

    def write(self, sink: ZipSink) -> int:
        """Build the zip into ``sink``; return its CSV bytes.

        :param sink: a non-seekable binary writer.
        """
        task = self.task
        return write_export_zip(sink, task.batch, task.spec, drop_last_row=self.drop_last_row, filler=self.filler)


class LoyaltyApi:
    """The API's semantics over a configuration, fault rules and counters.

    :param config: the emulator's configuration (read on every request).
    :param faults: the fault rules.
    :param stats: the counters.
    """

    def __init__(self, config: EmulatorConfig, faults: FaultSet, stats: EmulatorStats) -> None:
        self.config = config
        self.faults = faults
        self.stats = stats
        self.tasks = ExportTaskStore()
        self.prebuilt = PrebuiltFiles(on_built=lambda: stats.count("prebuilt_files_built"))
        self._lock = threading.Lock()
        self._short_downloads: Counter[tuple[str, str]] = Counter()

    # --- endpoints ----------------------------------------------------------------------------------
    def handle(self, endpoint: str, params: RequestParams) -> dict[str, Any]:
        """Answer a POST endpoint.

        :param endpoint: ``export``, ``status`` or ``account``.
        :param params: the decoded request.
        :return: the success envelope.
        :raises ApiError: on invalid requests and unknown tasks or members.
        """
        if endpoint == "export":
            return self.create_export(params)
        if endpoint == "status":
            return self.task_status(params)
        if endpoint == "account":
            return account_transactions_page(params, self.config)
        raise ValueError(f"not a POST endpoint: {endpoint!r}")

    def create_export(self, params: RequestParams) -> dict[str, Any]:
        """Create an export task of the requested period from the requested cursor.

        :param params: the decoded request.
        :raises ApiError: (1001) on invalid parameters.
        """
        cfg = self.config
        currency_iid = check_program_and_currency(params, cfg)
        date_from, date_to, start, end = parse_period(params)
        from_id = parse_from_id(params)
        stream = program_stream_for(cfg)
        lo, hi, next_from_id = plan_batch(stream, cfg, start, end, from_id)
        task_id = f"task_{uuid.uuid4()}"
        hashed_file = hashed_file_name(cfg, task_id, currency_iid, date_from, date_to)
        never = self.faults.match(
            ("export", "status"), {"task_never_finishes"}, predicate=lambda r: "task_ids" not in r.params
        )
        task = ExportTask(
            task_id=task_id,
            created=time.monotonic(),
            duration=float(cfg.task_duration),
            loyalty_program_id=cfg.loyalty_program_id,
            points_currency_iid=currency_iid,
            period=period_key(start, end),
            from_id=from_id,
            batch=BatchRows(stream, lo, hi, hashed_file.rsplit("/", 1)[-1].removesuffix(".zip")),
            next_from_id=next_from_id,
            hashed_file=hashed_file,
            spec=ArchiveSpec.from_config(cfg),
            never_finishes=never is not None,
            encoded_name=cfg.hashed_file_style == "encoded",
        )
        if cfg.prebuilt_files:
            # The zip's bytes follow from its rows, its file name and its layout: equal ones share a file.
            content = (task.batch, task.spec)
            task.prebuilt = self.prebuilt.submit(task_id, Download(task).write, content)
        self.tasks.add(task)
        self.stats.count_export_task(task.period)
        if never is not None:
            self.stats.count_fault("task_never_finishes")
        return success(data={"task_id": task_id})

    def task_status(self, params: RequestParams) -> dict[str, Any]:
        """Report an export task's status (and its result once completed).

        :param params: the decoded request.
        :raises ApiError: 1001 without ``task_id``, 1003 for an unknown task (also for one created
            less than ``status_lag`` seconds ago).
        """
        task_id = params.get_str("task_id", required=True)
        task = self.tasks.get(task_id or "")
        if task is None or time.monotonic() - task.created < self.config.status_lag:
            raise ApiError(1003, f"Export task not found: {str(task_id)[:100]}")
        if task.failure is None:
            rule = self.faults.match("status", {"task_failed"})
            if rule is not None:
                task.failure = (
                    str(rule.params.get("status", "failed")),
                    str(rule.params.get("text", "Export task failed")),
                )
                self.stats.count_fault("task_failed")
        now = time.monotonic()
        style = self.config.progress_style
        data: dict[str, Any]
        if task.failure is not None:
            status, text = task.failure
            data = {"status": status, "progress": task.progress(now, style), "error_text": text, "message": text}
        elif self._pinned(task) or not task.completed(now):
            progress = task.progress(now, style)
            data = {"status": "in_progress", "progress": min(progress, 99.0 if style == "decimal" else 99)}
        else:
            data = {"status": "completed", "progress": task.progress(now, style), "result": task.result(self.config)}
        return success(data=data)

    def _pinned(self, task: ExportTask) -> bool:
        return any(
            rule.kind == "task_never_finishes" and task.task_id in (rule.params.get("task_ids") or ())
            for rule in self.faults.rules()
        )

    def download(self, hashed_file: str) -> Download:
        """Decide what a download of ``hashed_file`` answers.

        :param hashed_file: the file name, percent-decoded.
        :raises ApiError: 1005 when no completed task has this file, 1008 when it expired, and
            the errors of the download fault kinds.
        """
        task = self.tasks.by_file(hashed_file)
        now = time.monotonic()
        if task is None or not task.completed(now) or (task.total == 0 and task.spec.empty_style == "file_not_found"):
            raise ApiError(1005, "Download not found")
        ttl = self.config.file_ttl
        if task.expired or (ttl is not None and now - task.completed_at() > ttl):
            self.stats.count("downloads_gone")
            raise ApiError(1008, "File expired", self.config.expired_file_status)
        rule = self.faults.match("download", DOWNLOAD_KINDS, predicate=functools.partial(self._may_apply, task))
        if rule is not None:
            self.stats.count_fault(rule.kind)
            return self._faulty_download(task, rule)
        built = PrebuiltFiles.ready(task.prebuilt)
        if built is not None:
            try:
                handle = built.path.open("rb")
            except FileNotFoundError:  # removed by a reset in the meantime
                return Download(task)
            return Download(task, file=handle, size=built.size, csv_bytes=built.csv_bytes)
        return Download(task)

    def _may_apply(self, task: ExportTask, rule: FaultRule) -> bool:
        if rule.kind != "short_batch":
            return True
        with self._lock:
            return self._short_downloads[task.batch_key] < int(rule.params.get("downloads", 1))

    def _faulty_download(self, task: ExportTask, rule: FaultRule) -> Download:
        params = rule.params
        fmt = params.get("format")
        if rule.kind == "download_gone":
            raise ApiError(1008, str(params.get("text", "File expired")), int(params.get("http_status", 404)), fmt=fmt)
        if rule.kind == "download_error_envelope":
            raise ApiError(
                int(params.get("code", 1000)),
                str(params.get("text", "Internal error")),
                int(params.get("http_status", 200)),
                fmt=fmt or "json",
            )
        if rule.kind == "short_batch":
            with self._lock:
                self._short_downloads[task.batch_key] += 1
            return Download(task, drop_last_row=True)
        filler = FillerMembers(
            count=int(params.get("members", 64)),
            size=int(params.get("member_bytes", 1_048_000)),
            byte=str(params.get("byte", "0")).encode("ascii"),
        )
        return Download(task, filler=filler)

    # --- control ------------------------------------------------------------------------------------
    def expire_files(self, task_ids: Iterable[str] | None = None) -> int:
        """Make the files of these tasks (default: all) gone for good; return how many.

        :param task_ids: the tasks (unknown ids are ignored).
        """
        wanted = None if task_ids is None else set(task_ids)
        expired = 0
        for task in self.tasks.all():
            if wanted is None or task.task_id in wanted:
                task.expired = True
                expired += 1
        return expired

    def reset(self) -> None:
        """Forget every task and delete the pre-built files."""
        self.tasks.clear()
        with self._lock:
            self._short_downloads.clear()
        self.prebuilt.clear()

    def close(self) -> None:
        """Stop building files and delete them; build none until :meth:`reopen`."""
        self.prebuilt.close()

    def reopen(self) -> None:
        """Build files again (after :meth:`close`)."""
        self.prebuilt.reopen()
