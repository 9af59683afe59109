"""LoyaltyHook against the emulator over loopback HTTP, in JSON and in XML."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import time
import zipfile
from typing import Any

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyCursorError,
    LoyaltyError,
    LoyaltyExportTaskFailed,
    LoyaltyNotFoundError,
    LoyaltyResponseError,
    LoyaltyTlsError,
    LoyaltyTransientError,
    LoyaltyUnsafeDataError,
    LoyaltyValidationError,
)
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.utils.protocol import DOWNLOAD_PREFIX, EXPORT_PATH, STATUS_PATH
from tests.reliability.support import fake_api, loopback_server, send
from tests.support.helpers import point_connection_at, requests_seen, wait_for

PERIOD = {"date_from": "2023-09-01T00:00:00Z", "date_to": "2023-09-30T23:59:59Z"}
EXPORT = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", **PERIOD}
MEMBER = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "matching": "email"}


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.05, token="s3cr3t-T0KEN-value")


@pytest.fixture(params=["json", "xml"])
def content_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def hook(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str) -> LoyaltyHook:
    point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type, max_retries=3)
    return LoyaltyHook()


def _wait_completed(hook: LoyaltyHook, task_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = hook.get_task_status(task_id)
        if status["status"] == "completed":
            return status
        assert 0 <= status["progress"] < 100
        time.sleep(0.02)
    raise AssertionError("export task did not complete")


# ---------------------------------------------------------------------- every endpoint, both formats


def test_export_lifecycle_typed_results(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, content_type: str):
    task_id = hook.create_transactions_export(**EXPORT)
    assert task_id.startswith("task_")
    status = _wait_completed(hook, task_id)
    result = status["result"]
    assert status["progress"] == 100
    assert result["total"] == 1000 and isinstance(result["total"], int)
    assert result["is_api"] is True
    assert isinstance(result["loyalty_id"], int) and isinstance(result["points_currency_iid"], int)
    assert result["next_from_id"]
    log = loyalty_emulator.stats()["request_log"]
    assert {entry["request_content_type"] for entry in log if entry["method"] == "POST"} == {
        f"application/{content_type}"
    }


@pytest.mark.parametrize("style", ["seed", "colon", "encoded"])
def test_download_name_with_spaces_and_colons(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, style: str, tmp_path
):
    """``encoded``: the name as the download link spells it (``T00%2000%2000Z``) is not encoded twice."""
    loyalty_emulator.config.hashed_file_style = style
    status = _wait_completed(hook, hook.create_transactions_export(**EXPORT))
    hashed_file = status["result"]["hashed_file"]
    assert {"seed": " ", "colon": ":", "encoded": "%20"}[style] in hashed_file
    target = tmp_path / "batch.zip"
    written = hook.download_export(hashed_file, target)
    assert written == target.stat().st_size > 0
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
        (member,) = archive.namelist()
        rows = archive.read(member).decode().count("\n")
    assert rows > 1000  # header + 1000 rows (+ embedded newlines in quoted descriptions)
    downloads = wait_for(
        lambda: [e for e in loyalty_emulator.stats()["request_log"] if e["endpoint"] == "download"],
        what="the emulator to log the download",
    )
    download = downloads[-1]
    assert " " not in download["path"] and (":" not in download["path"].split("/api/download/")[1])


@pytest.mark.parametrize("around", ["\n        ", " "])
def test_download_takes_hashed_file_with_the_blanks_of_a_pretty_printed_reply(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, around: str, tmp_path
):
    """``get_task_status()`` (and the sensor's XCom, the trigger's event) give ``hashed_file`` as the
    API wrote it; an XML reply on several lines surrounds it with blanks. ``download_export`` refused
    it (control characters) or asked for another file (``%20name%20``)."""
    status = _wait_completed(hook, hook.create_transactions_export(**EXPORT))
    hashed_file = status["result"]["hashed_file"]
    target = tmp_path / "batch.zip"
    assert hook.download_export(f"{around}{hashed_file}{around}", target) == target.stat().st_size > 0
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None


def test_download_into_file_object(hook: LoyaltyHook):
    status = _wait_completed(hook, hook.create_transactions_export(**EXPORT))
    buffer = io.BytesIO()
    written = hook.download_export(status["result"]["hashed_file"], buffer)
    assert written == len(buffer.getvalue())
    assert zipfile.ZipFile(buffer).testzip() is None


def test_get_conn_is_the_hooks_authenticated_session(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    """As ``HttpHook.get_conn``: a session for a call the hook has no method for (it raised
    NotImplementedError, BaseHook's default)."""
    session = hook.get_conn()
    assert session is hook.session
    reply = session.post(f"{loyalty_emulator.url}/api/v1.1/tasks/status", json={"task_id": "task_unknown"})
    assert (reply.status_code, reply.json()["error_text"]) == (404, "Export task not found: task_unknown")
    assert requests_seen(loyalty_emulator, "status") == 1
    with loopback_server() as elsewhere:  # another host (or port): the session sends no token there
        session.get(f"{elsewhere.url}/anything")
    assert elsewhere.requests and not elsewhere.authorized_requests


def test_account_pages_and_iteration(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    page = hook.get_account_transactions(**MEMBER, email="member0@example.com", limit=100)
    assert page["total_count"] == 250 and len(page["data"]) == 100 and page["next_from_id"]
    record = page["data"][0]
    assert isinstance(record["is_temp"], bool) and isinstance(record["promo_iid"], int)
    assert isinstance(record["amount"], str) and isinstance(record["custom_json"], dict)
    before = requests_seen(loyalty_emulator, "account")
    ids = [r["transaction_id"] for r in hook.iter_account_transactions(**MEMBER, email="member0@example.com")]
    assert len(ids) == 250 == len(set(ids)) and ids == sorted(ids)
    assert requests_seen(loyalty_emulator, "account") - before == 3


@pytest.mark.parametrize(
    ("matching", "field"),
    [
        ("email", {"email": "member3@example.com"}),
        ("phone", {"phone": "+15550000003"}),
        ("profile_id", {"profile_id": "profile_3"}),
        ("custom", {"field_name": "user_id", "field_value": "3"}),
    ],
)
def test_each_matching_mode(hook: LoyaltyHook, matching: str, field: dict):
    records = list(
        hook.iter_account_transactions(
            loyalty_program_id=123, points_currency_iid=1, matching=matching, limit=10, **field
        )
    )
    assert len(records) == 42


def test_member_without_history_and_unknown_member(hook: LoyaltyHook):
    assert list(hook.iter_account_transactions(**MEMBER, email="member2@example.com")) == []
    with pytest.raises(LoyaltyNotFoundError) as err:
        hook.get_account_transactions(**MEMBER, email="nobody@example.com")
    assert err.value.code == 1004


def test_values_pasted_with_a_newline_are_the_values(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    """A currency, task id, cursor or page size pasted with surrounding whitespace is sent without it
    (the emulator, like the API, does not know ``"bonus_points\\n"``)."""
    task_id = hook.create_transactions_export(**{**EXPORT, "points_currency_eid": " bonus_points\n"})
    assert _wait_completed(hook, f"  {task_id}\n")["status"] == "completed"
    cursor = hook.get_account_transactions(**MEMBER, email="member0@example.com", limit="20\n")["next_from_id"]
    page = hook.get_account_transactions(**MEMBER, email="member0@example.com", limit=20, from_id=f"{cursor}\n")
    assert len(page["data"]) == 20 and page["data"][0]["transaction_id"] > cursor


def test_a_host_pasted_with_the_apis_own_path_reaches_the_api(loyalty_emulator, monkeypatch: pytest.MonkeyPatch):
    """The documented URLs start https://example.com/api/v1.1/...: a Host copied with that tail
    would have sent every request to /api/v1.1/api/v1.1/..."""
    connection = {
        "conn_type": "loyalty",
        "host": f"{loyalty_emulator.url}/api/v1.1/",
        "password": loyalty_emulator.token,
    }
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    task_id = LoyaltyHook().create_transactions_export(**EXPORT)
    assert _wait_completed(LoyaltyHook(), task_id)["status"] == "completed"


def test_a_token_pasted_with_its_bearer_prefix_is_accepted(loyalty_emulator, monkeypatch: pytest.MonkeyPatch):
    """Users copy the whole header value from the API's docs: "Bearer <token>"."""
    token = f"Bearer {loyalty_emulator.token}\n"
    connection = {"conn_type": "loyalty", "host": loyalty_emulator.url, "password": token}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    assert LoyaltyHook().create_transactions_export(**EXPORT).startswith("task_")


# ---------------------------------------------------------------------- validation: before any request


@pytest.mark.parametrize(
    ("call", "kwargs", "parameter"),
    [
        ("export", {"points_currency_iid": 1}, "points_currency_eid/points_currency_iid"),
        ("export", {"points_currency_eid": None}, "points_currency_eid/points_currency_iid"),
        ("export", {"points_currency_eid": " \n"}, "points_currency_eid/points_currency_iid"),  # rendered blank
        ("export", {"date_from": "2023-10-01T00:00:00Z"}, "date_from"),
        ("export", {"date_to": "not a date"}, "date_to"),
        ("export", {"loyalty_program_id": "abc"}, "loyalty_program_id"),
        ("export", {"from_id": "3f0c\x00e1"}, "from_id"),
        ("export", {"from_id": "x" * 257}, "from_id"),
        ("account", {"matching": "nickname"}, "matching"),
        ("account", {"matching": "email", "email": None}, "email"),
        ("account", {"matching": "phone"}, "phone"),
        ("account", {"matching": "profile_id"}, "profile_id"),
        ("account", {"matching": "custom", "field_name": "user_id"}, "field_value"),
        ("account", {"matching": "custom", "field_value": "3"}, "field_name"),
        ("account", {"limit": 0}, "limit"),
        ("account", {"limit": 101}, "limit"),
        ("account", {"points_currency_iid": 1}, "points_currency_eid/points_currency_iid"),
    ],
)
def test_bad_input_fails_before_any_request(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, call: str, kwargs: dict, parameter: str
):
    with pytest.raises(LoyaltyValidationError) as err:
        if call == "export":
            hook.create_transactions_export(**{**EXPORT, **kwargs})
        else:
            hook.get_account_transactions(**{**MEMBER, "email": "member0@example.com", **kwargs})
    assert err.value.parameter == parameter
    assert parameter.split("/")[0] in str(err.value)
    assert requests_seen(loyalty_emulator) == 0


def test_dates_accept_datetimes_and_send_utc(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    import pendulum

    start = pendulum.datetime(2023, 9, 1, 2, 0, tz="Europe/Berlin")
    task_id = hook.create_transactions_export(
        loyalty_program_id=123, points_currency_iid=1, date_from=start, date_to=start.add(days=1)
    )
    assert _wait_completed(hook, task_id)["result"]["total"] > 0


# ---------------------------------------------------------------------- the envelope and typed errors


def test_error_in_http_200_body_is_a_failure(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    loyalty_emulator.set_faults([FaultRule(endpoint="export", kind="api_error", params={"code": 77, "text": "quota"})])
    with pytest.raises(LoyaltyApiError) as err:
        hook.create_transactions_export(**EXPORT)
    assert (err.value.code, err.value.text, err.value.http_status) == (77, "quota", 200)
    assert requests_seen(loyalty_emulator, "export") == 1  # API errors are not retried


def test_unknown_task_is_not_found(hook: LoyaltyHook):
    with pytest.raises(LoyaltyNotFoundError) as err:
        hook.get_task_status("task_00000000-0000-0000-0000-000000000000")
    assert err.value.http_status == 404 and err.value.code == 1003


def test_wrong_token_is_an_auth_error_never_retried(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str
):
    point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type, token="wrong-token-123")
    with pytest.raises(LoyaltyAuthError) as err:
        LoyaltyHook().create_transactions_export(**EXPORT)
    assert err.value.http_status == 401
    assert requests_seen(loyalty_emulator) == 1


# ---------------------------------------------------------------------- retries, counted at the server


@pytest.mark.parametrize("kind", ["http_500", "http_503", "reset"])
def test_transient_faults_are_retried(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, kind: str):
    task_id = hook.create_transactions_export(**EXPORT)
    loyalty_emulator.set_faults([FaultRule(endpoint="status", kind=kind, count=2)])
    assert hook.get_task_status(task_id)["status"]
    assert requests_seen(loyalty_emulator, "status") == 3


@pytest.mark.parametrize(
    ("kind", "count", "may_duplicate"),
    [
        ("http_503", 2, False),  # "not now": the server did not act on it
        ("rate_limit", 3, False),
        ("http_500", 3, True),  # it may have created a task before failing
        ("reset", 3, True),
        ("truncate", 3, True),
    ],
)
def test_a_creation_keeps_every_retry_and_says_when_it_may_duplicate(
    hook: LoyaltyHook,
    loyalty_emulator: LoyaltyEmulator,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    count: int,
    may_duplicate: bool,
):
    """Retrying a creation the server may have acted on once only failed exports under ~10 %
    ambiguous faults (CI's chaos run: two cut replies in a row on one create); the task's own
    retry then created again anyway. Every retry is kept; the ones that may duplicate say so."""
    params = {"retry_after": 0} if kind == "rate_limit" else {"fraction": 0.5} if kind == "truncate" else {}
    loyalty_emulator.set_faults([FaultRule(endpoint="export", kind=kind, count=count, params=params)])
    assert hook.create_transactions_export(**EXPORT).startswith("task_")
    assert requests_seen(loyalty_emulator, "export") == count + 1
    logged = capsys.readouterr()  # the task SDK's structlog writes the hook's log lines to stdout
    warnings = (logged.out + logged.err).count("may have created an export task")
    assert warnings == (count if may_duplicate else 0)


@pytest.mark.parametrize(
    ("endpoint", "kind", "error"),
    [
        ("export", "api_error", LoyaltyApiError),
        ("status", "http_500", LoyaltyTransientError),
        ("download", "http_500", LoyaltyTransientError),
    ],
)
def test_an_api_error_names_the_endpoint_that_answered(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, endpoint: str, kind: str, error: type[LoyaltyApiError]
):
    """Transport errors named the path; an error the API answered with did not (probe)."""
    task_id = hook.create_transactions_export(**EXPORT)
    hashed_file = _wait_completed(hook, task_id)["result"]["hashed_file"]
    params = {"code": 1001, "text": "quota exceeded"}
    loyalty_emulator.set_faults([FaultRule(endpoint=endpoint, kind=kind, params=params)])
    path = {"export": EXPORT_PATH, "status": STATUS_PATH, "download": DOWNLOAD_PREFIX}[endpoint]
    calls = {
        "export": lambda: hook.create_transactions_export(**EXPORT),
        "status": lambda: hook.get_task_status(task_id),
        "download": lambda: hook.download_export(hashed_file, io.BytesIO()),
    }
    with pytest.raises(error) as caught:
        calls[endpoint]()
    assert caught.value.endpoint == path and f"): {path}: " in str(caught.value)


def test_a_creation_that_times_out_keeps_every_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server creates the task, then answers after the client's timeout: max_retries bound it."""
    created: list[str] = []

    def respond(handler, server) -> None:
        created.append(f"task_{len(created)}")
        time.sleep(0.6)  # past the connection's timeout
        with contextlib.suppress(OSError):
            _json_reply(handler, 200, {"error": 0, "data": {"task_id": created[-1]}})

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url, max_retries=2, retry_backoff=0.01, timeout=0.3)
        with pytest.raises(LoyaltyTransientError, match="timed out"):
            LoyaltyHook().create_transactions_export(**EXPORT)
        assert len(created) == 3


def test_a_creation_the_server_never_received_keeps_every_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection (the API restarting) cannot have created anything: max_retries hold."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _point_at_server(monkeypatch, f"http://127.0.0.1:{port}", max_retries=3, retry_backoff=0.01)
    tries: list[float] = []
    hook = LoyaltyHook()
    real = hook._post_once

    def counted(*args: Any, **kwargs: Any) -> Any:
        tries.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(hook, "_post_once", counted)
    with pytest.raises(LoyaltyTransientError, match="connection refused"):
        hook.create_transactions_export(**EXPORT)
    assert len(tries) == 4


def test_rate_limit_honours_retry_after(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    loyalty_emulator.set_faults([FaultRule(endpoint="status", kind="rate_limit", count=1, params={"retry_after": 0.4})])
    task_id = hook.create_transactions_export(**EXPORT)
    started = time.monotonic()
    hook.get_task_status(task_id)
    assert time.monotonic() - started >= 0.4
    assert requests_seen(loyalty_emulator, "status") == 2


@pytest.mark.parametrize("cursor", ["txn_000123", "c3VyZ2U=/x+y", "2023-09-01T10:00:00Z#17", 123456])
def test_a_cursor_of_any_id_scheme_is_sent_back_as_the_api_gave_it(monkeypatch: pytest.MonkeyPatch, cursor) -> None:
    """The API documents UUIDs, but ``next_from_id`` is its own value: a platform paging by other ids
    (underscores, base64, timestamps, integers) gets it back unchanged instead of a validation
    error at its second batch."""

    def respond(handler, server) -> None:
        return _json_reply(handler, 200, {"error": 0, "data": {"task_id": "task_1"}})

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url)
        assert LoyaltyHook().create_transactions_export(**EXPORT, from_id=cursor) == "task_1"
        assert json.loads(server.requests[0].body)["from_id"] == str(cursor)


def test_a_proxys_request_timeout_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP 408 without the API's envelope (a proxy or load balancer timed the request out) is a
    timeout like any other: retried, not an API error after one request."""

    def respond(handler, server) -> None:
        if len(server.requests) == 1:
            return send(handler, 408, b"<html><body>408 Request Time-out</body></html>", "text/html")
        return _json_reply(handler, 200, {"error": 0, "data": {"status": "in_progress", "progress": 5}})

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url, max_retries=2, retry_backoff=0.01)
        assert LoyaltyHook().get_task_status("task_1")["status"] == "in_progress"
        assert len(server.requests) == 2


def test_retry_budget_is_max_retries(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    loyalty_emulator.set_faults([FaultRule(endpoint="export", kind="http_503")])
    with pytest.raises(LoyaltyTransientError) as err:
        hook.create_transactions_export(**EXPORT)
    assert err.value.http_status == 503
    assert requests_seen(loyalty_emulator, "export") == 4  # 1 + max_retries=3


def test_api_validation_error_is_not_retried(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    with pytest.raises(LoyaltyApiError) as err:
        hook.create_transactions_export(**{**EXPORT, "loyalty_program_id": 999})
    assert err.value.http_status == 400 and "loyalty_program_id" in err.value.text
    assert requests_seen(loyalty_emulator, "export") == 1


def test_truncated_download_is_retried_from_the_start(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, tmp_path):
    status = _wait_completed(hook, hook.create_transactions_export(**EXPORT))
    loyalty_emulator.set_faults([FaultRule(endpoint="download", kind="truncate", count=1)])
    target = tmp_path / "batch.zip"
    hook.download_export(status["result"]["hashed_file"], target)
    assert zipfile.ZipFile(target).testzip() is None
    assert requests_seen(loyalty_emulator, "download") == 2


def test_one_tcp_connection_for_many_calls(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator):
    list(hook.iter_account_transactions(**MEMBER, email="member0@example.com", limit=10))
    assert requests_seen(loyalty_emulator, "account") == 25
    assert loyalty_emulator.stats()["connections"] == 1


# ---------------------------------------------------------------------- hashed_file safety


@pytest.mark.parametrize(
    "hashed_file",
    [
        "http://127.0.0.1:1/steal.zip",
        "//evil.example/x.zip",
        "/etc/passwd",
        "abc/../../v1.1/tasks/status",
        "abc/%2e%2e/%2E%2E/x.zip",
        "abc\\..\\x.zip",
        "abc/x\r\nHost: evil.zip",
        "abc//x.zip",
        "",
        "javascript:alert(1)/x",
        "dir/a%00b.zip",
        "a%0D%0AX-Injected:%201.zip",
    ],
)
def test_unsafe_hashed_file_refused_before_any_request(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, hashed_file: str, tmp_path
):
    with pytest.raises(LoyaltyUnsafeDataError):
        hook.download_export(hashed_file, tmp_path / "x.zip")
    assert requests_seen(loyalty_emulator) == 0
    assert not (tmp_path / "x.zip").exists()


# ---------------------------------------------------------------------- connection and UI


def test_test_connection(hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch):
    assert hook.test_connection()[0] is True
    point_connection_at(monkeypatch, loyalty_emulator, token="wrong-token-123")
    ok, message = LoyaltyHook().test_connection()
    assert ok is False and "refused" in message


def test_connection_settings_from_extras(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch):
    point_connection_at(monkeypatch, loyalty_emulator, content_type="xml", timeout="7", verify_ssl="false")
    settings = LoyaltyHook().settings
    assert (settings.content_type, settings.timeout, settings.verify) == ("xml", 7.0, False)
    assert settings.token not in repr(settings)
    assert LoyaltyHook(content_type="json").settings.content_type == "json"


def test_uri_form_of_the_connection(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch):
    host_port = loyalty_emulator.url.split("://", 1)[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOYALTY_URI",
        f"loyalty://:{loyalty_emulator.token}@{host_port}/?content_type=xml&__extra__=",
    )
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_URI", f"loyalty://:{loyalty_emulator.token}@{host_port}?content_type=xml")
    hook = LoyaltyHook("loyalty_uri")
    # The URI form has no scheme for the API itself: an explicit http:// host is needed for loopback.
    assert hook.settings.content_type == "xml"
    assert hook.settings.base_url == f"https://{host_port}"


def test_bad_connection_settings_name_the_field(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch):
    point_connection_at(monkeypatch, loyalty_emulator, content_type="yaml")
    with pytest.raises(LoyaltyValidationError, match="content_type"):
        _ = LoyaltyHook().settings
    point_connection_at(monkeypatch, loyalty_emulator, token="")
    with pytest.raises(LoyaltyValidationError, match="password"):
        _ = LoyaltyHook().settings


# ---------------------------------------------------------------------- the token stays secret


def test_token_never_in_logs_urls_or_errors(
    loyalty_emulator: LoyaltyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path,
):
    token = loyalty_emulator.token
    point_connection_at(monkeypatch, loyalty_emulator, max_retries=1)
    caplog.set_level(logging.DEBUG)
    hook = LoyaltyHook()
    texts: list[str] = []
    status = _wait_completed(hook, hook.create_transactions_export(**EXPORT))
    hook.download_export(status["result"]["hashed_file"], tmp_path / "b.zip")
    list(hook.iter_account_transactions(**MEMBER, email="member0@example.com"))
    # Faults whose texts and retries are logged; an API error text that echoes the token.
    loyalty_emulator.set_faults(
        [
            FaultRule(endpoint="export", kind="http_503", count=5),
            FaultRule(endpoint="status", kind="api_error", params={"code": 9, "text": f"bad token {token}"}),
        ]
    )
    for call in (lambda: hook.create_transactions_export(**EXPORT), lambda: hook.get_task_status("task_x")):
        with pytest.raises(LoyaltyError) as err:
            call()
        texts += [str(err.value), repr(err.value), str(err.value.__cause__ or "")]
    texts += [record.getMessage() for record in caplog.records]
    captured = capfd.readouterr()  # Airflow's structlog writes to the process's stdout/stderr
    texts += captured.out.splitlines() + captured.err.splitlines()
    texts += [entry["path"] for entry in loyalty_emulator.stats()["request_log"]]
    assert any("retry" in text for text in texts)  # the scan really saw the retry log lines
    assert not [text for text in texts if token in text]


# ---------------------------------------------------------------------- date-only periods (issue 13.3)

TIMELINE = [
    "2023-09-29T23:59:59Z",
    "2023-09-30T00:00:00Z",
    "2023-09-30T12:00:00Z",
    "2023-09-30T23:59:59Z",
    "2023-10-01T00:00:00Z",
]


def _csv_created_at(archive_path) -> list[str]:
    import csv

    with zipfile.ZipFile(archive_path) as archive:
        (member,) = archive.namelist()
        text = archive.read(member).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return [row["created_at"] for row in rows]


@pytest.mark.parametrize("day", ["2023-09-30", "date"])
def test_a_date_only_period_exports_the_whole_day(
    monkeypatch: pytest.MonkeyPatch, tmp_path, content_type: str, day: str
) -> None:
    import datetime as dt

    value = dt.date(2023, 9, 30) if day == "date" else day
    config = EmulatorConfig(transactions=len(TIMELINE), created_at_timeline=TIMELINE, task_duration=0.0)
    with LoyaltyEmulator(config) as emulator:
        point_connection_at(monkeypatch, emulator, content_type=content_type)
        hook = LoyaltyHook()
        task_id = hook.create_transactions_export(
            loyalty_program_id=123, points_currency_eid="bonus_points", date_from=value, date_to=value
        )
        assert emulator.stats()["export_tasks_by_period"] == {"2023-09-30T00:00:00Z/2023-09-30T23:59:59Z": 1}
        result = _wait_completed(hook, task_id)["result"]
        hook.download_export(result["hashed_file"], tmp_path / "day.zip")
    assert result["total"] == 3
    assert _csv_created_at(tmp_path / "day.zip") == TIMELINE[1:4]  # 12:00:00 and the day's last second too


# ---------------------------------------------------------------------- replies both formats may carry (issue 13.6)


@pytest.fixture
def decimal_progress(loyalty_emulator: LoyaltyEmulator) -> LoyaltyEmulator:
    loyalty_emulator.config.update({"progress_style": "decimal", "task_duration": 0.4})
    return loyalty_emulator


def test_decimal_progress_is_a_number(hook: LoyaltyHook, decimal_progress: LoyaltyEmulator) -> None:
    task_id = hook.create_transactions_export(**EXPORT)
    status = hook.get_export_task_status(task_id)
    assert not status.state.is_terminal
    assert isinstance(status.progress, float) and 0 <= status.progress < 100
    assert status.describe().endswith("%")


def test_a_failed_task_in_xml_raises_task_failed_with_the_api_text(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator
) -> None:
    task_id = hook.create_transactions_export(**EXPORT)
    loyalty_emulator.set_faults(
        [FaultRule(endpoint="status", kind="task_failed", params={"status": "error", "text": "quota 7 exceeded"})]
    )
    status = hook.get_export_task_status(task_id)
    with pytest.raises(LoyaltyExportTaskFailed) as caught:
        status.raise_for_failure()
    assert (caught.value.status, caught.value.text) == ("error", "quota 7 exceeded")


def _xml_reply(handler, body: str, status: int = 200) -> None:
    send(handler, status, body.encode(), "application/xml; charset=utf-8")


def test_text_error_fields_of_a_failed_task_in_xml_are_not_coerced(monkeypatch: pytest.MonkeyPatch) -> None:
    """``data.error`` is text here; on 2c35e55 every ``error`` was read as the envelope's integer."""
    failed = (
        "<xml><data><status>failed</status><progress>12.5</progress><error>disk full</error>"
        "<error_text>node 7 out of space</error_text><reason>storage</reason></data>"
        "<error>0</error><error_text>Successful operation</error_text></xml>"
    )
    with loopback_server(fake_api(status=lambda handler, _: _xml_reply(handler, failed))) as server:
        _point_at_server(monkeypatch, server.url, content_type="xml")
        status = LoyaltyHook().get_export_task_status("task_1")
    assert status.progress == 12.5
    with pytest.raises(LoyaltyExportTaskFailed, match="node 7 out of space"):
        status.raise_for_failure()


@pytest.mark.parametrize(
    ("envelope_text", "reason"),
    [
        ("Export failed: quota exceeded", "Export failed: quota exceeded"),
        ("Successful operation", "the API gave no reason"),  # the call worked; the task did not
    ],
)
def test_a_failed_tasks_reason_in_the_reply_envelope_is_its_reason(
    monkeypatch: pytest.MonkeyPatch, envelope_text: str, reason: str
) -> None:
    """``data`` says only ``failed``; the envelope's ``error_text`` says why: in tasks and in the
    triggerer alike. Before, "the API gave no reason"."""
    document = {"error": 0, "error_text": envelope_text, "data": {"status": "failed"}}
    with loopback_server(fake_api(status=lambda handler, _: _json_reply(handler, 200, document))) as server:
        _point_at_server(monkeypatch, server.url)
        in_task = LoyaltyHook().get_export_task_status("task_1")

        async def in_triggerer() -> Any:
            async with LoyaltyAsyncHook() as hook:
                return await hook.get_export_task_status("task_1")

        statuses = [in_task, asyncio.run(in_triggerer())]
    for status in statuses:
        with pytest.raises(LoyaltyExportTaskFailed) as caught:
            status.raise_for_failure()
        assert caught.value.text == reason


def test_merchant_fields_named_like_documented_ones_survive_xml(monkeypatch: pytest.MonkeyPatch) -> None:
    page = (
        "<xml><data><transaction><transaction_id>t1</transaction_id><promo_iid>42</promo_iid>"
        "<is_temp>false</is_temp><custom_json><total>99.90</total><error>none</error>"
        "<tags><item>a</item><item>b</item></tags></custom_json></transaction></data>"
        "<next_from_id></next_from_id><total_count>1</total_count><error>0</error><error_text>ok</error_text></xml>"
    )

    def account(handler, _server) -> None:
        _xml_reply(handler, page)

    def respond(handler, server) -> None:
        if handler.path.endswith("/account/transactions"):
            return account(handler, server)
        return fake_api()(handler, server)

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url, content_type="xml")
        (record,) = LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com")
    assert record["promo_iid"] == 42 and record["is_temp"] is False
    assert record["custom_json"] == {"total": "99.90", "error": "none", "tags": ["a", "b"]}


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_the_raw_status_data_keeps_the_token_out(monkeypatch: pytest.MonkeyPatch, hook_kind: str) -> None:
    """``get_task_status`` returns ``data`` as the API sent it, often straight to XCom: a server that
    echoed the request's Authorization header into it handed the token on."""

    def status(handler, _server) -> None:
        echoed = {"status": "in_progress", "debug": {"authorization": handler.headers.get("Authorization")}}
        _json_reply(handler, 200, {"data": echoed, "error": 0})

    with loopback_server(status) as server:
        _point_at_server(monkeypatch, server.url)
        if hook_kind == "sync":
            data = LoyaltyHook().get_task_status("task_1")
        else:

            async def poll() -> dict[str, Any]:
                async with LoyaltyAsyncHook() as hook:
                    return await hook.get_task_status("task_1")

            data = asyncio.run(poll())
    assert data == {"status": "in_progress", "debug": {"authorization": "Bearer ***"}}


@pytest.mark.parametrize(
    ("http_status", "text", "final"),
    [
        (200, "Authentication failed: invalid token", True),
        (200, "Invalid API key", True),
        (400, "Token expired", True),
        (200, "Unauthorized", True),
        (200, "Access denied for loyalty program 123", False),  # the program, not the token
        (200, "Export task not found: task_1", False),
        (200, "Authentication service temporarily unavailable, try again", False),
        (400, "Invalid parameter task_id", False),
        # data errors and server troubles that speak of keys or permissions: not the token refused
        (400, "Missing key: date_from", False),
        (200, "Field api_key is required", False),
        (200, "Permission denied: /var/exports/tmp/task_1.zip", False),
        (200, "Authentication error, please retry later", False),
        (200, "Unknown credentials store, try again", False),
    ],
)
def test_a_refused_token_in_the_apis_own_envelope_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch, http_status: int, text: str, final: bool
) -> None:
    """The seeds document no error codes: an API may refuse the token with its envelope in an HTTP
    200 or 400. That was a plain API error, retried by Airflow like any; an auth error never is."""

    def status(handler, _server) -> None:
        _json_reply(handler, http_status, {"error": 1002, "error_text": text})

    with loopback_server(status) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyApiError) as caught:
            LoyaltyHook().get_export_task_status("task_1")
    assert isinstance(caught.value, LoyaltyAuthError) is final
    assert text in str(caught.value)
    if final:
        assert "the API refused the token of connection 'loyalty_default'" in str(caught.value)


def test_an_integer_next_from_id_of_an_export_is_its_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the same value reads in an XML reply; it was refused as "not a string" in JSON only."""

    def status(handler, _server) -> None:
        result = {"hashed_file": "abc/T.zip", "total": 3, "next_from_id": 1001, "is_api": True}
        _json_reply(handler, 200, {"data": {"status": "completed", "result": result}, "error": 0})

    with loopback_server(fake_api(status=status)) as server:
        _point_at_server(monkeypatch, server.url)
        assert LoyaltyHook().get_export_task_status("task_1").result.next_from_id == "1001"


def _served_in_turn(pages: list[tuple[list[str], Any]]):
    """A server answering the account endpoint with these (ids, next_from_id) pages, one per request."""
    served = iter(pages)

    def respond(handler, server) -> None:
        if not handler.path.endswith("/account/transactions"):
            return fake_api()(handler, server)
        ids, cursor = next(served, ([], ""))
        records = [{"transaction_id": transaction_id} for transaction_id in ids]
        total = sum(len(page_ids) for page_ids, _ in pages)
        document = {"data": records, "next_from_id": cursor, "total_count": total, "error": 0, "error_text": "ok"}
        _json_reply(handler, 200, document)

    return respond


@pytest.mark.parametrize(
    ("pages", "requests"),
    [
        # the server filters by currency after paging: a page can hold no record of ours, and more follow
        ([(["t1", "t2"], "t2"), ([], "t4"), ([], "t6"), (["t7"], "")], 4),
        # the end, said by an empty page that points back at its own cursor instead of ""
        ([(["t1", "t2"], "t2"), ([], "t2")], 2),
        # cursors with blanks around them (a padded column): the blank last one ends the walk
        ([(["t1", "t2"], "\n  t2\n"), (["t3"], "  \n")], 2),
        # a server paging by integer ids sends JSON numbers, and null or false (PHP) at the end
        ([(["1", "2"], 2), (["3"], 3), (["4"], None)], 3),
        ([(["1", "2"], 2), (["3"], False)], 2),
    ],
    ids=["empty-pages-inside", "empty-last-page-echoing-its-cursor", "blank-padded-cursors", "int-then-null", "false"],
)
def test_an_empty_page_with_a_new_cursor_is_followed(monkeypatch: pytest.MonkeyPatch, pages, requests) -> None:
    """1.x stopped at the first page without records, whatever its ``next_from_id`` said: a member
    history with an empty page inside it came back short."""
    with loopback_server(_served_in_turn(pages)) as server:
        _point_at_server(monkeypatch, server.url)
        records = list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))
        asked = [seen for seen in server.requests if seen.path.endswith("/account/transactions")]
    assert [record["transaction_id"] for record in records] == [i for ids, _ in pages for i in ids]
    assert len(asked) == requests


@pytest.mark.parametrize(
    ("data", "ids"),
    [
        ({}, []),
        (None, []),
        (
            {"0": {"transaction_id": "t1"}, "2": {"transaction_id": "t3"}, "10": {"transaction_id": "t11"}},
            ["t1", "t3", "t11"],
        ),
    ],
    ids=["empty-object", "null", "object-keyed-by-index"],
)
def test_a_page_as_a_php_server_writes_it(monkeypatch: pytest.MonkeyPatch, data, ids) -> None:
    """PHP's json_encode writes an empty array as ``{}`` when it is associative, and a filtered
    list (keys with gaps) as an object keyed by index."""

    def respond(handler, server) -> None:
        if not handler.path.endswith("/account/transactions"):
            return fake_api()(handler, server)
        document = {"data": data, "next_from_id": "", "total_count": len(ids), "error": 0, "error_text": "ok"}
        _json_reply(handler, 200, document)

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url)
        records = list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))
    assert [record["transaction_id"] for record in records] == ids


def test_records_of_a_page_keyed_by_index_are_typed_like_a_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same record sent in a list and in an object keyed by index decodes to the same values:
    ``canceled`` "0" is False either way (a string "0" in the history file would read as true)."""
    record = {"transaction_id": "t1", "promo_iid": "42", "is_temp": "false", "canceled": "0", "source_iid": "7"}
    decoded = []
    for data in ([dict(record)], {"0": dict(record)}):

        def respond(handler, server, data=data) -> None:
            document = {"data": data, "next_from_id": "", "total_count": 1, "error": 0, "error_text": "ok"}
            _json_reply(handler, 200, document)

        with loopback_server(respond) as server:
            _point_at_server(monkeypatch, server.url)
            decoded.append(list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com")))
    assert decoded[0] == decoded[1]
    assert decoded[1][0]["promo_iid"] == 42 and decoded[1][0]["canceled"] is False and decoded[1][0]["is_temp"] is False


def test_a_page_of_something_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def respond(handler, server) -> None:
        document = {"data": {"0": "t1"}, "next_from_id": "", "error": 0, "error_text": "ok"}
        _json_reply(handler, 200, document)

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyResponseError, match="expected 'data' to be a list of objects"):
            list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))


@pytest.mark.parametrize(
    ("pages", "dropped"),
    [
        # from_id read as inclusive: each page starts with the last record of the one before
        ([(["t1", "t2"], "t2"), (["t2", "t3"], "t3"), (["t3", "t4"], "")], [0, 1, 1]),
        # an overlap of more than one record, and a page of nothing new (still followed)
        ([(["t1", "t2", "t3"], "t2"), (["t2", "t3"], "t3"), (["t3", "t4"], "")], [0, 2, 1]),
    ],
    ids=["inclusive", "wider-overlap"],
)
def test_records_the_previous_page_held_are_dropped(monkeypatch: pytest.MonkeyPatch, pages, dropped) -> None:
    """Exactly once under either reading of from_id (DESIGN: dedupe on transaction_id at the
    boundaries): the boundary record came twice from an API reading it as inclusive."""
    with loopback_server(_served_in_turn(pages)) as server:
        _point_at_server(monkeypatch, server.url)
        walked = list(LoyaltyHook().iter_account_transaction_pages(**MEMBER, email="m@example.com"))
    assert [record["transaction_id"] for page in walked for record in page["data"]] == ["t1", "t2", "t3", "t4"]
    assert [page["duplicates_dropped"] for page in walked] == dropped


def test_a_page_of_repeats_pointing_back_at_its_cursor_is_no_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """An inclusive API paged with limit 1 sends the cursor's own record again and again: once the
    repeat is dropped the page looks empty, but the API sent a record, so it is not the empty page
    that ends a history (that ended it early, t2 lost); the cursor repeats: an error."""
    pages = [(["t1"], "t1"), (["t1"], "t1"), (["t2"], "")]
    with loopback_server(_served_in_turn(pages)) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyCursorError, match="'t1' repeats"):
            list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com", limit=1))


@pytest.mark.parametrize("http_status", [200, 404])
def test_an_unknown_member_is_not_found_whatever_the_http_status(
    monkeypatch: pytest.MonkeyPatch, http_status: int
) -> None:
    """Seed 001 documents no error codes or statuses: "Member profile not found" in an HTTP 200
    envelope was a plain LoyaltyApiError, in a 404 the documented LoyaltyNotFoundError (probe of
    2026-12-05)."""

    def respond(handler, server) -> None:
        _json_reply(handler, http_status, {"error": 1004, "error_text": "Member profile not found"})

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyNotFoundError, match="Member profile not found"):
            LoyaltyHook().get_account_transactions(**MEMBER, email="nobody@example.com")


def test_a_short_page_of_the_boundary_record_pointing_back_at_its_cursor_is_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An inclusive API that always sends a next_from_id ends with its boundary record alone, pointing
    at itself: not full, nothing new, so the history is complete (probe of 2026-12-05: a
    LoyaltyCursorError after every record was read; the exclusive form, an empty page, ended)."""
    pages = [(["t0", "t1", "t2"], "t2"), (["t2", "t3"], "t3"), (["t3"], "t3")]
    with loopback_server(_served_in_turn(pages)) as server:
        _point_at_server(monkeypatch, server.url)
        walked = list(LoyaltyHook().iter_account_transaction_pages(**MEMBER, email="m@example.com", limit=3))
        assert len(server.requests) == 3
    assert [record["transaction_id"] for page in walked for record in page["data"]] == ["t0", "t1", "t2", "t3"]
    assert [page["duplicates_dropped"] for page in walked] == [0, 1, 1]


@pytest.mark.parametrize("field", ["total_count", "next_from_id"])
def test_a_reply_echoing_the_request_keeps_the_token_out_of_the_error(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """This endpoint's request carries the token in its body; a server that echoed the request into
    ``total_count`` or ``next_from_id`` had it quoted, whole, in the error (checked after the
    request's own redaction)."""
    token = "echoed-t0ken-5d1f0c7e9a"

    def respond(handler, server) -> None:
        request = json.loads(server.requests[-1].body)
        document = {"data": [], "next_from_id": "", "total_count": 0, "error": 0}
        document[field] = request if field == "total_count" else f"?token={request['token']}&from_id=" + "f" * 300
        _json_reply(handler, 200, document)

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url, token=token)
        with pytest.raises(LoyaltyResponseError, match=field) as caught:
            list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))
    assert token[:8] not in str(caught.value) and token[:8] not in repr(caught.value)


def test_a_cursor_that_repeats_after_records_stops_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = [(["t1", "t2"], "t2"), (["t3"], "t2")]
    with loopback_server(_served_in_turn(pages)) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyCursorError, match="'t2' repeats"):
            list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))


def test_a_cursor_cycle_longer_than_two_pages_stops_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = [(["t1"], "A"), (["t2"], "B"), (["t3"], "C"), (["t4"], "A"), (["t5"], "B")]
    with loopback_server(_served_in_turn(pages)) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyCursorError, match="'A' repeats"):
            list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))


def test_empty_pages_without_end_stop_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server sending empty pages, each with a new cursor, was followed forever."""
    from airflow_provider_loyalty.hooks import loyalty

    monkeypatch.setattr(loyalty, "MAX_EMPTY_PAGES", 5)
    served = []

    def respond(handler, _server) -> None:
        served.append(1)
        records = [{"transaction_id": "t1"}] if len(served) == 1 else []
        document = {"data": records, "next_from_id": f"c{len(served)}", "total_count": 1, "error": 0}
        _json_reply(handler, 200, document)

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyCursorError, match="5 empty pages in a row"):
            list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))
    assert len(served) == 6  # one page of records, then five empty ones


# ---------------------------------------------------------------------- test_connection (issue 13.7, 20.3)


SERVER_TOKEN = "t0ken-value"


def _point_at_server(monkeypatch: pytest.MonkeyPatch, url: str, *, token: str = SERVER_TOKEN, **extra) -> None:
    options = {"retry_backoff": 0.01, "max_retries": 0, **extra}
    connection = {"conn_type": "loyalty", "host": url, "password": token, "extra": options}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))


def _json_reply(handler, status: int, document: dict, **headers: str) -> None:
    send(handler, status, json.dumps(document).encode(), "application/json", **headers)


def _everywhere(status: int, document: dict | None = None, content_type: str = "application/json", **headers: str):
    body = json.dumps(document).encode() if document is not None else b"<html><body>Not Found</body></html>"

    def respond(handler, _server) -> None:
        send(handler, status, body, content_type if document is not None else "text/html", **headers)

    return respond


def test_test_connection_true_only_with_an_accepted_token(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str
) -> None:
    point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type)
    assert LoyaltyHook().test_connection() == (
        True,
        "Connection successful: the API accepted the token (the test task id is unknown, as expected).",
    )
    point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type, token="wrong-token-123")
    ok, message = LoyaltyHook().test_connection()
    assert ok is False
    assert "Authentication failed: invalid token" in message  # the API's own text
    # Airflow's Test button tests the form under a throwaway connection id the user never saw
    # (``EEOzK60V``): the message named it. It names none; a task's error still names its own.
    assert "the API refused the token: check the API token in its Password field" in message
    assert "connection '" not in message
    assert "wrong-token-123" not in message
    assert requests_seen(loyalty_emulator, "export") == 0  # nothing was created
    hook = LoyaltyHook()
    hook.test_connection()
    with pytest.raises(LoyaltyAuthError, match="refused the token of connection 'loyalty_default'"):
        hook.get_export_task_status("task_1")


@pytest.mark.parametrize(
    ("responder", "expected"),
    [
        (_everywhere(200, {"error": 1002, "error_text": "Invalid token"}), "Invalid token"),
        (_everywhere(400, {"error": 1001, "error_text": "Bad request: missing header"}), "Bad request: missing header"),
        (_everywhere(402, {"error": 1009, "error_text": "Payment required"}), "Payment required"),
        (_everywhere(403, {"error": 1002, "error_text": "Forbidden for this IP"}), "Forbidden for this IP"),
        (
            _everywhere(301, {"error": 0, "error_text": "Moved"}, Location="https://127.0.0.1/"),
            "redirects (HTTP 301) to https://127.0.0.1/; redirects are not followed: the API wants https: "
            "put https:// in the connection's Base URL",
        ),
        (  # not "put https://": the Base URL may be https already; the host is what differs
            _everywhere(302, {"error": 0, "error_text": "Found"}, Location="https://files-cdn.example.net/a.zip"),
            "redirects (HTTP 302) to https://files-cdn.example.net/a.zip; redirects are not followed: it points "
            "to another host than the connection's (127.0.0.1), where the token is never sent",
        ),
        (  # no URL parser reads it: said as it is, not a ValueError from the reply check
            _everywhere(302, {"error": 0, "error_text": "Found"}, Location="http://[bad"),
            "redirects (HTTP 302) to 'http://[bad', not a URL; redirects are not followed",
        ),
        (  # a long Location: its query (where a token would sit) is left out, not cut through
            _everywhere(302, {"error": 0, "error_text": "Found"}, Location="https://sso.example.net/in?" + "q" * 300),
            "redirects (HTTP 302) to https://sso.example.net/in (its query is not shown: 327 characters in all)",
        ),
        (  # a long path too: only the scheme and host
            _everywhere(302, {"error": 0, "error_text": "Found"}, Location="https://sso.example.net/" + "p" * 300),
            "redirects (HTTP 302) to https://sso.example.net/... (its path is not shown: 324 characters in all)",
        ),
        (_everywhere(404, {"error": 1003, "error_text": "Not found"}), "Every path answers HTTP 404"),
        (_everywhere(404), "HTTP 404"),
    ],
    ids=[
        "200-error-envelope",
        "400",
        "402",
        "403",
        "301-to-https",
        "302-to-another-host",
        "302-to-no-url",
        "302-long-query",
        "302-long-path",
        "404-everywhere",
        "html-404",
    ],
)
def test_test_connection_false_with_the_reason(monkeypatch: pytest.MonkeyPatch, responder, expected: str) -> None:
    with loopback_server(responder) as server:
        _point_at_server(monkeypatch, server.url)
        ok, message = LoyaltyHook().test_connection()
        assert server.requests[0].path == "/api/v1.1/tasks/status"
    assert ok is False, message
    assert expected in message
    assert "t0ken-value" not in message


def _unknown_task_answered(status: int, document: dict):
    """An API that refuses a wrong token (HTTP 401) and answers this connection's token with
    ``status`` / ``document`` for an unknown task: its own way of saying "not found"."""

    def respond(handler, _server) -> None:
        if handler.headers.get("Authorization") != f"Bearer {SERVER_TOKEN}":
            _json_reply(handler, 401, {"error": 1002, "error_text": "Authentication failed"})
        else:
            _json_reply(handler, status, document)

    return respond


@pytest.mark.parametrize(
    ("status", "document"),
    [
        (200, {"error": 1003, "error_text": "Task not found"}),
        (400, {"error": 1003, "error_text": "Task not found"}),
        (200, {"error": 0, "data": None}),  # error 0 is enough: nothing of the task is read
    ],
    ids=["200-with-error", "400-with-error", "200-data-null"],
)
def test_test_connection_true_when_the_api_tells_the_token_from_a_wrong_one(
    monkeypatch: pytest.MonkeyPatch, status: int, document: dict
) -> None:
    """The seeds document no error codes: "task not found" may come in an HTTP 200 or 400 with
    ``error`` set. A wrong token refused where this one is not proves the token accepted."""
    with loopback_server(_unknown_task_answered(status, document)) as server:
        _point_at_server(monkeypatch, server.url)
        ok, message = LoyaltyHook().test_connection()
        assert len(server.requests) == (1 if document["error"] == 0 else 2)
    assert ok is True, message
    assert message.startswith("Connection successful: the API accepted the token")
    assert SERVER_TOKEN not in message


@pytest.mark.parametrize("text", ["token expired", "Access denied for this key", "Unauthorized: revoked"])
def test_test_connection_false_when_the_api_refuses_the_token_in_its_own_words(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """A wrong token refused with 401 proves only that the API tells the two apart: an error whose
    text speaks of the token is this token refused (an expired one, answered with an error code)."""
    with loopback_server(_unknown_task_answered(400, {"error": 1011, "error_text": text})) as server:
        _point_at_server(monkeypatch, server.url)
        ok, message = LoyaltyHook().test_connection()
    assert ok is False
    assert text in message


def test_test_connection_tries_once_whatever_the_connections_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that is down (503), or a port nobody listens on, is reported at the first answer."""
    with loopback_server(_everywhere(503, {"error": 1500, "error_text": "Service unavailable"})) as server:
        _point_at_server(monkeypatch, server.url, max_retries=5, retry_backoff=2)
        hook = LoyaltyHook()
        ok, message = hook.test_connection()
        assert (ok, len(server.requests)) == (False, 1), message
        assert "Service unavailable" in message
        with pytest.raises(LoyaltyTransientError):  # the hook's own calls still retry, as configured
            LoyaltyHook(retry_backoff=0.01).get_task_status("task_1")
        assert len(server.requests) == 1 + 6
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _point_at_server(monkeypatch, f"http://127.0.0.1:{port}", max_retries=5, retry_backoff=30)
    ok, message = LoyaltyHook().test_connection()  # with 5 retries of 30 s backoff this took minutes
    assert ok is False and f"127.0.0.1:{port}" in message, message


def test_test_connection_true_when_only_the_task_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API answers "task not found" with its envelope while unknown paths are an HTML 404."""

    def respond(handler, server) -> None:
        if handler.path == "/api/v1.1/tasks/status":
            return _json_reply(handler, 404, {"error": 1003, "error_text": "Export task not found"})
        return _everywhere(404)(handler, server)

    with loopback_server(respond) as server:
        _point_at_server(monkeypatch, server.url)
        ok, message = LoyaltyHook().test_connection()
    assert ok is True, message


def test_test_connection_explains_an_assumed_https(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_port = loyalty_emulator.url.removeprefix("http://")
    _point_at_server(monkeypatch, host_port, token=loyalty_emulator.token)
    ok, message = LoyaltyHook().test_connection()
    assert ok is False
    assert "https was assumed because the Base URL has no scheme" in message
    assert "put http:// in the connection's Base URL" in message


def test_a_plain_http_server_behind_an_assumed_https_says_what_to_change(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    _point_at_server(monkeypatch, loyalty_emulator.url.removeprefix("http://"), token=loyalty_emulator.token)
    with pytest.raises(LoyaltyTlsError) as caught:
        LoyaltyHook().create_transactions_export(**EXPORT)
    message = str(caught.value)
    assert "does not speak TLS (it looks like a plain-HTTP server)" in message
    assert "https was assumed because the Base URL has no scheme" in message
    assert "put http:// in the connection's Base URL" in message
    assert "TLS verification failed" not in message  # the certificate was never the problem


def test_an_auth_error_names_the_connection(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    point_connection_at(monkeypatch, loyalty_emulator, conn_id="loyalty_eu", token="wrong-token-123")
    with pytest.raises(LoyaltyAuthError) as caught:
        LoyaltyHook("loyalty_eu").get_task_status("task_x")
    assert "refused the token of connection 'loyalty_eu'" in str(caught.value)
    assert "Authentication failed: invalid token" in str(caught.value)


# ---------------------------------------------------------------------- API errors on the download (issue 13.8)


def _completed(hook: LoyaltyHook) -> str:
    return str(_wait_completed(hook, hook.create_transactions_export(**EXPORT))["result"]["hashed_file"])


@pytest.mark.parametrize(("http_status", "fmt"), [(200, "json"), (200, "xml"), (500, "json"), (409, "xml")], ids=str)
def test_an_error_envelope_instead_of_the_file_is_the_api_error(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, tmp_path, http_status: int, fmt: str
) -> None:
    hashed_file = _completed(hook)
    text = "Export storage unavailable"
    params = {"http_status": http_status, "code": 1010, "text": text, "format": fmt}
    loyalty_emulator.set_faults([FaultRule(endpoint="download", kind="download_error_envelope", params=params)])
    with pytest.raises(LoyaltyApiError) as caught:
        hook.download_export(hashed_file, tmp_path / "b.zip")
    assert (caught.value.code, caught.value.text, caught.value.http_status) == (1010, text, http_status)
    assert "corrupt" not in str(caught.value) and "zip" not in str(caught.value)


@pytest.mark.parametrize(("http_status", "fmt"), [(404, "json"), (410, "xml"), (200, "json"), (200, "xml")], ids=str)
def test_a_gone_file_is_the_api_error_with_its_text(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, tmp_path, http_status: int, fmt: str
) -> None:
    hashed_file = _completed(hook)
    params = {"http_status": http_status, "format": fmt}
    loyalty_emulator.set_faults([FaultRule(endpoint="download", kind="download_gone", params=params)])
    with pytest.raises(LoyaltyApiError) as caught:
        hook.download_export(hashed_file, tmp_path / "b.zip")
    assert (caught.value.code, caught.value.text, caught.value.http_status) == (1008, "File expired", http_status)
    assert not isinstance(caught.value, LoyaltyTransientError)
    assert requests_seen(loyalty_emulator, "download") == 1  # not retried


@pytest.mark.parametrize("expired_status", [404, 410, 200])
def test_an_expired_file_by_ttl_is_the_api_error(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, tmp_path, expired_status: int
) -> None:
    loyalty_emulator.config.update({"file_ttl": 0.0, "expired_file_status": expired_status})
    hashed_file = _completed(hook)
    with pytest.raises(LoyaltyApiError, match="File expired") as caught:
        hook.download_export(hashed_file, tmp_path / "b.zip")
    assert caught.value.http_status == expired_status


@pytest.fixture
def big_files(loyalty_emulator: LoyaltyEmulator) -> LoyaltyEmulator:
    # About 9 MiB per batch zip: far more than socket buffers can hold ahead of the reader.
    loyalty_emulator.config.update({"row_padding": 400, "zip_compresslevel": 0, "batch_size": 20_000})
    loyalty_emulator.config.update({"transactions": 20_000})
    return loyalty_emulator


@pytest.mark.parametrize("max_bytes", ["10000000", None, float("nan"), 0, -1, True, 1.5])
def test_a_max_bytes_that_is_no_byte_count_is_refused_before_the_download(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, tmp_path, max_bytes: Any
) -> None:
    """NaN compared false with every size (no cap at all); a string failed inside the request as
    "check the connection's Base URL and API token"; 0, -1, True and 1.5 refused every file."""
    hashed_file = _completed(hook)
    with pytest.raises(LoyaltyValidationError, match=r"^max_bytes: expected a"):
        hook.download_export(hashed_file, tmp_path / "b.zip", max_bytes=max_bytes)
    assert requests_seen(loyalty_emulator, "download") == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prebuilt", [False, True], ids=["chunked", "content-length"])
def test_max_download_bytes_stops_the_stream(
    hook: LoyaltyHook, big_files: LoyaltyEmulator, tmp_path, prebuilt: bool
) -> None:
    big_files.config.update({"prebuilt_files": prebuilt})
    hashed_file = _completed(hook)
    limit = 256 * 1024
    with pytest.raises(LoyaltyUnsafeDataError, match=f"max_download_bytes={limit}"):
        hook.download_export(hashed_file, tmp_path / "b.zip", max_bytes=limit)
    assert list(tmp_path.iterdir()) == []  # no partial file (nor the download's own beside it)
    stats = big_files.stats()
    assert stats["downloads_completed"] == 0
    assert requests_seen(big_files, "download") == 1  # refused, not retried
    written = hook.download_export(hashed_file, tmp_path / "whole.zip")  # the same file without a cap
    assert written > 32 * limit


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html; charset=UTF-8", b'\xef\xbb\xbf{"error":1008,"error_text":"File expired"}'),
        (
            "application/octet-stream",
            b"\xef\xbb\xbf\n<xml><error>1008</error><error_text>File expired</error_text></xml>",
        ),
    ],
    ids=["json-as-html", "xml-as-octets"],
)
def test_an_error_envelope_after_a_byte_order_mark_is_the_api_error_not_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path, content_type: str, body: bytes
) -> None:
    """A PHP source file saved with a BOM puts it before every reply; under a Content-Type that does
    not say JSON or XML, the envelope was once written to disk as the zip."""
    with loopback_server(lambda handler, _server: send(handler, 200, body, content_type)) as server:
        _point_at_server(monkeypatch, server.url)
        with pytest.raises(LoyaltyApiError) as caught:
            LoyaltyHook().download_export("abc/Transactions.zip", tmp_path / "b.zip")
    assert (caught.value.code, caught.value.text) == (1008, "File expired")
    assert list(tmp_path.iterdir()) == []  # nothing written as the zip


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/xml; charset=utf-8", 'application/zip; name="Transactions.xml.zip"'],
    ids=["json", "xml", "xml-in-a-parameter"],
)
def test_a_zip_under_a_json_or_xml_content_type_is_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path, content_type: str
) -> None:
    """A body that starts as a zip does is the file, whatever a misconfigured server labels it; it
    was read as an envelope ("reply is not valid JSON"), and ``xml`` in a parameter of the zip's
    own media type made it "not the API's JSON or XML: check the connection's host"."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Transactions.csv", "transaction_id\nt1\n")
    with loopback_server(lambda handler, _server: send(handler, 200, buffer.getvalue(), content_type)) as server:
        _point_at_server(monkeypatch, server.url)
        written = LoyaltyHook().download_export("abc/Transactions.zip", tmp_path / "b.zip")
    assert (tmp_path / "b.zip").read_bytes() == buffer.getvalue() and written == len(buffer.getvalue())


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/json", b'{"error": 5, "error_text": "Download token expired"}', LoyaltyApiError),
        ("application/json", b"", None),
    ],
    ids=["link-token-expired", "empty-body-declared-json"],
)
def test_a_download_reply_is_about_the_file_not_the_api_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path, content_type: str, body: bytes, expected: type | None
) -> None:
    """The status call that named the file just accepted the token: a download's "token expired" is
    the file's link (a final auth error failed the export instead of creating the batch again). An
    empty body is an empty file, whatever its Content-Type ("empty reply body" on every retry)."""
    with loopback_server(lambda handler, _server: send(handler, 200, body, content_type)) as server:
        _point_at_server(monkeypatch, server.url)
        if expected is None:
            assert LoyaltyHook().download_export("abc/Transactions.zip", tmp_path / "b.zip") == 0
            return
        with pytest.raises(LoyaltyApiError) as caught:
            LoyaltyHook().download_export("abc/Transactions.zip", tmp_path / "b.zip")
    assert type(caught.value) is expected and caught.value.text == "Download token expired"


def test_a_failed_download_leaves_a_file_already_at_the_path_as_it_was(
    hook: LoyaltyHook, loyalty_emulator: LoyaltyEmulator, tmp_path
) -> None:
    hashed_file = _completed(hook)
    earlier = tmp_path / "b.zip"
    earlier.write_bytes(b"an earlier run's file")
    loyalty_emulator.set_faults([FaultRule(endpoint="download", kind="download_gone", params={"http_status": 404})])
    with pytest.raises(LoyaltyApiError, match="File expired"):
        hook.download_export(hashed_file, earlier)
    assert earlier.read_bytes() == b"an earlier run's file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b.zip"]
    loyalty_emulator.set_faults([])
    written = hook.download_export(hashed_file, earlier)
    assert earlier.stat().st_size == written and zipfile.is_zipfile(earlier)
