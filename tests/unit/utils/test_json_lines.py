"""Member histories are valid JSON Lines whatever legal JSON the API sent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator
from airflow_provider_loyalty.utils.json_lines import json_line
from tests.reliability.support import loopback_server, send

TOKEN = "json-lines-token"


def _strict(line: bytes) -> object:
    """Parse as a strict reader does: UTF-8, and no NaN or Infinity literals."""

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


def test_an_ordinary_record_is_written_as_json_dumps_writes_it():
    record = {"transaction_id": "t1", "amount": "100.1", "promo_iid": 42, "custom_json": {"k": ["v", 1.5, None]}}
    assert json_line(record) == json.dumps(record, ensure_ascii=False).encode() + b"\n"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (math.inf, b"1e999"),
        (-math.inf, b"-1e999"),
        (math.nan, b"null"),
        ("emoji cut: \ud83d", b'"emoji cut: \\ud83d"'),
        ("ünïcødé ✓", '"ünïcødé ✓"'.encode()),
    ],
    ids=["infinity", "minus-infinity", "nan", "lone-surrogate", "unicode"],
)
def test_values_json_lines_cannot_hold_as_decoded_are_written_as_valid_json(value, written):
    line = json_line({"custom_json": {"v": [value]}})
    assert line == b'{"custom_json": {"v": [' + written + b"]}}\n"
    parsed = _strict(line)
    assert isinstance(parsed, dict)
    back = parsed["custom_json"]["v"][0]
    assert back == value or (isinstance(value, float) and math.isnan(value) and back is None)


def test_the_operator_writes_a_history_with_such_values_as_json_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Through the operator, from a loopback server sending ``1e400`` and a lone surrogate escape
    (legal JSON): the task failed with a raw UnicodeEncodeError, or wrote ``Infinity``."""
    body = (
        b'{"data": [{"transaction_id": "t1", "description": "emoji cut: \\ud83d", '
        b'"custom_json": {"big": 1e400}}], "next_from_id": "", "total_count": 1, "error": 0, "error_text": "ok"}'
    )

    def respond(handler, server) -> None:
        send(handler, 200, body, "application/json")

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": TOKEN, "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        result = LoyaltyAccountTransactionsOperator(
            task_id="member",
            loyalty_program_id=123,
            points_currency_eid="bonus_points",
            matching="email",
            member_email="m@example.com",
            output_path=str(tmp_path / "member.jsonl"),
        ).execute({})
    lines = (tmp_path / "member.jsonl").read_bytes().splitlines()
    assert result["rows"] == 1 and len(lines) == 1
    record = _strict(lines[0])
    assert record == {"transaction_id": "t1", "description": "emoji cut: \ud83d", "custom_json": {"big": math.inf}}


def test_text_shaped_like_a_stand_in_stays_text_beside_numbers_that_need_one() -> None:
    """While a record holding an infinity or an exact number is written, those numbers are stand-in
    strings for a moment: a field the API sent looking like one (the fences were fixed text) was
    turned into a bare number."""
    from decimal import Decimal

    record = {
        "amount": Decimal("123456789012345678901234567890.5"),
        "note": "\x00loyalty-number:7\x00",
        "other": "\x00loyalty-infinity\x00",
        "big": math.inf,
    }
    line = json_line(record)
    written = json.loads(line, parse_float=Decimal)
    assert written["note"] == record["note"] and written["other"] == record["other"]
    assert written["amount"] == record["amount"] and line.count(b"1e999") == 1


def test_line_separators_inside_text_are_escaped_so_one_record_is_one_line_for_every_reader() -> None:
    """U+2028, U+2029 and U+0085 were written raw: valid JSON, but ``str.splitlines()`` (and older
    JavaScript) split a record there (probe)."""
    line = json_line({"description": "a\u2028b\u2029c\x85d é"})
    text = line.decode("utf-8")
    assert len(text.splitlines()) == 1
    assert json.loads(text) == {"description": "a\u2028b\u2029c\x85d é"}
