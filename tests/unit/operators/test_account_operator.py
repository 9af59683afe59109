"""LoyaltyAccountTransactionsOperator: a member's whole history as JSON Lines, mappable."""

from __future__ import annotations

import json

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyNotFoundError, LoyaltyValidationError
from airflow_provider_loyalty.operators.loyalty import LoyaltyAccountTransactionsOperator
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.support.helpers import point_connection_at, requests_seen


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(member_history_sizes=[250, 3, 0, 42, 1])


@pytest.fixture(params=["json", "xml"])
def emulator(request, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator, content_type=request.param)
    return loyalty_emulator


def make_operator(tmp_path, **kwargs) -> LoyaltyAccountTransactionsOperator:
    params = {
        "task_id": "member",
        "loyalty_program_id": 123,
        "points_currency_eid": "bonus_points",
        "matching": "email",
        "member_email": "member0@example.com",
        "output_path": str(tmp_path / "member.jsonl"),
        **kwargs,
    }
    return LoyaltyAccountTransactionsOperator(**params)


def read_jsonl(path: str) -> list[dict]:
    with open(path.removeprefix("file://"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_250_transactions_in_3_pages(emulator: LoyaltyEmulator, tmp_path):
    result = make_operator(tmp_path).execute({})
    assert result["rows"] == 250
    assert result["total_count"] == 250
    records = read_jsonl(result["path"])
    ids = [record["transaction_id"] for record in records]
    assert len(set(ids)) == 250
    assert ids == sorted(ids)
    assert requests_seen(emulator, "account") == 3
    assert isinstance(records[0]["amount"], str)  # exact decimal text, never a float
    assert isinstance(records[0]["canceled"], bool)


@pytest.mark.parametrize(
    "member",
    [
        {"matching": "phone", "member_email": None, "phone": "+15550000003"},
        {"matching": "profile_id", "member_email": None, "profile_id": "profile_3"},
        {"matching": "custom", "member_email": None, "field_name": "user_id", "field_value": 3},
    ],
)
def test_each_matching_mode(emulator: LoyaltyEmulator, tmp_path, member):
    assert make_operator(tmp_path, limit=20, **member).execute({})["rows"] == 42


def test_member_without_transactions_and_unknown_member(emulator: LoyaltyEmulator, tmp_path):
    empty = make_operator(tmp_path, member_email="member2@example.com").execute({})
    assert (empty["rows"], empty["total_count"]) == (0, 0)
    with pytest.raises(LoyaltyNotFoundError):
        make_operator(tmp_path, member_email="nobody@example.com").execute({})


def test_directory_output_names_files_without_pii(emulator: LoyaltyEmulator, tmp_path):
    result = make_operator(tmp_path, output_path=f"{tmp_path}/members/").execute({})
    assert "member0" not in result["path"]
    assert result["path"].endswith(".jsonl")


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"matching": "nickname"}, "matching"),
        ({"matching": "phone", "member_email": None}, "phone"),
        ({"matching": "custom", "member_email": None, "field_name": "user_id"}, "field_value"),
        ({"matching": "custom", "member_email": None, "field_value": 1}, "field_name"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"points_currency_iid": 1}, "points_currency_eid/points_currency_iid"),
    ],
)
def test_validation_at_task_start_sends_nothing(emulator: LoyaltyEmulator, tmp_path, kwargs, parameter):
    with pytest.raises(LoyaltyValidationError) as err:
        make_operator(tmp_path, **kwargs).execute({})
    assert err.value.parameter == parameter
    assert requests_seen(emulator) == 0
