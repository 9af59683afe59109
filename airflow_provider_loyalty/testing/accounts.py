"""The account transactions endpoint: a member's history, paged with ``from_id`` / ``limit``.

Members are found as ``member<k>@example.com`` (any case), ``+1555000<kkkk>``, ``profile_<k>`` or
custom field ``user_id`` = ``<k>``; member ``k`` exists when ``k < len(member_history_sizes)``.
``from_id`` is exclusive here (records with id > ``from_id``), as the endpoint documents.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.dataset import member_stream_for
from airflow_provider_loyalty.testing.errors import ApiError, invalid, success
from airflow_provider_loyalty.testing.validation import RequestParams, check_program_and_currency, parse_from_id

__all__ = ["MATCHING", "account_transactions_page", "find_member"]

#: The ``matching`` values the endpoint accepts.
MATCHING: tuple[str, ...] = ("email", "phone", "profile_id", "custom")
_LOOKUPS = {
    "email": (r"member(\d+)@example\.com", "member{}@example.com"),
    "phone": (r"\+1555000(\d{4,})", "+1555000{:04d}"),
    "profile_id": (r"profile_(\d+)", "profile_{}"),
}
_DEFAULT_LIMIT = 20


def account_transactions_page(params: RequestParams, config: EmulatorConfig) -> dict[str, Any]:
    """Answer one request of the account transactions endpoint.

    :param params: the request.
    :param config: the emulator's configuration.
    :raises ApiError: 1001 for a missing body ``token`` (the API documents it as required) or
        other invalid parameters, 1002 for a wrong one, 1004 for an unknown member.
    """
    body_token = params.body.get("token")
    if body_token in (None, ""):
        raise invalid("token", "required (the API token, in the request body)")
    if not isinstance(body_token, str) or not hmac.compare_digest(body_token.encode(), config.token.encode()):
        raise ApiError(1002, "Authentication failed: invalid token")
    check_program_and_currency(params, config)
    from_id = parse_from_id(params)
    limit = params.get_int("limit", required=False)
    if limit is None:
        limit = _DEFAULT_LIMIT
    if not 1 <= limit <= 100:
        raise invalid("limit", f"must be within 1..100, got {limit}")
    matching = params.get_str("matching", required=True)
    if matching not in MATCHING:
        raise invalid("matching", f"expected one of {', '.join(MATCHING)}, got {matching!r}")
    member = find_member(params, matching)
    if member is None or member >= len(config.member_history_sizes):
        raise ApiError(1004, "Member profile not found")
    stream = member_stream_for(config, member)
    total = len(stream)
    # The pages read from_id as the exports do (config.cursor_mode): after it, or from it on.
    inclusive = config.cursor_mode != "exclusive"
    start = 0 if from_id is None else stream.first_index_after(from_id, 0, total, inclusive=inclusive)
    end = min(start + limit, total)
    rows = [stream.transaction(i) for i in range(start, end)]
    next_from_id = ""
    if rows and end < total:
        next_row = end if config.cursor_mode == "next_row" else end - 1
        next_from_id = stream.transaction_id(next_row)
    return success(data=rows, next_from_id=next_from_id, total_count=total)


def find_member(params: RequestParams, matching: str) -> int | None:
    """Return the member number the lookup names, or ``None`` when it names nobody.

    :param params: the request.
    :param matching: the validated ``matching`` value.
    :raises ApiError: (1001) when the lookup's own parameter is missing or mistyped.
    """
    if matching == "custom":
        field_name = params.get_str("field_name", required=True)
        field_value = params.get_str_or_int("field_value", required=True)
        if field_name != "user_id" or field_value is None or not field_value.isdigit():
            return None
        member = int(field_value)
        return member if str(member) == field_value else None
    value = params.get_str(matching, required=True)
    assert value is not None
    pattern, template = _LOOKUPS[matching]
    text = value.lower() if matching == "email" else value
    found = re.fullmatch(pattern, text)
    if not found:
        return None
    member = int(found.group(1))
    return member if template.format(member) == text else None
