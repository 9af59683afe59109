"""The HTTP layer: routing, methods, auth, keep-alive connections, shutdown, TLS."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator


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


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdDp0ZXN0", "Bearer", "bearer  "])
def test_auth_required_everywhere(emulator: LoyaltyEmulator, json_client: Any, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    task_id = json_client.export()
    hashed = json_client.wait(task_id)["result"]["hashed_file"]
    calls = [
        ("POST", json_client.EXPORT, json_client.EXPORT_PARAMS),
        ("POST", json_client.STATUS, {"task_id": task_id}),
        (
            "POST",
            json_client.ACCOUNT,
            {
                "loyalty_program_id": 123,
                "points_currency_eid": "bonus_points",
                "matching": "email",
                "email": "member0@example.com",
            },
        ),
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


# --- max_concurrent_requests ------------------------------------------------------------------------
def test_max_concurrent_requests_answers_429(emulator_factory: Any, client_factory: Any) -> None:
    emulator = emulator_factory(transactions=10, max_concurrent_requests=2, concurrency_retry_after=0.5)
    task_id = client_factory(emulator).export()
    emulator.set_faults([FaultRule(endpoint="status", kind="slow", params={"seconds": 2.0})])  # all six overlap
    callers = 6
    barrier = threading.Barrier(callers)

    def poll(_: int) -> requests.Response:
        c = client_factory(emulator)
        barrier.wait(timeout=30)
        return c.post(c.STATUS, {"task_id": task_id})  # type: ignore[no-any-return]

    with ThreadPoolExecutor(callers) as pool:
        responses = list(pool.map(poll, range(callers)))
    refused = [r for r in responses if r.status_code == 429]
    assert {r.status_code for r in responses} == {200, 429}
    assert 1 <= len(refused) <= callers - 2
    for r in refused:
        assert r.headers["Retry-After"] == "0.5"
        assert r.json()["error"] == 1006
        assert "more than 2 concurrent requests" in r.json()["error_text"]
    stats = wait_for_idle(emulator)
    assert stats["concurrency_rejections"] == len(refused)
    assert stats["requests_in_flight_peak"] == 2
    assert [e["fault"] for e in stats["request_log"] if e["status"] == 429] == ["max_concurrent_requests"] * len(
        refused
    )
    emulator.set_faults([])
    c = client_factory(emulator)
    assert c.post(c.STATUS, {"task_id": task_id}).status_code == 200  # nothing stays held


def test_concurrency_counts_streaming_downloads(emulator_factory: Any, client_factory: Any) -> None:
    emulator = emulator_factory(transactions=2000, batch_size=2000, max_concurrent_requests=1)
    c = client_factory(emulator)
    hashed = c.wait(c.export())["result"]["hashed_file"]
    emulator.set_faults([FaultRule(endpoint="download", kind="slow", count=1, params={"seconds": 0, "during": 3.0})])
    with c.session.get(emulator.url + c.download_path(hashed), stream=True, timeout=30) as download:
        assert download.status_code == 200
        other = client_factory(emulator)
        assert other.post(other.STATUS, {"task_id": "task_x"}).status_code == 429  # the download holds the slot
        requests.get(emulator.url + "/_emulator/health", timeout=5).raise_for_status()  # control is not limited
        assert len(download.content) > 0
    wait_for_idle(emulator)
    assert other.post(other.STATUS, {"task_id": "task_x"}).status_code == 404


def wait_for_idle(emulator: LoyaltyEmulator, timeout: float = 10.0) -> dict[str, Any]:
    """Poll until no API request is in flight (a handler releases its slot after the last byte)."""
    deadline = time.monotonic() + timeout
    while (stats := emulator.stats())["requests_in_flight"]:
        assert time.monotonic() < deadline, f"{stats['requests_in_flight']} requests still in flight"
        time.sleep(0.01)
    return stats
