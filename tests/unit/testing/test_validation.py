"""Request validation over real HTTP: every invalid parameter answers 1001 naming it."""

from __future__ import annotations

from typing import Any

import pytest

EXPORT_ERRORS = [
    ({"loyalty_program_id": None}, "loyalty_program_id"),
    ({"loyalty_program_id": "123"}, "loyalty_program_id"),
    ({"loyalty_program_id": 999}, "loyalty_program_id"),
    ({"points_currency_eid": None}, "points_currency_eid/points_currency_iid"),
    ({"points_currency_iid": 1}, "points_currency_eid/points_currency_iid"),
    ({"points_currency_eid": "gold"}, "points_currency_eid"),
    ({"points_currency_eid": None, "points_currency_iid": 7}, "points_currency_iid"),
    ({"points_currency_eid": None, "points_currency_iid": "x1"}, "points_currency_iid"),
    ({"date_from": None}, "date_from"),
    ({"date_to": None}, "date_to"),
    ({"date_from": "2023-09-01"}, "date_from"),
    ({"date_from": "2023-09-01T00:00:00"}, "date_from"),
    ({"date_to": "yesterday"}, "date_to"),
    ({"date_from": "2023-09-30T00:00:00Z", "date_to": "2023-09-01T00:00:00Z"}, "date_from"),
    ({"from_id": "not-a-uuid"}, "from_id"),
]


@pytest.mark.parametrize(("overrides", "name"), EXPORT_ERRORS)
def test_export_validation(client: Any, overrides: dict[str, Any], name: str) -> None:
    params = {k: v for k, v in {**client.EXPORT_PARAMS, **overrides}.items() if v is not None}
    if client.fmt == "xml" and isinstance(overrides.get("loyalty_program_id"), str):
        params["loyalty_program_id"] = "12x"  # XML has no types: use non-digit text
    status, body = client.call(client.EXPORT, params)
    assert status == 400
    assert str(body["error"]) == "1001"
    assert body["error_text"].startswith(f"Invalid parameter {name}:")


def test_json_type_errors(json_client: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"loyalty_program_id": True}, "loyalty_program_id"),
        ({"loyalty_program_id": 123.0}, "loyalty_program_id"),
        ({"date_from": 20230901}, "date_from"),
        ({"points_currency_eid": 5}, "points_currency_eid"),
        ({"from_id": 5}, "from_id"),
    ]
    for overrides, name in cases:
        status, body = json_client.call(json_client.EXPORT, {**json_client.EXPORT_PARAMS, **overrides})
        assert (status, body["error"]) == (400, 1001), overrides
        assert body["error_text"].startswith(f"Invalid parameter {name}:"), body
    status, body = json_client.call(json_client.EXPORT, {**json_client.EXPORT_PARAMS, "date_from": "2023-09-01"})
    assert body["error_text"] == "Invalid parameter date_from: expected RFC3339 date-time"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_malformed_json(json_client: Any, body: bytes) -> None:
    r = json_client.session.post(
        json_client.emulator.url + json_client.EXPORT, data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == 1001


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><loyalty_program_id>123</loyalty_program_id>",
        b"<root><task_id>x</task_id></root>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml><task_id>&a;</task_id></xml>',
    ],
)
def test_malformed_or_hostile_xml(json_client: Any, body: bytes) -> None:
    r = json_client.session.post(
        json_client.emulator.url + json_client.STATUS, data=body, headers={"Content-Type": "text/xml"}
    )
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith("application/xml")
    assert b"<error>1001</error>" in r.content


def test_unsupported_content_type(json_client: Any) -> None:
    r = json_client.session.post(
        json_client.emulator.url + json_client.STATUS,
        data=b"task_id=x",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 400
    assert r.json()["error"] == 1001
    assert "Content-Type" in r.json()["error_text"]
