"""Replies the codec must read, or refuse clearly, beyond the API's own JSON and XML examples.

* An HTML page in place of the API (a captive portal, a proxy's login page, a wrong Base URL) is
  said to be one, with its content type, a hint at the connection's host / Base URL and a short
  excerpt (the page's title), never as "XML refused for safety"; the token never shows.
* JSON is UTF-8 (RFC 8259): a reply that is, is read as UTF-8 whatever its ``charset`` says; one
  that is not is read in the charset its Content-Type names, or refused naming that charset.
* The member history's ``data`` in XML: one ``<data>`` around the records, or one ``<data>`` per
  record (as PHP-style serializers write arrays) read alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from airflow_provider_loyalty.exceptions import LoyaltyResponseError, LoyaltyTransientError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.utils.codec import ACCOUNT_SCHEMA, ENVELOPE_SCHEMA, STATUS_SCHEMA, decode_body
from airflow_provider_loyalty.utils.protocol import STATUS_PATH, check_reply
from tests.reliability.support import fake_api, loopback_server, send

TOKEN = "s3cr3t-Token-0123456789abcdef"
MEMBER = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "matching": "email"}

PORTAL = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Guest Wi-Fi &ndash; Sign in</title>
<style>body { font: 14px sans-serif }</style></head>
<body><form action="/login"><p>Accept the terms to continue</p></form></body></html>"""


def _point_at(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> None:
    options = {"retry_backoff": 0.01, "max_retries": 0, **extra}
    connection = {"conn_type": "loyalty", "host": url, "password": TOKEN, "extra": options}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))


def _reply(http_status: int, body: bytes, content_type: str | None, schema: Any = ENVELOPE_SCHEMA) -> dict[str, Any]:
    headers = requests.structures.CaseInsensitiveDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    return check_reply(http_status=http_status, headers=headers, body=body, token=TOKEN, schema=schema)


# ------------------------------------------------------------------------------------------ HTML and other types


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (PORTAL, "text/html; charset=utf-8"),
        (PORTAL.replace(b"<!DOCTYPE html>\n", b""), "text/html"),  # not well-formed XML (<meta> unclosed)
        (b"<html><head><title>Guest Wi-Fi &ndash; Sign in</title></head><body/></html>", "text/html"),
        (b'<?xml version="1.0"?>\n' + PORTAL, "application/xhtml+xml"),
        (PORTAL, "application/xml"),  # a proxy labelling its page as the API's type
        (PORTAL, "application/json"),
        (PORTAL, None),
    ],
    ids=["doctype", "not-well-formed", "well-formed", "xhtml", "labelled-xml", "labelled-json", "no-content-type"],
)
def test_an_html_page_is_said_to_be_one_not_unsafe_xml(body: bytes, content_type: str | None) -> None:
    with pytest.raises(LoyaltyResponseError) as raised:
        _reply(200, body, content_type, STATUS_SCHEMA)
    message = str(raised.value)
    assert "reply is an HTML page" in message, message
    assert "not the API's JSON or XML" in message and "Base URL" in message, message
    assert f"Content-Type: {content_type or 'none'}" in message, message
    assert "'Guest Wi-Fi \u2013 Sign in'" in message, message  # the page's title, as a reader sees it
    assert "safety" not in message and "DTD" not in message and "Accept the terms" not in message, message


def test_an_html_pages_excerpt_is_short_and_never_holds_the_token() -> None:
    """A login page may echo the request, the token with it: the error shows the page's title, or
    without one its first words, a line at most, with the token masked."""
    page = (
        b"<!doctype html><html><body><h1>Proxy authentication required</h1><p>Request: POST /api/v1.1/tasks/status "
        b"Authorization: Bearer " + TOKEN.encode() + b" " + b"lorem ipsum " * 2000 + b"</p></body></html>"
    )
    titled = page.replace(b"<html>", b"<html><head><title>Sign in: Bearer " + TOKEN.encode() + b"</title></head>")
    excerpts = {}
    for name, body in (("untitled", page), ("titled", titled)):
        with pytest.raises(LoyaltyResponseError) as raised:
            _reply(200, body, "text/html")
        message = str(raised.value)
        assert "reply is an HTML page" in message, message
        assert len(message) < 400, message
        assert TOKEN not in message and TOKEN[:8] not in message, message
        excerpts[name] = message.partition("; it reads: ")[2]
    assert excerpts == {
        "untitled": "'Proxy authentication required Request: POST /api/v1.1/tasks/status …'",
        "titled": "'Sign in: Bearer ***'",
    }


def test_an_html_page_through_the_hook_names_the_connection_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong Base URL (the merchant's web site) answers every path with its home page, HTTP 200."""

    def respond(handler, _server) -> None:
        send(handler, 200, PORTAL.replace(b"<p>", b"<p>" + TOKEN.encode()), "text/html; charset=utf-8")

    with loopback_server(respond) as server:
        _point_at(monkeypatch, server.url)
        with pytest.raises(LoyaltyResponseError, match=r"reply is an HTML page \(Content-Type: text/html") as raised:
            LoyaltyHook().get_task_status("task_1")
        ok, text = LoyaltyHook().test_connection()
    assert "Base URL" in str(raised.value) and TOKEN not in str(raised.value)
    assert ok is False and "reply is an HTML page" in text and "Base URL" in text and TOKEN not in text


@pytest.mark.parametrize(
    ("status", "error", "hint"),
    [(404, "LoyaltyNotFoundError", True), (502, "LoyaltyTransientError", False), (400, "LoyaltyApiError", False)],
)
def test_an_http_error_page_says_what_it_is_and_what_to_check(
    monkeypatch: pytest.MonkeyPatch, status: int, error: str, hint: bool
) -> None:
    """A wrong Base URL path on a real web server answers 404 with its own page: the error said
    "HTTP 404" and no more, while the same page with a 200 was named and explained."""

    def respond(handler, _server) -> None:
        send(handler, status, PORTAL.replace(b"<p>", b"<p>" + TOKEN.encode()), "text/html; charset=utf-8")

    with loopback_server(respond) as server:
        _point_at(monkeypatch, server.url)
        with pytest.raises(Exception) as raised:
            LoyaltyHook().get_task_status("task_1")
        ok, text = LoyaltyHook().test_connection()
    message = str(raised.value)
    assert type(raised.value).__name__ == error  # the type the status means, as before
    assert (
        f"(HTTP {status}): {STATUS_PATH}: an HTML page, not the API's reply; it reads: 'Guest Wi-Fi \u2013 Sign in'"
        in (message)
    )
    assert ("the path of its Base URL" in message) is hint and ("the path of its Base URL" in text) is hint
    assert ok is False and "an HTML page" in text and TOKEN not in message + text


@pytest.mark.parametrize(
    ("body", "content_type", "shown"),
    [
        (b"Bad Gateway", "text/plain", "'Bad Gateway'"),
        (b"OK", "text/plain; charset=us-ascii", "'OK'"),
        (b'"queued"', "text/plain", "'\"queued\"'"),
        (
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)),
            "application/zip",
            "it is 266 bytes that are not text",
        ),
        (b"\x00\x01\x02garbage", "application/octet-stream", "it is 10 bytes that are not text"),
    ],
    ids=["text", "text-charset", "json-string", "zip", "binary"],
)
def test_a_reply_of_another_type_is_said_to_be_one(body: bytes, content_type: str, shown: str) -> None:
    with pytest.raises(LoyaltyResponseError) as raised:
        decode_body(body, content_type, schema=STATUS_SCHEMA)
    message = str(raised.value)
    media = content_type.partition(";")[0]
    assert f"reply is {media} (Content-Type: {content_type}), not the API's JSON or XML" in message, message
    assert "Base URL" in message and shown in message, message


@pytest.mark.parametrize("content_type", ["text/html; charset=UTF-8", "text/plain", "application/octet-stream"])
def test_the_apis_own_reply_under_another_content_type_still_decodes(content_type: str) -> None:
    """PHP sends ``text/html; charset=UTF-8`` unless a script says otherwise: the body decides."""
    json_body = b'{"data": {"task_id": "task_1"}, "error": 0, "error_text": "ok"}'
    xml_body = b"<xml><data><task_id>task_1</task_id></data><error>0</error><error_text>ok</error_text></xml>"
    for body in (json_body, xml_body):
        assert decode_body(body, content_type) == {"data": {"task_id": "task_1"}, "error": 0, "error_text": "ok"}


def test_an_html_error_status_is_still_reported_by_its_status() -> None:
    with pytest.raises(LoyaltyTransientError, match="HTTP 502"):
        _reply(502, PORTAL, "text/html")


# ------------------------------------------------------------------------------------------ JSON charsets

DOCUMENT = {"data": {"task_id": "task_1"}, "error": 0, "error_text": "Opération réussie"}


@pytest.mark.parametrize(
    ("charset", "document"),
    [
        ("iso-8859-1", DOCUMENT),
        ('"ISO-8859-1"', DOCUMENT),
        ("latin1", DOCUMENT),
        ("windows-1252", {**DOCUMENT, "error_text": "Opération réussie \u2013 5 €"}),
        ("windows-1251", {**DOCUMENT, "error_text": "Операция выполнена успешно"}),
        ("KOI8-R", {**DOCUMENT, "error_text": "Операция выполнена успешно"}),
        ("shift_jis", {**DOCUMENT, "error_text": "操作が成功しました"}),
    ],
)
def test_json_in_the_charset_its_content_type_names_reads_in_it(charset: str, document: dict[str, Any]) -> None:
    body = json.dumps(document, ensure_ascii=False).encode(charset.strip('"'))
    assert decode_body(body, f"application/json; charset={charset}") == document


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("iso-8859-1", "Opération réussie"),
        ("windows-1251", "Операция выполнена успешно"),
        ("shift_jis", "操作が成功しました"),
    ],
)
def test_xml_without_a_declaration_reads_in_the_charset_its_content_type_names(charset: str, text: str) -> None:
    """RFC 7303: the charset parameter says the encoding; expat alone took such a body as UTF-8."""
    body = f"<xml><data><task_id>task_1</task_id></data><error>0</error><error_text>{text}</error_text></xml>"
    expected = {"data": {"task_id": "task_1"}, "error": 0, "error_text": text}
    assert decode_body(body.encode(charset), f"application/xml; charset={charset}") == expected
    assert decode_body(body.encode("utf-8"), f"text/xml; charset={charset}") == expected  # UTF-8 still reads first
    # A fixed prolog that says UTF-8 over bytes in the header's charset: its declaration does not
    # read it, the header's charset does (RFC 7303 puts the charset parameter before the declaration).
    declared = f'<?xml version="1.0" encoding="utf-8"?>{body}'.encode(charset)
    assert decode_body(declared, f"application/xml; charset={charset}") == expected
    with pytest.raises(LoyaltyResponseError, match="not valid XML"):  # no header charset: nothing else to go by
        decode_body(declared, "application/xml")


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("GBK", "操作成功"),
        ("Shift_JIS", "操作が成功しました"),
        ("Big5", "操作成功"),
        ("EUC-KR", "작업 성공"),
        ("UTF-32", "Opération réussie"),
        ("windows-1251", "Операция выполнена успешно"),
    ],
)
@pytest.mark.parametrize("content_type", ["application/xml", "application/xml; charset={}"])
def test_xml_reads_in_the_encoding_its_declaration_names(encoding: str, text: str, content_type: str) -> None:
    """expat reads single-byte encodings and UTF-16 itself, and refused the multi-byte ones (GBK,
    Shift_JIS ...: "multi-byte encodings are not supported") and UTF-32 the docs promise."""
    body = f"<xml><data><task_id>task_1</task_id></data><error>0</error><error_text>{text}</error_text></xml>"
    declared = f'<?xml version="1.0" encoding="{encoding}"?>{body}'.encode(encoding)
    expected = {"data": {"task_id": "task_1"}, "error": 0, "error_text": text}
    assert decode_body(declared, content_type.format(encoding)) == expected


@pytest.mark.parametrize("content_type", ["application/xml; charset=utf-8", "application/xml", "text/xml"])
@pytest.mark.parametrize("declared", ["ISO-8859-1", "windows-1251", "latin-1"])
def test_utf8_text_under_a_prolog_naming_another_encoding_reads_as_the_content_type_says(
    declared: str, content_type: str
) -> None:
    """A fixed prolog (``encoding="ISO-8859-1"``) over UTF-8 text, sent as ``charset=utf-8``: read
    by the prolog, every accented or Cyrillic letter came out garbled, with no error (a single-byte
    encoding reads any bytes). RFC 7303: the Content-Type's charset decides; without one (PHP sends
    ``application/xml`` bare), bytes valid as UTF-8 past ASCII are UTF-8."""
    body = (
        f'<?xml version="1.0" encoding="{declared}"?><xml><data><item><transaction_id>t1</transaction_id>'
        "<description>café Привет €</description></item></data><error>0</error></xml>"
    ).encode()
    document = decode_body(body, content_type, schema=ACCOUNT_SCHEMA)
    assert document["data"][0]["description"] == "café Привет €"


def test_text_in_the_content_types_charset_under_a_utf8_prolog_reads_in_that_charset() -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><xml><data><item><transaction_id>t1</transaction_id>'
        "<description>Привет</description></item></data><error>0</error></xml>"
    ).encode("cp1251")
    document = decode_body(body, "application/xml; charset=windows-1251", schema=ACCOUNT_SCHEMA)
    assert document["data"][0]["description"] == "Привет"


@pytest.mark.parametrize("kind", ["json", "xml"])
def test_a_history_record_field_not_of_its_type_is_kept_as_sent(kind: str) -> None:
    """The provider writes these fields to the history file and reads none of them: one promo id
    of ``"SUMMER-2023"`` refused the whole history. A value that reads as its type still is one."""
    record = {"transaction_id": "t1", "promo_iid": "SUMMER-2023", "source_iid": "7", "canceled": "0", "is_temp": "n/a"}
    if kind == "json":
        body, content_type = json.dumps({"data": [record], "error": 0}).encode(), "application/json"
    else:
        fields = "".join(f"<{name}>{value}</{name}>" for name, value in record.items())
        body, content_type = f"<xml><data><item>{fields}</item></data><error>0</error></xml>".encode(), "text/xml"
    decoded = decode_body(body, content_type, schema=ACCOUNT_SCHEMA)["data"][0]
    assert decoded == {**record, "source_iid": 7, "canceled": False}


def test_a_declared_multi_byte_encoding_still_refuses_a_dtd() -> None:
    body = '<?xml version="1.0" encoding="GBK"?><!DOCTYPE xml [<!ENTITY a "操">]><xml><error>&a;</error></xml>'
    with pytest.raises(LoyaltyResponseError, match="refused for safety"):
        decode_body(body.encode("GBK"), "application/xml")


@pytest.mark.parametrize(
    ("charset", "expected"),
    [
        ("x-unknown-8bit", "charset 'x-unknown-8bit' is not a text encoding Python knows"),
        ("base64", "charset 'base64' is not a text encoding Python knows"),
        ("us-ascii", "is not us-ascii text, the charset its Content-Type names"),
    ],
)
def test_json_that_is_not_utf8_nor_in_its_charset_is_refused_naming_the_charset(charset: str, expected: str) -> None:
    body = json.dumps(DOCUMENT, ensure_ascii=False).encode("latin-1")
    with pytest.raises(LoyaltyResponseError, match=expected):
        decode_body(body, f"application/json; charset={charset}")


@pytest.mark.parametrize(
    ("encoding", "content_type"),
    [
        ("utf-8", "application/json; charset=utf-8"),
        ("utf-8", "application/json; charset=UTF-8"),
        ("utf-8", 'application/json;charset="utf-8"'),
        ("utf-8-sig", "application/json; charset=utf-8"),
        ("utf-16", "application/json; charset=utf-16"),
        ("utf-16-le", "application/json; charset=utf-16le"),
        ("utf-32", "application/json; charset=utf-32"),
        ("utf-8", "application/json; charset=iso-8859-1"),  # mislabelled: UTF-8 bytes are UTF-8
        ("utf-8", "application/json; charset=utf8mb4"),  # a name Python does not know, on UTF-8
    ],
)
def test_json_that_is_utf_8_16_or_32_reads_whatever_its_charset_says(encoding: str, content_type: str) -> None:
    body = json.dumps(DOCUMENT, ensure_ascii=False).encode(encoding)
    assert decode_body(body, content_type) == DOCUMENT


# ------------------------------------------------------------------------------------------ XML: repeated <data>


def _record(n: int) -> str:
    return (
        f"<transaction_id>t{n}</transaction_id><amount>{n}.5</amount><promo_iid>{n}</promo_iid>"
        f"<is_temp>{'true' if n % 2 else 'false'}</is_temp><custom_json><key>v{n}</key></custom_json>"
        "<canceled/>"
    )


def _page(data: str, newline: str = "") -> bytes:
    tail = "<next_from_id>t9</next_from_id><total_count>9</total_count><error>0</error><error_text>ok</error_text>"
    return f"<xml>{newline}{data}{newline}{tail}</xml>".encode()


def _records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "transaction_id": f"t{n}",
            "amount": f"{n}.5",
            "promo_iid": n,
            "is_temp": bool(n % 2),
            "custom_json": {"key": f"v{n}"},
            "canceled": None,
        }
        for n in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 100])
@pytest.mark.parametrize("newline", ["", "\n"])
def test_records_as_repeated_data_elements_read_as_the_wrapped_list(count: int, newline: str) -> None:
    repeated = newline.join(f"<data>{newline}{_record(n)}{newline}</data>" for n in range(count))
    wrapped = "<data>" + "".join(f"<item>{_record(n)}</item>" for n in range(count)) + "</data>"
    from_repeated = decode_body(_page(repeated, newline), "application/xml", schema=ACCOUNT_SCHEMA)
    from_wrapped = decode_body(_page(wrapped, newline), "application/xml", schema=ACCOUNT_SCHEMA)
    assert from_repeated == from_wrapped
    assert from_repeated == {
        "data": _records(count),
        "next_from_id": "t9",
        "total_count": 9,
        "error": 0,
        "error_text": "ok",
    }


@pytest.mark.parametrize(
    "data",
    [
        "<data><transaction_id>t0</transaction_id></data>",
        "<data><item><transaction_id>t0</transaction_id></item></data>",
    ],
    ids=["record-form", "wrapped-form"],
)
def test_one_record_with_one_field_is_a_list_of_one_record_in_either_form(data: str) -> None:
    assert decode_body(_page(data), "application/xml", schema=ACCOUNT_SCHEMA)["data"] == [{"transaction_id": "t0"}]


@pytest.mark.parametrize("data", ["<data/>", "<data></data>", "<data>\n</data>", ""])
def test_an_empty_list_in_either_form(data: str) -> None:
    decoded = decode_body(_page(data), "application/xml", schema=ACCOUNT_SCHEMA)
    assert decoded.get("data", []) == []


@pytest.mark.parametrize(
    ("body", "schema", "expected"),
    [
        # a record that repeats a field beside others is no object, in either form
        (_page(f"<data>{_record(0)}<amount>2</amount></data>"), ACCOUNT_SCHEMA, "<amount> appears more than once"),
        (
            _page(f"<data>{_record(0)}</data><data>{_record(1)}<amount>2</amount></data>"),
            ACCOUNT_SCHEMA,
            "<amount> appears more than once",
        ),
        # several <data> that each wrap records: neither form
        (
            _page(f"<data><item>{_record(0)}</item></data><data><item>{_record(1)}</item></data>"),
            ACCOUNT_SCHEMA,
            "<data> appears 2 times, one per item, but number 1 holds items",
        ),
        # data is one object for tasks/status: a repeated <data> is still refused there
        (
            b"<xml><data><status>queued</status></data><data><status>done</status></data><error>0</error></xml>",
            STATUS_SCHEMA,
            "<data> appears more than once under <xml>",
        ),
        # another repeated field beside the list
        (
            _page(f"<data>{_record(0)}</data>").replace(b"<error>", b"<error>0</error><error>"),
            ACCOUNT_SCHEMA,
            "<error>",
        ),
    ],
    ids=[
        "record-repeats-a-field",
        "repeated-record-repeats-a-field",
        "repeated-wrappers",
        "status-data",
        "error-twice",
    ],
)
def test_ambiguous_list_shapes_stay_refused(body: bytes, schema: Any, expected: str) -> None:
    with pytest.raises(LoyaltyResponseError, match=expected):
        decode_body(body, "application/xml", schema=schema)


def test_a_member_history_written_as_repeated_data_pages_through_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = iter(
        [
            _page("".join(f"<data>\n{_record(n)}\n</data>\n" for n in range(3)), "\n").replace(b">t9<", b">t2<"),
            _page(f"<data>{_record(3)}</data>").replace(b">t9<", b"><"),
        ]
    )

    def respond(handler, server) -> None:
        if not handler.path.endswith("/account/transactions"):
            return fake_api()(handler, server)
        send(handler, 200, next(pages), "application/xml; charset=utf-8")

    with loopback_server(respond) as server:
        _point_at(monkeypatch, server.url, content_type="xml")
        records = list(LoyaltyHook().iter_account_transactions(**MEMBER, email="m@example.com"))
    assert records == _records(4)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"<xml><error/><error_text>x</error_text></xml>", "application/xml"), (b'{"error": null}', "application/json")],
    ids=["xml-empty-element", "json-null"],
)
def test_an_empty_error_code_is_named_as_empty(body: bytes, content_type: str) -> None:
    """It read ``expected an integer, got 'None'``: a word the reply never held."""
    with pytest.raises(LoyaltyResponseError, match=r"^field 'error': expected an integer, got an empty value$"):
        _reply(200, body, content_type)


_REPEATED = "<warnings>slow</warnings><warnings>partial</warnings>"
_RESULT = "<hashed_file>a/b.zip</hashed_file><next_from_id></next_from_id><total>3</total>"


@pytest.mark.parametrize(
    ("xml", "as_json", "schema"),
    [
        (
            f"<xml><data><status>completed</status><result>{_RESULT}{_REPEATED}</result></data><error>0</error></xml>",
            {"data": {"status": "completed", "result": {"hashed_file": "a/b.zip", "next_from_id": "", "total": 3,
                                                        "warnings": ["slow", "partial"]}}, "error": 0},
            STATUS_SCHEMA,
        ),
        (
            f"<xml><data><status>completed</status>{_REPEATED}<result>{_RESULT}</result></data><error>0</error></xml>",
            {"data": {"status": "completed", "warnings": ["slow", "partial"],
                      "result": {"hashed_file": "a/b.zip", "next_from_id": "", "total": 3}}, "error": 0},
            STATUS_SCHEMA,
        ),
        (
            f"<xml><data><status>queued</status></data><error>0</error>{_REPEATED}</xml>",
            {"data": {"status": "queued"}, "error": 0, "warnings": ["slow", "partial"]},
            STATUS_SCHEMA,
        ),
        (
            _page(f"<data><item>{_record(1)}<tags>vip</tags><tags>new</tags></item></data>").decode(),
            {"data": [{**_records(2)[1], "tags": ["vip", "new"]}], "next_from_id": "t9", "total_count": 9,
             "error": 0, "error_text": "ok"},
            ACCOUNT_SCHEMA,
        ),
        (  # first in the record: its first two children share a tag, as a list's items do (review)
            _page(f"<data><item><tags>vip</tags><tags>new</tags>{_record(1)}</item></data>").decode(),
            {"data": [{"tags": ["vip", "new"], **_records(2)[1]}], "next_from_id": "t9", "total_count": 9,
             "error": 0, "error_text": "ok"},
            ACCOUNT_SCHEMA,
        ),
        (
            _page(f"<data><tags>vip</tags><tags>new</tags>{_record(1)}</data>").decode(),
            {"data": [{"tags": ["vip", "new"], **_records(2)[1]}], "next_from_id": "t9", "total_count": 9,
             "error": 0, "error_text": "ok"},
            ACCOUNT_SCHEMA,
        ),
    ],
    ids=["in-result", "in-data", "under-the-root", "in-a-record", "first-in-a-record", "first-in-one-data-per-record"],
)  # fmt: skip
def test_an_undocumented_field_repeated_beside_others_is_a_list_as_in_json(
    xml: str, as_json: dict[str, Any], schema: Any
) -> None:
    """XML writes a list as repeated elements; an extra field written so beside documented ones
    failed the whole reply ("appears more than once"), every status poll or history page (probe)."""
    decoded = decode_body(xml.encode(), "application/xml", schema=schema)
    assert decoded == decode_body(json.dumps(as_json).encode(), "application/json", schema=schema) == as_json
