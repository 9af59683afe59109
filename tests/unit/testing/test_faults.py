"""Fault injection of the emulator, each kind over real HTTP."""

from __future__ import annotations

import io
import socket
import time
import zipfile
from typing import Any

import pytest
import requests

from airflow_provider_loyalty.testing import FAULT_KINDS, FaultRule, LoyaltyEmulator


def test_fault_kinds_are_the_documented_ones() -> None:
    assert set(FAULT_KINDS) == {
        "http_500",
        "http_503",
        "rate_limit",
        "reset",
        "slow",
        "truncate",
        "api_error",
        "task_failed",
        "task_never_finishes",
        "download_gone",
        "download_error_envelope",
        "short_batch",
        "zip_bomb_members",
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"endpoint": "nope", "kind": "reset"},
        {"endpoint": "*", "kind": "explode"},
        {"endpoint": "*", "kind": "reset", "count": -1},
        {"endpoint": "*", "kind": "reset", "probability": 1.5},
        {"endpoint": "*", "kind": "reset", "count": 1, "probability": 0.5},
        {"endpoint": "*", "kind": "reset", "extra": 1},
    ],
)
def test_rule_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="FaultRule"):
        FaultRule.from_dict(bad)


def test_http_500_count(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="status", kind="http_500", count=2)])
    task_id = json_client.export()  # export is not affected
    for _ in range(2):
        status, body = json_client.call(json_client.STATUS, {"task_id": task_id})
        assert (status, body["error"]) == (500, 1000)
        assert body["error_text"]
    assert json_client.wait(task_id)["status"] == "completed"
    stats = emulator.stats()
    assert stats["faults_applied"] == {"http_500": 2}
    assert stats["responses_by_status"]["500"] == 2
    assert [e["fault"] for e in stats["request_log"] if e["status"] == 500] == ["http_500", "http_500"]


def test_http_503_xml_with_retry_after(emulator: LoyaltyEmulator, client_factory: Any) -> None:
    c = client_factory(emulator, "xml")
    emulator.set_faults([FaultRule(endpoint="*", kind="http_503", count=1, params={"retry_after": 2})])
    response = c.post(c.EXPORT, c.EXPORT_PARAMS)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert b"<error>1000</error>" in response.content
    assert c.post(c.EXPORT, c.EXPORT_PARAMS).status_code == 200


@pytest.mark.parametrize(("retry_after", "header"), [(None, "1"), (0.1, "0.1"), (3, "3")])
def test_rate_limit(emulator: LoyaltyEmulator, json_client: Any, retry_after: float | None, header: str) -> None:
    params = {} if retry_after is None else {"retry_after": retry_after}
    emulator.set_faults([FaultRule(endpoint="account", kind="rate_limit", count=1, params=params)])
    body = {
        "loyalty_program_id": 123,
        "points_currency_iid": 1,
        "matching": "profile_id",
        "profile_id": "profile_1",
    }
    response = json_client.post(json_client.ACCOUNT, body)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == header
    assert response.json()["error"] == 1006
    assert json_client.post(json_client.ACCOUNT, body).status_code == 200


def test_reset(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="export", kind="reset", count=1)])
    with pytest.raises(requests.ConnectionError):
        json_client.post(json_client.EXPORT, json_client.EXPORT_PARAMS)
    assert json_client.post(json_client.EXPORT, json_client.EXPORT_PARAMS).status_code == 200
    stats = emulator.stats()
    assert stats["requests"]["export"] == 2
    assert stats["faults_applied"] == {"reset": 1}
    assert stats["export_tasks_created"] == 1


def test_reset_on_download(emulator: LoyaltyEmulator, json_client: Any) -> None:
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    emulator.set_faults([FaultRule(endpoint="download", kind="reset", count=1)])
    with pytest.raises(requests.ConnectionError):
        json_client.download(hashed)
    assert json_client.download(hashed).status_code == 200


def test_slow(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="status", kind="slow", count=1, params={"seconds": 0.3})])
    task_id = json_client.export()
    started = time.monotonic()
    status, _ = json_client.call(json_client.STATUS, {"task_id": task_id})
    assert status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    json_client.call(json_client.STATUS, {"task_id": task_id})
    assert time.monotonic() - started < 0.3
    emulator.set_faults([FaultRule(endpoint="status", kind="slow", params={"seconds": 0, "during": 1.0})])
    # a client read timeout fires in the middle of the body (requests reports it as ConnectionError)
    with pytest.raises((requests.Timeout, requests.ConnectionError), match="timed out"):
        json_client.session.post(
            emulator.url + json_client.STATUS, json={"task_id": task_id}, timeout=(5, 0.3), stream=False
        )


def test_slow_download_body(emulator: LoyaltyEmulator, json_client: Any) -> None:
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    emulator.set_faults([FaultRule(endpoint="download", kind="slow", params={"seconds": 0.1, "during": 0.3})])
    started = time.monotonic()
    response = json_client.download(hashed)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4
    _, rows, _ = json_client.read_csv_from_zip(response.content)
    assert len(rows) == 1000


def test_truncate_json(emulator: LoyaltyEmulator, json_client: Any) -> None:
    task_id = json_client.export()
    emulator.set_faults([FaultRule(endpoint="status", kind="truncate", count=1)])
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        json_client.post(json_client.STATUS, {"task_id": task_id})
    assert json_client.wait(task_id)["status"] == "completed"


@pytest.mark.parametrize("after_bytes", [100, 10_000_000])
def test_truncate_download(emulator: LoyaltyEmulator, json_client: Any, after_bytes: int) -> None:
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    full = json_client.download(hashed).content
    emulator.set_faults([FaultRule(endpoint="download", kind="truncate", count=1, params={"after_bytes": after_bytes})])
    received = bytearray()
    url = emulator.url + json_client.download_path(hashed)
    with json_client.session.get(url, stream=True, timeout=30) as r:
        assert r.status_code == 200
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
            for chunk in r.iter_content(8192):
                received += chunk
    assert len(received) < len(full)
    assert full.startswith(bytes(received))
    assert json_client.download(hashed).content == full


def test_api_error(emulator: LoyaltyEmulator, client_factory: Any) -> None:
    for fmt in ("json", "xml"):
        c = client_factory(emulator, fmt)
        rule = FaultRule(endpoint="export", kind="api_error", count=1, params={"code": 4242, "text": "Quota spent"})
        emulator.set_faults([rule])
        status, body = c.call(c.EXPORT, c.EXPORT_PARAMS)
        assert (status, str(body["error"]), body["error_text"]) == (200, "4242", "Quota spent")
        assert "data" not in body


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_task_failed(emulator: LoyaltyEmulator, client_factory: Any, fmt: str) -> None:
    c = client_factory(emulator, fmt)
    task_id = c.export()
    other = c.export()
    emulator.set_faults(
        [
            FaultRule(
                endpoint="status",
                kind="task_failed",
                count=1,
                params={"status": "error", "text": "disk full"},
            )
        ]
    )
    data = c.wait(task_id)
    assert data["status"] == "error"
    assert data["error_text"] == "disk full"
    assert data["message"] == "disk full"
    assert "result" not in data
    assert c.wait(task_id)["status"] == "error"  # sticky
    assert c.wait(other)["status"] == "completed"  # the count was used up by the first task
    assert emulator.stats()["faults_applied"] == {"task_failed": 1}


def test_task_failed_default_status(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="*", kind="task_failed")])
    data = json_client.wait(json_client.export())
    assert data["status"] == "failed"
    assert data["error_text"]


def test_task_never_finishes(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="export", kind="task_never_finishes", count=1)])
    stuck = json_client.export()
    normal = json_client.export()
    assert json_client.wait(normal)["status"] == "completed"
    deadline = time.monotonic() + 10 * emulator.config.task_duration
    while time.monotonic() < deadline:
        _, body = json_client.call(json_client.STATUS, {"task_id": stuck})
        assert body["data"]["status"] == "in_progress"
        assert body["data"]["progress"] <= 99
        time.sleep(0.02)
    emulator.set_faults([])
    assert json_client.call(json_client.STATUS, {"task_id": stuck})[1]["data"]["status"] == "in_progress"


def test_task_never_finishes_pinned_ids(emulator: LoyaltyEmulator, json_client: Any) -> None:
    task_id = json_client.export()
    assert json_client.wait(task_id)["status"] == "completed"
    rule = FaultRule(endpoint="status", kind="task_never_finishes", params={"task_ids": [task_id]})
    emulator.set_faults([rule])
    assert json_client.call(json_client.STATUS, {"task_id": task_id})[1]["data"]["status"] == "in_progress"
    assert json_client.wait(json_client.export())["status"] == "completed"  # new tasks unaffected
    emulator.set_faults([])
    assert json_client.wait(task_id)["status"] == "completed"


def test_probability_is_deterministic(emulator_factory: Any, client_factory: Any) -> None:
    patterns = []
    for seed in (3, 3, 4):
        emulator = emulator_factory(transactions=10, seed=seed)
        emulator.set_faults([{"endpoint": "status", "kind": "http_500", "probability": 0.5}])
        c = client_factory(emulator)
        patterns.append(tuple(c.post(c.STATUS, {"task_id": "task_x"}).status_code for _ in range(40)))
    assert patterns[0] == patterns[1] != patterns[2]
    assert set(patterns[0]) == {404, 500}


def test_first_matching_rule_wins_and_wildcard(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults(
        [
            FaultRule(endpoint="status", kind="rate_limit", count=1, params={"retry_after": 0.1}),
            FaultRule(endpoint="*", kind="http_503", count=2),
        ]
    )
    codes = [json_client.post(json_client.STATUS, {"task_id": "task_x"}).status_code for _ in range(4)]
    assert codes == [429, 503, 503, 404]
    assert emulator.faults.remaining() == [0, 0]


def test_reset_is_a_tcp_rst(emulator: LoyaltyEmulator) -> None:
    emulator.set_faults([FaultRule(endpoint="status", kind="reset", count=1)])
    body = b'{"task_id": "task_x"}'
    request = (
        b"POST /api/v1.1/tasks/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + emulator.token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(request)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass


@pytest.mark.parametrize(
    "bad",
    [
        {"endpoint": "download", "kind": "short_batch", "params": {"downloads": 0}},
        {"endpoint": "download", "kind": "zip_bomb_members", "params": {"members": "64"}},
        {"endpoint": "download", "kind": "zip_bomb_members", "params": {"byte": "00"}},
        {"endpoint": "download", "kind": "download_gone", "params": {"format": "yaml"}},
        {"endpoint": "download", "kind": "download_error_envelope", "params": {"http_status": True}},
    ],
)
def test_download_kind_params_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"FaultRule\.params"):
        FaultRule.from_dict(bad)


def test_failed_task_error_fields_are_xml_text(emulator: LoyaltyEmulator, client_factory: Any) -> None:
    c = client_factory(emulator, "xml")
    task_id = c.export()
    emulator.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "Disk full"})])
    raw = c.post(c.STATUS, {"task_id": task_id}).content
    assert b"<status>failed</status>" in raw
    assert b"<error_text>Disk full</error_text>" in raw
    assert b"<message>Disk full</message>" in raw


@pytest.mark.parametrize(
    ("params", "status", "accept"),
    [({}, 404, "json"), ({"http_status": 200, "format": "xml"}, 200, "xml"), ({"http_status": 410}, 410, "json")],
)
def test_download_gone(
    emulator: LoyaltyEmulator, json_client: Any, params: dict[str, Any], status: int, accept: str
) -> None:
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    emulator.set_faults([FaultRule(endpoint="download", kind="download_gone", count=1, params=params)])
    response = json_client.download(hashed)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith(f"application/{accept}")
    if accept == "json":
        assert response.json() == {"error": 1008, "error_text": "File expired"}
    else:
        assert b"<error>1008</error>" in response.content
        assert b"<error_text>File expired</error_text>" in response.content
    assert json_client.download(hashed).status_code == 200  # one request only, unlike expire_files()
    assert emulator.stats()["faults_applied"] == {"download_gone": 1}


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_download_error_envelope(emulator: LoyaltyEmulator, json_client: Any, fmt: str) -> None:
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    rule = FaultRule(
        endpoint="download",
        kind="download_error_envelope",
        count=1,
        params={"code": 4001, "text": "Export file is being regenerated", "format": fmt},
    )
    emulator.set_faults([rule])
    response = json_client.download(hashed)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(f"application/{fmt}")
    if fmt == "json":
        assert response.json() == {"error": 4001, "error_text": "Export file is being regenerated"}
    else:
        assert response.content.startswith(b"<xml>")
        assert b"<error>4001</error><error_text>Export file is being regenerated</error_text>" in response.content
    assert not response.content.startswith(b"PK")
    assert json_client.download(hashed).content.startswith(b"PK")
    assert emulator.stats()["faults_applied"] == {"download_error_envelope": 1}


def test_short_batch_once_per_batch(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="download", kind="short_batch")])
    first = json_client.wait(json_client.export())["result"]

    def rows(result: dict[str, Any]) -> list[list[str]]:
        return list(json_client.read_csv_from_zip(json_client.download(result["hashed_file"]).content)[1])

    short = rows(first)
    assert len(short) == first["total"] - 1 == 999  # verification must fail
    full = rows(first)
    assert len(full) == 1000  # the same task downloaded again is complete
    assert [r[0] for r in short] == [r[0] for r in full[:-1]]
    again = json_client.wait(json_client.export())["result"]  # re-created from the same (absent) cursor
    assert len(rows(again)) == 1000
    second = json_client.wait(json_client.export(from_id=first["next_from_id"]))["result"]
    assert len(rows(second)) == 999  # another batch: its own first download is short
    assert emulator.stats()["faults_applied"] == {"short_batch": 2}


def test_short_batch_downloads_param(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.set_faults([FaultRule(endpoint="download", kind="short_batch", params={"downloads": 2})])
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    counts = [len(json_client.read_csv_from_zip(json_client.download(hashed).content)[1]) for _ in range(3)]
    assert counts == [999, 999, 1000]


def test_zip_bomb_members(emulator: LoyaltyEmulator, json_client: Any) -> None:
    hashed = json_client.wait(json_client.export())["result"]["hashed_file"]
    emulator.set_faults([FaultRule(endpoint="download", kind="zip_bomb_members", count=1, params={"members": 20})])
    content = json_client.download(hashed).content
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        infos = archive.infolist()
        assert archive.testzip() is None
    csv_member, *filler = infos
    assert csv_member.filename.endswith(".csv")
    assert len(filler) == 20
    for info in filler:
        assert info.file_size == 1_048_000 < 1 << 20  # each just under 1 MiB
        assert info.file_size / info.compress_size > 900
    assert len(content) < 200_000  # 20 MiB unpacked
    normal = json_client.download(hashed).content
    with zipfile.ZipFile(io.BytesIO(normal)) as archive:
        assert len(archive.namelist()) == 1
    assert emulator.stats()["faults_applied"] == {"zip_bomb_members": 1}
