"""What an export task's status reply means, defined once.

``POST /api/v1.1/tasks/status`` answers with a status word, a progress and, once completed, a
``result``. :class:`ExportTaskStatus` turns one reply into: a state (completed / failed / still
running), the validated :class:`ExportResult`, and the API's failure text (token removed). The
hooks build it, and the export loop, the sensor and the trigger only ask it; nobody else branches on
raw status words or re-validates a result.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_loyalty.exceptions import LoyaltyExportTaskFailed, LoyaltyResponseError
from airflow_provider_loyalty.utils.redaction import carries_token, quoted, redact_values
from airflow_provider_loyalty.utils.storable import has_lone_surrogate, storable
from airflow_provider_loyalty.utils.validation import MAX_CURSOR_LENGTH, is_cursor

#: Status words of a finished task: the documented ``completed``, and the synonyms task APIs use
#: for it (a word missing here would make an export wait for a finished task until its deadline).
COMPLETED_WORDS = frozenset({"completed", "complete", "done", "success", "succeeded", "successful", "finished"})
#: Status words of a task that ended without a file.
FAILED_WORDS = frozenset(
    {"failed", "failure", "error", "errored", "canceled", "cancelled", "aborted", "rejected", "expired"}
)
_FAILURE_TEXT_FIELDS = ("error_text", "message", "error", "reason")


#: How long after its creation an export task the status endpoint does not know yet is asked for
#: again (a platform whose status reads lag its writes), before it counts as unknown: its batch is
#: created again by an export, a sensor fails.
NOT_YET_KNOWN_SECONDS = 30.0


class ExportTaskState(enum.Enum):
    """Where an export task stands. Any status word the API may add later counts as running."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @classmethod
    def of(cls, status_word: Any) -> ExportTaskState:
        """The state a status word (any case, surrounding spaces ignored) stands for."""
        word = str(status_word or "").strip().lower()
        if word in COMPLETED_WORDS:
            return cls.COMPLETED
        if word in FAILED_WORDS:
            return cls.FAILED
        return cls.RUNNING

    @property
    def is_terminal(self) -> bool:
        """Whether the task will not change any more."""
        return self is not ExportTaskState.RUNNING


def cursor_text(value: Any, where: str) -> str:
    """A ``next_from_id`` as text: ``""`` for none (absent, null, ``false``, blank), blanks around
    it dropped.

    The API documents it as a string (a UUID); a JSON number (a server paging by integer ids) is
    read as its digits, as the same value in an XML reply is, and ``false`` (PHP's "none") as none.

    :param value: the field as decoded.
    :param where: the reply and field, for the error.
    """
    if value is None or value is False:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise LoyaltyResponseError(f"{where}: expected a string, got {value!r}")
    cursor = value.strip()
    if not is_cursor(cursor):
        raise LoyaltyResponseError(
            f"{where}: expected a transaction id of at most {MAX_CURSOR_LENGTH} characters without control "
            f"characters, got {cursor!r:.80}"
        )
    return cursor


@dataclass(frozen=True)
class ExportResult:
    """The ``result`` of a completed export task, checked.

    :param total: data rows of the batch (the API's ``total``).
    :param hashed_file: the file to download; ``None`` only for an empty batch that has no file.
    :param next_from_id: the cursor of the next batch; ``None`` when the period is exhausted.
    :param raw: the result object as the API sent it (what the sensor returns).
    """

    total: int
    hashed_file: str | None
    next_from_id: str | None
    raw: dict[str, Any]

    @classmethod
    def from_reply(cls, export_task_id: str, result: Any) -> ExportResult:
        """Check a completed task's ``result`` object.

        An empty batch may say "nothing" without a file (``hashed_file`` empty or absent) when its
        ``total`` is 0; with rows it must name one. Blanks around ``hashed_file`` and
        ``next_from_id`` are dropped (an XML template that puts a value on a line of its own, a
        padded ``CHAR`` column): a name or id never starts or ends with one, and a blank
        ``next_from_id`` is an empty one, the end of the period.
        """
        where = f"export task {export_task_id}"
        if not isinstance(result, Mapping):
            raise LoyaltyResponseError(f"{where} completed without a result object (got {type(result).__name__})")
        total = result.get("total")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise LoyaltyResponseError(f"{where}: expected result.total to be an integer >= 0, got {total!r}")
        next_from_id = cursor_text(result.get("next_from_id"), f"{where}: result.next_from_id") or None
        hashed_file = result.get("hashed_file")
        if hashed_file is not None and not isinstance(hashed_file, str):
            raise LoyaltyResponseError(f"{where}: expected result.hashed_file to be a string, got {hashed_file!r}")
        hashed_file = hashed_file.strip() if hashed_file else None
        if hashed_file and len(hashed_file) > MAX_HASHED_FILE_CHARS:
            raise LoyaltyResponseError(
                f"{where}: result.hashed_file is {len(hashed_file)} characters, over {MAX_HASHED_FILE_CHARS}: "
                "no file name of a download link is that long"
            )
        if hashed_file and has_lone_surrogate(hashed_file):
            raise LoyaltyResponseError(
                f"{where}: result.hashed_file {hashed_file!r:.120} holds a lone surrogate (half a character): "
                "no download link can name it"
            )
        if not hashed_file:
            if total:
                raise LoyaltyResponseError(f"{where} completed with {total} rows but without a hashed_file")
            hashed_file = None
        return cls(total=total, hashed_file=hashed_file, next_from_id=next_from_id or None, raw=dict(result))

    def bounded_raw(self) -> tuple[dict[str, Any], list[str]]:
        """The ``result`` as an XCom or a trigger event carries it, and the names of the fields left
        out: whole when its JSON is at most :data:`MAX_RESULT_BYTES`; else the fields the seed
        documents: those a download needs (``hashed_file``, ``next_from_id``, ``total``, bounded
        when checked), and the informational ones of at most :data:`MAX_FIELD_BYTES` each (fields
        the seed does not document, and oversized informational ones, are not worth a database row).
        Text the database cannot store is escaped (:func:`~.storable.storable`).
        """
        if _json_size_at_most(self.raw, MAX_RESULT_BYTES):
            return storable(self.raw), []
        kept = {
            name: value
            for name, value in self.raw.items()
            if name in _NEEDED_RESULT_FIELDS
            or (name in DOCUMENTED_RESULT_FIELDS and _json_size_at_most(value, MAX_FIELD_BYTES))
        }
        return storable(kept), sorted(name for name in self.raw if name not in kept)


def _json_size_at_most(value: Any, limit: int) -> bool:
    """Whether ``value`` as JSON takes at most about ``limit`` bytes (strings counted as their
    UTF-8 bytes and quotes, escapes aside). Stops as soon as it is over: a reply of 25 MiB is not
    serialized to learn that it is large (0.1 s on the triggerer's event loop)."""
    left = limit
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            left -= len(item) + 2 if item.isascii() else len(item.encode("utf-8", "surrogatepass")) + 2
        elif isinstance(item, Mapping):
            left -= 2 + 4 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            left -= 2 + len(item)
            pending.extend(item)
        else:
            left -= len(json.dumps(item, default=str))
        if left < 0:
            return False
    return True


#: The longest ``hashed_file`` taken (it goes into a download URL; servers refuse far shorter ones).
MAX_HASHED_FILE_CHARS = 4096
#: The largest ``result`` an XCom or a trigger's event carries whole (see :meth:`ExportResult.bounded_raw`).
MAX_RESULT_BYTES = 64 * 1024
#: The largest documented field kept of a ``result`` that is over :data:`MAX_RESULT_BYTES`.
MAX_FIELD_BYTES = 16 * 1024
#: The fields seed 000 documents in a completed task's ``result``.
DOCUMENTED_RESULT_FIELDS = ("hashed_file", "is_api", "loyalty_id", "next_from_id", "points_currency_iid", "total")
#: Those of them a download reads (their size is checked by :meth:`ExportResult.from_reply`).
_NEEDED_RESULT_FIELDS = ("hashed_file", "next_from_id", "total")


@dataclass(frozen=True)
class ExportTaskStatus:
    """One status reply of an export task, interpreted.

    :param export_task_id: the task.
    :param status: the API's status word, as sent.
    :param state: what the word means.
    :param progress: the API's progress (percent), if it sent one.
    :param result: the checked result, for a completed task.
    :param failure_text: the API's explanation, for a failed task (token removed).
    """

    export_task_id: str
    status: str
    state: ExportTaskState
    progress: Any = None
    result: ExportResult | None = None
    failure_text: str | None = None

    @classmethod
    def from_reply(
        cls, export_task_id: str, data: Mapping[str, Any], token: str | None, envelope_text: Any = None
    ) -> ExportTaskStatus:
        """Interpret the ``data`` object of a ``tasks/status`` reply.

        :param export_task_id: the task the reply is about.
        :param data: the reply's ``data``.
        :param token: the API token, removed from the failure text.
        :param envelope_text: the reply's own ``error_text``: a failed task's reason when ``data``
            gives none (not the API's words for a successful call).
        """
        status = data.get("status")
        if not isinstance(status, str) or not status.strip():
            raise LoyaltyResponseError(f"tasks/status: expected data.status to be a status word, got {status!r}")
        state = ExportTaskState.of(status)
        completed, failed = state is ExportTaskState.COMPLETED, state is ExportTaskState.FAILED
        result = ExportResult.from_reply(export_task_id, data.get("result")) if completed else None
        secret = (token or "").strip()
        # Any whole form of it: URL-encoded (``%2B`` for a ``+``) it would pass a plain substring test.
        if result is not None and result.hashed_file and carries_token(result.hashed_file, secret):
            raise LoyaltyResponseError(
                f"tasks/status of {export_task_id}: result.hashed_file carries the connection's token; it would go "
                "into the download URL and the task's events, so it is refused"
            )
        if result is not None and secret:
            # What the API sent beside the documented fields goes to events and the sensor's XCom as
            # it came: a token a server echoes there (a download link with ``?token=``) does not.
            result = dataclasses.replace(result, raw=redact_values(result.raw, secret))
        failure = quoted(_failure_text(data, envelope_text), token) if failed else None
        progress = data.get("progress")
        if isinstance(progress, str):
            progress = quoted(progress, token, limit=100)
        # The word and the progress go to logs and events: nothing of the token in them, and no novel.
        return cls(export_task_id, quoted(status, token, limit=100), state, progress, result, failure)

    def raise_for_failure(self) -> None:
        """Raise :class:`LoyaltyExportTaskFailed` with the API's text if the task failed."""
        if self.state is ExportTaskState.FAILED:
            raise LoyaltyExportTaskFailed(self.export_task_id, self.status, self.failure_text or "")

    def completed_result(self) -> ExportResult:
        """The result of a completed task; raises for a failed one, and for one still running."""
        self.raise_for_failure()
        if self.result is None:
            raise LoyaltyResponseError(f"export task {self.export_task_id} is still {self.status!r}, not completed")
        return self.result

    def describe(self) -> str:
        """``in_progress, 54%`` — for log lines."""
        return f"{self.status}, {self.progress if self.progress is not None else '?'}%"


def _failure_text(data: Mapping[str, Any], envelope_text: Any = None) -> str:
    """The API's explanation of a failed task, from whichever field carries it: in ``data``, in its
    ``result``, else the reply's own ``error_text`` unless that only says the call succeeded."""
    for key in _FAILURE_TEXT_FIELDS:
        value = data.get(key)
        if value not in (None, "", 0, "0"):
            return str(value)
    result = data.get("result")
    if isinstance(result, Mapping):
        found = _failure_text(result)
        if found != _NO_REASON:
            return found
    if isinstance(envelope_text, str) and envelope_text.strip() and not _SUCCESS_TEXT.fullmatch(envelope_text.strip()):
        return envelope_text.strip()
    return _NO_REASON


_NO_REASON = "the API gave no reason"
#: What an envelope's ``error_text`` says of a call that worked (the seeds: "Successful operation").
_SUCCESS_TEXT = re.compile(r"(successful( operation)?|success|ok|done|no error)\.?", re.IGNORECASE)
