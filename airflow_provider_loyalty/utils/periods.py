"""Export periods: what the ends of ``date_from`` .. ``date_to`` mean, and how the API reads them.

The API takes RFC3339 UTC instants to the second, both ends inclusive. Users give datetimes, dates,
or text (``"2023-09-30"``, what ``{{ ds }}`` renders, or an RFC3339 date-time). The rules:

* A date-only value means whole days: as ``date_from`` its first second, as ``date_to`` its last
  second, in Airflow's ``[core] default_timezone`` (so a day of 23 or 25 hours stays whole).
* A value without an offset (naive datetime or text) is a wall-clock time in that timezone. A
  wall-clock time that happens twice (the hour repeated when DST ends) is read so that the period
  is widest (a start at its first occurrence, an end at its second); one that never happens (the
  hour skipped when DST starts) is the first instant after the skip for a start and the last
  instant before it for an end.
* A value with an offset keeps it.
* Fractions of a second are dropped (the API counts whole seconds, and an operator's default end,
  ``data_interval_end`` - 1 s, then meets the next run's start exactly).
* A leap second (``2016-12-31T23:59:60Z``, which RFC3339 allows) is read as the second before it:
  POSIX clocks, which count the API's whole seconds, repeat that second rather than add one.

Only for internal usage.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pendulum

from airflow_provider_loyalty.exceptions import LoyaltyValidationError

_UTC = dt.UTC
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?")
#: ISO 8601's basic format, as ``{{ ts_nodash }}`` / ``{{ ts_nodash_with_tz }}`` render it.
_BASIC_DATE_TIME = re.compile(r"\d{8}T\d{4}(\d{2}([.,]\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?")
_EXPECTED = "expected a datetime, a date, or text such as '2023-09-30' or '2023-09-30T23:59:59Z'"


def default_timezone() -> dt.tzinfo:
    """Airflow's ``[core] default_timezone`` (UTC when unset), read at each call as Airflow reads it:
    exactly ``system`` is the machine's zone, and a value Airflow cannot read (``System``, a name
    with a trailing blank) is UTC there, so it is here too."""
    from airflow.providers.common.compat.sdk import conf

    name = str(conf.get("core", "default_timezone", fallback="utc") or "utc")
    if name == "system":
        local: dt.tzinfo = pendulum.local_timezone()  # type: ignore[operator]
        return local
    try:
        zone: dt.tzinfo = pendulum.timezone(name)  # type: ignore[operator]
    except Exception:  # an invalid name is Airflow's own config error; read naive values as UTC then
        zone = _UTC
    return zone


def parse_period_value(value: Any, parameter: str) -> dt.date | dt.datetime:
    """A date-only value as a :class:`~datetime.date`, anything with a time as a datetime.

    Text is accepted in the RFC3339 / ISO 8601 shapes only (``2023-09-30``, ``20230930`` as
    ``{{ ds_nodash }}`` renders, ``20230930T235959`` as ``{{ ts_nodash }}`` renders (with an offset
    as ``{{ ts_nodash_with_tz }}``), ``2023-09-30T23:59:59Z``, with a space for the ``T``, an optional
    fraction (after ``.`` or ``,``), an optional offset, and ``:60`` for a leap second); words
    such as ``now`` and partial dates such as ``2023-09`` are refused rather than guessed.

    :param value: what the user gave (rendered).
    :param parameter: the parameter's name, for errors.
    """
    if isinstance(value, dt.date):  # datetimes too
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 10_000_000 <= value <= 99_999_999:
        value = str(value)  # {{ ds_nodash }} as a native template renders it: 20230930
    if isinstance(value, str):
        text = value.strip().upper()
        try:
            if _DATE_ONLY.fullmatch(text):
                return dt.date.fromisoformat(text)
            if _DATE_TIME.fullmatch(text):
                if text[16:19] == ":60":  # a leap second: the second before it (see the module doc)
                    text = f"{text[:17]}59{text[19:]}"
                return dt.datetime.fromisoformat(text)
            if _BASIC_DATE_TIME.fullmatch(text):
                if text[13:15] == "60":  # 20161231T235960Z: the leap second, as above
                    text = f"{text[:13]}59{text[15:]}"
                return dt.datetime.fromisoformat(text)
        except ValueError as error:
            raise LoyaltyValidationError(parameter, f"{_EXPECTED}; got {value[:80]!r} ({error})") from None
    shown = repr(value[:80]) if isinstance(value, str) else f"{type(value).__name__} {str(value)[:80]!r}"
    raise LoyaltyValidationError(parameter, f"{_EXPECTED}; got {shown}")


def _readings(wall: dt.datetime, zone: dt.tzinfo) -> list[dt.datetime]:
    """The UTC instants at which the clocks of ``zone`` show ``wall`` (none, one or two)."""
    candidates = {wall.replace(tzinfo=zone, fold=fold).astimezone(_UTC) for fold in (0, 1)}
    return sorted(moment for moment in candidates if moment.astimezone(zone).replace(tzinfo=None) == wall)


def _skip_instant(wall: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """The instant the clocks jumped over ``wall`` (a wall time that does not exist in ``zone``).

    The two fold readings of ``wall`` bracket the jump; the offset changes exactly once between
    them, found by bisection to the microsecond.
    """
    low, high = sorted(wall.replace(tzinfo=zone, fold=fold).astimezone(_UTC) for fold in (0, 1))
    before = low.astimezone(zone).utcoffset()
    while high - low > dt.timedelta(microseconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


def _in_zone(wall: dt.datetime, zone: dt.tzinfo, *, end: bool) -> dt.datetime:
    """A wall-clock time of ``zone`` as a UTC instant, read so the period is widest."""
    # A plain datetime: pendulum's arithmetic on a naive DateTime (``pendulum.naive``, a rendered
    # ``.naive()``) gives naive results again, which cannot meet the aware instants bisected here.
    wall = dt.datetime(*wall.timetuple()[:6], wall.microsecond, fold=wall.fold)
    readings = _readings(wall, zone)
    if readings:
        return readings[-1] if end else readings[0]
    jump = _skip_instant(wall, zone)
    return jump - dt.timedelta(seconds=1) if end else jump


def period_bound(value: Any, parameter: str, *, end: bool) -> dt.datetime:
    """One end of an export period as an aware UTC datetime, to the second (see the module doc).

    :param value: what the user gave (rendered): a datetime, a date, or text.
    :param parameter: the parameter's name, for errors.
    :param end: whether this is the period's end (``date_to``).
    """
    parsed = parse_period_value(value, parameter)
    try:
        if not isinstance(parsed, dt.datetime):
            wall = dt.datetime.combine(parsed, dt.time(23, 59, 59) if end else dt.time(0, 0, 0))
            moment = _in_zone(wall, default_timezone(), end=end)
        elif parsed.tzinfo is None or parsed.utcoffset() is None:
            moment = _in_zone(parsed.replace(tzinfo=None), default_timezone(), end=end)
        else:
            moment = parsed.astimezone(_UTC)
    except (OverflowError, ValueError):
        raise LoyaltyValidationError(
            parameter, f"{value!s:.80} is outside the years 1..9999 once read in UTC"
        ) from None
    return moment.replace(microsecond=0)


def _wall_clock(value: dt.date | dt.datetime) -> dt.datetime | None:
    """A naive value as the wall-clock time it names (``None`` for an aware one: no gap applies)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is None or value.utcoffset() is None else None
    return dt.datetime.combine(value, dt.time(0, 0, 0))


def format_rfc3339(value: dt.datetime) -> str:
    """The API's RFC3339 UTC form to the second, ``2023-09-01T00:00:00Z`` (4-digit years always)."""
    utc = value.astimezone(_UTC) if value.tzinfo is not None else value
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"


def check_period(date_from: Any, date_to: Any) -> tuple[str, str]:
    """Both ends parse and ``date_from <= date_to``; return them in the API's format.

    :param date_from: the period's start (inclusive).
    :param date_to: the period's end (inclusive).
    """
    start = period_bound(date_from, "date_from", end=False)
    finish = period_bound(date_to, "date_to", end=True)
    if start > finish:
        first = _wall_clock(parse_period_value(date_from, "date_from"))
        last = _wall_clock(parse_period_value(date_to, "date_to"))
        if first is not None and last is not None and first <= last:  # in order as given: a skipped hour
            raise LoyaltyValidationError(
                "date_from",
                f"the period {date_from!s:.40} .. {date_to!s:.40} lies in the hour skipped when daylight "
                f"saving time starts in [core] default_timezone ({default_timezone()}): it holds no instant",
            )
        raise LoyaltyValidationError(
            "date_from", f"must not be after date_to ({format_rfc3339(start)} > {format_rfc3339(finish)})"
        )
    return format_rfc3339(start), format_rfc3339(finish)


def unfinished_period_warning(date_to: str, now: dt.datetime | None = None) -> str | None:
    """A warning when the period has not ended yet (``date_to``, in the API's format, is after now):
    the export then holds only the transactions made so far, under a manifest naming the whole period.

    :param date_to: the period's inclusive end, as :func:`check_period` returns it.
    :param now: the current time (aware); the clock's when not given.
    """
    moment = now or dt.datetime.now(_UTC)
    end = dt.datetime.strptime(date_to, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_UTC)
    if end <= moment:
        return None
    return (
        f"date_to {date_to} is after now ({format_rfc3339(moment)}): the period has not ended, so this export "
        "holds only the transactions made so far while its manifest names the whole period. Run it again "
        "after the period ends (replace=True) for the complete export, or leave date_to unset so it is the "
        "end of the run's data interval."
    )
