"""Verifying the next batch in a background thread while this one uploads (worker mode).

The loop lands batch N in order: verify its zip into a part file, upload the part, write its
record and the checkpoint. Batch N+1's zip is usually on disk by then (the
:class:`~airflow_provider_loyalty.export.fetch.Prefetcher` fetched it), and what verifying it
needs from batch N — the trailing transaction ids to leave out at the boundary — is known as soon
as N is verified. So N+1 is verified here while N uploads, instead of after.

Nothing here writes to the location or touches the checkpoint: a batch verified ahead is landed
by the loop, in order, exactly as one it verified itself; one verified for other boundary ids (a
batch created again meanwhile) is not used. A verification that fails raises where the loop would
have verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyExportStopped
from airflow_provider_loyalty.export.archive import PartStats
from airflow_provider_loyalty.export.fetch import FetchedBatch, Prefetcher
from airflow_provider_loyalty.export.progress import PendingTask
from airflow_provider_loyalty.utils.export_status import ExportTaskState

#: ``verify(archive, expected_rows, skip_ids, part_file)``: the loop's verification of one batch.
Verify = Callable[[str, int, frozenset[str], str], PartStats]


class VerifyAhead:
    """Verifies the batch after the one landing, in one background thread.

    :param prefetcher: fetches the batches (the zip to verify comes from its future).
    :param workdir: where the part files are written.
    :param verify: verifies a zip into a part file (the loop's own function).
    :param stop: set when the export is stopped (``on_kill``): waiting for a batch verified ahead ends.
    """

    def __init__(self, prefetcher: Prefetcher, workdir: str, verify: Verify, stop: threading.Event) -> None:
        self.prefetcher = prefetcher
        self.workdir = workdir
        self.verify = verify
        self.stop = stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loyalty-verify-ahead")
        self._ahead: dict[str, tuple[frozenset[str], str, Future[PartStats | None]]] = {}

    def start(self, task: PendingTask, skip_ids: frozenset[str]) -> None:
        """Verify ``task``'s batch once it is fetched, leaving out ``skip_ids`` (once per task)."""
        fetching = self.prefetcher.future(task)
        if fetching is None or task.task_id in self._ahead:
            return
        digest = hashlib.blake2b(task.task_id.encode(), digest_size=8).hexdigest()
        part_file = os.path.join(self.workdir, f"ahead-{digest}.part")
        future = self._pool.submit(self._verify_when_fetched, fetching, skip_ids, part_file)
        self._ahead[task.task_id] = (skip_ids, part_file, future)

    def take(self, task: PendingTask, skip_ids: frozenset[str]) -> tuple[PartStats, str] | None:
        """``task``'s batch verified ahead with these ``skip_ids``: its stats and part file; ``None``
        when it was not (then the loop verifies it itself). Re-raises the verification's error."""
        entry = self._ahead.pop(task.task_id, None)
        if entry is None:
            return None
        skipped, part_file, future = entry
        if skipped != skip_ids:
            _remove(part_file)
            return None
        while True:
            try:
                stats = future.result(timeout=0.5)
                break
            except CancelledError:
                return None
            except FutureTimeout:
                if self.stop.is_set():
                    raise LoyaltyExportStopped(f"stopped while verifying export task {task.task_id}") from None
        return None if stats is None else (stats, part_file)

    def discard(self) -> None:
        """Forget batches verified ahead, and their part files (a batch is created again)."""
        for _, part_file, _ in self._ahead.values():
            _remove(part_file)  # one still being written is freed when its writer closes it
        self._ahead.clear()

    def close(self) -> None:
        """Stop the background thread: once its verification ends, or at once when the export was
        stopped (a verification still running then writes into a removed work directory)."""
        self._pool.shutdown(wait=not self.stop.is_set(), cancel_futures=True)
        self.discard()

    def _verify_when_fetched(
        self, fetching: Future[FetchedBatch], skip_ids: frozenset[str], part_file: str
    ) -> PartStats | None:
        """The batch's part, once its zip is on disk; ``None`` when there is nothing to verify
        ahead (the fetch failed, the task failed, an empty batch): the loop handles it in order."""
        try:
            fetched = fetching.result()
        except (CancelledError, Exception):  # the loop meets the same error when it takes the batch
            return None
        if fetched.archive is None or fetched.status.state is not ExportTaskState.COMPLETED:
            return None
        try:
            expected_rows = fetched.status.completed_result().total
        except LoyaltyError:
            return None
        return self.verify(fetched.archive, expected_rows, skip_ids, part_file)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
