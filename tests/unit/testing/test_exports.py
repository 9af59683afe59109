"""Export tasks over real HTTP: lifecycle, status, cursors, periods, file names."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests

from airflow_provider_loyalty.testing import EMPTY_EXPORT_STYLES, TRANSACTION_FIELDS, LoyaltyEmulator


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


def test_json_responses_match_the_documented_shape(json_client: Any) -> None:
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


def test_timezone_offsets_and_the_documentation_example_from_id(json_client: Any) -> None:
    task = json_client.export(date_from="2023-09-01T02:00:00+02:00", date_to="2023-09-30T23:59:59.5-00:00")
    assert json_client.wait(task)["result"]["total"] == 1000
    # The documentation's example from_id is not hex, but is UUID-shaped: accepted (sorts after all our ids).
    result, rows = json_client.export_batch(from_id="a1b2c3d4-e5f6-7890-g1h2-i3j4k5l6m7n8")
    assert result["total"] == 0
    assert rows == []
    assert result["next_from_id"] == ""


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
        ("encoded", "Transactions_loyalty_123_1_2023-09-01T00%2000%2000Z_2023-09-30T23%2059%2059Z.zip"),
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


@pytest.mark.parametrize(("created_under", "changed_to"), [("seed", "encoded"), ("encoded", "seed")])
def test_a_tasks_hashed_file_style_is_the_one_when_it_was_created(
    emulator_factory: Any, client_factory: Any, created_under: str, changed_to: str
) -> None:
    """Documented as captured per task: a task created under ``seed`` reported an encoded name
    after a change, and that name was not found."""
    c = client_factory(emulator_factory(transactions=10, hashed_file_style=created_under))
    task_id = c.export()
    c.emulator.config.hashed_file_style = changed_to
    hashed_file = c.wait(task_id)["result"]["hashed_file"]
    assert ("%20" in hashed_file) is (created_under == "encoded")
    response = c.download(hashed_file)
    assert response.status_code == 200, response.text


def test_hashed_file_override(emulator: LoyaltyEmulator, json_client: Any) -> None:
    emulator.config.hashed_file_override = "../../etc/passwd"
    data = json_client.wait(json_client.export())
    assert data["result"]["hashed_file"] == "../../etc/passwd"


# --- created_at timelines and periods ---------------------------------------------------------------
TIMELINE = [
    "2023-09-29T23:59:59Z",
    "2023-09-30T00:00:00Z",
    "2023-09-30T12:00:00Z",
    "2023-09-30T12:00:00Z",
    "2023-09-30T23:59:59Z",
    "2023-10-01T00:00:00Z",
]


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize(
    ("date_from", "date_to", "indexes"),
    [
        ("2023-09-30T00:00:00Z", "2023-09-30T23:59:59Z", [1, 2, 3, 4]),
        ("2023-09-30T00:00:00Z", "2023-09-30T00:00:00Z", [1]),  # the noon rows are not in it
        ("2023-09-01T00:00:00Z", "2023-09-30T00:00:00Z", [0, 1]),
        ("2023-09-30T12:00:00Z", "2023-09-30T12:00:00Z", [2, 3]),  # both ends inclusive
        ("2023-09-30T12:00:00.5Z", "2023-09-30T23:59:58Z", []),
        ("2023-09-30T14:00:00+02:00", "2023-10-01T00:00:00Z", [2, 3, 4, 5]),
    ],
)
def test_timeline_export_holds_exactly_the_period(
    emulator_factory: Any, client_factory: Any, fmt: str, date_from: str, date_to: str, indexes: list[int]
) -> None:
    emulator = emulator_factory(transactions=len(TIMELINE), created_at_timeline=TIMELINE, batch_size=2)
    c = client_factory(emulator, fmt)
    rows: list[list[str]] = []
    from_id = None
    for _ in range(10):
        result, batch = c.export_batch(
            date_from=date_from, date_to=date_to, **({"from_id": from_id} if from_id else {})
        )
        rows += batch
        from_id = result["next_from_id"]
        if not from_id:
            break
    assert [r[2] for r in rows] == [TIMELINE[i] for i in indexes]
    assert [r[0] for r in rows] == emulator.expected_ids(date_from, date_to)
    assert len(emulator.expected_ids(date_from, date_to)) == len(indexes)


def test_fourteen_daily_intervals_each_export_their_expected_ids(emulator_factory: Any, client_factory: Any) -> None:
    days = 14
    emulator = emulator_factory(
        transactions=days * 23,
        period_start="2024-01-01T00:00:00Z",
        period_end="2024-01-14T23:59:59Z",
        batch_size=10,
        task_duration=0,
    )
    c = client_factory(emulator)
    seen: list[str] = []
    for day in range(1, days + 1):
        date_from, date_to = f"2024-01-{day:02d}T00:00:00Z", f"2024-01-{day:02d}T23:59:59Z"
        batches, _ = walk_period(c, date_from, date_to)
        ids = [i for batch in batches for i in batch]
        expected = emulator.expected_ids(date_from, date_to)
        assert ids == expected, day
        assert 20 <= len(expected) <= 26
        seen += ids
        assert emulator.stats()["export_tasks_by_period"][f"{date_from}/{date_to}"] == len(batches)
    assert seen == emulator.expected_ids()  # every transaction once, no day lost at a boundary
    stats = emulator.stats()
    assert len(stats["export_tasks_by_period"]) == days
    assert sum(stats["export_tasks_by_period"].values()) == stats["export_tasks_created"]


def walk_period(c: Any, date_from: str, date_to: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """All batches of one period (cursor loop), as in :func:`walk`."""
    batches: list[list[str]] = []
    results: list[dict[str, Any]] = []
    from_id = None
    for _ in range(50):
        cursor = {"from_id": from_id} if from_id else {}
        result, rows = c.export_batch(date_from=date_from, date_to=date_to, **cursor)
        batches.append([r[0] for r in rows])
        results.append(result)
        from_id = result["next_from_id"]
        if not from_id:
            return batches, results
    raise AssertionError("runaway export loop")


def test_timeline_can_be_set_at_runtime_and_is_validated(emulator: LoyaltyEmulator, json_client: Any) -> None:
    url = emulator.url + "/_emulator/config"
    bad = requests.post(url, json={"created_at_timeline": ["2023-09-02T00:00:00Z", "2023-09-01T00:00:00Z"]}, timeout=5)
    assert bad.status_code == 400
    assert "created_at_timeline" in bad.json()["error_text"]
    assert "non-decreasing" in bad.json()["error_text"]
    good = {"transactions": 2, "created_at_timeline": ["2023-09-05T00:00:00Z", "2023-09-06T00:00:00Z"]}
    assert requests.post(url, json=good, timeout=5).status_code == 200
    _, rows = json_client.export_batch(date_from="2023-09-06T00:00:00Z", date_to="2023-09-06T00:00:00Z")
    assert [r[2] for r in rows] == ["2023-09-06T00:00:00Z"]


def test_period_keys_are_utc(emulator: LoyaltyEmulator, json_client: Any) -> None:
    json_client.export(date_from="2023-09-01T02:00:00+02:00", date_to="2023-09-02T00:00:00.250Z")
    json_client.export(date_from="2023-09-01T00:00:00Z", date_to="2023-09-02T00:00:00.25Z")
    assert emulator.stats()["export_tasks_by_period"] == {"2023-09-01T00:00:00Z/2023-09-02T00:00:00.25Z": 2}


# --- empty periods ----------------------------------------------------------------------------------
EMPTY = {"date_from": "2024-01-01T00:00:00Z", "date_to": "2024-01-31T00:00:00Z"}


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("style", EMPTY_EXPORT_STYLES)
def test_empty_export_styles(emulator_factory: Any, client_factory: Any, style: str, fmt: str) -> None:
    emulator = emulator_factory(transactions=100, empty_export_style=style)
    c = client_factory(emulator, fmt)
    data = c.wait(c.export(**EMPTY))
    result = data["result"]
    assert data["status"] == "completed"
    assert str(result["total"]) == "0"
    assert result["next_from_id"] == ""
    if style == "empty_hashed_file":
        assert result["hashed_file"] == ""
        return
    if style == "missing_hashed_file":
        assert "hashed_file" not in result
        assert set(result) == {"is_api", "loyalty_id", "next_from_id", "points_currency_iid", "total"}
        return
    download = c.download(result["hashed_file"])
    if style == "file_not_found":
        assert (download.status_code, download.json()["error"]) == (404, 1005)
        return
    if style == "zero_byte_file":
        assert (download.status_code, download.content) == (200, b"")
        return
    members = c.zip_members(download.content)
    if style == "no_member":
        assert members == []
    elif style == "zero_byte_csv":
        assert [(name.endswith(".csv"), data) for name, data in members] == [(True, b"")]
    else:
        ((_, content),) = members
        assert c.csv_rows(content) == [list(TRANSACTION_FIELDS)]


def test_empty_export_style_applies_only_to_empty_batches(emulator_factory: Any, client_factory: Any) -> None:
    c = client_factory(emulator_factory(transactions=100, empty_export_style="missing_hashed_file"))
    result, rows = c.export_batch()
    assert result["total"] == len(rows) == 100


# --- progress ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_decimal_progress(emulator_factory: Any, client_factory: Any, fmt: str) -> None:
    emulator = emulator_factory(transactions=10, task_duration=30, progress_style="decimal")
    c = client_factory(emulator, fmt)
    task_id = c.export()
    deadline = time.monotonic() + 20
    while True:  # poll until progress is past its first tenth of a percent
        _, body = c.call(c.STATUS, {"task_id": task_id})
        progress = body["data"]["progress"]
        if float(progress) > 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert body["data"]["status"] == "in_progress"
    if fmt == "json":
        assert isinstance(progress, float)
    assert re.fullmatch(r"\d{1,2}\.\d", str(progress)), progress
    emulator.config.task_duration = 0
    data = c.wait(c.export())
    assert str(data["progress"]) == "100.0"


# --- expiring files ---------------------------------------------------------------------------------
def test_file_ttl_makes_a_completed_file_gone(emulator_factory: Any, client_factory: Any) -> None:
    emulator = emulator_factory(transactions=20, task_duration=0, file_ttl=2.0)
    c = client_factory(emulator)
    data = c.wait(c.export())
    hashed = data["result"]["hashed_file"]
    assert c.download(hashed).status_code == 200  # fresh
    deadline = time.monotonic() + 10
    while (response := c.download(hashed)).status_code == 200:
        assert time.monotonic() < deadline, "the file never expired"
        time.sleep(0.05)
    assert response.status_code == 404
    assert response.json() == {"error": 1008, "error_text": "File expired"}
    _, status = c.call(c.STATUS, {"task_id": emulator.export_tasks()[0]["task_id"]})
    assert status["data"]["status"] == "completed"  # the status still points at the gone file
    assert emulator.stats()["downloads_gone"] >= 1


@pytest.mark.parametrize("accept", ["application/json", "application/xml"])
def test_expired_file_answered_with_http_200(emulator_factory: Any, client_factory: Any, accept: str) -> None:
    emulator = emulator_factory(transactions=20, task_duration=0, expired_file_status=200)
    c = client_factory(emulator)
    hashed = c.wait(c.export())["result"]["hashed_file"]
    assert emulator.expire_files() == 1
    response = c.session.get(emulator.url + c.download_path(hashed), headers={"Accept": accept}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(accept)
    if accept == "application/json":
        assert response.json() == {"error": 1008, "error_text": "File expired"}
    else:
        assert b"<error>1008</error>" in response.content
        assert b"<error_text>File expired</error_text>" in response.content


def test_expire_files_by_task(emulator: LoyaltyEmulator, json_client: Any) -> None:
    first, second = json_client.export(), json_client.export()
    files = [json_client.wait(t)["result"]["hashed_file"] for t in (first, second)]
    r = requests.post(emulator.url + "/_emulator/expire", json={"task_ids": [first, "task_unknown"]}, timeout=5)
    assert r.json()["data"] == {"expired": 1}
    assert json_client.download(files[0]).status_code == 404
    assert json_client.download(files[1]).status_code == 200
    assert [t["expired"] for t in emulator.export_tasks()] == [True, False]
    # a task created again from the same cursor has a fresh file
    assert json_client.download(json_client.wait(json_client.export())["result"]["hashed_file"]).status_code == 200
