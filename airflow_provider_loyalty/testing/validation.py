"""Strict validation of API request bodies, shared by the export and account endpoints.

``null`` and empty values count as absent; unknown keys are ignored; JSON integers must be JSON
numbers (not strings, floats or booleans), XML integers digit text; ``from_id`` must be UUID-shaped
(8-4-4-4-12 alphanumerics, so the documentation's own example
``a1b2c3d4-e5f6-7890-g1h2-i3j4k5l6m7n8`` is accepted).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.data import parse_rfc3339
from airflow_provider_loyalty.testing.errors import invalid

__all__ = ["RequestParams", "check_program_and_currency", "parse_from_id", "parse_period"]

_UUID_RE = re.compile(r"^[0-9A-Za-z]{8}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{12}$")
_INT_TEXT_RE = re.compile(r"^[+-]?\d+$")
_T = TypeVar("_T")


class RequestParams:
    """Typed access to a decoded request body (XML scalars arrive as text).

    :param body: the decoded body.
    :param is_xml: whether it came as XML (integers are then digit text).
    """

    def __init__(self, body: dict[str, Any], is_xml: bool) -> None:
        self.body = body
        self.is_xml = is_xml

    def present(self, name: str) -> bool:
        """Whether ``name`` has a value (``null`` and ``""`` count as absent).

        :param name: parameter name.
        """
        value = self.body.get(name)
        return value is not None and value != ""

    def get_int(self, name: str, required: bool) -> int | None:
        """Return an integer parameter (XML: digit text; JSON: a number, not a float or boolean).

        :param name: parameter name.
        :param required: raise when absent.
        :raises ApiError: (1001) when absent but required, or not an integer.
        """
        return self._get(name, required, self._as_int, "int")

    def get_str(self, name: str, required: bool) -> str | None:
        """Return a string parameter.

        :param name: parameter name.
        :param required: raise when absent.
        :raises ApiError: (1001) when absent but required, or not a string.
        """
        return self._get(name, required, _as_str, "string")

    def get_str_or_int(self, name: str, required: bool) -> str | None:
        """Return a parameter that may be a string or an integer, as text.

        :param name: parameter name.
        :param required: raise when absent.
        :raises ApiError: (1001) when absent but required, or of another type.
        """
        return self._get(name, required, _as_str_or_int, "string or int")

    def _get(self, name: str, required: bool, convert: Callable[[Any], _T | None], expected: str) -> _T | None:
        if not self.present(name):
            if required:
                raise invalid(name, "required")
            return None
        value = self.body[name]
        converted = convert(value)
        if converted is None:
            raise invalid(name, f"expected {expected}, got {describe(value)}")
        return converted

    def _as_int(self, value: Any) -> int | None:
        if self.is_xml:
            return int(value) if isinstance(value, str) and _INT_TEXT_RE.match(value) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_str_or_int(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _as_str(value)


def describe(value: Any) -> str:
    """Name a value's JSON type for an error message (strings quoted, shortened).

    :param value: the offending value.
    """
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return type(value).__name__


def check_program_and_currency(params: RequestParams, config: EmulatorConfig) -> int:
    """Check ``loyalty_program_id`` and exactly one of ``points_currency_eid`` / ``_iid``.

    :param params: the request.
    :param config: the emulator's configuration (the valid program and currency).
    :return: the currency's internal id.
    :raises ApiError: (1001) naming the offending parameter.
    """
    program = params.get_int("loyalty_program_id", required=True)
    if program != config.loyalty_program_id:
        raise invalid("loyalty_program_id", f"unknown loyalty program {program}")
    has_eid = params.present("points_currency_eid")
    has_iid = params.present("points_currency_iid")
    both = "points_currency_eid/points_currency_iid"
    if has_eid and has_iid:
        raise invalid(both, "give exactly one of points_currency_eid or points_currency_iid, not both")
    if not has_eid and not has_iid:
        raise invalid(both, "one of points_currency_eid or points_currency_iid is required")
    if has_eid:
        eid = params.get_str("points_currency_eid", required=True)
        if eid != config.points_currency_eid:
            raise invalid("points_currency_eid", f"unknown points currency {eid!r}")
    else:
        iid = params.get_int("points_currency_iid", required=True)
        if iid != config.points_currency_iid:
            raise invalid("points_currency_iid", f"unknown points currency {iid}")
    return config.points_currency_iid


def parse_from_id(params: RequestParams) -> str | None:
    """Return the optional ``from_id`` cursor.

    :param params: the request.
    :raises ApiError: (1001) when it is not UUID-shaped.
    """
    from_id = params.get_str("from_id", required=False)
    if from_id is not None and not _UUID_RE.match(from_id):
        raise invalid("from_id", "expected a UUID")
    return from_id


def parse_period(params: RequestParams) -> tuple[str, str, float, float]:
    """Return the required ``date_from`` and ``date_to`` as sent and as POSIX seconds.

    :param params: the request.
    :return: ``(date_from text, date_to text, date_from seconds, date_to seconds)``.
    :raises ApiError: (1001) when one is missing or not RFC3339, or ``date_from`` > ``date_to``.
    """
    texts: list[str] = []
    stamps: list[float] = []
    for name in ("date_from", "date_to"):
        text = params.get_str(name, required=True)
        assert text is not None
        try:
            stamps.append(parse_rfc3339(text))
        except ValueError:
            raise invalid(name, "expected RFC3339 date-time") from None
        texts.append(text)
    if stamps[0] > stamps[1]:
        raise invalid("date_from", "must not be after date_to")
    return texts[0], texts[1], stamps[0], stamps[1]
