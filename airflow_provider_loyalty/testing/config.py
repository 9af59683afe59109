"""Configuration of the loyalty API emulator (:class:`EmulatorConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_loyalty.testing.data import parse_rfc3339

__all__ = ["CURSOR_MODES", "HASHED_FILE_STYLES", "EmulatorConfig"]

#: ``exclusive``: next_from_id = last row of the batch, next export returns ids > from_id.
#: ``inclusive``: next_from_id = last row of the batch, next export returns ids >= from_id (the
#: boundary row repeats, so ``batch_size`` must be >= 2 for an export loop to make progress).
#: ``next_row``: next_from_id = first row of the next batch, export returns ids >= from_id.
CURSOR_MODES: tuple[str, ...] = ("exclusive", "inclusive", "next_row")
#: ``seed``: ':' in the dates becomes ' ' (as in the seed); ``colon``: ':' kept; ``plain``: '-'.
HASHED_FILE_STYLES: tuple[str, ...] = ("seed", "colon", "plain")


def _default_member_sizes() -> list[int]:
    return [250, 3, 0, 42, 1]


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told. Mutable: tests may change fields of a running emulator.

    Data-shaping fields (``seed``, ``transactions``, ``period_*``, ``row_padding``) and task fields
    (``batch_size``, ``cursor_mode``, ``task_duration``, ``hashed_file_style``,
    ``zip_compresslevel``) are captured per export task when it is created.

    :param token: the API token expected as ``Authorization: Bearer <token>``.
    :param loyalty_program_id: the only valid ``loyalty_program_id``.
    :param points_currency_eid: the only valid ``points_currency_eid``.
    :param points_currency_iid: the only valid ``points_currency_iid`` (also echoed in results).
    :param transactions: number of transactions of the program in the period.
    :param seed: seed of the synthetic data, task file names and fault probabilities.
    :param period_start: RFC3339 ``created_at`` of the first transaction.
    :param period_end: RFC3339 ``created_at`` of the last transaction.
    :param row_padding: filler characters appended to each description (benchmarks).
    :param batch_size: rows per export task (file).
    :param cursor_mode: one of :data:`CURSOR_MODES`.
    :param task_duration: seconds an export task stays ``in_progress``.
    :param hashed_file_style: one of :data:`HASHED_FILE_STYLES`.
    :param hashed_file_override: if set, returned as ``hashed_file`` instead of the real name.
    :param zip_compresslevel: deflate level (0..9) of export zips.
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
    row_padding: int = 0
    batch_size: int = 1000
    cursor_mode: str = "exclusive"
    task_duration: float = 0.3
    hashed_file_style: str = "seed"
    hashed_file_override: str | None = None
    zip_compresslevel: int = 6
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
            value = getattr(self, f.name)
            expected = _FIELD_TYPES[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if f.name == "hashed_file_override" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ValueError(f"EmulatorConfig.{f.name}: expected {expected.__name__}, got {value!r}")
        if self.transactions < 0:
            raise ValueError("EmulatorConfig.transactions: must be >= 0")
        if self.batch_size < 1:
            raise ValueError("EmulatorConfig.batch_size: must be >= 1")
        if self.cursor_mode not in CURSOR_MODES:
            raise ValueError(f"EmulatorConfig.cursor_mode: expected one of {CURSOR_MODES}, got {self.cursor_mode!r}")
        if self.hashed_file_style not in HASHED_FILE_STYLES:
            raise ValueError(
                f"EmulatorConfig.hashed_file_style: expected one of {HASHED_FILE_STYLES}, "
                f"got {self.hashed_file_style!r}"
            )
        if self.task_duration < 0:
            raise ValueError("EmulatorConfig.task_duration: must be >= 0")
        if not 0 <= self.zip_compresslevel <= 9:
            raise ValueError("EmulatorConfig.zip_compresslevel: must be within 0..9")
        if self.row_padding < 0:
            raise ValueError("EmulatorConfig.row_padding: must be >= 0")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in self.member_history_sizes):
            raise ValueError("EmulatorConfig.member_history_sizes: expected a list of ints >= 0")
        if parse_rfc3339(self.period_end) < parse_rfc3339(self.period_start):
            raise ValueError("EmulatorConfig.period_end: must not be before period_start")

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
    "row_padding": int,
    "batch_size": int,
    "cursor_mode": str,
    "task_duration": float,
    "hashed_file_style": str,
    "hashed_file_override": str,
    "zip_compresslevel": int,
    "member_history_sizes": list,
    "request_log_limit": int,
    "max_body_bytes": int,
}
