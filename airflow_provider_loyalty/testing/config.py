"""Configuration of the loyalty API emulator (:class:`EmulatorConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_loyalty.testing.data import parse_rfc3339, parse_timeline

__all__ = [
    "CSV_LINE_ENDINGS",
    "CSV_STYLES",
    "CURSOR_MODES",
    "EMPTY_EXPORT_STYLES",
    "EXPIRED_FILE_STATUSES",
    "HASHED_FILE_STYLES",
    "PROGRESS_STYLES",
    "ZIP_MEMBER_ORDERS",
    "EmulatorConfig",
]

#: ``exclusive``: next_from_id = last row of the batch, next export returns ids > from_id.
#: ``inclusive``: next_from_id = last row of the batch, next export returns ids >= from_id (the
#: boundary row repeats, so ``batch_size`` must be >= 2 for an export loop to make progress).
#: ``next_row``: next_from_id = first row of the next batch, export returns ids >= from_id.
#: Member history pages read ``from_id`` the same way (``inclusive``: ``limit`` >= 2 to progress).
CURSOR_MODES: tuple[str, ...] = ("exclusive", "inclusive", "next_row")
#: ``seed``: ':' in the dates becomes ' ' (as in the API documentation's example); ``colon``: ':'
#: kept; ``plain``: '-'; ``encoded``: as ``seed``, but the status reply sends the name
#: percent-encoded, as it appears in the download link (``T00%2000%2000Z``).
HASHED_FILE_STYLES: tuple[str, ...] = ("seed", "colon", "plain", "encoded")
#: ``standard``: ``csv.QUOTE_MINIMAL``. ``stray_quotes``: also some unquoted fields with a ``"``
#: inside (``prod_12 5" screen``), which ``csv.reader`` (excel dialect) still reads as one field.
#: ``rfc3339_shapes``: the time columns cycle through the other shapes RFC3339 allows (lower case,
#: a space for ``T``, an offset, fractions after ``.`` or ``,``, ``:60``; see
#: :func:`~airflow_provider_loyalty.testing.archive.rfc3339_shape`). ``reversed_columns``: the
#: columns in the reverse order (header and rows alike), as an API that changed its CSV would.
CSV_STYLES: tuple[str, ...] = ("standard", "stray_quotes", "rfc3339_shapes", "reversed_columns")
#: ``crlf``: lines end with ``\r\n`` (RFC 4180); ``lf``: with ``\n``.
CSV_LINE_ENDINGS: tuple[str, ...] = ("crlf", "lf")
#: How a zip of several CSV members lists them: in name (and row) order, or the other way round
#: (nothing in the API's documentation fixes the order of a zip's directory).
ZIP_MEMBER_ORDERS: tuple[str, ...] = ("name", "reversed")
#: How an export task with ``total`` 0 says "nothing": ``header_only`` (a zip whose CSV holds the
#: header row), ``zero_byte_csv`` (a zip with an empty CSV member), ``no_member`` (a zip with no
#: member), ``empty_hashed_file`` (``hashed_file`` is ``""``), ``missing_hashed_file`` (no
#: ``hashed_file`` key in the result), ``zero_byte_file`` (a ``hashed_file`` whose download is
#: empty, no zip at all), ``file_not_found`` (a ``hashed_file`` whose download answers 1005, not
#: found).
EMPTY_EXPORT_STYLES: tuple[str, ...] = (
    "header_only",
    "zero_byte_csv",
    "no_member",
    "empty_hashed_file",
    "missing_hashed_file",
    "zero_byte_file",
    "file_not_found",
)
#: ``int``: ``progress`` is an integer 0..100; ``decimal``: a number with one decimal (``42.5``).
PROGRESS_STYLES: tuple[str, ...] = ("int", "decimal")
#: HTTP statuses an expired file's download may answer with (always with the error envelope,
#: ``error`` 1008 ``File expired``); 200 is what some real APIs do.
EXPIRED_FILE_STATUSES: tuple[int, ...] = (404, 410, 200)


def _default_member_sizes() -> list[int]:
    return [250, 3, 0, 42, 1]


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told. Mutable: tests may change fields of a running emulator.

    Data-shaping fields (``seed``, ``transactions``, ``period_*``, ``created_at_timeline``,
    ``row_padding``) and the file fields (``batch_size``, ``cursor_mode``, ``task_duration``,
    ``hashed_file_style``, ``zip_compresslevel``, ``zip_members``, ``csv_*``,
    ``empty_export_style``, ``prebuilt_files``) are captured per export task when it is created;
    the others (``progress_style``, ``file_ttl``, ``expired_file_status``,
    ``max_concurrent_requests``, ...) apply to the next request.

    :param token: the API token expected as ``Authorization: Bearer <token>``.
    :param loyalty_program_id: the only valid ``loyalty_program_id``.
    :param points_currency_eid: the only valid ``points_currency_eid``.
    :param points_currency_iid: the only valid ``points_currency_iid`` (also echoed in results).
    :param transactions: number of transactions of the program in the period.
    :param seed: seed of the synthetic data, task file names and fault probabilities.
    :param period_start: RFC3339 ``created_at`` of the first transaction.
    :param period_end: RFC3339 ``created_at`` of the last transaction.
    :param created_at_timeline: if set, the explicit RFC3339 ``created_at`` of each transaction
        (whole seconds, non-decreasing, exactly ``transactions`` entries); ``period_start`` /
        ``period_end`` then only shape member histories. Exports return exactly the transactions
        whose ``created_at`` lies within ``[date_from, date_to]``, both ends inclusive.
    :param row_padding: filler characters appended to each description (benchmarks).
    :param batch_size: rows per export task (file).
    :param cursor_mode: one of :data:`CURSOR_MODES`.
    :param task_duration: seconds an export task stays ``in_progress``.
    :param status_lag: seconds after its creation during which ``tasks/status`` does not know a
        new export task yet (error 1003, as a platform whose reads lag its writes answers).
    :param progress_style: one of :data:`PROGRESS_STYLES`.
    :param hashed_file_style: one of :data:`HASHED_FILE_STYLES`.
    :param hashed_file_override: if set, returned as ``hashed_file`` instead of the real name.
    :param zip_compresslevel: deflate level (0..9) of export zips.
    :param zip_members: CSV members per zip; a batch's rows are split evenly over them and each
        starts with the header row.
    :param zip_member_order: one of :data:`ZIP_MEMBER_ORDERS`: how the zip's directory lists them.
    :param csv_style: one of :data:`CSV_STYLES`.
    :param csv_bom: start each CSV member with a UTF-8 byte order mark.
    :param csv_line_ending: one of :data:`CSV_LINE_ENDINGS`.
    :param empty_export_style: one of :data:`EMPTY_EXPORT_STYLES` (export tasks with ``total`` 0).
    :param file_ttl: seconds after a task completes before its file is gone (``None``: never).
    :param expired_file_status: one of :data:`EXPIRED_FILE_STATUSES`, the HTTP status of a
        download of an expired file.
    :param max_concurrent_requests: above this many API requests in flight at once, answer 429
        with ``Retry-After`` (``None``: no limit).
    :param concurrency_retry_after: the ``Retry-After`` seconds of those 429 answers.
    :param prebuilt_files: build each task's zip once, on disk, while the task runs, and serve it
        from disk with ``Content-Length`` (deleted on reset and stop); a later task of the same
        batch is served the file already built.
    :param member_history_sizes: transactions per member; member ``k`` exists for each entry.
    :param request_log_limit: request log entries kept (oldest dropped).
    :param max_body_bytes: largest accepted request body.
    """

    token: str = "test-token"  # noqa: S105 - the well-known token of a test server
    loyalty_program_id: int = 123
    points_currency_eid: str = "bonus_points"
    points_currency_iid: int = 1
    transactions: int = 10_000
    seed: int = 0
    period_start: str = "2023-09-01T00:00:00Z"
    period_end: str = "2023-09-30T23:59:59Z"
    created_at_timeline: list[str] | None = None
    row_padding: int = 0
    batch_size: int = 1000
    cursor_mode: str = "exclusive"
    task_duration: float = 0.3
    status_lag: float = 0.0
    progress_style: str = "int"
    hashed_file_style: str = "seed"
    hashed_file_override: str | None = None
    zip_compresslevel: int = 6
    zip_members: int = 1
    zip_member_order: str = "name"
    csv_style: str = "standard"
    csv_bom: bool = False
    csv_line_ending: str = "crlf"
    empty_export_style: str = "header_only"
    file_ttl: float | None = None
    expired_file_status: int = 404
    max_concurrent_requests: int | None = None
    concurrency_retry_after: float = 1.0
    prebuilt_files: bool = False
    member_history_sizes: list[int] = field(default_factory=_default_member_sizes)
    request_log_limit: int = 10_000
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range.

        :raises ValueError: naming the first invalid field.
        """
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        _check_choice("cursor_mode", self.cursor_mode, CURSOR_MODES)
        _check_choice("hashed_file_style", self.hashed_file_style, HASHED_FILE_STYLES)
        _check_choice("csv_style", self.csv_style, CSV_STYLES)
        _check_choice("csv_line_ending", self.csv_line_ending, CSV_LINE_ENDINGS)
        _check_choice("zip_member_order", self.zip_member_order, ZIP_MEMBER_ORDERS)
        _check_choice("empty_export_style", self.empty_export_style, EMPTY_EXPORT_STYLES)
        _check_choice("progress_style", self.progress_style, PROGRESS_STYLES)
        _check_choice("expired_file_status", self.expired_file_status, EXPIRED_FILE_STATUSES)
        _check_minimum("transactions", self.transactions, 0)
        _check_minimum("batch_size", self.batch_size, 1)
        _check_minimum("task_duration", self.task_duration, 0)
        _check_minimum("status_lag", self.status_lag, 0)
        _check_minimum("row_padding", self.row_padding, 0)
        _check_minimum("zip_members", self.zip_members, 1)
        _check_minimum("file_ttl", self.file_ttl, 0)
        _check_minimum("max_concurrent_requests", self.max_concurrent_requests, 1)
        _check_minimum("concurrency_retry_after", self.concurrency_retry_after, 0)
        if not 0 <= self.zip_compresslevel <= 9:
            raise ValueError("EmulatorConfig.zip_compresslevel: must be within 0..9")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in self.member_history_sizes):
            raise ValueError("EmulatorConfig.member_history_sizes: expected a list of ints >= 0")
        if parse_rfc3339(self.period_end) < parse_rfc3339(self.period_start):
            raise ValueError("EmulatorConfig.period_end: must not be before period_start")
        self._validate_timeline()

    def _validate_timeline(self) -> None:
        if self.created_at_timeline is None:
            return
        try:
            parse_timeline(self.created_at_timeline)
        except ValueError as exc:
            raise ValueError(f"EmulatorConfig.created_at_timeline: {exc}") from None
        if len(self.created_at_timeline) != self.transactions:
            raise ValueError(
                f"EmulatorConfig.created_at_timeline: has {len(self.created_at_timeline)} entries but "
                f"transactions is {self.transactions}; give one created_at per transaction"
            )

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` atomically (all or nothing).

        :param changes: field name to new value.
        :raises ValueError: on unknown fields or invalid values (the config is left unchanged).
        """
        unknown = set(changes) - set(_FIELD_TYPES)
        if unknown:
            raise ValueError(f"EmulatorConfig: unknown fields {sorted(unknown)}")
        candidate = dataclasses.replace(self, **dict(changes))  # runs validate()
        for name in changes:
            setattr(self, name, getattr(candidate, name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmulatorConfig:
        """Build a config from a JSON object (unknown keys are an error).

        :param data: field name to value.
        """
        config = cls()
        config.update(data)
        return config

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields."""
        return dataclasses.asdict(self)


_FIELD_TYPES: dict[str, type] = {
    "token": str,
    "loyalty_program_id": int,
    "points_currency_eid": str,
    "points_currency_iid": int,
    "transactions": int,
    "seed": int,
    "period_start": str,
    "period_end": str,
    "created_at_timeline": list,
    "row_padding": int,
    "batch_size": int,
    "cursor_mode": str,
    "task_duration": float,
    "status_lag": float,
    "progress_style": str,
    "hashed_file_style": str,
    "hashed_file_override": str,
    "zip_compresslevel": int,
    "zip_members": int,
    "zip_member_order": str,
    "csv_style": str,
    "csv_bom": bool,
    "csv_line_ending": str,
    "empty_export_style": str,
    "file_ttl": float,
    "expired_file_status": int,
    "max_concurrent_requests": int,
    "concurrency_retry_after": float,
    "prebuilt_files": bool,
    "member_history_sizes": list,
    "request_log_limit": int,
    "max_body_bytes": int,
}
#: Fields that may also be ``None``.
_OPTIONAL_FIELDS = frozenset({"hashed_file_override", "created_at_timeline", "file_ttl", "max_concurrent_requests"})


def _check_type(name: str, value: Any) -> None:
    expected = _FIELD_TYPES[name]
    if value is None and name in _OPTIONAL_FIELDS:
        return
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"EmulatorConfig.{name}: expected {expected.__name__}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"EmulatorConfig.{name}: expected one of {choices}, got {value!r}")


def _check_minimum(name: str, value: float | None, minimum: float) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"EmulatorConfig.{name}: must be >= {minimum}")
