"""Getting a batch's file: wait for its export task, download its zip to a work directory.

:class:`BatchFetcher` does it in the calling thread; :class:`Prefetcher` does it for the *next*
batch in a background thread (its own HTTP session) while the current batch is verified and
landed, so the download of batch N+1 overlaps the verification and upload of batch N. At most one
batch is fetched ahead, and each sits on disk, so memory stays flat.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyError,
    LoyaltyExportStopped,
    LoyaltyNotFoundError,
    LoyaltyTransientError,
)
from airflow_provider_loyalty.export.progress import PendingTask
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.utils.export_status import NOT_YET_KNOWN_SECONDS, ExportTaskStatus

__all__ = ["NOT_YET_KNOWN_SECONDS", "BatchFetcher", "FetchedBatch", "Prefetcher", "file_gone"]
#: How often it is asked for meanwhile (at most; ``poll_interval`` when shorter).
NOT_YET_KNOWN_POLL_SECONDS = 1.0


@dataclass
class FetchedBatch:
    """A batch whose export task ended, with its file on disk (if it completed and has one).

    :param task: the export task.
    :param status: its final status.
    :param archive: the downloaded zip, or ``None`` (failed task, or an empty batch without a file).
    :param downloaded: bytes downloaded.
    :param seconds: time spent downloading.
    """

    task: PendingTask
    status: ExportTaskStatus
    archive: str | None = None
    downloaded: int = 0
    seconds: float = 0.0


class BatchFetcher:
    """Waits for export tasks and downloads their files.

    :param hook: the API hook (used from one thread only).
    :param workdir: where downloads go.
    :param poll_interval: seconds between status checks.
    :param batch_timeout: seconds one export task may take.
    :param max_download_bytes: the largest download accepted.
    :param stop: set to stop waiting and downloading.
    :param log: logger.
    """

    def __init__(
        self,
        hook: LoyaltyHook,
        workdir: str,
        *,
        poll_interval: float,
        batch_timeout: float,
        max_download_bytes: int,
        stop: threading.Event,
        log: Any,
    ) -> None:
        self.hook = hook
        self.workdir = workdir
        self.poll_interval = poll_interval
        self.batch_timeout = batch_timeout
        self.max_download_bytes = max_download_bytes
        self.stop = stop
        self.log = log

    def status(self, task: PendingTask) -> ExportTaskStatus:
        """The task's status. A task created a moment ago that the API does not know yet (its status
        lagging its create) is asked for again, for up to :data:`NOT_YET_KNOWN_SECONDS` after its
        creation, before it counts as forgotten (and its batch is created again).

        :raises LoyaltyNotFoundError: the API does not know the task, and it is not that new.
        """
        while True:
            try:
                return self.hook.get_export_task_status(task.task_id)
            except LoyaltyNotFoundError:
                age = time.time() - task.created_at if task.created_at is not None else None
                if age is None or not 0 <= age < NOT_YET_KNOWN_SECONDS:
                    raise
                self.log.info(
                    "Export task %s, created %.1f s ago, is not known to the API yet; asking again", task.task_id, age
                )
            if self.stop.wait(min(self.poll_interval, NOT_YET_KNOWN_POLL_SECONDS)):
                raise LoyaltyExportStopped(f"stopped while waiting for export task {task.task_id}")

    def wait(self, task: PendingTask, on_wait: Callable[[], None] | None = None) -> ExportTaskStatus:
        """Poll until the task ends (or ``batch_timeout`` passes); return its final status."""
        deadline = time.monotonic() + self.batch_timeout
        last = ""
        while True:
            status = self.status(task)
            if status.state.is_terminal:
                return status
            if status.describe() != last:
                self.log.info("Export task %s: %s", task.task_id, status.describe())
                last = status.describe()
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoyaltyError(
                    f"Export task {task.task_id} did not complete within batch_timeout={self.batch_timeout:g}s"
                )
            if on_wait is not None:
                on_wait()
            # The last look is at the deadline itself (as the trigger's): a task done by then counts.
            if self.stop.wait(min(self.poll_interval, left)):
                raise LoyaltyExportStopped(f"stopped while waiting for export task {task.task_id}")

    def download(self, task: PendingTask, status: ExportTaskStatus) -> FetchedBatch:
        """Download a completed task's file (nothing for an empty batch without one)."""
        result = status.completed_result()
        if result.hashed_file is None:
            return FetchedBatch(task, status)
        archive = os.path.join(self.workdir, f"{task.task_id}.zip")
        started = time.monotonic()
        try:
            size = self.hook.download_export(
                result.hashed_file, archive, max_bytes=self.max_download_bytes, stop=self.stop
            )
        except LoyaltyApiError as error:
            if result.total != 0 or not file_gone(error):
                raise
            self.log.info(
                "Export task %s: 0 rows, and its file is not there (%s): nothing to land", task.task_id, error
            )
            return FetchedBatch(task, status)
        if size == 0 and result.total == 0:  # no zip at all, not even an empty one: no rows either
            os.unlink(archive)
            return FetchedBatch(task, status)
        return FetchedBatch(task, status, archive, size, time.monotonic() - started)

    def fetch(self, task: PendingTask, on_wait: Callable[[], None] | None = None) -> FetchedBatch:
        """Wait for the task, then download its file if it completed."""
        status = self.wait(task, on_wait)
        return self.download(task, status) if status.result is not None else FetchedBatch(task, status)


class Prefetcher:
    """Fetches export tasks in one background thread, one ahead of the batch being landed.

    :param fetcher: a fetcher with a hook of its own (see :meth:`LoyaltyHook.fork`).
    """

    def __init__(self, fetcher: BatchFetcher) -> None:
        self.fetcher = fetcher
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loyalty-prefetch")
        self._futures: dict[str, Future[FetchedBatch]] = {}

    def start(self, task: PendingTask) -> None:
        """Begin fetching ``task`` in the background (once)."""
        if task.task_id not in self._futures:
            self._futures[task.task_id] = self._pool.submit(self.fetcher.fetch, task)

    def future(self, task: PendingTask) -> Future[FetchedBatch] | None:
        """The fetch of ``task`` started in the background, if it was (not taken yet)."""
        return self._futures.get(task.task_id)

    def take(self, task: PendingTask, on_wait: Callable[[], None] | None = None) -> FetchedBatch:
        """The fetched batch of ``task`` (fetching it now if it was not started); re-raises its error."""
        self.start(task)
        future = self._futures[task.task_id]
        try:
            while True:
                try:
                    return future.result(timeout=5.0)
                except FutureTimeout:
                    if on_wait is not None:
                        on_wait()
                    if self.fetcher.stop.is_set():
                        raise LoyaltyExportStopped(f"stopped while fetching export task {task.task_id}") from None
        finally:
            if future.done():
                del self._futures[task.task_id]

    def discard(self) -> None:
        """Forget batches fetched ahead (their files are removed with the work directory)."""
        self._futures.clear()

    def close(self) -> None:
        """Stop the background thread (a running fetch sees the stop event)."""
        self.fetcher.stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.fetcher.hook.close()


def file_gone(error: LoyaltyApiError) -> bool:
    """An API error in place of a batch's file: it expired or was removed (not auth, not a fault)."""
    return isinstance(error, LoyaltyNotFoundError) or (
        not isinstance(error, LoyaltyAuthError | LoyaltyTransientError) and error.http_status in (None, 200, 404, 410)
    )
