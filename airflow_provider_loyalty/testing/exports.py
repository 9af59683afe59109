"""Export tasks: what one ``transactions_export`` request created, and the store that holds them.

A task is planned when it is created (its rows, ``next_from_id``, file name and layout are fixed
then), runs for ``task_duration`` seconds (and, with pre-built files, until its zip is on disk),
then reports ``completed`` with its result until its file expires.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from airflow_provider_loyalty.testing.archive import ArchiveSpec, BatchRows
from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.data import TransactionStream, format_rfc3339

__all__ = ["ExportTask", "ExportTaskStore", "hashed_file_name", "period_key", "plan_batch"]

_NAME_SEPARATORS = {"seed": " ", "colon": ":", "plain": "-", "encoded": " "}


def period_key(date_from: float, date_to: float) -> str:
    """Return ``"<date_from>/<date_to>"`` in UTC RFC3339, the key of ``export_tasks_by_period``.

    :param date_from: POSIX seconds.
    :param date_to: POSIX seconds.
    """
    return f"{format_rfc3339(date_from)}/{format_rfc3339(date_to)}"


def plan_batch(
    stream: TransactionStream, config: EmulatorConfig, date_from: float, date_to: float, from_id: str | None
) -> tuple[int, int, str]:
    """Choose the rows of one export task and its ``next_from_id`` (per ``cursor_mode``).

    :param stream: the program's dataset.
    :param config: the emulator's configuration (``batch_size``, ``cursor_mode``).
    :param date_from: period start, POSIX seconds, inclusive.
    :param date_to: period end, POSIX seconds, inclusive.
    :param from_id: the cursor, if any.
    :return: ``(lo, hi, next_from_id)``: rows ``lo..hi-1``; ``next_from_id`` ``""`` on the last batch.
    """
    lo, hi = stream.index_range(date_from, date_to)
    mode = config.cursor_mode
    start = lo if from_id is None else stream.first_index_after(from_id, lo, hi, inclusive=mode != "exclusive")
    end = min(start + config.batch_size, hi)
    next_from_id = ""
    if end < hi:
        next_from_id = stream.transaction_id(end if mode == "next_row" else end - 1)
    return start, end, next_from_id


def hashed_file_name(config: EmulatorConfig, task_id: str, currency_iid: int, date_from: str, date_to: str) -> str:
    """Return a task's ``hashed_file``: ``<96 url-safe characters>/<stem>.zip``.

    :param config: the emulator's configuration (``seed``, ``hashed_file_style``, program id).
    :param task_id: the task id (hashed into the first segment).
    :param currency_iid: the currency's internal id.
    :param date_from: ``date_from`` as sent.
    :param date_to: ``date_to`` as sent.
    """
    digest = hashlib.shake_256(f"{config.seed}:{task_id}".encode()).digest(72)
    sep = _NAME_SEPARATORS[config.hashed_file_style]
    stem = (
        f"Transactions_loyalty_{config.loyalty_program_id}_{currency_iid}_"
        f"{date_from.replace(':', sep)}_{date_to.replace(':', sep)}"
    )
    return f"{base64.urlsafe_b64encode(digest).decode()}/{stem}.zip"


@dataclass
class ExportTask:
    """One export task.

    :param task_id: ``task_<uuid>``.
    :param created: ``time.monotonic()`` at creation.
    :param duration: seconds it runs.
    :param loyalty_program_id: echoed as ``loyalty_id``.
    :param points_currency_iid: echoed in the result.
    :param period: :func:`period_key` of the requested period.
    :param from_id: the cursor it was created from.
    :param batch: its rows.
    :param next_from_id: the next cursor (``""`` on the last batch).
    :param hashed_file: its file name.
    :param spec: its zip layout.
    :param never_finishes: stays ``in_progress`` forever.
    :param failure: ``(status, text)`` once it failed.
    :param expired: its file is gone.
    :param prebuilt: the build of its zip on disk (pre-built files only).
    :param encoded_name: its status reports ``hashed_file`` percent-encoded (``hashed_file_style``
        ``encoded`` when it was created).
    """

    task_id: str
    created: float
    duration: float
    loyalty_program_id: int
    points_currency_iid: int
    period: str
    from_id: str | None
    batch: BatchRows
    next_from_id: str
    hashed_file: str
    spec: ArchiveSpec
    never_finishes: bool = False
    failure: tuple[str, str] | None = None
    expired: bool = False
    prebuilt: Future[Any] | None = None
    encoded_name: bool = False

    @property
    def total(self) -> int:
        """Rows in the batch."""
        return self.batch.total

    @property
    def batch_key(self) -> tuple[str, str]:
        """What identifies the batch across tasks: the period and the cursor."""
        return self.period, self.from_id or ""

    def completed_at(self) -> float:
        """``time.monotonic()`` when it completes (or completed)."""
        return self.created + self.duration

    def completed(self, now: float) -> bool:
        """Whether it has completed by ``now``.

        :param now: ``time.monotonic()``.
        """
        if self.never_finishes or self.failure is not None or now < self.completed_at():
            return False
        return self.prebuilt is None or self.prebuilt.done()

    def progress(self, now: float, style: str) -> float | int:
        """``progress`` at ``now``: 100 when completed, else 0..99 (one decimal with ``decimal``).

        :param now: ``time.monotonic()``.
        :param style: ``int`` or ``decimal``.
        """
        if self.completed(now):
            value = 100.0
        elif self.duration <= 0:
            value = 99.0
        else:
            value = max(0.0, min(99.0, 99 * (now - self.created) / self.duration))
        return round(value, 1) if style == "decimal" else int(value)

    def result(self, config: EmulatorConfig) -> dict[str, Any]:
        """The ``result`` object of its completed status, shaped by ``config``.

        :param config: the emulator's configuration (``hashed_file_override``).
        """
        hashed_file = config.hashed_file_override if config.hashed_file_override is not None else self.hashed_file
        if self.encoded_name and config.hashed_file_override is None:
            hashed_file = quote(hashed_file, safe="/")  # as in the download link; served under the plain name
        result: dict[str, Any] = {"hashed_file": hashed_file}
        if self.total == 0 and self.spec.empty_style == "empty_hashed_file":
            result["hashed_file"] = ""
        elif self.total == 0 and self.spec.empty_style == "missing_hashed_file":
            del result["hashed_file"]
        result.update(
            is_api=True,
            loyalty_id=self.loyalty_program_id,
            next_from_id=self.next_from_id,
            points_currency_iid=self.points_currency_iid,
            total=self.total,
        )
        return result

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (for tests and the control API)."""
        return {
            "task_id": self.task_id,
            "period": self.period,
            "from_id": self.from_id,
            "total": self.total,
            "next_from_id": self.next_from_id,
            "hashed_file": self.hashed_file,
            "expired": self.expired,
            "failed": self.failure is not None,
        }


class ExportTaskStore:
    """Thread-safe export tasks by id and by file name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, ExportTask] = {}
        self._files: dict[str, str] = {}

    def add(self, task: ExportTask) -> None:
        """Store a new task.

        :param task: the task.
        """
        with self._lock:
            self._tasks[task.task_id] = task
            self._files[task.hashed_file] = task.task_id

    def get(self, task_id: str) -> ExportTask | None:
        """Return the task with this id, if any.

        :param task_id: the id.
        """
        with self._lock:
            return self._tasks.get(task_id)

    def by_file(self, hashed_file: str) -> ExportTask | None:
        """Return the task whose file this is, if any.

        :param hashed_file: the file name (decoded).
        """
        with self._lock:
            task_id = self._files.get(hashed_file)
            return self._tasks.get(task_id) if task_id else None

    def all(self) -> list[ExportTask]:
        """Return every task, oldest first."""
        with self._lock:
            return list(self._tasks.values())

    def clear(self) -> list[ExportTask]:
        """Forget every task; return them."""
        with self._lock:
            tasks = list(self._tasks.values())
            self._tasks.clear()
            self._files.clear()
            return tasks

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)
