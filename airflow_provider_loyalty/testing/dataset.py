"""The datasets an :class:`EmulatorConfig` describes, and the transaction ids a period must export.

:func:`expected_transaction_ids` is the oracle for tests: every id an export of ``[date_from,
date_to]`` (both ends inclusive) must deliver exactly once, in export order. It needs only the
configuration, so a test can use it for an emulator running in another process (or ask that
emulator's ``GET /_emulator/expected_ids``).
"""

from __future__ import annotations

import functools

from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.data import TransactionStream, member_stream, parse_rfc3339, program_stream

__all__ = ["expected_transaction_ids", "member_stream_for", "program_stream_for"]


def program_stream_for(config: EmulatorConfig) -> TransactionStream:
    """Return the program's export dataset as ``config`` describes it now (cached).

    :param config: the emulator's configuration.
    """
    timeline = None if config.created_at_timeline is None else tuple(config.created_at_timeline)
    return _program_stream(
        config.seed, config.transactions, config.period_start, config.period_end, config.row_padding, timeline
    )


def member_stream_for(config: EmulatorConfig, member: int) -> TransactionStream:
    """Return member ``member``'s account history as ``config`` describes it now (cached).

    :param config: the emulator's configuration.
    :param member: 0-based member number (must be below ``len(config.member_history_sizes)``).
    """
    size = config.member_history_sizes[member]
    return _member_stream(config.seed, member, size, config.period_start, config.period_end)


def expected_transaction_ids(
    config: EmulatorConfig, date_from: str | None = None, date_to: str | None = None
) -> list[str]:
    """Return the ids an export of ``[date_from, date_to]`` must deliver, each once, in order.

    :param config: the emulator's configuration.
    :param date_from: RFC3339 period start, inclusive (default: the first transaction).
    :param date_to: RFC3339 period end, inclusive (default: the last transaction).
    :raises ValueError: when a date is not RFC3339 with a timezone.
    """
    stream = program_stream_for(config)
    start = float("-inf") if date_from is None else parse_rfc3339(date_from)
    end = float("inf") if date_to is None else parse_rfc3339(date_to)
    lo, hi = stream.index_range(start, end)
    return [stream.transaction_id(index) for index in range(lo, hi)]


@functools.lru_cache(maxsize=32)
def _program_stream(
    seed: int, transactions: int, start: str, end: str, padding: int, timeline: tuple[str, ...] | None
) -> TransactionStream:
    return program_stream(seed, transactions, start, end, padding, timeline)


@functools.lru_cache(maxsize=256)
def _member_stream(seed: int, member: int, size: int, start: str, end: str) -> TransactionStream:
    return member_stream(seed, member, size, start, end)
