"""The /_emulator/ control endpoints over real HTTP."""

from __future__ import annotations

from typing import Any

import requests

from airflow_provider_loyalty.testing import LoyaltyEmulator


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


def test_tasks_and_expected_ids_endpoints(emulator: LoyaltyEmulator, json_client: Any) -> None:
    url = emulator.url + "/_emulator"
    task_id = json_client.export(date_from="2023-09-10T00:00:00Z", date_to="2023-09-10T23:59:59Z")
    (task,) = requests.get(url + "/tasks", timeout=5).json()["data"]
    assert task["task_id"] == task_id
    assert task["period"] == "2023-09-10T00:00:00Z/2023-09-10T23:59:59Z"
    assert task["from_id"] is None
    assert task["expired"] is False
    query = {"date_from": "2023-09-10T00:00:00Z", "date_to": "2023-09-10T23:59:59Z"}
    data = requests.get(url + "/expected_ids", params=query, timeout=5).json()["data"]
    assert data["ids"] == emulator.expected_ids(**query)
    assert data["count"] == task["total"] == len(data["ids"]) > 0
    everything = requests.get(url + "/expected_ids", timeout=5).json()["data"]
    assert everything["count"] == emulator.config.transactions
    bad = requests.get(url + "/expected_ids", params={"date_to": "tomorrow"}, timeout=5)
    assert bad.status_code == 400
    assert bad.json()["error"] == 1001


def test_expire_endpoint(emulator: LoyaltyEmulator, json_client: Any) -> None:
    url = emulator.url + "/_emulator/expire"
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    assert requests.post(url, json={"task_ids": "all"}, timeout=5).status_code == 400
    assert requests.post(url, timeout=5).json()["data"] == {"expired": 1}
    assert json_client.download(hashed).json()["error"] == 1008
    assert emulator.stats()["downloads_gone"] == 1


def test_new_fields_settable_at_runtime(emulator: LoyaltyEmulator) -> None:
    changes = {
        "csv_style": "stray_quotes",
        "csv_bom": True,
        "csv_line_ending": "lf",
        "zip_members": 4,
        "empty_export_style": "no_member",
        "file_ttl": 30,
        "expired_file_status": 200,
        "max_concurrent_requests": 8,
        "concurrency_retry_after": 0.2,
        "prebuilt_files": True,
        "progress_style": "decimal",
    }
    data = requests.post(emulator.url + "/_emulator/config", json=changes, timeout=5).json()["data"]
    assert {k: data[k] for k in changes} == changes
    assert emulator.config.max_concurrent_requests == 8
    reset = requests.post(emulator.url + "/_emulator/config", json={"max_concurrent_requests": None}, timeout=5)
    assert reset.json()["data"]["max_concurrent_requests"] is None
