"""The emulator's API over real HTTP on loopback: endpoints, validation, auth, cursors, paging."""

from __future__ import annotations

import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_loyalty.testing import TRANSACTION_FIELDS, EmulatorConfig, LoyaltyEmulator

UUID_SHAPE = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


# --- happy paths in both content types --------------------------------------------------------------
def test_export_lifecycle(client: Any) -> None:
    status, body = client.call(client.EXPORT, client.EXPORT_PARAMS)
    assert status == 200
    assert body["error"] in (0, "0")
    assert body["error_text"] == "Successful operation"
    task_id = body["data"]["task_id"]
    assert task_id.startswith("task_")
    assert len(task_id) == 41

    _, first = client.call(client.STATUS, {"task_id": task_id})
    assert first["data"]["status"] in ("in_progress", "completed")
    data = client.wait(task_id)
    assert data["status"] == "completed"
    assert str(data["progress"]) == "100"
    result = data["result"]
    assert set(result) == {
        "hashed_file",
        "is_api",
        "loyalty_id",
        "next_from_id",
        "points_currency_iid",
        "total",
    }
    assert str(result["is_api"]) in ("True", "true")
    assert str(result["loyalty_id"]) == "123"
    assert str(result["points_currency_iid"]) == "1"
    assert str(result["total"]) == "1000"
    token, _, name = result["hashed_file"].partition("/")
    assert len(token) == 96
    assert "/" not in name
    assert name == "Transactions_loyalty_123_1_2023-09-01T00 00 00Z_2023-09-30T23 59 59Z.zip"

    response = client.download(result["hashed_file"])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Transfer-Encoding"] == "chunked"
    header, rows, member = client.read_csv_from_zip(response.content)
    assert member == name[:-4] + ".csv"
    assert header == list(TRANSACTION_FIELDS)
    assert len(rows) == 1000
    assert rows[-1][0] == result["next_from_id"]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_json_responses_match_seed_shape(json_client: Any) -> None:
    response = json_client.post(json_client.EXPORT, json_client.EXPORT_PARAMS)
    assert list(response.json()) == ["data", "error", "error_text"]
    assert response.json()["error"] == 0
    data = json_client.wait(response.json()["data"]["task_id"])
    result = data["result"]
    assert isinstance(data["progress"], int)
    assert data["progress"] == 100
    assert result["is_api"] is True
    assert isinstance(result["total"], int)
    assert isinstance(result["loyalty_id"], int)
    assert isinstance(result["points_currency_iid"], int)


def test_progress_is_int_while_running(emulator_factory: Any, client_factory: Any) -> None:
    emulator = emulator_factory(transactions=10, task_duration=30)
    c = client_factory(emulator)
    task_id = c.export()
    _, body = c.call(c.STATUS, {"task_id": task_id})
    assert body["data"]["status"] == "in_progress"
    assert isinstance(body["data"]["progress"], int)
    assert 0 <= body["data"]["progress"] <= 99
    assert "result" not in body["data"]


def test_csv_quoting_and_types(json_client: Any) -> None:
    result, rows = json_client.export_batch()
    with zipfile.ZipFile(io.BytesIO(json_client.download(result["hashed_file"]).content)) as archive:
        raw = archive.read(archive.namelist()[0])
    assert raw.count(b"\r\n") >= len(rows) + 1
    descriptions = {r[9] for r in rows}
    assert any("," in d for d in descriptions)
    assert any('"' in d for d in descriptions)
    assert any("\n" in d for d in descriptions)
    for row in rows:
        assert len(row) == len(TRANSACTION_FIELDS)
        record = dict(zip(TRANSACTION_FIELDS, row, strict=True))
        assert record["is_temp"] in ("true", "false")
        assert record["canceled"] in ("true", "false")
        assert isinstance(json.loads(record["custom_json"]), dict)
        float(record["amount"])
        assert record["created_at"].endswith("Z")


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


# --- validation -------------------------------------------------------------------------------------
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


def test_timezone_offsets_and_seed_style_from_id(json_client: Any) -> None:
    task = json_client.export(date_from="2023-09-01T02:00:00+02:00", date_to="2023-09-30T23:59:59.5-00:00")
    assert json_client.wait(task)["result"]["total"] == 1000
    # The seed's example from_id is not hex, but is UUID-shaped: accepted (sorts after all our ids).
    result, rows = json_client.export_batch(from_id="a1b2c3d4-e5f6-7890-g1h2-i3j4k5l6m7n8")
    assert result["total"] == 0
    assert rows == []
    assert result["next_from_id"] == ""


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
    status, body = client.call(client.ACCOUNT, params)
    assert (status, str(body["error"])) == (http, str(code)), body
    if name:
        assert body["error_text"].startswith(f"Invalid parameter {name}:"), body


def test_account_limit_type_error(json_client: Any) -> None:
    params = {**ACCOUNT_BASE, "email": "member0@example.com", "limit": "20"}
    status, body = json_client.call(json_client.ACCOUNT, params)
    assert (status, body["error"]) == (400, 1001)
    assert "limit" in body["error_text"]


def test_status_and_download_not_found(client: Any) -> None:
    status, body = client.call(client.STATUS, {"task_id": "task_00000000-0000-0000-0000-000000000000"})
    assert (status, str(body["error"])) == (404, "1003")
    status, body = client.call(client.STATUS, {})
    assert (status, str(body["error"])) == (400, "1001")
    assert "task_id" in body["error_text"]
    r = client.download("nope/Transactions.zip")
    assert r.status_code == 404
    assert r.json()["error"] == 1005


def test_download_before_completion_is_not_found(emulator_factory: Any, client_factory: Any) -> None:
    emulator = emulator_factory(transactions=10, task_duration=0.2, hashed_file_style="plain")
    c = client_factory(emulator)
    task_id = c.export()
    (task,) = emulator.export_tasks()  # the name exists before the task completes
    hashed_file = task["hashed_file"]
    assert c.download(hashed_file).status_code == 404
    assert c.wait(task_id)["result"]["hashed_file"] == hashed_file
    assert c.download(hashed_file).status_code == 200


def test_unknown_path_and_method(json_client: Any) -> None:
    url = json_client.emulator.url
    r = json_client.session.post(url + "/api/v1.1/nope", json={})
    assert r.status_code == 404
    assert r.json()["error"] == 1007
    assert "error_text" in r.json()
    r = json_client.session.get(url + json_client.EXPORT)
    assert r.status_code == 405
    assert r.json()["error"] == 1007
    r = json_client.session.get(url + "/")
    assert r.status_code == 404


# --- auth -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdDp0ZXN0", "Bearer", "bearer  "])
def test_auth_required_everywhere(emulator: LoyaltyEmulator, json_client: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    task_id = json_client.export()
    hashed = json_client.wait(task_id)["result"]["hashed_file"]
    calls = [
        ("POST", json_client.EXPORT, json_client.EXPORT_PARAMS),
        ("POST", json_client.STATUS, {"task_id": task_id}),
        ("POST", json_client.ACCOUNT, {**ACCOUNT_BASE, "email": "member0@example.com"}),
        ("GET", json_client.download_path(hashed), None),
    ]
    for method, path, body in calls:
        r = requests.request(method, emulator.url + path, json=body, headers=headers, timeout=10)
        assert r.status_code == 401, path
        assert r.json()["error"] == 1002
        assert emulator.token not in r.text
    # the token never lands in the request log
    assert emulator.token not in json.dumps(emulator.stats())


def test_auth_xml_error_envelope(emulator: LoyaltyEmulator) -> None:
    r = requests.post(
        emulator.url + "/api/v1.1/tasks/status",
        data=b"<xml><task_id>x</task_id></xml>",
        headers={"Content-Type": "application/xml"},
        timeout=10,
    )
    assert r.status_code == 401
    assert b"<error>1002</error>" in r.content
    assert b"<error_text>" in r.content


# --- cursors ----------------------------------------------------------------------------------------
def walk(c: Any, max_batches: int = 50) -> tuple[list[list[str]], list[dict[str, Any]]]:
    batches: list[list[str]] = []
    results: list[dict[str, Any]] = []
    from_id = None
    for _ in range(max_batches):
        result, rows = c.export_batch(**({"from_id": from_id} if from_id else {}))
        assert int(result["total"]) == len(rows)
        batches.append([r[0] for r in rows])
        results.append(result)
        if not result["next_from_id"]:
            return batches, results
        assert result["next_from_id"] != from_id
        from_id = result["next_from_id"]
    raise AssertionError("runaway export loop")


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("mode", ["exclusive", "inclusive", "next_row"])
def test_cursor_modes(emulator_factory: Any, client_factory: Any, mode: str, fmt: str) -> None:
    emulator = emulator_factory(transactions=2500, batch_size=1000, cursor_mode=mode, task_duration=0)
    c = client_factory(emulator, fmt)
    batches, results = walk(c)
    all_ids = [i for b in batches for i in b]
    expected = emulator.expected_ids()
    assert len(batches) == 3
    if mode == "inclusive":
        # the boundary row repeats at the start of each following batch
        assert [len(b) for b in batches] == [1000, 1000, 502]
        assert batches[1][0] == batches[0][-1] == results[0]["next_from_id"]
        assert batches[2][0] == batches[1][-1]
        assert sorted(set(all_ids)) == expected
        assert len(all_ids) == 2502
    else:
        assert [len(b) for b in batches] == [1000, 1000, 500]
        assert all_ids == expected
        boundary = batches[0][-1] if mode == "exclusive" else batches[1][0]
        assert results[0]["next_from_id"] == boundary
    assert results[-1]["next_from_id"] == ""


def test_date_window_is_contiguous(json_client: Any) -> None:
    result, rows = json_client.export_batch(date_from="2023-09-10T00:00:00Z", date_to="2023-09-10T23:59:59Z")
    assert 0 < len(rows) < 1000
    assert result["next_from_id"] == ""
    assert all(r[2].startswith("2023-09-10T") for r in rows)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_empty_period(client: Any) -> None:
    data = client.wait(client.export(date_from="2024-01-01T00:00:00Z", date_to="2024-01-31T00:00:00Z"))
    assert data["status"] == "completed"
    assert str(data["result"]["total"]) == "0"
    assert data["result"]["next_from_id"] == ""
    header, rows, _ = client.read_csv_from_zip(client.download(data["result"]["hashed_file"]).content)
    assert header == list(TRANSACTION_FIELDS)
    assert rows == []


@pytest.mark.parametrize(
    ("style", "name"),
    [
        ("seed", "Transactions_loyalty_123_1_2023-09-01T00 00 00Z_2023-09-30T23 59 59Z.zip"),
        ("colon", "Transactions_loyalty_123_1_2023-09-01T00:00:00Z_2023-09-30T23:59:59Z.zip"),
        ("plain", "Transactions_loyalty_123_1_2023-09-01T00-00-00Z_2023-09-30T23-59-59Z.zip"),
    ],
)
def test_hashed_file_styles(emulator_factory: Any, client_factory: Any, style: str, name: str) -> None:
    c = client_factory(emulator_factory(transactions=50, hashed_file_style=style))
    result, rows = c.export_batch()
    assert result["hashed_file"].split("/", 1)[1] == name
    assert len(rows) == 50
    # the raw (unencoded) form is also decoded to the same file by the server where HTTP allows it
    if style == "colon":
        raw = c.session.get(c.emulator.url + "/api/download/" + result["hashed_file"], timeout=10)
        assert raw.status_code == 200


def test_hashed_file_override(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.config.hashed_file_override = "../../etc/passwd"
    data = json_client.wait(json_client.export())
    assert data["result"]["hashed_file"] == "../../etc/passwd"


# --- determinism ------------------------------------------------------------------------------------
def test_same_seed_same_bytes(emulator_factory: Any, client_factory: Any) -> None:
    contents = []
    for seed in (7, 7, 8):
        c = client_factory(emulator_factory(transactions=1500, seed=seed))
        result = c.wait(c.export())["result"]
        first = c.download(result["hashed_file"]).content
        assert c.download(result["hashed_file"]).content == first  # re-download identical
        contents.append((first, result["next_from_id"]))
    assert contents[0] == contents[1]
    assert contents[0][0] != contents[2][0]


def test_compresslevel(emulator_factory: Any, client_factory: Any) -> None:
    sizes = []
    for level in (0, 9):
        c = client_factory(emulator_factory(transactions=500, zip_compresslevel=level))
        result, rows = c.export_batch()
        sizes.append(len(c.download(result["hashed_file"]).content))
        assert len(rows) == 500
    assert sizes[0] > sizes[1] * 2


# --- control API, stats, config ---------------------------------------------------------------------
def test_control_endpoints(emulator: LoyaltyEmulator, json_client: Any) -> None:
    url = emulator.url + "/_emulator"
    assert requests.get(url + "/health", timeout=5).json()["data"] == {"status": "ok"}
    r = requests.post(url + "/config", json={"batch_size": 10, "cursor_mode": "next_row"}, timeout=5)
    assert r.status_code == 200
    assert r.json()["data"]["batch_size"] == 10
    assert emulator.config.cursor_mode == "next_row"
    r = requests.post(url + "/config", json={"batch_size": 0}, timeout=5)
    assert r.status_code == 400
    assert "batch_size" in r.json()["error_text"]
    r = requests.post(url + "/config", json={"nope": 1}, timeout=5)
    assert r.status_code == 400
    assert emulator.config.batch_size == 10
    _, rows = json_client.export_batch()
    assert len(rows) == 10
    rules = [{"endpoint": "status", "kind": "http_500", "count": 1}]
    assert requests.post(url + "/faults", json=rules, timeout=5).json()["data"][0]["kind"] == "http_500"
    assert requests.get(url + "/faults", timeout=5).json()["data"][0]["count"] == 1
    assert requests.post(url + "/faults", json=[{"endpoint": "x", "kind": "reset"}], timeout=5).status_code == 400
    stats = requests.get(url + "/stats", timeout=5).json()["data"]
    assert stats["requests"]["export"] == 1
    assert stats["requests"]["download"] == 1
    assert stats["export_tasks_created"] == 1
    assert stats["downloads_completed"] == 1
    assert stats["download_bytes"] > 0
    assert stats["download_csv_bytes"] > 0
    entry = next(e for e in stats["request_log"] if e["endpoint"] == "export")
    assert entry["method"] == "POST"
    assert entry["status"] == 200
    assert entry["content_type"].startswith("application/json")
    assert requests.post(url + "/reset", timeout=5).status_code == 200
    stats = emulator.stats()
    assert stats["export_tasks_created"] == 0
    assert stats["tasks"] == 0
    assert [e["path"] for e in stats["request_log"]] == ["/_emulator/reset"]  # logged after the reset
    assert emulator.faults.rules()  # faults are kept by reset


def test_connections_counted_and_keepalive(emulator: LoyaltyEmulator, json_client: Any) -> None:
    before = emulator.stats()["connections"]
    for _ in range(5):
        json_client.call(json_client.STATUS, {"task_id": "task_x"})
    assert emulator.stats()["connections"] - before == 1  # one keep-alive connection
    requests.get(emulator.url + "/_emulator/health", timeout=5)
    assert emulator.stats()["connections"] - before == 2


def test_many_concurrent_keepalive_pollers(emulator_factory: Any, client_factory: Any) -> None:
    emulator = emulator_factory(transactions=100, task_duration=0.5)
    pollers = 200
    barrier = threading.Barrier(pollers)

    def poll(_: int) -> str:
        c = client_factory(emulator)
        barrier.wait(timeout=30)
        data = c.wait(c.export(), timeout=30)
        return str(data["status"])

    with ThreadPoolExecutor(pollers) as pool:
        statuses = list(pool.map(poll, range(pollers)))
    assert statuses == ["completed"] * pollers
    stats = emulator.stats()
    assert stats["export_tasks_created"] == pollers
    assert stats["connections"] == pollers  # every poller kept its connection alive
    assert stats["responses_by_status"] == {"200": stats["requests_total"]}


def test_stop_closes_keepalive_connections() -> None:
    emulator = LoyaltyEmulator(EmulatorConfig(transactions=10)).start()
    session = requests.Session()
    session.get(emulator.url + "/_emulator/health", timeout=5)
    assert emulator.stats()["open_connections"] == 1
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 3
    with pytest.raises(requests.ConnectionError):
        session.get(emulator.url + "/_emulator/health", timeout=5)
    emulator.stop()  # idempotent


def test_config_validation() -> None:
    for bad in (
        {"cursor_mode": "sideways"},
        {"batch_size": 0},
        {"transactions": "5"},
        {"zip_compresslevel": 10},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EmulatorConfig(**bad)
    config = EmulatorConfig.from_dict({"batch_size": 5, "task_duration": 1})
    assert config.batch_size == 5
    assert config.to_dict()["task_duration"] == 1


# --- pytest plugin ----------------------------------------------------------------------------------
def test_plugin_fixtures(loyalty_connection: LoyaltyEmulator) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_LOYALTY_DEFAULT"])
    assert conn == {
        "conn_type": "loyalty",
        "host": loyalty_connection.url,
        "password": loyalty_connection.token,
        "extra": {"content_type": "json"},
    }
    assert requests.get(conn["host"] + "/_emulator/health", timeout=5).status_code == 200


# --- TLS --------------------------------------------------------------------------------------------
def test_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:  # pragma: no cover
        pytest.skip(f"openssl unavailable: {exc}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with LoyaltyEmulator(EmulatorConfig(transactions=20, task_duration=0), ssl_context=context) as emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        headers = {"Authorization": f"Bearer {emulator.token}"}
        r = requests.post(emulator.url + "/api/v1.1/loyalty/transactions_export", json={
            "loyalty_program_id": 123, "points_currency_iid": 1,
            "date_from": "2023-09-01T00:00:00Z", "date_to": "2023-09-30T23:59:59Z"},
            headers=headers, verify=str(cert), timeout=10)  # fmt: skip
        assert r.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(emulator.url + "/_emulator/health", timeout=5)  # untrusted cert


def test_zip64_when_the_csv_may_exceed_4_gib(
    emulator_factory: Any, client_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client_factory(emulator_factory(transactions=300, row_padding=100))
    result = c.wait(c.export())["result"]
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP64_LIMIT", 1000)  # every export now "may exceed" the limit
        content = c.download(result["hashed_file"]).content
    _, rows, _ = c.read_csv_from_zip(content)
    assert len(rows) == 300
    assert b"PK\x06\x06" in content  # ZIP64 end of central directory record


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("loyalty-emulator")
    if not script.exists() and shutil.which("loyalty-emulator") is None:
        pytest.skip("package not installed with its console script")
    result = subprocess.run(
        [str(script if script.exists() else "loyalty-emulator"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--cursor-mode" in result.stdout
