"""LoyaltyAsyncHook on its own, as a user's trigger would use it, against loopback servers.

The emulator serves the API; tiny ``http.server`` scripts play what the emulator cannot (a
redirecting API). TLS cases live in ``tests/reliability/test_tls.py`` with the certificate they
need, token cases in ``tests/reliability/test_token_secrecy.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyExportTaskFailed,
    LoyaltyNotFoundError,
    LoyaltyRedirectError,
    LoyaltyTlsError,
    LoyaltyTransientError,
)
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.hooks.loyalty_async import STARTUP_CONCURRENCY, LoyaltyAsyncHook, startup_gate
from airflow_provider_loyalty.testing import EmulatorConfig, FaultRule, LoyaltyEmulator
from airflow_provider_loyalty.utils.export_status import ExportTaskState
from airflow_provider_loyalty.utils.protocol import STATUS_PATH
from tests.reliability.support import envelope, loopback_server, send
from tests.support.helpers import point_connection_at, requests_seen

EXPORT = {
    "loyalty_program_id": 123,
    "points_currency_eid": "bonus_points",
    "date_from": "2023-09-01T00:00:00Z",
    "date_to": "2023-09-30T23:59:59Z",
}


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.0)


@pytest.fixture(params=["json", "xml"])
def content_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connected(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str) -> LoyaltyEmulator:
    point_connection_at(monkeypatch, loyalty_emulator, content_type=content_type, max_retries=3)
    return loyalty_emulator


def create_export() -> str:
    hook = LoyaltyHook()
    try:
        return hook.create_transactions_export(**EXPORT)
    finally:
        hook.close()


# ------------------------------------------------------------------------------------------ status


async def test_status_of_a_running_and_a_completed_task(connected: LoyaltyEmulator) -> None:
    connected.config.update({"task_duration": 0.5, "progress_style": "decimal"})
    task_id = create_export()
    async with LoyaltyAsyncHook() as hook:
        running = await hook.get_export_task_status(task_id)
        assert running.state is ExportTaskState.RUNNING and isinstance(running.progress, float)
        deadline = time.monotonic() + 10
        status = running
        while not status.state.is_terminal and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            status = await hook.get_export_task_status(task_id)
    assert status.state is ExportTaskState.COMPLETED
    result = status.completed_result()
    assert result.total == 1000 and result.next_from_id and result.hashed_file
    assert result.raw["is_api"] is True and isinstance(result.raw["loyalty_id"], int)


async def test_a_failed_task_carries_the_api_text(connected: LoyaltyEmulator) -> None:
    task_id = create_export()
    connected.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "disk full on node 7"})])
    async with LoyaltyAsyncHook() as hook:
        status = await hook.get_export_task_status(task_id)
    with pytest.raises(LoyaltyExportTaskFailed, match="disk full on node 7"):
        status.raise_for_failure()


async def test_an_unknown_task_is_not_found(connected: LoyaltyEmulator) -> None:
    async with LoyaltyAsyncHook() as hook:
        with pytest.raises(LoyaltyNotFoundError) as caught:
            await hook.get_task_status("task_does-not-exist")
    assert (caught.value.code, caught.value.http_status) == (1003, 404)


@pytest.mark.parametrize(("kind", "error"), [("api_error", LoyaltyApiError), ("http_500", LoyaltyTransientError)])
async def test_an_api_error_names_the_endpoint_that_answered(
    connected: LoyaltyEmulator, kind: str, error: type[LoyaltyApiError]
) -> None:
    """Transport errors named the path; an error the API answered with did not (probe)."""
    connected.set_faults([FaultRule(endpoint="status", kind=kind, params={"code": 1001, "text": "quota exceeded"})])
    async with LoyaltyAsyncHook(max_retries=0) as hook:
        with pytest.raises(error) as caught:
            await hook.get_task_status("task_x")
    assert caught.value.endpoint == STATUS_PATH and f"): {STATUS_PATH}: " in str(caught.value)


async def test_using_a_hook_that_is_not_open_says_so(connected: LoyaltyEmulator) -> None:
    with pytest.raises(RuntimeError, match="open"):
        await LoyaltyAsyncHook().get_task_status("task_x")


# ------------------------------------------------------------------------------------------ retries and refusals


@pytest.mark.parametrize(("kind", "params"), [("http_503", {}), ("rate_limit", {"retry_after": 0.3})])
async def test_transient_failures_are_retried(connected: LoyaltyEmulator, kind: str, params: dict[str, Any]) -> None:
    task_id = create_export()
    connected.set_faults([FaultRule(endpoint="status", kind=kind, count=2, params=params)])
    started = time.monotonic()
    async with LoyaltyAsyncHook() as hook:
        status = await hook.get_export_task_status(task_id)
    assert status.state is ExportTaskState.COMPLETED
    assert requests_seen(connected, "status") == 3
    if kind == "rate_limit":
        assert time.monotonic() - started >= 0.6  # Retry-After honoured twice


async def test_the_retry_budget_is_max_retries(connected: LoyaltyEmulator) -> None:
    connected.set_faults([FaultRule(endpoint="status", kind="http_503")])
    async with LoyaltyAsyncHook(max_retries=2) as hook:
        with pytest.raises(LoyaltyTransientError) as caught:
            await hook.get_task_status("task_x")
    assert caught.value.http_status == 503
    assert requests_seen(connected, "status") == 3


async def test_an_auth_error_is_final_names_the_connection_and_hides_the_token(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_connection_at(monkeypatch, loyalty_emulator, conn_id="loyalty_eu", token="wrong-token-0123456789")
    async with LoyaltyAsyncHook("loyalty_eu") as hook:
        with pytest.raises(LoyaltyAuthError) as caught:
            await hook.get_task_status("task_x")
    message = str(caught.value)
    assert "Authentication failed: invalid token" in message
    assert "refused the token of connection 'loyalty_eu'" in message
    assert "wrong-token-0123456789" not in message
    assert requests_seen(loyalty_emulator) == 1


async def test_a_redirect_is_refused_and_the_token_never_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    with loopback_server() as elsewhere:

        def redirect(handler, _server) -> None:
            send(handler, 302, b"", "text/plain", Location=f"{elsewhere.url}/api/v1.1/tasks/status")

        with loopback_server(redirect) as api:
            connection = {"conn_type": "loyalty", "host": api.url, "password": "redirect-token-value"}
            monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
            async with LoyaltyAsyncHook() as hook:
                with pytest.raises(LoyaltyRedirectError) as caught:
                    await hook.get_task_status("task_x")
            assert len(api.requests) == 1  # never retried
        assert elsewhere.requests == []  # never followed
    assert f"to {elsewhere.url}/api/v1.1/tasks/status" in str(caught.value)


async def test_an_assumed_https_against_plain_http_says_what_to_change(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = {"conn_type": "loyalty", "host": loyalty_emulator.url.removeprefix("http://"), "password": "x"}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    async with LoyaltyAsyncHook() as hook:
        with pytest.raises(LoyaltyTlsError) as caught:
            await hook.get_task_status("task_x")
    message = str(caught.value)
    assert "https was assumed because the Base URL has no scheme" in message
    assert "put http:// in the connection's Base URL" in message


# ------------------------------------------------------------------------------------------ lifecycle


async def test_cancellation_closes_the_session(connected: LoyaltyEmulator) -> None:
    connected.set_faults([FaultRule(endpoint="status", kind="slow", params={"seconds": 1.0})])
    hook = LoyaltyAsyncHook()

    async def poll() -> None:
        async with hook:
            await hook.get_task_status("task_x")

    poller = asyncio.ensure_future(poll())
    deadline = time.monotonic() + 10
    while connected.stats()["requests_in_flight"] == 0:
        assert time.monotonic() < deadline, "the request never reached the emulator"
        await asyncio.sleep(0.01)
    session = hook._session
    assert session is not None and not session.closed
    poller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poller
    assert session.closed and hook._session is None
    while connected.stats()["open_connections"]:
        assert time.monotonic() < deadline, "the connection stayed open"
        await asyncio.sleep(0.02)


async def test_hooks_on_one_loop_share_one_session_until_the_last_leaves(connected: LoyaltyEmulator) -> None:
    task_id = create_export()
    hooks = [await LoyaltyAsyncHook().open() for _ in range(20)]
    shared = hooks[0]._session
    assert shared is not None and all(hook._session is shared for hook in hooks)
    before = connected.stats()["connections"]
    for _ in range(3):
        await asyncio.gather(*(hook.get_export_task_status(task_id) for hook in hooks))
    assert connected.stats()["connections"] - before <= 20  # keep-alive connections reused across hooks
    for hook in hooks[:-1]:
        await hook.aclose()
    assert not shared.closed  # one hook still uses it
    await hooks[-1].aclose()
    assert shared.closed
    async with LoyaltyAsyncHook() as later:  # the next hook on the loop opens a fresh session
        assert later._session is not None and later._session is not shared
        assert (await later.get_export_task_status(task_id)).export_task_id == task_id


async def test_opening_one_hook_twice_at_once_leaves_nothing_open(connected: LoyaltyEmulator) -> None:
    hook = LoyaltyAsyncHook()
    await asyncio.gather(hook.open(), hook.open())
    session = hook._session
    assert session is not None
    await hook.aclose()
    assert session.closed  # counted once, so the one close was the last


async def test_hooks_sharing_a_session_each_send_their_own_token(
    connected: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, content_type: str
) -> None:
    task_id = create_export()
    point_connection_at(monkeypatch, connected, conn_id="loyalty_wrong", token="wrong-token-0123456789")
    async with LoyaltyAsyncHook() as right, LoyaltyAsyncHook("loyalty_wrong") as wrong:
        assert right._session is wrong._session
        outcomes = await asyncio.gather(
            *(hook.get_export_task_status(task_id) for _ in range(5) for hook in (right, wrong)),
            return_exceptions=True,
        )
    assert all(getattr(outcome, "export_task_id", None) == task_id for outcome in outcomes[0::2])
    assert all(isinstance(outcome, LoyaltyAuthError) for outcome in outcomes[1::2])


async def test_the_shared_session_keeps_no_cookies(monkeypatch: pytest.MonkeyPatch) -> None:
    def status_with_a_cookie(handler, _server) -> None:
        reply = envelope({"status": "running", "progress": 1})
        send(handler, 200, reply, "application/json", Set_Cookie="tenant=first; Path=/")

    with loopback_server(status_with_a_cookie) as api:
        # A host name, not an address: aiohttp's default cookie jar ignores cookies of IP addresses.
        host = api.url.replace("127.0.0.1", "localhost")
        connection = {"conn_type": "loyalty", "host": host, "password": "cookie-test-token"}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        async with LoyaltyAsyncHook() as first, LoyaltyAsyncHook() as second:
            await first.get_task_status("task_x")
            await second.get_task_status("task_x")
            await first.get_task_status("task_x")
    assert len(api.requests) == 3
    assert [request.headers.get("Cookie") for request in api.requests] == [None, None, None]


async def test_the_startup_gate_limits_concurrent_first_steps(connected: LoyaltyEmulator) -> None:
    task_id = create_export()
    connected.set_faults([FaultRule(endpoint="status", kind="slow", params={"seconds": 0.2})])

    async def first_step(gated: bool) -> None:
        hook = LoyaltyAsyncHook()
        try:
            if gated:
                async with startup_gate():
                    await hook.open()
                    await hook.get_export_task_status(task_id)
            else:
                await hook.open()
                await hook.get_export_task_status(task_id)
        finally:
            await hook.aclose()

    await asyncio.gather(*(first_step(gated=True) for _ in range(4 * STARTUP_CONCURRENCY)))
    gated_peak = connected.stats()["requests_in_flight_peak"]
    await asyncio.gather(*(first_step(gated=False) for _ in range(4 * STARTUP_CONCURRENCY)))
    ungated_peak = connected.stats()["requests_in_flight_peak"]
    assert 1 < gated_peak <= STARTUP_CONCURRENCY
    assert ungated_peak > STARTUP_CONCURRENCY  # the gate, not the server, held them back


@contextlib.contextmanager
def _busy_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Connection ``busy``: an API that answers every request 429 with ``Retry-After: 3``."""

    def rate_limited(handler, _server) -> None:
        body = json.dumps({"error": 1006, "error_text": "rate limited"}).encode()
        send(handler, 429, body, "application/json", Retry_After="3")

    with loopback_server(rate_limited) as busy:
        extra = {"retry_backoff": 0.01, "max_retry_wait": 60, "max_retries": 3}
        connection = {"conn_type": "loyalty", "host": busy.url, "password": "a-token-value", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_BUSY", json.dumps(connection))
        yield


def test_a_first_step_held_up_by_a_slow_host_gives_its_place_in_the_gate_back(
    connected: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight triggers whose API answers 429 with ``Retry-After: 3`` held every place while they
    slept, so a ninth on a healthy API could not even start until one of them gave up."""
    from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

    task_id = create_export()

    async def main() -> tuple[dict[str, Any], list[bool]]:
        stuck = [
            asyncio.create_task(_first_event(LoyaltyExportTaskTrigger(f"task_{n}", loyalty_conn_id="busy")))
            for n in range(STARTUP_CONCURRENCY)
        ]
        await asyncio.sleep(0.2)  # every place in the gate is taken by now
        event = await _first_event(LoyaltyExportTaskTrigger(task_id, poll_interval=0.05))
        still_waiting = [not task.done() for task in stuck]
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        return event, still_waiting

    with _busy_api(monkeypatch):
        event, still_waiting = asyncio.run(main())
    assert event["status"] == "success", event
    assert all(still_waiting)  # the healthy one did not wait for a stuck one to give up


def test_triggers_of_a_stuck_api_do_not_queue_those_of_another_connection(
    connected: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four gates' worth of triggers on an API that answers 429 with ``Retry-After: 3``, started
    first: with one gate for the loop, a trigger on a healthy API queued behind all of them (each
    place given back after a second), about four seconds; a thousand would have held it two minutes."""
    from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

    task_id = create_export()

    async def main() -> tuple[dict[str, Any], float]:
        stuck = [
            asyncio.create_task(_first_event(LoyaltyExportTaskTrigger(f"task_{n}", loyalty_conn_id="busy")))
            for n in range(4 * STARTUP_CONCURRENCY)
        ]
        await asyncio.sleep(0.2)  # every place of the busy API's gate is taken, the rest queue
        started = time.monotonic()
        event = await _first_event(LoyaltyExportTaskTrigger(task_id, poll_interval=0.05))
        took = time.monotonic() - started
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        return event, took

    with _busy_api(monkeypatch):
        event, took = asyncio.run(main())
    assert event["status"] == "success", event
    assert took < 2.0, f"the healthy trigger waited {took:.1f} s behind the busy API's"


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def test_each_event_loop_has_its_own_gate() -> None:
    async def gate() -> asyncio.Semaphore:
        return startup_gate()

    first, second = asyncio.run(gate()), asyncio.run(gate())
    assert first is not second
    assert first._value == second._value == STARTUP_CONCURRENCY  # a fresh gate per loop


# ------------------------------------------------------------------------------------------ the documented example


def _docstring_example() -> str:
    # cleandoc: Python 3.13 strips a docstring's indentation when compiling it, 3.11 keeps it.
    doc = inspect.cleandoc(LoyaltyAsyncHook.__doc__ or "")
    block = doc.split("this example is run by the test suite::", 1)[1].split("\nRedirects", 1)[0]
    return textwrap.dedent(block)


async def test_the_documented_trigger_example_runs(
    connected: LoyaltyEmulator, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "user_triggers.py"
    module.write_text(_docstring_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_triggers", raising=False)
    from user_triggers import ExportFinishedTrigger  # type: ignore[import-not-found]

    connected.config.update({"task_duration": 0.3})
    task_id = create_export()
    trigger = ExportFinishedTrigger(task_id, poll_interval=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "user_triggers.ExportFinishedTrigger" and json.loads(json.dumps(kwargs)) == kwargs
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1 and events[0]["status"] == "completed"
    assert events[0]["result"]["total"] == 1000
    assert requests_seen(connected, "status") >= 2

    connected.set_faults([FaultRule(endpoint="status", kind="task_failed", params={"text": "quota exceeded"})])
    (failed,) = [event.payload async for event in ExportFinishedTrigger(create_export(), poll_interval=0.05).run()]
    assert failed == {"status": "failed", "message": "quota exceeded", "result": None}

    (refused,) = [event.payload async for event in ExportFinishedTrigger("task_x", loyalty_conn_id="nope").run()]
    assert refused["status"] == "error" and "nope" in refused["message"]


# ------------------------------------------------------------------------------------ where it failed


async def test_a_wrong_host_or_port_is_named_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both hooks say which host and port they could not reach, and why, not a bare exception name."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    cases = {
        f"http://127.0.0.1:{port}": f"cannot connect to 127.0.0.1:{port}: connection refused",
        "http://no-such-host.invalid:8080": "cannot connect to no-such-host.invalid:8080: the host name does not resolve",
    }
    for url, expected in cases.items():
        connection = {"conn_type": "loyalty", "host": url, "password": "a-token-value", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        with pytest.raises(LoyaltyTransientError, match=expected):
            async with LoyaltyAsyncHook() as hook:
                await hook.get_task_status("task_1")
        with pytest.raises(LoyaltyTransientError, match=expected):
            LoyaltyHook().get_task_status("task_1")


def _hang_up(handler: Any, _server: Any) -> None:
    handler.close_connection = True  # read the request, answer nothing


def _garbage_status_line(handler: Any, _server: Any) -> None:
    handler.wfile.write(b"FOO BAR\r\n\r\n")
    handler.close_connection = True


@pytest.mark.parametrize("responder", [_hang_up, _garbage_status_line], ids=["hang-up", "garbage-status-line"])
async def test_a_server_that_answers_no_http_is_not_reported_as_unreachable(
    monkeypatch: pytest.MonkeyPatch, responder: Any
) -> None:
    """The trigger said "cannot connect to host:port" (check the host and port) and the sync hook
    "reply body cut short", for a server that took the connection and the request."""
    with loopback_server(responder) as server:
        connection = {
            "conn_type": "loyalty",
            "host": server.url,
            "password": "a-token-value",
            "extra": {"max_retries": 0},
        }
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        expected = f"127.0.0.1:{server.port} accepted the connection but closed it or sent no HTTP reply"
        with pytest.raises(LoyaltyTransientError, match=expected) as async_error:
            async with LoyaltyAsyncHook() as hook:
                await hook.get_task_status("task_1")
        with pytest.raises(LoyaltyTransientError, match=expected) as sync_error:
            LoyaltyHook().get_task_status("task_1")
    for error in (async_error.value, sync_error.value):
        assert "cannot connect" not in str(error) and "cut short" not in str(error)


async def test_a_long_reply_header_reads_in_both_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 9,000-byte header line (a big Content-Security-Policy) is legal HTTP: http.client reads
    lines to 64 KiB, aiohttp stopped at 8,190 bytes, so only the sync hook read the reply."""
    body = envelope({"status": "in_progress", "progress": 5})
    policy = "default-src 'self' " + "a" * 9000

    def respond(handler, _server) -> None:
        send(handler, 200, body, "application/json", Content_Security_Policy=policy)

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "t0ken-abc", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        sync_hook = LoyaltyHook()
        try:
            assert sync_hook.get_export_task_status("task_1").state is ExportTaskState.RUNNING
        finally:
            sync_hook.close()
        async with LoyaltyAsyncHook() as hook:
            assert (await hook.get_export_task_status("task_1")).state is ExportTaskState.RUNNING


def test_a_reply_with_more_header_fields_than_the_sync_client_reads_is_not_a_body_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = envelope({"status": "in_progress", "progress": 5})
    many = {f"X_Field_{number}": "v" for number in range(120)}

    def respond(handler, _server) -> None:
        send(handler, 200, body, "application/json", **many)

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "t0ken-abc", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        hook = LoyaltyHook()
        try:
            with pytest.raises(LoyaltyTransientError) as caught:
                hook.get_export_task_status("task_1")
        finally:
            hook.close()
    assert "cut short" not in str(caught.value)
    assert "sent no HTTP reply that could be read (HTTPException)" in str(caught.value)


async def test_a_ca_bundle_is_checked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The trigger shares the triggerer's loop: checking that the connection's CA bundle exists
    (a file system call) runs in a thread, not on the loop; a connection naming no file reads
    on the loop (no thread per trigger)."""
    import os.path
    import threading

    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read here")
    loop_thread = threading.get_ident()
    checked_in: list[int] = []
    real_isfile = os.path.isfile

    def isfile(path: Any) -> bool:
        checked_in.append(threading.get_ident())
        return real_isfile(path)

    monkeypatch.setattr(os.path, "isfile", isfile)
    for extra in ({"ca_bundle": str(bundle)}, {}):
        connection = {"conn_type": "loyalty", "host": "https://api.example.com", "password": "t0ken", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        settings = await LoyaltyAsyncHook().get_settings()
        assert settings.verify == (str(bundle) if extra else True)
    assert checked_in and loop_thread not in checked_in


@pytest.mark.parametrize(("extra_bytes", "off_loop"), [(100, False), (3 << 20, True)], ids=["small", "large"])
def test_a_large_reply_is_read_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, extra_bytes: int, off_loop: bool
) -> None:
    """A 25 MiB status reply (under the 32 MiB cap) was decoded, interpreted and sized on the
    triggerer's event loop: 0.4 s during which no other trigger ran. Where each step runs is
    recorded by wrapping the real functions (their work unchanged)."""
    import threading

    import airflow_provider_loyalty.hooks.loyalty_async as hook_module
    from airflow_provider_loyalty.utils.export_status import ExportTaskStatus

    ran_in: dict[str, bool] = {}

    def recorded(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            ran_in[name] = threading.current_thread() is threading.main_thread()
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(hook_module, "check_reply", recorded("decode", hook_module.check_reply))
    monkeypatch.setattr(ExportTaskStatus, "from_reply", recorded("interpret", ExportTaskStatus.from_reply))
    result = {"hashed_file": "ab/T.zip", "total": 3, "next_from_id": "", "log": ["x" * 80] * (extra_bytes // 84)}

    def respond(handler, _server) -> None:
        send(handler, 200, envelope({"status": "completed", "result": result}), "application/json")

    async def status() -> Any:
        async with LoyaltyAsyncHook() as hook:
            return await hook.get_export_task_status("task_1")

    with loopback_server(respond) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "t0ken", "extra": {"max_retries": 0}}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        assert asyncio.run(status()).completed_result().total == 3
    assert ran_in == {"decode": not off_loop, "interpret": not off_loop}  # True: on the loop's thread
