"""Validation of the parameters users give the provider, before any request is sent.

Every function raises :class:`~airflow_provider_loyalty.exceptions.LoyaltyValidationError` naming
the parameter. They are used by the hooks (last line of defence), by operators at DAG-parse time
(for literal values) and again at task start (for rendered templates), and by the connection
settings (for extras, which arrive as text from the UI or a URI).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_loyalty.exceptions import LoyaltyValidationError

# Export periods have their own module; their checks are reachable from here like every other one.
from airflow_provider_loyalty.utils.periods import check_period as check_period
from airflow_provider_loyalty.utils.periods import format_rfc3339 as format_rfc3339
from airflow_provider_loyalty.utils.periods import period_bound as period_bound
from airflow_provider_loyalty.utils.storable import has_lone_surrogate

MATCHING_MODES = ("email", "phone", "profile_id", "custom")
LIMIT_RANGE = (1, 100)
CONTENT_TYPES = ("json", "xml")

_TEMPLATE_MARKERS = ("{{", "{%")
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def is_template(value: Any) -> bool:
    """Whether ``value`` is known only at run time (checked again at task start): a not-yet-rendered
    Jinja string, or what Airflow resolves when the task runs, such as a TaskFlow output
    (``XComArg``) or a mapped task group's argument (``MappedArgument``)."""
    if isinstance(value, str):
        return any(marker in value for marker in _TEMPLATE_MARKERS)
    return _resolved_at_run_time(value)


def _resolved_at_run_time(value: Any) -> bool:
    """Whether ``value`` is one of Airflow's run-time references (its ``ResolveMixin``: a
    ``resolve`` and an ``iter_references`` method; the class's module moves between releases)."""
    return callable(getattr(value, "iter_references", None)) and callable(getattr(value, "resolve", None))


def first_control_character(text: str) -> str | None:
    """The first control character (C0 or DEL) in ``text``, or ``None``: in an id, a name, a key or a
    token it is a paste gone wrong or a server sending what no header, URL or path may hold."""
    found = _CONTROL_CHARACTER.search(text)
    return found.group() if found else None


# ---------------------------------------------------------------------------------------- scalars


def is_bool_word(text: str) -> bool:
    """Whether ``text`` is one of the usual spellings of a boolean (see :func:`parse_bool`)."""
    return text.strip().lower() in _TRUE_WORDS | _FALSE_WORDS


def parse_bool(value: Any, parameter: str) -> bool:
    """A boolean, the integer 1 or 0 (JSON's, or a URI extra's), or its usual spellings as text
    (``true``/``false``, ``1``/``0``, ``yes``/``no``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise LoyaltyValidationError(parameter, f"expected true or false, got {value!r}")


def parse_count(value: Any, parameter: str) -> int:
    """A non-negative integer, or its digits as text."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LoyaltyValidationError(parameter, f"expected a non-negative integer, got {value!r}")
    return value


def parse_seconds(value: Any, parameter: str) -> float:
    """A number of seconds > 0 and at most :data:`MAX_WAIT_SECONDS`, or its text (a connection's
    extras: a timeout of 1e10 s overflowed the socket's and failed every request as unreachable)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise LoyaltyValidationError(parameter, f"expected a number, got {value!r}") from None
    return check_duration(value, parameter)


#: The longest wait a duration parameter may ask for: ten years. Past it, Airflow's deferral
#: timeout and the lease's expiry (dates) would overflow after the first requests were sent.
MAX_WAIT_SECONDS = 10 * 366 * 24 * 3600.0


def check_duration(value: Any, parameter: str) -> float:
    """A duration in seconds (a number or a ``timedelta``): > 0 and at most :data:`MAX_WAIT_SECONDS`."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    checked = check_positive_number(seconds, parameter)
    if checked > MAX_WAIT_SECONDS:
        raise LoyaltyValidationError(parameter, f"expected at most ten years ({MAX_WAIT_SECONDS:.0f} s), got {value!r}")
    return checked


def check_positive_number(value: Any, parameter: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0): poll intervals, timeouts."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LoyaltyValidationError(parameter, f"expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise LoyaltyValidationError(parameter, f"expected a number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def check_byte_count(value: Any, parameter: str) -> int:
    """A byte count >= 1: an int, or a whole float (``2e9``); a fraction is refused, not cut to 0."""
    number = check_positive_number(value, parameter)
    if not number.is_integer():
        raise LoyaltyValidationError(parameter, f"expected a whole number of bytes, got {value!r}")
    return int(number)


def check_optional_positive_int(value: Any, parameter: str) -> int | None:
    """``None``, or an integer >= 1 (caps such as ``max_batches``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoyaltyValidationError(parameter, f"expected a positive integer or None, got {value!r}")
    return value


def check_content_type(content_type: Any) -> str:
    """``json`` or ``xml`` (case-insensitive); also accepts the MIME types as a header writes them
    (``application/json; charset=utf-8``, ``text/xml``)."""
    if isinstance(content_type, str):
        mime = content_type.partition(";")[0].strip().lower()
        normalized = mime.removeprefix("application/").removeprefix("text/")
        if normalized in CONTENT_TYPES:
            return normalized
    raise LoyaltyValidationError("content_type", f"expected 'json' or 'xml', got {content_type!r}")


# ---------------------------------------------------------------------------------------- API ids


#: The largest id the API's ``int`` fields can hold (a signed 64-bit integer).
MAX_API_INT = 2**63 - 1


def check_program_id(loyalty_program_id: Any) -> int:
    """Return the program id as an int; reject bools, non-integers and values outside 1..2**63-1."""
    value = loyalty_program_id
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_API_INT:
        raise LoyaltyValidationError(
            "loyalty_program_id", f"expected a positive integer up to {MAX_API_INT}, got {loyalty_program_id!r:.60}"
        )
    return value


def check_currency(points_currency_eid: Any, points_currency_iid: Any) -> dict[str, Any]:
    """Exactly one of the two currency ids; return it as the request field it becomes."""
    has_eid = not _blank(points_currency_eid)  # a template that rendered nothing (or only blanks) gave none
    has_iid = not _blank(points_currency_iid)
    for value, parameter in (
        (points_currency_eid, "points_currency_eid"),
        (points_currency_iid, "points_currency_iid"),
    ):
        if isinstance(value, str):  # before "both were given": the text 'None' is a missing value
            refuse_rendered_none(value.strip(), parameter, "expected the currency's id, or leave it unset")
    if has_eid == has_iid:
        which = "both were given" if has_eid else "neither was given"
        raise LoyaltyValidationError("points_currency_eid/points_currency_iid", f"give exactly one of the two; {which}")
    if has_eid:
        if not isinstance(points_currency_eid, str):
            # Not read as its digits: a native template renders "007" as 7, another currency.
            hint = (
                " (a native template renders digits as a number, dropping leading zeros: render it as a "
                "JSON string, '{{ params.eid | tojson }}', or pass points_currency_iid for a numeric id)"
                if isinstance(points_currency_eid, int | float) and not isinstance(points_currency_eid, bool)
                else ""
            )
            raise LoyaltyValidationError(
                "points_currency_eid",
                f"expected a string, got {type(points_currency_eid).__name__} {points_currency_eid!r:.40}{hint}",
            )
        eid = _without_controls(points_currency_eid.strip(), "points_currency_eid")
        refuse_rendered_none(eid, "points_currency_eid", "expected the currency's external id")
        return {"points_currency_eid": eid}
    iid = points_currency_iid
    if isinstance(iid, str) and iid.strip().isascii() and iid.strip().isdigit():
        iid = int(iid.strip())
    if isinstance(iid, bool) or not isinstance(iid, int) or not 0 <= iid <= MAX_API_INT:
        raise LoyaltyValidationError(
            "points_currency_iid",
            f"expected a non-negative integer up to {MAX_API_INT}, got {points_currency_iid!r:.60}",
        )
    return {"points_currency_iid": iid}


def _without_controls(text: str, parameter: str) -> str:
    """``text`` (already stripped: a value pasted with a newline names the same thing) if no control
    character is left inside it; one inside is a paste gone wrong, not part of an id or address."""
    control = first_control_character(text)
    if control is not None:
        raise LoyaltyValidationError(
            parameter, f"{text[:80]!r} holds the control character {control!r} (a line break pasted inside it?)"
        )
    return text


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


#: Longest cursor taken: the API documents a UUID (36 characters); room for any other id scheme.
MAX_CURSOR_LENGTH = 256


def is_cursor(text: str) -> bool:
    """Whether ``text`` can be a cursor: no control characters and no lone surrogate (neither is
    stored as sent in a trigger event or a checkpoint, so a deferred export would send another
    cursor), at most :data:`MAX_CURSOR_LENGTH` characters (the one rule for a ``from_id`` given and
    a ``next_from_id`` received, and for an export task id)."""
    return first_control_character(text) is None and len(text) <= MAX_CURSOR_LENGTH and not has_lone_surrogate(text)


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def refuse_rendered_none(text: str, parameter: str, unset: str) -> None:
    """Refuse the text ``None``: what a template renders for a missing value
    (``{{ params.x }}`` with ``x`` unset), never a real id or directory."""
    if text == "None":
        raise LoyaltyValidationError(
            parameter,
            f"rendered to the text 'None' (a template of a missing value?); {unset}",
        )


def check_output_path(output_path: Any, expected: str) -> Any:
    """An ``output_path`` as text without surrounding whitespace (a value pasted with a newline is
    not a directory named ``"\\n"``); an ``ObjectStoragePath`` (or any other path object) as it is.
    Anything else (a list or a number a native template rendered) is refused: written as a
    directory named ``['/tmp/x']`` under the worker's current directory, it would be lost.

    :param output_path: the rendered value.
    :param expected: what the operator wants there, for the error.
    """
    if isinstance(output_path, os.PathLike) or callable(getattr(output_path, "joinpath", None)):
        return output_path  # a pathlib path, or an ObjectStoragePath (a universal_pathlib path)
    if _resolved_at_run_time(output_path):
        return output_path  # a TaskFlow output: checked once the task runs, as a template is
    if output_path is not None and not isinstance(output_path, str):
        raise LoyaltyValidationError(
            "output_path",
            f"expected a path (text or a path object), got {type(output_path).__name__} {output_path!r:.80}",
        )
    text = (output_path or "").strip()
    if not text:
        raise LoyaltyValidationError("output_path", f"required: {expected}")
    refuse_rendered_none(text, "output_path", f"expected {expected}")
    if text[:5].lower() == "file:" and not is_template(text):  # a template is read once rendered
        return _local_file_url(text)
    return text


def _local_file_url(text: str) -> str:
    """A ``file:`` URL in the one spelling object storage reads right, ``file:///abs/path``.

    ``file:/abs`` (no ``//``) and ``file://localhost/abs`` are the same file by RFC 8089, but were
    read as a directory named ``file:`` and a directory named ``localhost`` under the worker's
    current directory. A file URL naming another host, or a relative path, is refused.
    """
    try:
        parts = urlsplit(text)
    except ValueError as error:
        raise LoyaltyValidationError("output_path", f"{text[:120]!r} is not a file URL ({error})") from None
    host = parts.netloc.lower()
    if host not in ("", "localhost"):
        raise LoyaltyValidationError(
            "output_path",
            f"{text[:120]!r} names the host {parts.netloc!r}; a file: URL here is a local path of the worker "
            "(file:///dir/...): use the object store's own URL for a remote location",
        )
    if not parts.path.startswith("/") or parts.query or parts.fragment:
        raise LoyaltyValidationError(
            "output_path", f"{text[:120]!r}: expected a file URL of an absolute path, file:///dir/..."
        )
    return f"file://{parts.path}"


def check_cursor(from_id: Any, parameter: str = "from_id") -> str | None:
    """An optional transaction id used as cursor, or ``None`` when not given or blank.

    The API documents a UUID, but the cursor is the API's own value, sent back as it came: any
    text without control characters up to :data:`MAX_CURSOR_LENGTH` characters is taken (a
    platform paging by other ids must not fail at its second batch). Surrounding whitespace (a
    value pasted with a newline) is dropped."""
    if from_id is None:
        return None
    cursor = _stripped(from_id)
    if cursor == "":
        return None
    if isinstance(cursor, int) and not isinstance(cursor, bool):
        cursor = str(cursor)  # an integer id, as the API's own int next_from_id is read
    if isinstance(cursor, str):
        refuse_rendered_none(cursor, parameter, "leave it unset (None) to start at the period's beginning")
    if not isinstance(cursor, str) or not is_cursor(cursor):
        raise LoyaltyValidationError(
            parameter,
            f"expected a transaction id (the API's next_from_id, a UUID string) of at most {MAX_CURSOR_LENGTH} "
            f"characters without control characters, got {from_id!r:.80}",
        )
    return cursor


def check_conn_id(conn_id: Any, parameter: str, *, templated: bool = True) -> str:
    """A connection id as given: a non-empty string without control characters. A number, a list
    or an empty id is a mistake the DAG's parse reports; a template (the operators template their
    connection ids, as official providers do) is checked again once rendered.

    :param conn_id: the value given.
    :param parameter: the parameter's name, for the error.
    :param templated: the value may be a template yet (an operator's parameter), not a hook's.
    """
    if is_template(conn_id):
        if templated:
            return conn_id  # type: ignore[no-any-return]
        raise LoyaltyValidationError(
            parameter, f"a hook's connection id is not rendered; give the connection id itself, got {conn_id!r:.80}"
        )
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise LoyaltyValidationError(parameter, f"expected a connection id string, got {conn_id!r}")
    refuse_rendered_none(conn_id, parameter, "expected a connection id")
    if first_control_character(conn_id) is not None:
        raise LoyaltyValidationError(
            parameter, f"a connection id holds no control character (a paste gone wrong?), got {conn_id!r}"
        )
    return conn_id


def check_optional_conn_id(conn_id: Any, parameter: str) -> str | None:
    """As :func:`check_conn_id`, where ``None`` or ``""`` means no connection (boto3's own
    credentials for an AWS one, as the amazon provider takes them)."""
    return conn_id if conn_id is None or conn_id == "" else check_conn_id(conn_id, parameter)


#: The connection-id parameters of the provider's operators, and whether ``None`` means none.
CONN_ID_PARAMETERS = {"loyalty_conn_id": False, "aws_conn_id": True, "output_conn_id": True}


def check_conn_ids(values: Mapping[str, Any]) -> None:
    """Check each connection-id parameter among ``values`` (see :func:`check_conn_id`).

    :param values: parameters by name; the ones that are no connection id are left alone.
    """
    for parameter, optional in CONN_ID_PARAMETERS.items():
        if parameter in values:
            (check_optional_conn_id if optional else check_conn_id)(values[parameter], parameter)


def check_task_id(export_task_id: Any, parameter: str = "export_task_id") -> str:
    """An export task id as the API returned it: a non-empty string without control characters
    (surrounding whitespace, as of a value pasted with a newline, dropped)."""
    task_id = export_task_id.strip() if isinstance(export_task_id, str) else None
    if not task_id or not is_cursor(task_id):  # the same rule as an id the API hands back
        raise LoyaltyValidationError(parameter, f"expected an export task id string, got {export_task_id!r}")
    refuse_rendered_none(task_id, parameter, "expected an export task id (did the XCom it pulls hold nothing?)")
    return task_id


def is_literal(values: Mapping[str, Any], name: str) -> bool:
    """Whether ``values`` gives parameter ``name`` a value known now: present, not ``None``, no template."""
    return name in values and values[name] is not None and not is_template(values[name])


def check_literal_program_and_currency(values: Mapping[str, Any]) -> None:
    """Refuse a literal program id or currency id that can never work, naming the parameter.

    :param values: parameters by name; a template is left for run time, and a parameter missing
        here (one ``.expand()`` will give) is not known yet: the currency pair is checked as a
        pair only when both are here.
    """

    def literal(name: str) -> bool:
        return is_literal(values, name)

    if literal("loyalty_program_id"):
        check_program_id(values["loyalty_program_id"])
    pair = ("points_currency_eid", "points_currency_iid")
    if all(name in values for name in pair):
        if not any(is_template(values[name]) for name in pair):
            check_currency(*(values[name] for name in pair))
        return
    if literal("points_currency_eid") and not _blank(values["points_currency_eid"]):  # the other is mapped
        check_currency(values["points_currency_eid"], None)
    if literal("points_currency_iid") and not _blank(values["points_currency_iid"]):
        check_currency(None, values["points_currency_iid"])


def check_limit(limit: Any) -> int:
    """Page size of the account transactions endpoint: an integer in 1..100."""
    low, high = LIMIT_RANGE
    if isinstance(limit, str) and limit.strip().isascii() and limit.strip().isdigit():
        limit = int(limit.strip())
    if isinstance(limit, bool) or not isinstance(limit, int) or not low <= limit <= high:
        raise LoyaltyValidationError("limit", f"expected an integer in {low}..{high}, got {limit!r}")
    return limit


def check_matching_mode(matching: Any) -> str:
    """One of :data:`MATCHING_MODES`, in any case and with surrounding whitespace."""
    mode = matching.strip().lower() if isinstance(matching, str) else matching
    if mode not in MATCHING_MODES:
        raise LoyaltyValidationError("matching", f"expected one of {', '.join(MATCHING_MODES)}; got {matching!r}")
    return str(mode)


def check_matching(
    matching: Any,
    *,
    email: Any = None,
    phone: Any = None,
    profile_id: Any = None,
    field_name: Any = None,
    field_value: Any = None,
) -> dict[str, Any]:
    """How the member is looked up; return the request fields it becomes.

    The member's address is checked here under the API's field name ``email``; operators call
    their parameter ``member_email`` and say so in their own errors. Text values lose surrounding
    whitespace (a value pasted with a newline names the same member); ``matching`` any case.
    """
    matching = check_matching_mode(matching)
    email, phone, profile_id, field_name, field_value = map(
        _stripped, (email, phone, profile_id, field_name, field_value)
    )
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
        if isinstance(field_value, str):
            field_value = _without_controls(field_value, "field_value")
        return {
            "matching": "custom",
            "field_name": _without_controls(field_name, "field_name"),
            "field_value": field_value,
        }
    companion = {"email": email, "phone": phone, "profile_id": profile_id}[matching]
    if matching == "phone" and isinstance(companion, int | float) and not isinstance(companion, bool):
        # "+15550000003" rendered by a native template is the int 15550000003: its "+" (and any
        # leading zero) are gone, and the digits alone may be another member's number.
        raise LoyaltyValidationError(
            "phone",
            f'expected the phone number as text in international format ("+1555..."), got the number '
            f'{companion!r:.40}: a native template renders "+1555..." as a number, dropping the "+"; '
            'render it as a JSON string, "{{ params.phone | tojson }}", which a native template keeps as text',
        )
    if matching == "profile_id" and isinstance(companion, int) and not isinstance(companion, bool):
        companion = str(companion)  # a numeric id a template rendered natively, as field_value
    if companion in (None, "") or not isinstance(companion, str):
        raise LoyaltyValidationError(matching, f'required (a string) when matching="{matching}"; got {companion!r}')
    refuse_rendered_none(companion, matching, f"expected the member's {matching.replace('_', ' ')}")
    return {"matching": matching, matching: _without_controls(companion, matching)}
