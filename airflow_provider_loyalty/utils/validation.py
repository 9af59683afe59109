"""Validation of the parameters users give the provider, before any request is sent.

Every function raises :class:`~airflow_provider_loyalty.exceptions.LoyaltyValidationError` naming
the parameter. They are used by the hook (last line of defence), by operators at DAG-parse time
(for literal values) and again at task start (for rendered templates).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pendulum

from airflow_provider_loyalty.exceptions import LoyaltyValidationError

MATCHING_MODES = ("email", "phone", "profile_id", "custom")
LIMIT_RANGE = (1, 100)
CONTENT_TYPES = ("json", "xml")

_TEMPLATE_MARKERS = ("{{", "{%")


def is_template(value: Any) -> bool:
    """Whether ``value`` is a not-yet-rendered Jinja string (checked again at task start)."""
    return isinstance(value, str) and any(marker in value for marker in _TEMPLATE_MARKERS)


def check_program_id(loyalty_program_id: Any) -> int:
    """Return the program id as an int; reject bools, non-integers and values < 1."""
    value = loyalty_program_id
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoyaltyValidationError("loyalty_program_id", f"expected a positive integer, got {loyalty_program_id!r}")
    return value


def check_currency(points_currency_eid: Any, points_currency_iid: Any) -> dict[str, Any]:
    """Exactly one of the two currency ids; return it as the request field it becomes."""
    has_eid = points_currency_eid not in (None, "")
    has_iid = points_currency_iid not in (None, "")
    if has_eid == has_iid:
        which = "both were given" if has_eid else "neither was given"
        raise LoyaltyValidationError("points_currency_eid/points_currency_iid", f"give exactly one of the two; {which}")
    if has_eid:
        if not isinstance(points_currency_eid, str):
            raise LoyaltyValidationError(
                "points_currency_eid", f"expected a string, got {type(points_currency_eid).__name__}"
            )
        return {"points_currency_eid": points_currency_eid}
    iid = points_currency_iid
    if isinstance(iid, str) and iid.strip().isdigit():
        iid = int(iid.strip())
    if isinstance(iid, bool) or not isinstance(iid, int) or iid < 0:
        raise LoyaltyValidationError(
            "points_currency_iid", f"expected a non-negative integer, got {points_currency_iid!r}"
        )
    return {"points_currency_iid": iid}


def to_utc(value: Any, parameter: str) -> pendulum.DateTime:
    """Parse a datetime, pendulum value or RFC3339 / ISO-8601 string into an aware UTC datetime.

    Naive datetimes are taken as UTC (Airflow's convention for data intervals).
    """
    if isinstance(value, dt.datetime):
        parsed = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return pendulum.instance(parsed).in_timezone("UTC")
    if isinstance(value, dt.date):
        return pendulum.datetime(value.year, value.month, value.day, tz="UTC")
    if isinstance(value, str) and value.strip():
        try:
            parsed_any = pendulum.parse(value.strip(), tz="UTC")
        except (ValueError, pendulum.parsing.exceptions.ParserError) as err:
            raise LoyaltyValidationError(parameter, f"expected an RFC3339 date-time, got {value!r}") from err
        if not isinstance(parsed_any, pendulum.DateTime):
            if isinstance(parsed_any, pendulum.Date):
                return pendulum.datetime(parsed_any.year, parsed_any.month, parsed_any.day, tz="UTC")
            raise LoyaltyValidationError(parameter, f"expected an RFC3339 date-time, got {value!r}")
        return parsed_any.in_timezone("UTC")
    raise LoyaltyValidationError(parameter, f"expected a datetime or RFC3339 string, got {value!r}")


def format_rfc3339(value: dt.datetime) -> str:
    """Format as the API's RFC3339 UTC form, to the second: ``2023-09-01T00:00:00Z``."""
    return pendulum.instance(value).in_timezone("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def check_period(date_from: Any, date_to: Any) -> tuple[str, str]:
    """Both ends parse and ``date_from <= date_to``; return them in the API's format."""
    start = to_utc(date_from, "date_from")
    end = to_utc(date_to, "date_to")
    if start > end:
        raise LoyaltyValidationError(
            "date_from", f"must not be after date_to ({format_rfc3339(start)} > {format_rfc3339(end)})"
        )
    return format_rfc3339(start), format_rfc3339(end)


_UUIDISH = re.compile(r"^[0-9A-Za-z-]{1,64}$")


def check_cursor(from_id: Any, parameter: str = "from_id") -> str | None:
    """An optional transaction id used as cursor: a short id-shaped string, or None."""
    if from_id in (None, ""):
        return None
    if not isinstance(from_id, str) or not _UUIDISH.match(from_id):
        raise LoyaltyValidationError(parameter, f"expected a transaction id (UUID string), got {from_id!r}")
    return from_id


def check_limit(limit: Any) -> int:
    """Page size of the account endpoint: an integer in 1..100."""
    low, high = LIMIT_RANGE
    if isinstance(limit, bool) or not isinstance(limit, int) or not low <= limit <= high:
        raise LoyaltyValidationError("limit", f"expected an integer in {low}..{high}, got {limit!r}")
    return limit


def check_matching(
    matching: Any,
    *,
    email: Any = None,
    phone: Any = None,
    profile_id: Any = None,
    field_name: Any = None,
    field_value: Any = None,
) -> dict[str, Any]:
    """How the member is looked up; return the request fields it becomes."""
    if matching not in MATCHING_MODES:
        raise LoyaltyValidationError("matching", f"expected one of {', '.join(MATCHING_MODES)}; got {matching!r}")
    if matching == "custom":
        missing = [
            name for name, val in (("field_name", field_name), ("field_value", field_value)) if val in (None, "")
        ]
        if missing:
            raise LoyaltyValidationError(
                " and ".join(missing), 'required when matching="custom" (both field_name and field_value)'
            )
        if not isinstance(field_name, str):
            raise LoyaltyValidationError("field_name", f"expected a string, got {field_name!r}")
        if isinstance(field_value, bool) or not isinstance(field_value, str | int):
            raise LoyaltyValidationError("field_value", f"expected a string or integer, got {field_value!r}")
        return {"matching": "custom", "field_name": field_name, "field_value": field_value}
    companion = {"email": email, "phone": phone, "profile_id": profile_id}[matching]
    if companion in (None, "") or not isinstance(companion, str):
        raise LoyaltyValidationError(matching, f'required (a string) when matching="{matching}"; got {companion!r}')
    return {"matching": matching, matching: companion}


def check_content_type(content_type: Any) -> str:
    """``json`` or ``xml`` (case-insensitive); also accepts the MIME types."""
    if isinstance(content_type, str):
        normalized = content_type.strip().lower().removeprefix("application/")
        if normalized in CONTENT_TYPES:
            return normalized
    raise LoyaltyValidationError("content_type", f"expected 'json' or 'xml', got {content_type!r}")


def check_positive_number(value: Any, parameter: str, *, allow_zero: bool = False) -> float:
    """A number > 0 (or >= 0): poll intervals, timeouts."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LoyaltyValidationError(parameter, f"expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise LoyaltyValidationError(parameter, f"expected a number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)
