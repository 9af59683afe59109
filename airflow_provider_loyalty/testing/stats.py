"""Counters, the request log and the in-flight request gate of the emulator (thread-safe)."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

__all__ = ["API_ENDPOINTS", "EmulatorStats"]

#: The API endpoints, always present in ``stats()["requests"]``.
API_ENDPOINTS: tuple[str, ...] = ("export", "status", "download", "account")
#: Plain counters, always present in ``stats()``.
_COUNTERS: tuple[str, ...] = (
    "export_tasks_created",
    "connections",
    "download_bytes",
    "download_csv_bytes",
    "downloads_completed",
    "downloads_gone",
    "prebuilt_files_built",
    "concurrency_rejections",
)


class EmulatorStats:
    """What the emulator saw, updated from handler threads.

    :param request_log_limit: request log entries kept (oldest dropped).
    """

    def __init__(self, request_log_limit: int) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._faults_applied: Counter[str] = Counter()
        self._tasks_by_period: Counter[str] = Counter()
        self._log: deque[dict[str, Any]] = deque(maxlen=max(1, request_log_limit))
        self._in_flight = 0
        self._in_flight_peak = 0

    def clear(self, request_log_limit: int) -> None:
        """Forget everything counted so far (requests in flight stay counted as in flight).

        :param request_log_limit: the new request log size.
        """
        with self._lock:
            for counter in (
                self._counters,
                self._requests,
                self._statuses,
                self._faults_applied,
                self._tasks_by_period,
            ):
                counter.clear()
            self._log = deque(maxlen=max(1, request_log_limit))
            self._in_flight_peak = self._in_flight

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (one of the plain counters of :meth:`snapshot`).

        :param name: counter name, e.g. ``"download_bytes"``.
        :param amount: how much to add.
        """
        with self._lock:
            self._counters[name] += amount

    def count_request(self, endpoint: str) -> None:
        """Count one request to ``endpoint``.

        :param endpoint: ``export``, ``status``, ``download``, ``account``, ``control`` or ``unknown``.
        """
        with self._lock:
            self._requests[endpoint] += 1

    def count_fault(self, kind: str) -> None:
        """Count one applied fault.

        :param kind: the fault kind.
        """
        with self._lock:
            self._faults_applied[kind] += 1

    def count_export_task(self, period: str) -> None:
        """Count one export task created for ``period``.

        :param period: ``"<date_from>/<date_to>"`` in UTC.
        """
        with self._lock:
            self._counters["export_tasks_created"] += 1
            self._tasks_by_period[period] += 1

    def record(self, entry: dict[str, Any], request_log_limit: int | None = None) -> None:
        """Append a request log entry and count its HTTP status.

        :param entry: the entry (``status`` key required).
        :param request_log_limit: entries to keep from now on (the configuration's, which may have
            changed while the emulator runs); ``None`` keeps the current size.
        """
        with self._lock:
            self._statuses[str(entry["status"])] += 1
            limit = max(1, request_log_limit) if request_log_limit is not None else self._log.maxlen
            if limit != self._log.maxlen:
                self._log = deque(self._log, maxlen=limit)  # the newest entries stay
            self._log.append(entry)

    def begin_request(self, limit: int | None) -> bool:
        """Enter an API request; refuse it (return ``False``) when ``limit`` are already in flight.

        A refused request is counted in ``concurrency_rejections`` and must not call
        :meth:`end_request`.

        :param limit: the most requests allowed in flight at once (``None``: no limit).
        """
        with self._lock:
            if limit is not None and self._in_flight >= limit:
                self._counters["concurrency_rejections"] += 1
                return False
            self._in_flight += 1
            self._in_flight_peak = max(self._in_flight_peak, self._in_flight)
            return True

    def end_request(self) -> None:
        """Leave an API request that :meth:`begin_request` admitted."""
        with self._lock:
            self._in_flight -= 1

    def snapshot(self, tasks: int, open_connections: int) -> dict[str, Any]:
        """Return the counters and the request log as a JSON-ready dict.

        :param tasks: export tasks the emulator holds.
        :param open_connections: TCP connections open now.
        """
        with self._lock:
            requests = {name: self._requests.get(name, 0) for name in (*API_ENDPOINTS, "control")}
            requests.update({k: v for k, v in self._requests.items() if k not in requests})
            counters = {name: self._counters[name] for name in _COUNTERS}
            return {
                "requests": requests,
                "requests_total": sum(self._requests.values()),
                "responses_by_status": dict(self._statuses),
                "faults_applied": dict(self._faults_applied),
                **counters,
                "export_tasks_by_period": dict(self._tasks_by_period),
                "open_connections": open_connections,
                "requests_in_flight": self._in_flight,
                "requests_in_flight_peak": self._in_flight_peak,
                "tasks": tasks,
                "request_log": list(self._log),
            }
