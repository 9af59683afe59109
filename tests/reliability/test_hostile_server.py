"""Hostile server data: every case fails closed, typed and clear, writing nothing outside the output.

The server is not trusted. A ``hashed_file`` that would leave ``/api/download/`` on the connection's
host, archive members with escaping names, zip bombs, XML entity tricks, malformed bodies,
redirects to another host and oversized replies must each stop the export with one of the
provider's exceptions (``airflow_provider_loyalty.exceptions``), before anything is written outside
the output location and without a ``_manifest.json`` (which would certify a complete export).

Cases that need replies the emulator cannot produce use a tiny loopback server that speaks the
seed API just enough (:func:`tests.reliability.support.fake_api`).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyBatchUnusableError,
    LoyaltyError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyUnsafeDataError,
    LoyaltyVerificationError,
)
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.reliability.support import PROGRAM, envelope, fake_api, loopback_server, send
from tests.support.helpers import point_connection_at
from tests.support.operator_driver import context_for

TOKEN = "hostile-test-token-3f9a0c1d7e"
OTHER_HOST = "127.0.0.2"  # "another host" on loopback (falls back to 127.0.0.1 where not bindable)
MiB = 1024 * 1024
CSV_HEADER = "transaction_id,amount\r\n"


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A directory whose only legitimate output is ``sandbox/out``; ``..`` from out lands in sandbox."""
    (tmp_path / "sandbox" / "out").mkdir(parents=True)
    return tmp_path / "sandbox"


def connect(monkeypatch, url: str, **extra) -> None:
    options = {"content_type": "json", "retry_backoff": 0.01, "max_retry_wait": 1, "max_retries": 2, **extra}
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOYALTY_DEFAULT",
        json.dumps({"conn_type": "loyalty", "host": url, "password": TOKEN, "extra": options}),
    )


def export(sandbox: Path) -> dict:
    operator = LoyaltyExportOperator(
        task_id="hostile",
        **PROGRAM,
        output_path=str(sandbox / "out"),
        date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z",
        poll_interval=0.05,
        deferrable=False,
    )
    return operator.execute(context_for())


def assert_failed_closed(err: BaseException, sandbox: Path) -> None:
    """Typed error with a message; nothing outside ``out``; no manifest anywhere; no token in the text."""
    assert isinstance(err, LoyaltyError), f"untyped error {type(err).__name__}: {err}"
    assert str(err).strip(), "the error has no message"
    assert TOKEN not in str(err)
    outside = [p for p in sandbox.rglob("*") if p != sandbox / "out" and (sandbox / "out") not in p.parents]
    assert outside == [], f"written outside the output location: {outside}"
    assert list(sandbox.rglob("_manifest.json")) == []
    assert not list(Path(os.getcwd()).glob("evil*"))


# ------------------------------------------------------------------------------ hashed_file from the server


@pytest.fixture
def emulator(monkeypatch) -> LoyaltyEmulator:
    with LoyaltyEmulator(EmulatorConfig(transactions=30, batch_size=1000, task_duration=0.0, token=TOKEN)) as emulator:
        point_connection_at(monkeypatch, emulator, max_retries=2)
        yield emulator


@pytest.mark.parametrize("form", ["absolute", "scheme-relative", "absolute-https", "userinfo"])
def test_hashed_file_pointing_at_another_host_never_gets_the_token(emulator, sandbox, form):
    with loopback_server(host=OTHER_HOST) as thief:
        authority = f"{thief.host}:{thief.port}"
        emulator.config.hashed_file_override = {
            "absolute": f"{thief.url}/api/download/x/Transactions.zip",
            "scheme-relative": f"//{authority}/api/download/x.zip",
            "absolute-https": f"https://{authority}/x.zip",
            "userinfo": f"x@{authority}/x.zip",
        }[form]
        with pytest.raises(LoyaltyError) as caught:
            export(sandbox)
        if form != "userinfo":
            assert isinstance(caught.value, LoyaltyUnsafeDataError), caught.value
            assert "hashed_file" in str(caught.value)
        assert thief.requests == [], "a request left the configured host"
    assert_failed_closed(caught.value, sandbox)


UNSAFE_NAMES = [
    "../../etc/passwd",
    "abc/../../../Transactions.zip",
    "%2e%2e/%2e%2e/etc/passwd",
    "abc/%2E%2E/%2e%2E/x.zip",
    "abc/%252e%252e/x.zip",  # double-encoded: harmless only if it stays one literal segment
    "..\\..\\evil.zip",
    "abc\\..\\x.zip",
    "abc/x\x00.zip",
    "abc/x.zip\r\nX-Injected: 1",
    "abc/\tx.zip",
    "abc/x\x7f.zip",
    "/etc/passwd",
    "C:/evil.zip",
    "abc//x.zip",
    ".",
    "",
]


@pytest.mark.parametrize("hashed_file", UNSAFE_NAMES, ids=repr)
def test_unsafe_hashed_file_is_refused_before_any_download(emulator, sandbox, hashed_file):
    emulator.config.hashed_file_override = hashed_file
    try:
        export(sandbox)
    except LoyaltyError as err:
        caught = err
    else:
        caught = None
    downloads = emulator.stats()["requests"]["download"]
    if hashed_file == "abc/%252e%252e/x.zip":
        # A literal segment "%2e%2e" (after one decode) is a file name, not a parent reference: the
        # request may go out (to the configured host) and 404s. It must never be decoded twice.
        assert caught is not None and not isinstance(caught, LoyaltyUnsafeDataError)
        paths = [e["path"] for e in emulator.stats()["request_log"] if e["endpoint"] == "download"]
        assert all(p.startswith("/api/download/abc/%25252e%25252e/") for p in paths), paths
    elif hashed_file == "":
        # No file at all: valid only for an empty batch; with rows it is a response error.
        assert isinstance(caught, LoyaltyResponseError) and "without a hashed_file" in str(caught), caught
        assert downloads == 0
    else:
        assert isinstance(caught, LoyaltyUnsafeDataError), caught
        assert "hashed_file" in str(caught)
        assert downloads == 0
    assert_failed_closed(caught, sandbox)


# ------------------------------------------------------------------------------ blanks around values


@pytest.mark.parametrize("content_type", ["json", "xml"])
def test_blanks_around_the_file_name_and_cursor_are_no_part_of_them(monkeypatch, sandbox, content_type) -> None:
    """A server whose XML template puts each value on a line of its own, or whose JSON comes from
    padded ``CHAR`` columns: ``hashed_file`` was downloaded with its line breaks (refused as
    control characters) and a blank ``next_from_id`` started another batch."""
    result = {"hashed_file": "\n    abc/Transactions.zip\n  ", "total": "3", "next_from_id": "\n    \n  "}

    def status(handler, _server) -> None:
        if content_type == "json":
            body = envelope({"status": "completed", "progress": 100, "result": result})
            return send(handler, 200, body, "application/json")
        leaves = "".join(f"<{name}>{value}</{name}>" for name, value in result.items())
        reply = (
            "<xml><data><status>\n  completed\n</status><progress>100</progress>"
            f"<result>{leaves}</result></data><error>0</error><error_text>ok</error_text></xml>"
        )
        return send(handler, 200, reply.encode(), "application/xml")

    with loopback_server(fake_api(status=status, download=serve_zip(zip_with({"t.csv": rows(3)})))) as api:
        connect(monkeypatch, api.url, content_type=content_type)
        summary = export(sandbox)
        created = [seen for seen in api.requests if seen.path.endswith("/transactions_export")]
        downloads = [seen.path for seen in api.requests if seen.path.startswith("/api/download/")]
    assert summary["total_rows"] == 3
    assert len(created) == 1  # the blank cursor ended the period
    assert downloads == ["/api/download/abc/Transactions.zip"]
    assert (sandbox / "out" / "_manifest.json").exists()


# ----------------------------------------------------------------------------------------- crafted zips


def zip_with(members: dict[str, bytes], compresslevel: int = 6) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2023, 10, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=compresslevel)
    return buffer.getvalue()


def rows(count: int) -> bytes:
    return (CSV_HEADER + "".join(f"id-{i},{i}\r\n" for i in range(count))).encode()


def serve_zip(blob: bytes):
    def download(handler, server) -> None:
        send(handler, 200, blob, "application/zip")

    return download


def run_against_fake(monkeypatch, sandbox: Path, **fake) -> BaseException:
    with loopback_server(fake_api(**fake)) as api:
        connect(monkeypatch, api.url)
        with pytest.raises(LoyaltyError) as caught:
            export(sandbox)
    return caught.value


@pytest.mark.parametrize(
    "member",
    ["../evil.csv", "sub/../../evil.csv", "/tmp/evil.csv", "..\\evil.csv", "C:evil.csv", "ok/\x01evil.csv"],
    ids=repr,
)
def test_zip_member_with_escaping_name_is_refused(monkeypatch, sandbox, member):
    err = run_against_fake(monkeypatch, sandbox, download=serve_zip(zip_with({member: rows(3)})), total=3)
    assert isinstance(err, LoyaltyUnsafeDataError), err
    assert "zip member name" in str(err)
    assert_failed_closed(err, sandbox)


def test_zip_bomb_by_ratio_is_refused_without_inflating(monkeypatch, sandbox):
    bomb = zip_with({"bomb.csv": CSV_HEADER.encode() + b"0" * (64 * MiB)}, compresslevel=9)
    assert len(bomb) < MiB
    tracemalloc.start()
    try:
        err = run_against_fake(monkeypatch, sandbox, download=serve_zip(bomb), total=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LoyaltyUnsafeDataError), err
    assert "zip bomb" in str(err)
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB while refusing a 64 MiB bomb"
    assert sum(p.stat().st_size for p in sandbox.rglob("*") if p.is_file()) < MiB
    assert_failed_closed(err, sandbox)


def test_zip_bomb_lying_about_its_size_fails_verification_bounded(monkeypatch, sandbox):
    """A member whose headers declare 4 KiB but which inflates to 64 MiB: read no further than declared."""
    blob = bytearray(zip_with({"bomb.csv": CSV_HEADER.encode() + b"0" * (64 * MiB)}, compresslevel=9))
    declared = 4096
    local = blob.index(b"PK\x03\x04")
    struct.pack_into("<I", blob, local + 22, declared)  # local header: uncompressed size
    central = blob.index(b"PK\x01\x02")
    struct.pack_into("<I", blob, central + 24, declared)  # central directory: uncompressed size
    download = serve_zip(bytes(blob))
    tracemalloc.start()
    try:
        err = run_against_fake(monkeypatch, sandbox, download=download, total=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Not valid: refused, or (a corrupt file) created again up to twice and then given up.
    assert isinstance(err, LoyaltyVerificationError | LoyaltyUnsafeDataError | LoyaltyBatchUnusableError), err
    assert "CRC" in str(err) or "expands" in str(err) or "cap" in str(err), err
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert sum(p.stat().st_size for p in sandbox.rglob("*") if p.is_file()) < MiB
    assert_failed_closed(err, sandbox)


# ------------------------------------------------------------------------------------ hostile JSON/XML


def reply(body: bytes, content_type: str, status: int = 200, **headers: str):
    def respond(handler, server) -> None:
        send(handler, status, body, content_type, **headers)

    return respond


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><error>0</error><error_text>&lol9;</error_text><data><task_id>t</task_id></data></xml>"""


def xxe(url: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY leak SYSTEM "{url}/xxe">]>'
        "<xml><error>0</error><error_text>&leak;</error_text><data><task_id>t</task_id></data></xml>"
    ).encode()


MALFORMED = {
    "truncated-json": (b'{"error": 0, "data": {"task_id": "t"', "application/json"),
    "json-array": (b'[{"error": 0}]', "application/json"),
    "json-nan-error": (b'{"error": NaN, "data": {"task_id": "t"}}', "application/json"),
    "json-string-error": (b'{"error": "zero", "data": {"task_id": "t"}}', "application/json"),
    "json-bad-utf8": (b'{"error": 0, "error_text": "\xff\xfe", "data": {"task_id": "t"}}', "application/json"),
    "json-deep": (b'{"error": 0, "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
    "json-no-envelope": (b'{"data": {"task_id": "t"}}', "application/json"),
    "json-task-id-object": (b'{"error": 0, "data": {"task_id": {"$ne": 1}}}', "application/json"),
    "truncated-xml": (b"<xml><error>0</error><data><task_id>t</task_id>", "application/xml"),
    "xml-wrong-root": (b"<html><error>0</error></html>", "application/xml"),
    "xml-duplicate-field": (b"<xml><error>0</error><error>1</error></xml>", "application/xml"),
    "xml-bad-int": (b"<xml><error>0x0</error><data><task_id>t</task_id></data></xml>", "application/xml"),
    "html-200": (b"<!doctype html><html><body>hi</body></html>", "text/html"),
    "empty-200": (b"", "application/json"),
}


def test_billion_laughs_reply_is_refused(monkeypatch, sandbox):
    tracemalloc.start()
    try:
        err = run_against_fake(monkeypatch, sandbox, export=reply(BILLION_LAUGHS, "application/xml"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LoyaltyResponseError), err
    assert "refused for safety" in str(err)
    assert peak < 16 * MiB
    assert_failed_closed(err, sandbox)


def test_external_entity_reply_is_refused_and_never_fetched(monkeypatch, sandbox):
    with loopback_server(host=OTHER_HOST) as thief:
        err = run_against_fake(monkeypatch, sandbox, export=reply(xxe(thief.url), "application/xml"))
        assert thief.requests == []
    assert isinstance(err, LoyaltyResponseError), err
    assert_failed_closed(err, sandbox)


@pytest.mark.parametrize(
    "doctype",
    [
        "<!DOCTYPE xml>",
        '<!DOCTYPE xml SYSTEM "{url}/api.dtd">',
        '<!DOCTYPE xml PUBLIC "-//Loyalty//API//EN" "{url}/api.dtd">',
        "<!DOCTYPE xml [<!ELEMENT xml ANY><!ATTLIST error kind CDATA #IMPLIED>]>",
    ],
    ids=["bare", "system-id", "public-id", "internal-subset"],
)
def test_a_doctype_without_entities_is_read_and_nothing_is_fetched(doctype: str) -> None:
    """XML with a DOCTYPE is legal and names no entity: it decodes; an external DTD is never fetched."""
    from airflow_provider_loyalty.utils.codec import STATUS_SCHEMA, decode_body

    with loopback_server(host=OTHER_HOST) as elsewhere:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype.format(url=elsewhere.url)}\n'
            "<xml><data><status>completed</status><progress>100</progress></data>"
            "<error>0</error><error_text>Successful operation</error_text></xml>"
        ).encode()
        document = decode_body(body, "application/xml", schema=STATUS_SCHEMA)
        assert elsewhere.requests == []
    assert document["data"] == {"status": "completed", "progress": 100}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_reply_is_a_response_error(monkeypatch, sandbox, case):
    body, content_type = MALFORMED[case]
    err = run_against_fake(monkeypatch, sandbox, export=reply(body, content_type))
    assert isinstance(err, LoyaltyResponseError), f"{type(err).__name__}: {err}"
    assert_failed_closed(err, sandbox)


# ------------------------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("endpoint", ["export", "status", "download"])
@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirect_to_another_host_is_not_followed(monkeypatch, sandbox, endpoint, code):
    """Not followed (the token stays home), not retried, and said plainly: "unexpected redirect"."""
    with loopback_server(host=OTHER_HOST) as thief:

        def redirect(handler, server) -> None:
            send(handler, code, b"", "text/plain", Location=f"{thief.url}{handler.path}")

        with loopback_server(fake_api(**{endpoint: redirect})) as api:
            connect(monkeypatch, api.url)
            with pytest.raises(LoyaltyError) as caught:
                export(sandbox)
        assert thief.authorized_requests == [], "the token followed a redirect"
        assert thief.requests == []
    err = caught.value
    redirected = [
        r
        for r in api.requests
        if r.path.endswith({"export": "transactions_export", "status": "status"}.get(endpoint, ".zip"))
    ]
    assert len(redirected) == 1, f"a {code} was retried {len(redirected) - 1} time(s): {err}"
    assert isinstance(err, LoyaltyApiError) and not isinstance(err, LoyaltyTransientError), repr(err)
    assert "redirect" in str(err)
    assert_failed_closed(err, sandbox)


def test_redirect_with_a_huge_body_is_not_read_into_memory(monkeypatch, sandbox):
    """A 302 whose body is 40 MiB: the reply cap applies to it like to any other reply."""
    body_size = 40 * MiB
    chunk = b"A" * (64 * 1024)

    def redirect(handler, server) -> None:
        handler.send_response(302)
        handler.send_header("Location", "http://127.0.0.2:9/elsewhere")
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(body_size))
        handler.end_headers()
        for _ in range(body_size // len(chunk)):
            handler.wfile.write(chunk)

    tracemalloc.start()
    try:
        err = run_against_fake(monkeypatch, sandbox, export=redirect)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LoyaltyApiError | LoyaltyResponseError), repr(err)
    assert not isinstance(err, LoyaltyTransientError), repr(err)
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB: the redirect's body was read whole"
    assert_failed_closed(err, sandbox)


def test_trigger_does_not_follow_a_redirect(monkeypatch):
    """The triggerer's async client: a redirected status poll ends in one clear error event."""
    import asyncio

    from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

    with loopback_server(host=OTHER_HOST) as thief:

        def redirect(handler, server) -> None:
            send(handler, 302, b"", "text/plain", Location=f"{thief.url}{handler.path}")

        with loopback_server(fake_api(status=redirect)) as api:
            connect(monkeypatch, api.url)
            trigger = LoyaltyExportTaskTrigger(export_task_id="task_hostile", poll_interval=0.05)

            async def first_event() -> dict:
                async for event in trigger.run():
                    return dict(event.payload)
                raise AssertionError("no event")

            event = asyncio.run(first_event())
        assert thief.requests == []
    assert event["status"] == "error"
    assert "redirect" in event["message"]
    assert TOKEN not in json.dumps(event)


# ------------------------------------------------------------------------------------------ huge replies

_CHUNK = b'{"error": 0, "error_text": "' + b"A" * (64 * 1024 - 28)


def huge(mode: str):
    size = 40 * MiB

    def respond(handler, server) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if mode == "content-length":
            handler.send_header("Content-Length", str(size))
        elif mode == "lying-content-length":
            handler.send_header("Content-Length", "100")
        else:
            handler.send_header("Connection", "close")  # close-delimited body, no length at all
            handler.close_connection = True
        handler.end_headers()
        if mode == "lying-content-length":
            handler.wfile.write(_CHUNK[:100])
            return
        sent = 0
        while sent < size:
            handler.wfile.write(_CHUNK)
            sent += len(_CHUNK)

    return respond


def gzip_bomb():
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing, built without 200 MiB in memory
    parts = [compressor.compress(b'{"error": 0, "error_text": "')]
    block = b"A" * MiB
    parts.extend(compressor.compress(block) for _ in range(200))
    parts.append(compressor.compress(b'"}') + compressor.flush())
    body = b"".join(parts)

    def respond(handler, server) -> None:
        send(handler, 200, body, "application/json", Content_Encoding="gzip")

    return respond


@pytest.mark.parametrize("mode", ["content-length", "close-delimited"])
def test_reply_over_32_mib_is_capped(monkeypatch, sandbox, mode):
    tracemalloc.start()
    try:
        err = run_against_fake(monkeypatch, sandbox, export=huge(mode))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LoyaltyResponseError), err
    assert "cap" in str(err)
    assert peak < 48 * MiB, f"peak {peak / MiB:.1f} MiB for a capped 32 MiB reply"
    assert_failed_closed(err, sandbox)


def test_gzip_bomb_reply_is_capped_with_bounded_memory(monkeypatch, sandbox):
    """200 MiB of JSON in a ~200 KiB gzip body: the cap applies to decoded bytes, memory stays bounded."""
    bomb = gzip_bomb()
    tracemalloc.start()
    try:
        err = run_against_fake(monkeypatch, sandbox, export=bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, LoyaltyResponseError), err
    assert "cap" in str(err)
    assert peak < 64 * MiB, f"peak {peak / MiB:.1f} MiB for a gzip bomb"
    assert_failed_closed(err, sandbox)
