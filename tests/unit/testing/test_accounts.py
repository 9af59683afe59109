"""The account transactions endpoint over real HTTP: lookups, paging, errors."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_loyalty.testing import TRANSACTION_FIELDS, LoyaltyEmulator


def test_account_transactions(client: Any) -> None:
    params = {
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "matching": "email",
        "email": "member1@example.com",
    }
    status, body = client.call(client.ACCOUNT, params)
    assert status == 200, body
    assert str(body["total_count"]) == "3"
    assert body["next_from_id"] == ""
    assert str(body["error"]) == "0"
    assert body["error_text"] == "Successful operation"
    assert len(body["data"]) == 3
    first = body["data"][0]
    assert list(first) == list(TRANSACTION_FIELDS)
    assert set(first["custom_json"]) == {"channel", "store"}
    if client.fmt == "json":
        assert list(body) == ["data", "next_from_id", "total_count", "error", "error_text"]
        assert isinstance(first["promo_iid"], int)
        assert isinstance(first["canceled"], bool)
        assert isinstance(first["amount"], str)


def test_account_empty_history_xml_is_empty_data(json_client: Any, emulator: LoyaltyEmulator) -> None:
    params = {
        "loyalty_program_id": 123,
        "points_currency_iid": 1,
        "matching": "profile_id",
        "profile_id": "profile_2",
    }
    response = json_client.post(json_client.ACCOUNT, params, fmt="xml")
    assert response.status_code == 200
    assert b"<data />" in response.content or b"<data/>" in response.content
    _, body = json_client.call(json_client.ACCOUNT, params)
    assert body["data"] == []
    assert body["total_count"] == 0
    assert body["next_from_id"] == ""


@pytest.mark.parametrize(
    "lookup",
    [
        {"matching": "email", "email": "MEMBER0@example.com"},
        {"matching": "phone", "phone": "+15550000000"},
        {"matching": "profile_id", "profile_id": "profile_0"},
        {"matching": "custom", "field_name": "user_id", "field_value": "0"},
        {"matching": "custom", "field_name": "user_id", "field_value": 0},
    ],
)
def test_account_paging_250(json_client: Any, lookup: dict[str, Any]) -> None:
    base = {
        "token": json_client.emulator.token,
        "loyalty_program_id": 123,
        "points_currency_iid": 1,
        "limit": 100,
    }
    ids: list[str] = []
    pages = 0
    from_id = None
    while True:
        params = {**base, **lookup, **({"from_id": from_id} if from_id else {})}
        status, body = json_client.call(json_client.ACCOUNT, params)
        assert status == 200, body
        pages += 1
        assert body["total_count"] == 250
        ids += [t["transaction_id"] for t in body["data"]]
        if not body["next_from_id"]:
            break
        assert body["next_from_id"] == body["data"][-1]["transaction_id"]
        from_id = body["next_from_id"]
        assert pages < 10
    assert pages == 3
    assert len(ids) == 250 == len(set(ids))
    assert ids == sorted(ids)


def test_account_default_limit_and_xml_paging(client: Any) -> None:
    params = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "matching": "phone"}
    _, body = client.call(client.ACCOUNT, {**params, "phone": "+15550000003"})
    assert len(body["data"]) == 20
    assert str(body["total_count"]) == "42"
    _, body2 = client.call(client.ACCOUNT, {**params, "phone": "+15550000003", "from_id": body["next_from_id"]})
    assert body2["data"][0]["transaction_id"] > body["data"][-1]["transaction_id"]


ACCOUNT_BASE: dict[str, Any] = {
    "loyalty_program_id": 123,
    "points_currency_eid": "bonus_points",
    "matching": "email",
}


ACCOUNT_ERRORS = [
    ({"matching": None}, 400, 1001, "matching"),
    ({"matching": "fax"}, 400, 1001, "matching"),
    ({"email": None}, 400, 1001, "email"),
    ({"matching": "phone"}, 400, 1001, "phone"),
    ({"matching": "profile_id"}, 400, 1001, "profile_id"),
    ({"matching": "custom", "field_value": "1"}, 400, 1001, "field_name"),
    ({"matching": "custom", "field_name": "user_id"}, 400, 1001, "field_value"),
    ({"limit": 0}, 400, 1001, "limit"),
    ({"limit": 101}, 400, 1001, "limit"),
    ({"from_id": "xyz"}, 400, 1001, "from_id"),
    ({"points_currency_iid": 1}, 400, 1001, "points_currency_eid/points_currency_iid"),
    ({"loyalty_program_id": 1}, 400, 1001, "loyalty_program_id"),
    ({"email": "nobody@example.com"}, 404, 1004, None),
    ({"email": "member5@example.com"}, 404, 1004, None),
    ({"matching": "custom", "field_name": "user_id", "field_value": "01"}, 404, 1004, None),
    ({"matching": "custom", "field_name": "crm_id", "field_value": "1"}, 404, 1004, None),
    ({"token": "wrong"}, 401, 1002, None),
]


@pytest.mark.parametrize(("overrides", "http", "code", "name"), ACCOUNT_ERRORS)
def test_account_errors(client: Any, overrides: dict[str, Any], http: int, code: int, name: str | None) -> None:
    params = {"email": "member0@example.com", **ACCOUNT_BASE, **overrides}
    params = {k: v for k, v in params.items() if v is not None}
    status, body = client.call(client.ACCOUNT, params, body_token="token" not in overrides)
    assert (status, str(body["error"])) == (http, str(code)), body
    if name:
        assert body["error_text"].startswith(f"Invalid parameter {name}:"), body


def test_account_limit_type_error(json_client: Any) -> None:
    params = {**ACCOUNT_BASE, "email": "member0@example.com", "limit": "20"}
    status, body = json_client.call(json_client.ACCOUNT, params)
    assert (status, body["error"]) == (400, 1001)
    assert "limit" in body["error_text"]
