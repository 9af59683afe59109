"""The sync hook's API POSTs on ``http.client`` (``utils/direct_transport.py``), against loopback servers.

What ``requests`` did for the hook and this transport now does itself: inflate gzip and deflate
replies (every form ``urllib3`` reads) in bounded steps, notice a keep-alive connection the server
closed while idle, report a garbled body as cut short (retried), and serve several threads.
"""

from __future__ import annotations

import gzip
import json
import select
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyResponseError, LoyaltyTransientError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.reliability.support import LoopbackServer, loopback_server, send
from tests.support.helpers import point_connection_at

TOKEN = "direct-transport-token-5b1e"
STATUS = {"data": {"status": "progress", "progress": 40}, "error": 0, "error_text": "Successful operation"}


def connect(monkeypatch: pytest.MonkeyPatch, url: str, **extra: object) -> None:
    options = {"content_type": "json", "retry_backoff": 0.01, "max_retry_wait": 1, "max_retries": 2, **extra}
    connection = {"conn_type": "loyalty", "host": url, "password": TOKEN, "extra": options}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODINGS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "x-gzip": ("x-gzip", gzip.compress),
    "deflate-zlib": ("deflate", zlib.compress),
    "deflate-raw": ("deflate", deflate_raw),
    "gzip-two-members": ("gzip", lambda data: gzip.compress(data[:10]) + gzip.compress(data[10:])),
    "gzip-then-deflate": ("gzip, deflate", lambda data: zlib.compress(gzip.compress(data))),
    "upper-case": ("GZIP", gzip.compress),
}


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("name", list(ENCODINGS))
def test_a_compressed_reply_reads_as_sent(monkeypatch, name: str, chunked: bool) -> None:
    """Every coding ``requests`` asked for and read, in every framing, reads as the plain reply;
    the text is long enough (1 MiB) to take many inflate steps."""
    coding, compress = ENCODINGS[name]
    status = {**STATUS, "error_text": "x" * 1024 * 1024}
    body = compress(json.dumps(status).encode())

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", coding)
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for start in range(0, len(body), 1000):
                piece = body[start : start + 1000]
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            handler.wfile.write(b"0\r\n\r\n")
        else:
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url)
        hook = LoyaltyHook()
        envelope = hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        hook.close()
    assert envelope == status
    assert server.requests[0].headers["Accept-Encoding"] == "gzip, deflate"


def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced_without_a_retry(monkeypatch) -> None:
    """A server that closes each connection after its reply without saying so (no ``Connection:
    close``): the next POST notices the close before sending and opens a new connection, instead of
    failing on the dead one and waiting out a retry."""
    clients: list[tuple[str, int]] = []

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        clients.append(handler.client_address)
        send(handler, 200, json.dumps(STATUS).encode(), "application/json")
        handler.wfile.flush()
        handler.close_connection = True

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url, max_retries=0)  # a POST on the dead connection would fail the call
        hook = LoyaltyHook()
        for _ in range(3):
            assert hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})["data"]["progress"] == 40
            # The server's close reaches this side before the next call (not a race the test can lose).
            for connection in hook._poster._idle:  # type: ignore[union-attr]
                assert select.select([connection.sock], [], [], 5)[0], "the server's close never arrived"
        hook.close()
    assert len(server.requests) == 3, "a POST was sent twice"
    assert len(set(clients)) == 3


def test_a_live_keep_alive_connection_carries_every_post(monkeypatch) -> None:
    clients: list[tuple[str, int]] = []

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        clients.append(handler.client_address)
        send(handler, 200, json.dumps(STATUS).encode(), "application/json")

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url)
        hook = LoyaltyHook()
        for _ in range(5):
            hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        hook.close()
    assert len(server.requests) == 5 and len(set(clients)) == 1


@pytest.mark.parametrize(
    "garbled",
    [b"zz\r\n", b'ff\r\n{"error": 0', None],
    ids=["chunk-size-no-number", "chunk-cut-short", "gzip-that-does-not-inflate"],
)
@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_garbled_body_is_cut_short_and_retried(monkeypatch, garbled: bytes | None, max_retries: int) -> None:
    calls: list[int] = []

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        calls.append(1)
        if len(calls) > 1:
            send(handler, 200, json.dumps(STATUS).encode(), "application/json")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if garbled is None:
            body = b"\x1f\x8b\x08\x00" + b"not deflate data at all" * 10
            handler.send_header("Content-Encoding", "gzip")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        else:
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            handler.wfile.write(garbled)
        handler.close_connection = True

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url, max_retries=max_retries)
        hook = LoyaltyHook()
        if max_retries:
            assert hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"}) == STATUS
        else:
            with pytest.raises(LoyaltyTransientError, match="reply body cut short"):
                hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        hook.close()
    assert len(calls) == 1 + max_retries


def test_a_compressed_reply_over_the_cap_is_refused_as_it_inflates(monkeypatch) -> None:
    """33 MiB of JSON in a small deflate body, chunked: refused at the cap, not inflated whole."""
    from airflow_provider_loyalty.utils.transport import MAX_REPLY_BYTES

    compressor = zlib.compressobj(9)
    body = compressor.compress(b'{"error": 0, "error_text": "') + compressor.compress(b"A" * (MAX_REPLY_BYTES + 1024))
    body += compressor.compress(b'"}') + compressor.flush()

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        send(handler, 200, body, "application/json", Content_Encoding="deflate")

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url)
        with pytest.raises(LoyaltyResponseError, match="cap"):
            LoyaltyHook()._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
    assert len(server.requests) == 1  # not retried


def test_one_hook_posts_from_several_threads_at_once(monkeypatch) -> None:
    with LoyaltyEmulator(EmulatorConfig(transactions=10, task_duration=0.0)) as emulator:
        point_connection_at(monkeypatch, emulator)
        hook = LoyaltyHook()
        task_id = hook.create_transactions_export(
            loyalty_program_id=123, points_currency_eid="bonus_points", date_from="2023-09-01", date_to="2023-09-30"
        )
        errors: list[BaseException] = []
        states: list[str] = []

        def poll() -> None:
            try:
                for _ in range(20):
                    states.append(hook.get_export_task_status(task_id).state)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=poll) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        hook.close()
        seen = emulator.stats()["requests"]["status"]
    assert errors == []
    assert len(states) == 80 and seen == 80


def test_a_base_url_path_is_sent_escaped_as_requests_sends_it(monkeypatch) -> None:
    """A Base URL with a path of spaces, non-ASCII letters and escapes (``/loyalty api/ü/a%20b``)
    reaches the server as ``requests`` (the proxy path, downloads) would send it."""

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        send(handler, 200, json.dumps(STATUS).encode(), "application/json")

    with loopback_server(respond) as server:
        connect(monkeypatch, f"{server.url}/loyalty api/ü/a%20b")
        LoyaltyHook()._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
    assert [request.path for request in server.requests] == ["/loyalty%20api/%C3%BC/a%20b/api/v1.1/tasks/status"]
