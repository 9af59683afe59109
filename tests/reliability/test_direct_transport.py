"""The sync hook's API POSTs on ``http.client`` (``utils/direct_transport.py``), against loopback servers.

What ``requests`` did for the hook and this transport now does itself: inflate gzip and deflate
replies (every form ``urllib3`` reads) in bounded steps, notice a keep-alive connection the server
closed while idle, report a garbled body as cut short (retried), and serve several threads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import select
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyResponseError, LoyaltyTransientError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.utils.codec import STATUS_SCHEMA
from tests.reliability.support import LoopbackServer, loopback_server, send
from tests.support.helpers import point_connection_at, wait_for

TOKEN = "direct-transport-token-5b1e"
STATUS = {"data": {"status": "progress", "progress": 40}, "error": 0, "error_text": "Successful operation"}


def connect(monkeypatch: pytest.MonkeyPatch, url: str, **extra: object) -> None:
    options = {"content_type": "json", "retry_backoff": 0.01, "max_retry_wait": 1, "max_retries": 2, **extra}
    connection = {"conn_type": "loyalty", "host": url, "password": TOKEN, "extra": options}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))


def post_status(via: str) -> dict:
    """One status POST through the sync hook or the async one (the trigger's)."""
    if via == "sync":
        hook = LoyaltyHook()
        try:
            return hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        finally:
            hook.close()

    async def post() -> dict:
        async with LoyaltyAsyncHook() as hook:
            return await hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})

    return asyncio.run(post())


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
    "gzip-twice": ("gzip, gzip", lambda data: gzip.compress(gzip.compress(data))),
    "upper-case": ("GZIP", gzip.compress),
}


@pytest.mark.parametrize("via", ["sync", "async"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("name", list(ENCODINGS))
def test_a_compressed_reply_reads_as_sent(monkeypatch, name: str, chunked: bool, via: str) -> None:
    """Every coding ``requests`` asked for and read, in every framing, reads as the plain reply;
    the text is long enough (1 MiB) to take many inflate steps. The async hook (the trigger's)
    reads them alike: aiohttp read ``x-gzip`` and stacked codings as compressed bytes (probe)."""
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
        envelope = post_status(via)
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


_CUT_GZIP = gzip.compress(json.dumps({**STATUS, "error_text": "y" * 5000}).encode(), compresslevel=0)
_NOT_GZIP = b"\x1f\x8b\x08\x00" + b"not deflate data at all" * 10


def encoded_reply(body: bytes, *codings: str) -> Callable[[BaseHTTPRequestHandler, LoopbackServer], None]:
    """A responder sending ``body`` with one ``Content-Encoding`` line per coding."""

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        for coding in codings:
            handler.send_header("Content-Encoding", coding)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


@pytest.mark.parametrize("via", ["sync", "async"])
def test_a_content_encoding_in_two_header_lines_is_one_list_in_both_hooks(monkeypatch, via: str) -> None:
    """Two ``Content-Encoding: gzip`` lines mean gzipped twice (RFC 9110, 5.3): the sync hook read
    them so, the async hook read the first line only and failed as "not valid JSON" (review)."""
    body = gzip.compress(gzip.compress(json.dumps(STATUS).encode()))
    with loopback_server(encoded_reply(body, "gzip", "gzip")) as server:
        connect(monkeypatch, server.url)
        assert post_status(via) == STATUS


@pytest.mark.parametrize("via", ["sync", "async"])
def test_a_coding_not_asked_for_is_named_in_the_error(monkeypatch, via: str) -> None:
    """A ``br`` body is left as sent by both hooks; the error said only "not valid JSON:
    UnicodeDecodeError", not that the reply came in a coding nobody asked for (review)."""
    with loopback_server(encoded_reply(bytes(range(256)) * 4, "br")) as server:
        connect(monkeypatch, server.url)
        with pytest.raises(LoyaltyResponseError, match=r"encoded as 'br', which the hook did not ask for"):
            post_status(via)


def test_a_coding_header_is_named_only_when_the_bytes_do_not_decode() -> None:
    """A mislabelled ``Content-Encoding: UTF-8`` on a readable reply with a bad field got the note
    "encoded as 'utf-8', which the hook did not ask for" (review): the field is what is wrong."""
    from airflow_provider_loyalty.utils.protocol import check_reply

    body = json.dumps({"error": 0, "data": {"status": "completed", "result": {"total": "many"}}}).encode()
    with pytest.raises(LoyaltyResponseError) as raised:
        check_reply(
            http_status=200,
            headers={"Content-Type": "application/json", "Content-Encoding": "UTF-8"},
            body=body,
            token=TOKEN,
            schema=STATUS_SCHEMA,
        )
    assert "total" in str(raised.value) and "did not ask for" not in str(raised.value)


def test_every_sync_path_asks_for_the_codings_the_hooks_undo(monkeypatch) -> None:
    """Through a proxy (the requests session) requests asked for br and zstd too when their
    packages were installed, so the hooks asked for different codings by path (review)."""
    import requests.utils

    monkeypatch.setattr(requests.utils, "DEFAULT_ACCEPT_ENCODING", "gzip, deflate, br, zstd")  # brotli installed
    from airflow_provider_loyalty.utils.connection import settings_from_parts
    from airflow_provider_loyalty.utils.sync_transport import build_session

    settings = settings_from_parts(host="http://api.example", password=TOKEN, extra={"proxies": "http://proxy:3128"})
    assert build_session(settings).headers["Accept-Encoding"] == "gzip, deflate"


#: Bodies that end too soon or do not decode: (extra headers, the bytes sent before the close).
GARBLED = {
    "chunk-size-no-number": ({"Transfer-Encoding": "chunked"}, b"zz\r\n"),
    "chunk-cut-short": ({"Transfer-Encoding": "chunked"}, b'ff\r\n{"error": 0'),
    "gzip-that-does-not-inflate": ({"Content-Encoding": "gzip", "Content-Length": str(len(_NOT_GZIP))}, _NOT_GZIP),
    # http.client reads an early end of a declared length as the end, and a gzip stream cut short
    # inflates without an error: the missing bytes are what say so.
    "gzip-cut-short-by-the-close": (
        {"Content-Encoding": "gzip", "Content-Length": str(len(_CUT_GZIP))},
        _CUT_GZIP[: len(_CUT_GZIP) // 2],
    ),
}


@pytest.mark.parametrize("via", ["sync", "async"])
@pytest.mark.parametrize("garbled", list(GARBLED))
@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_garbled_body_is_cut_short_and_retried(monkeypatch, garbled: str, max_retries: int, via: str) -> None:
    calls: list[int] = []
    headers, sent = GARBLED[garbled]

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        calls.append(1)
        if len(calls) > 1:
            send(handler, 200, json.dumps(STATUS).encode(), "application/json")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(sent)
        handler.close_connection = True

    with loopback_server(respond) as server:
        # aiohttp 3.14 reads a garbled chunk size after the headers only at the timeout, even once
        # the server closed the connection: a short one keeps the async variant quick.
        connect(monkeypatch, server.url, max_retries=max_retries, timeout=2)
        if max_retries:
            assert post_status(via) == STATUS
        else:
            # aiohttp reads a chunk size that is no number as no HTTP reply at all: transient too
            with pytest.raises(
                LoyaltyTransientError, match=r"reply body cut short|no HTTP reply that could be read|timed out"
            ):
                post_status(via)
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


def _raw(reply: bytes, *, then_wait: float = 0.0) -> Callable[[BaseHTTPRequestHandler, LoopbackServer], None]:
    """A responder writing ``reply`` as it is (no HTTP framing of its own), then closing."""

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        handler.wfile.write(reply)
        handler.wfile.flush()
        if then_wait:
            time.sleep(then_wait)
        handler.close_connection = True

    return respond


NO_REPLY_CASES = {
    "silence": _raw(b"", then_wait=3.0),
    "not-http": _raw(b"HELLO THERE\r\n\r\n"),
    "closed-at-once": _raw(b""),
    "101-header-fields": _raw(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: v\r\n" % n for n in range(101)) + b"\r\n"),
    "a-70-KiB-header-line": _raw(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n"),
}


@pytest.mark.parametrize("case", list(NO_REPLY_CASES))
def test_no_readable_reply_is_a_transient_error_naming_what_happened(monkeypatch, case: str) -> None:
    """Silence past the timeout, a reply that is not HTTP, a close before any reply, more header
    fields or a longer header line than ``http.client`` reads: transient (retried), the token
    nowhere in the text."""
    with loopback_server(NO_REPLY_CASES[case]) as server:
        connect(monkeypatch, server.url, timeout=0.5, max_retries=0)
        started = time.monotonic()
        with pytest.raises(LoyaltyTransientError) as caught:
            LoyaltyHook()._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        elapsed = time.monotonic() - started
    text = str(caught.value)
    expected = "timed out" if case == "silence" else "closed it or sent no HTTP reply that could be read"
    assert expected in text, text
    assert TOKEN not in text
    assert elapsed < 2.5, f"{elapsed:.1f} s for a 0.5 s timeout"


def test_a_reply_framed_by_the_close_is_read_to_the_close(monkeypatch) -> None:
    """An HTTP/1.0-style reply with no length, ended by closing the connection, reads whole."""
    body = json.dumps(STATUS).encode()
    with loopback_server(_raw(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)) as server:
        connect(monkeypatch, server.url)
        hook = LoyaltyHook()
        assert hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"}) == STATUS
        assert hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"}) == STATUS  # on a new connection
        hook.close()


def test_informational_replies_before_the_reply_are_read_past(monkeypatch) -> None:
    """``103 Early Hints`` (twice) before each reply: every call gets the reply to its own request
    (``http.client`` skips only ``100 Continue``; read as the reply, a 103 is empty and the real
    reply would answer the next request on the connection)."""

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        handler.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" * 2)
        handler.wfile.flush()
        time.sleep(0.05)
        task = f"task_{len(server.requests)}"
        send(
            handler, 200, json.dumps({**STATUS, "data": {**STATUS["data"], "task": task}}).encode(), "application/json"
        )

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url, max_retries=0)
        hook = LoyaltyHook()
        answered = [hook._post("/api/v1.1/tasks/status", {"task_id": "x"})["data"]["task"] for _ in range(3)]
        hook.close()
    assert answered == ["task_1", "task_2", "task_3"]


@pytest.mark.parametrize("declared", ["+41943040", " 41943040 "])
def test_a_declared_length_over_the_cap_is_refused_at_once_however_it_is_written(monkeypatch, declared: str) -> None:
    """``int()`` reads ``+N`` and blanks, as ``http.client`` does: the cap refuses the reply before
    reading it (the streamed cap says "reply is over", after 32 MiB read)."""

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", declared)
        handler.end_headers()
        chunk = b"A" * 1024 * 1024
        try:
            for _ in range(40):
                handler.wfile.write(chunk)
        except OSError:
            pass
        handler.close_connection = True

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url)
        with pytest.raises(LoyaltyResponseError, match="reply of 41943040 bytes is over the 33554432 byte cap"):
            LoyaltyHook()._post("/api/v1.1/tasks/status", {"task_id": "task_1"})


@pytest.mark.parametrize("base_url", ["loopback", "https://127.0.0.1:9"])
def test_a_copy_of_a_hook_with_its_transport_posts_on_its_own_connections(monkeypatch, base_url: str) -> None:
    """``copy.deepcopy`` of a hook (or of an operator holding one) after it posted: sockets and TLS
    contexts are not copied, the copy's transport is a new one on the same settings."""
    import copy

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        send(handler, 200, json.dumps(STATUS).encode(), "application/json")

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url if base_url == "loopback" else base_url, verify_ssl=False)
        hook = LoyaltyHook()
        if base_url == "loopback":
            hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        else:
            assert hook._poster is not None  # built (with its TLS context), never used
        twin = copy.deepcopy(hook)
        assert twin._poster is not hook._poster
        if base_url == "loopback":
            assert twin._post("/api/v1.1/tasks/status", {"task_id": "task_1"}) == STATUS
            assert hook._post("/api/v1.1/tasks/status", {"task_id": "task_1"}) == STATUS
        twin.close()
        hook.close()


def test_a_connection_in_use_when_the_hook_closes_is_closed_when_its_call_ends(monkeypatch) -> None:
    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        time.sleep(0.5)
        send(handler, 200, json.dumps(STATUS).encode(), "application/json")

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url)
        hook = LoyaltyHook()
        poster = hook._poster
        answers: list[dict] = []
        call = threading.Thread(target=lambda: answers.append(hook._post("/api/v1.1/tasks/status", {"task_id": "t"})))
        call.start()
        wait_for(lambda: server.requests, what="the POST to arrive")
        hook.close()
        call.join(10)
    assert answers == [STATUS]
    assert poster._idle == []  # type: ignore[union-attr]


@pytest.mark.parametrize("after", ["over-the-cap", "seventeen-103s"])
def test_a_post_failing_after_an_informational_reply_closes_its_socket_at_once(monkeypatch, after: str) -> None:
    """The final reply read past a 103 is not the connection's own: a failure must close it too, or
    its socket stays open (the server keeps writing) for as long as the error lives."""
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    over_cap = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 41943040\r\n\r\n" + b"A" * 65536
    closed_by_client = threading.Event()

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        handler.wfile.write(early_hints * 17 if after == "seventeen-103s" else early_hints + over_cap)
        handler.wfile.flush()
        handler.connection.settimeout(10)
        try:
            while handler.connection.recv(65536):
                pass
            closed_by_client.set()
        except ConnectionResetError:
            closed_by_client.set()
        except OSError:
            pass
        handler.close_connection = True

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url, max_retries=0)
        with pytest.raises((LoyaltyResponseError, LoyaltyTransientError)) as caught:
            LoyaltyHook()._post("/api/v1.1/tasks/status", {"task_id": "task_1"})
        assert closed_by_client.wait(5), f"the socket stayed open while the error lives: {caught.value}"


def test_a_reply_with_two_different_content_lengths_is_dropped_not_read_by_the_next_call(monkeypatch) -> None:
    """Two Content-Length values: ``http.client`` takes the first and would leave the rest for the
    next request to read as its reply. The reply is refused (transient, retried) and its connection
    dropped, as ``requests`` did: every call gets the reply to its own request."""
    calls: list[int] = []

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        calls.append(1)
        task = json.loads(server.requests[-1].body)["task_id"]
        body = json.dumps({**STATUS, "data": {**STATUS["data"], "task": task}}).encode()
        if len(calls) % 2:  # every other reply is framed twice
            tail = b'{"not": "a reply of its own"}'
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            head += f"Content-Length: {len(body) + len(tail)}\r\n\r\n"
            handler.wfile.write(head.encode() + body + tail)
            return
        send(handler, 200, body, "application/json")

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url, max_retries=1)
        hook = LoyaltyHook()
        answered = [hook._post("/api/v1.1/tasks/status", {"task_id": f"t{n}"})["data"]["task"] for n in range(3)]
        hook.close()
    assert answered == ["t0", "t1", "t2"]
    assert len(calls) == 6  # each call: the twice-framed reply, dropped, then its retry


def test_a_close_between_the_check_and_the_pooling_of_a_connection_leaves_none_pooled(monkeypatch) -> None:
    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        send(handler, 200, json.dumps(STATUS).encode(), "application/json")

    class CloseFirst(list):
        """The pool, with another thread's ``close()`` landing just before each append."""

        def append(self, connection: object) -> None:
            poster.close()
            super().append(connection)

    with loopback_server(respond) as server:
        connect(monkeypatch, server.url)
        hook = LoyaltyHook()
        poster = hook._poster
        poster._closed = False  # type: ignore[union-attr]
        poster._idle = CloseFirst()  # type: ignore[union-attr]
        assert hook._post("/api/v1.1/tasks/status", {"task_id": "t"}) == STATUS
    assert list(poster._idle) == []  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("base_url", "address"),
    [
        ("http://[::1]", ("::1", 80)),
        ("https://[2001:db8::1]", ("2001:db8::1", 443)),
        ("http://[::1]:8080", ("::1", 8080)),
    ],
)
def test_an_ipv6_base_url_without_a_port_is_called_at_the_schemes_port(monkeypatch, base_url, address) -> None:
    """``http://[::1]`` was called as host ":" port 1 (http.client splits a host given without a
    port at its last colon): every POST failed "does not resolve" while downloads, and the async
    hook, reached the server."""
    import http.client

    tried: list[tuple[str, int]] = []

    def refuse(target: tuple[str, int], *args: object, **kwargs: object) -> None:
        tried.append(target)
        raise ConnectionRefusedError("refused here")

    monkeypatch.setattr(http.client.socket, "create_connection", refuse)
    connect(monkeypatch, base_url, max_retries=0)
    with pytest.raises(LoyaltyTransientError):
        LoyaltyHook().get_export_task_status("task_1")
    assert tried == [address]
