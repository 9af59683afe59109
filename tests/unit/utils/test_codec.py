"""The reply codec (``utils/codec.py``): the JSON and the XML form of one reply decode alike.

The differential test draws a reply of every endpoint (create export; task status running with an
integer or decimal progress, completed, failed with text error fields; an account page; an error
envelope) full of random merchant data (``custom_json`` and extra fields: strings, nested objects,
lists, names that clash with documented fields such as ``total``, ``error``, ``progress``), writes
it as JSON and as XML the way the API does (scalars as text, lists as repeated children, the
seed's line breaks between elements or none), and requires both to decode to the reply itself.

What XML cannot say, the generator avoids, and only that: an empty element (JSON's ``{}``, ``[]``
and ``null`` all become ``<x/>``, read back as ``""``) — so merchant objects have a field, merchant
lists two items (one item is an object of one field in XML) and merchant strings are never null;
characters XML 1.0 cannot carry at all (most C0 controls, surrogates, U+FFFE/U+FFFF); field names
that are not XML names.
"""

from __future__ import annotations

import functools
import json
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_provider_loyalty.exceptions import LoyaltyResponseError, LoyaltyValidationError
from airflow_provider_loyalty.utils.codec import (
    ACCOUNT_SCHEMA,
    ENVELOPE_SCHEMA,
    STATUS_SCHEMA,
    Schema,
    decode_body,
    encode_body,
    exact_number,
)
from airflow_provider_loyalty.utils.json_lines import json_line

EXAMPLES = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ XML as the API writes it


def to_xml(document: dict[str, Any], *, pretty: bool, list_item: str = "item", repeated_data: bool = False) -> bytes:
    """``<xml>`` with one child per field; a list as repeated children; ``&#13;`` for a CR.

    ``repeated_data``: the top-level ``data`` list as one ``<data>`` per record (``<data/>`` when
    empty), as PHP-style serializers write arrays, instead of ``<transaction>`` children of one.
    """
    parts: list[str] = []
    newline = "\n" if pretty else ""

    def write(name: str, value: Any, top: bool = False) -> None:
        if isinstance(value, dict):
            parts.append(f"<{name}>{newline}")
            for key, item in value.items():
                write(key, item, top=name == "xml")
            parts.append(f"</{name}>{newline}")
        elif isinstance(value, list) and top and name == "data" and repeated_data:
            for item in value:
                write("data", item)
            if not value:
                parts.append(f"<data/>{newline}")
        elif isinstance(value, list):
            parts.append(f"<{name}>{newline}")
            for item in value:
                write("transaction" if name == "data" else list_item, item)
            parts.append(f"</{name}>{newline}")
        elif value is None:
            parts.append(f"<{name}/>{newline}")
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            parts.append(f"<{name}>{escape(text, {chr(13): '&#13;'})}</{name}>{newline}")

    write("xml", document)
    return "".join(parts).encode("utf-8")


# ------------------------------------------------------------------------------------------ strategies

XML_CHARS = st.one_of(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\ufffe\uffff"),
    st.sampled_from("\t\n\r\x7f\x85 &<>]"),
)
XML_TEXT = st.text(XML_CHARS, max_size=12)
CLASHING_NAMES = ["total", "error", "error_text", "progress", "data", "result", "status", "is_api", "task_id",
                  "next_from_id", "hashed_file", "total_count", "canceled", "custom_json", "item", "transaction"]  # fmt: skip
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
XML_NAMES = st.builds(str.__add__, st.sampled_from(_NAME_START), st.text(_NAME_START + "0123456789.-", max_size=8))
NAMES = st.one_of(st.sampled_from(CLASHING_NAMES), XML_NAMES)
MERCHANT_VALUES = st.recursive(
    XML_TEXT,
    lambda inner: st.dictionaries(NAMES, inner, min_size=1, max_size=4) | st.lists(inner, min_size=2, max_size=4),
    max_leaves=6,
)
MERCHANT_OBJECTS = st.dictionaries(NAMES, MERCHANT_VALUES, min_size=1, max_size=4)
INTS = st.integers(-(2**63), 2**63)
PROGRESS = st.one_of(
    st.integers(0, 100), st.floats(0, 100, allow_nan=False), st.floats(allow_nan=False, allow_infinity=False)
)


@functools.cache
def extras(documented: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Merchant fields beside the documented ones of one object (never replacing one of them)."""
    names = NAMES.filter(lambda name: name not in documented)
    return st.dictionaries(names, MERCHANT_VALUES, max_size=3)


@st.composite
def documented(
    draw: Any, fields: dict[str, st.SearchStrategy[Any]], optional: bool = True, reserved: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Documented fields (some left out unless not ``optional``) plus merchant ones; ``reserved``:
    other documented names of this object, filled in by the caller."""
    chosen = {name: draw(strategy) for name, strategy in fields.items() if not optional or draw(st.booleans())}
    return {**draw(extras(frozenset(fields) | reserved)), **chosen}


RESULT = frozenset({"result"})
#: Every documented top-level field of any endpoint.
TOP_LEVEL = frozenset({"data", "next_from_id", "total_count", "error", "error_text"})


def envelope(data: Any, **more: Any) -> dict[str, Any]:
    """A success reply; ``more``: other top-level fields (merchant ones never named like these)."""
    return {**more, "data": data, "error": 0, "error_text": "Successful operation"}


@st.composite
def create_replies(draw: Any) -> tuple[dict[str, Any], Schema]:
    return envelope(draw(documented({"task_id": XML_TEXT}, optional=False))), ENVELOPE_SCHEMA


@st.composite
def running_replies(draw: Any) -> tuple[dict[str, Any], Schema]:
    status = draw(st.sampled_from(["in_progress", "queued", "pending", "processing"]))
    data = draw(documented({"status": st.just(status), "progress": PROGRESS | st.none()}, False, RESULT))
    return envelope(data), STATUS_SCHEMA


@st.composite
def completed_replies(draw: Any) -> tuple[dict[str, Any], Schema]:
    result = draw(
        documented(
            {
                "hashed_file": XML_TEXT,
                "is_api": st.booleans(),
                "loyalty_id": INTS,
                "next_from_id": XML_TEXT,
                "points_currency_iid": INTS,
                "total": INTS | st.none(),
            }
        )
    )
    data = draw(documented({"status": st.just("completed"), "progress": PROGRESS}, False, RESULT))
    return envelope({**data, "result": result}), STATUS_SCHEMA


@st.composite
def failed_replies(draw: Any) -> tuple[dict[str, Any], Schema]:
    word = draw(st.sampled_from(["failed", "error", "canceled", "cancelled", "FAILED"]))
    texts = {name: XML_TEXT for name in ("error", "error_text", "message", "reason")}
    data = draw(documented({"status": st.just(word), "progress": PROGRESS, **texts}, True, RESULT))
    return envelope({**data, "status": word}), STATUS_SCHEMA


TRANSACTION = {
    "transaction_id": XML_TEXT,
    "transaction_eid": XML_TEXT,
    "created_at": XML_TEXT,
    "amount": XML_TEXT,
    "promo_iid": INTS | st.none(),
    "source_iid": INTS,
    "source_subiid": INTS,
    "is_temp": st.booleans(),
    "canceled": st.booleans() | st.none(),
    "custom_json": MERCHANT_OBJECTS,
}


@st.composite
def account_replies(draw: Any) -> tuple[dict[str, Any], Schema]:
    records = draw(st.lists(documented(TRANSACTION).filter(bool), max_size=4))
    merchant = draw(extras(TOP_LEVEL))
    page = {**merchant, "next_from_id": draw(XML_TEXT), "total_count": draw(INTS)}
    return envelope(records, **page), ACCOUNT_SCHEMA


@st.composite
def error_replies(draw: Any) -> tuple[dict[str, Any], Schema]:
    reply = {
        "error": draw(INTS.filter(bool)),
        "error_text": draw(XML_TEXT),
        **draw(extras(TOP_LEVEL)),
    }
    return reply, draw(st.sampled_from([ENVELOPE_SCHEMA, STATUS_SCHEMA, ACCOUNT_SCHEMA]))


REPLIES = st.one_of(
    create_replies(), running_replies(), completed_replies(), failed_replies(), account_replies(), error_replies()
)
STRINGIFIED = {"error", "total", "loyalty_id", "points_currency_iid", "is_api", "progress", "total_count",
               "promo_iid", "source_iid", "source_subiid", "is_temp", "canceled"}  # fmt: skip


def stringify_documented(value: Any, schema: Any) -> Any:
    """The reply with its documented typed scalars sent as strings (a lenient server's JSON)."""
    if isinstance(schema, list):
        return [stringify_documented(item, schema[0]) for item in value] if isinstance(value, list) else value
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, shape in schema.items():
        if key not in out:
            continue
        if isinstance(shape, dict | list):
            out[key] = stringify_documented(out[key], shape)
        elif key in STRINGIFIED and out[key] is not None:
            out[key] = ("true" if out[key] else "false") if isinstance(out[key], bool) else str(out[key])
    return out


# ------------------------------------------------------------------------------------------ the differential test


@EXAMPLES
@given(reply=REPLIES, pretty=st.booleans(), list_item=st.sampled_from(["item", "value", "entry"]))
def test_json_and_xml_of_one_reply_decode_to_the_reply(reply: tuple[dict[str, Any], Schema], pretty, list_item):
    document, schema = reply
    from_json = decode_body(json.dumps(document).encode(), "application/json", schema=schema)
    from_xml = decode_body(to_xml(document, pretty=pretty, list_item=list_item), "application/xml", schema=schema)
    assert from_json == document
    assert from_xml == document
    # A lenient server's JSON, with the documented typed scalars sent as text, decodes alike too.
    lenient = json.dumps(stringify_documented(document, schema)).encode()
    assert decode_body(lenient, "application/json; charset=utf-8", schema=schema) == document


def _has_a_text_field(record: Any) -> bool:
    return isinstance(record, dict) and any(not isinstance(value, dict | list) for value in record.values())


@EXAMPLES
@given(reply=account_replies(), pretty=st.booleans(), list_item=st.sampled_from(["item", "value", "entry"]))
def test_an_account_page_with_one_data_element_per_record_decodes_to_the_reply(
    reply: tuple[dict[str, Any], Schema], pretty, list_item
):
    """Records as repeated ``<data>`` elements read as records inside one ``<data>`` do. What this
    form cannot tell apart: one ``<data>`` holding only objects is read as records inside it (a
    transaction always has a text field: its ``transaction_id``)."""
    document, schema = reply
    assume(all(_has_a_text_field(record) for record in document["data"]))
    body = to_xml(document, pretty=pretty, list_item=list_item, repeated_data=True)
    assert decode_body(body, "application/xml", schema=schema) == document


# ------------------------------------------------------------------------------------------ the cases of issue 13.6


def test_merchant_fields_named_like_documented_ones_are_left_alone() -> None:
    record = {
        "transaction_id": "t1",
        "is_temp": False,
        "custom_json": {"total": "99.90", "error": "none", "progress": "x"},
    }
    document = envelope([record], total_count=1, next_from_id="")
    for body, header in (
        (json.dumps(document).encode(), "application/json"),
        (to_xml(document, pretty=True), "text/xml"),
    ):
        decoded = decode_body(body, header, schema=ACCOUNT_SCHEMA)
        assert decoded["data"][0]["custom_json"] == {"total": "99.90", "error": "none", "progress": "x"}


@pytest.mark.parametrize(("sent", "meaning"), [(1, True), (0, False), ("1", True), ("0", False)])
def test_a_boolean_sent_as_zero_or_one_is_a_boolean_in_both_formats(sent: Any, meaning: bool) -> None:
    """JSON ``"canceled": 0`` stayed the integer 0 while XML's ``<canceled>0</canceled>`` and JSON's
    ``"0"`` were False: one member's history differed by content type."""
    document = envelope([{"transaction_id": "t1", "is_temp": sent, "canceled": sent}], total_count=1, next_from_id="")
    decoded = decode_body(json.dumps(document).encode(), "application/json", schema=ACCOUNT_SCHEMA)
    assert decoded["data"][0]["is_temp"] is meaning and decoded["data"][0]["canceled"] is meaning
    xml = decode_body(to_xml(document, pretty=False), "application/xml", schema=ACCOUNT_SCHEMA)
    assert xml["data"] == decoded["data"]
    status = envelope({"status": "completed", "progress": 100, "result": {"hashed_file": "h/f.zip", "is_api": sent}})
    assert (
        decode_body(json.dumps(status).encode(), "application/json", schema=STATUS_SCHEMA)["data"]["result"]["is_api"]
        is meaning
    )


def test_a_history_boolean_sent_as_another_integer_is_kept_as_sent() -> None:
    """Not a boolean, so not made one (2 is not True); written to the history file as the API sent
    it, as every record field the provider does not read (it refused the whole history before)."""
    document = envelope([{"transaction_id": "t1", "canceled": 2}], total_count=1, next_from_id="")
    decoded = decode_body(json.dumps(document).encode(), "application/json", schema=ACCOUNT_SCHEMA)
    assert decoded["data"][0]["canceled"] == 2 and decoded["data"][0]["canceled"] is not True


def test_a_decimal_progress_is_a_number_in_both_formats() -> None:
    document = envelope({"status": "in_progress", "progress": 42.5})
    assert (
        decode_body(to_xml(document, pretty=False), "application/xml", schema=STATUS_SCHEMA)["data"]["progress"] == 42.5
    )
    assert decode_body(json.dumps(document).encode(), "application/json", schema=STATUS_SCHEMA) == document


def test_a_failed_tasks_text_error_fields_stay_text() -> None:
    document = envelope({"status": "failed", "progress": 10, "error": "disk full", "error_text": "node 7"})
    decoded = decode_body(to_xml(document, pretty=True), "application/xml", schema=STATUS_SCHEMA)
    assert decoded["data"] == {"status": "failed", "progress": 10, "error": "disk full", "error_text": "node 7"}


def test_the_seeds_own_xml_example_decodes_with_its_types() -> None:
    body = b"""<xml>
<data>
<status>completed</status>
<progress>100</progress>
<result>
<hashed_file>jvIX/Transactions_loyalty_1_1_2023-09-01T00 00 00Z_2026-09-30T23 59 59Z.zip</hashed_file>
<is_api>true</is_api>
<loyalty_id>1</loyalty_id>
<next_from_id>1148b0b0-d33d-4d27-b582-8058ce7fc740</next_from_id>
<points_currency_iid>0</points_currency_iid>
<total>1000</total>
</result>
</data>
<error>0</error>
<error_text>Successful operation</error_text>
</xml>"""
    result = decode_body(body, "application/xml", schema=STATUS_SCHEMA)["data"]["result"]
    assert (result["total"], result["is_api"], result["loyalty_id"], result["points_currency_iid"]) == (
        1000,
        True,
        1,
        0,
    )


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize(
    ("opening", "prefix"),
    [('<xml xmlns="https://example.com/loyalty">', ""), ('<l:xml xmlns:l="https://example.com/loyalty">', "l:")],
    ids=["default-namespace", "prefixed"],
)
def test_a_namespaced_reply_reads_as_the_plain_one(opening: str, prefix: str, encoding: str) -> None:
    """In UTF-16 or UTF-32 ``xmlns`` is not those five bytes: such a reply was refused ("expected an
    <xml> root element, got <{https://example.com/loyalty}xml>"), every status check failing."""
    p = prefix
    body = (
        f"{opening}<{p}data><{p}status>completed</{p}status><{p}progress>100</{p}progress><{p}result>"
        f"<{p}hashed_file>a/b.zip</{p}hashed_file><{p}next_from_id></{p}next_from_id><{p}total>3</{p}total>"
        f"</{p}result></{p}data><{p}error>0</{p}error><{p}error_text>ok</{p}error_text></{p}xml>"
    ).encode(encoding)
    decoded = decode_body(body, f"application/xml; charset={encoding}", schema=STATUS_SCHEMA)
    assert decoded == {
        "data": {
            "status": "completed",
            "progress": 100,
            "result": {"hashed_file": "a/b.zip", "next_from_id": "", "total": 3},
        },
        "error": 0,
        "error_text": "ok",
    }


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_a_documented_list_has_any_length_in_xml(count: int) -> None:
    records = [{"transaction_id": f"t{n}", "promo_iid": n} for n in range(count)]
    body = to_xml(envelope(records, total_count=count), pretty=False)
    assert decode_body(body, "application/xml", schema=ACCOUNT_SCHEMA)["data"] == records


def test_a_merchant_list_in_xml_is_a_list() -> None:
    document = envelope(
        [{"transaction_id": "t", "custom_json": {"tags": ["a", "b", "c"], "nested": [{"k": "1"}, {"k": "2"}]}}]
    )
    decoded = decode_body(to_xml(document, pretty=False), "application/xml", schema=ACCOUNT_SCHEMA)
    assert decoded["data"][0]["custom_json"] == {"tags": ["a", "b", "c"], "nested": [{"k": "1"}, {"k": "2"}]}


def test_a_merchant_list_written_one_element_per_item_beside_other_fields_is_a_list() -> None:
    """``{"key": "v", "tags": ["vip", "gold"]}`` as repeated ``<tags>``: one member's merchant data
    once failed the whole page ("appears more than once ... beside other fields")."""
    records = (
        "<transaction><transaction_id>t1</transaction_id><custom_json><key>v</key><tags>vip</tags>"
        "<n><k>1</k></n><tags>gold</tags><n><k>2</k></n></custom_json></transaction>"
        "<transaction><transaction_id>t2</transaction_id><custom_json><key>w</key></custom_json></transaction>"
    )
    body = f"<xml><data>{records}</data><error>0</error></xml>".encode()
    data = decode_body(body, "application/xml", schema=ACCOUNT_SCHEMA)["data"]
    assert data[0]["custom_json"] == {"key": "v", "tags": ["vip", "gold"], "n": [{"k": "1"}, {"k": "2"}]}
    assert data[1]["custom_json"] == {"key": "w"}


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("<description>Bonus for order <b>#123</b> at store 5</description>", "Bonus for order <b>#123</b> at store 5"),
        ("<description><b>Bonus</b> for R&amp;D</description>", "<b>Bonus</b> for R&D"),  # as text reads
        ("<description>A &amp; B <b>x</b> &lt;c&gt;<br/></description>", "A & B <b>x</b> <c><br/>"),
        (
            '<description>See <a href="https://x.example/?a=1&amp;b=2">here</a>.</description>',
            'See <a href="https://x.example/?a=1&b=2">here</a>.',
        ),
        ("<description>\n  <b>only</b>\n</description>", None),  # children between blanks: an object
    ],
)
def test_a_field_with_markup_beside_its_text_is_that_markup_not_an_object(field: str, text: str | None) -> None:
    """A server that does not escape markup in a text field: ``<b>#123</b>`` was read as the object
    ``{"b": "#123"}`` and the words around it were silently dropped."""
    body = f"<xml><data><item><transaction_id>t1</transaction_id>{field}</item></data><error>0</error></xml>"
    record = decode_body(body.encode(), "application/xml", schema=ACCOUNT_SCHEMA)["data"][0]
    assert record["description"] == (text if text is not None else {"b": "only"})


def test_empty_elements_are_none_for_typed_fields_and_text_otherwise() -> None:
    body = b"<xml><data><status>completed</status><progress/><result><total/><hashed_file/></result></data><error>0</error></xml>"
    data = decode_body(body, "application/xml", schema=STATUS_SCHEMA)["data"]
    assert data == {"status": "completed", "progress": None, "result": {"total": None, "hashed_file": ""}}


@pytest.mark.parametrize("content_type", ["application/json", "application/xml"])
def test_fields_nothing_depends_on_keep_an_odd_value_as_sent(content_type: str) -> None:
    """``progress`` is only logged and ``loyalty_id``, ``points_currency_iid`` and ``is_api`` only
    passed on: a value not of its documented type fails nothing (a completed export still lands)."""
    odd = {"progress": "n/a", "loyalty_id": "program-7", "points_currency_iid": "", "is_api": "maybe"}
    result = {"hashed_file": "a/b.zip", "total": "3", **{key: odd[key] for key in odd if key != "progress"}}
    document = envelope({"status": "completed", "progress": odd["progress"], "result": result})
    body = json.dumps(document).encode() if content_type.endswith("json") else to_xml(document, pretty=False)
    data = decode_body(body, content_type, schema=STATUS_SCHEMA)["data"]
    assert data["progress"] == "n/a"
    assert data["result"] == {"hashed_file": "a/b.zip", "total": 3, "loyalty_id": "program-7",
                              "points_currency_iid": None, "is_api": "maybe"}  # fmt: skip
    typed = decode_body(json.dumps(envelope({"progress": "42%", "result": {"loyalty_id": "7"}})).encode(),
                        "application/json", schema=STATUS_SCHEMA)["data"]  # fmt: skip
    assert (typed["progress"], typed["result"]["loyalty_id"]) == (42, 7)  # of their type when they read as it


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b"<xml><error_text>a</error_text><error_text>b</error_text><error>0</error></xml>",
            "<error_text> appears more than once under <xml>",
        ),
        (b"<xml><error>zero</error></xml>", "field 'error': expected integer"),
        (b"<xml><data><result><total>fast</total></result></data><error>0</error></xml>", "field 'data.result.total'"),
        (b"<response><error>0</error></response>", "expected an <xml> root element, got <response>"),
        (b"<html><body>502</body></html>", "reply is an HTML page"),
        (b"<xml>" + b"<a>" * 5000 + b"x" + b"</a>" * 5000 + b"</xml>", "nested too deeply"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><xml><error>&e;</error></xml>', "refused for safety"),
    ],
)
def test_what_cannot_be_decoded_is_a_typed_error(body: bytes, expected: str) -> None:
    with pytest.raises(LoyaltyResponseError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        decode_body(body, "application/xml", schema=STATUS_SCHEMA)


@pytest.mark.parametrize("total", [1000, 1000.0, "1000", " 1000 ", "1000.0", "1e3"])
def test_a_whole_number_for_an_integer_field_is_an_int_however_written(total: Any) -> None:
    """A server may write ``total`` as ``1000.0`` (a float in JSON, or in XML text): it is 1000 rows."""
    result = {"hashed_file": "a/b.zip", "total": total}
    as_json = json.dumps(envelope({"status": "completed", "result": result})).encode()
    as_xml = to_xml(envelope({"status": "completed", "result": result}), pretty=False)
    for body, content_type in ((as_json, "application/json"), (as_xml, "application/xml")):
        decoded = decode_body(body, content_type, schema=STATUS_SCHEMA)["data"]["result"]["total"]
        assert (decoded, type(decoded)) == (1000, int), content_type


@pytest.mark.parametrize(("written", "progress"), [("42%", 42), (" 42.5 % ", 42.5), ("100", 100), ("", None)])
def test_progress_written_as_a_percentage_is_that_number(written: str, progress: Any) -> None:
    for body, content_type in (
        (json.dumps(envelope({"status": "in_progress", "progress": written})).encode(), "application/json"),
        (to_xml(envelope({"status": "in_progress", "progress": written}), pretty=False), "application/xml"),
    ):
        assert decode_body(body, content_type, schema=STATUS_SCHEMA)["data"]["progress"] == progress, content_type


@pytest.mark.parametrize("total", [1000.5, "1000.5", "1e-3", "inf", "nan", "ten"])
def test_a_fraction_or_a_word_for_an_integer_field_is_refused(total: Any) -> None:
    body = json.dumps(envelope({"status": "completed", "result": {"total": total}})).encode()
    with pytest.raises(LoyaltyResponseError, match=r"field 'data\.result\.total': expected integer"):
        decode_body(body, "application/json", schema=STATUS_SCHEMA)


def test_a_json_reply_to_an_xml_request_still_decodes() -> None:
    assert decode_body(b'{"error": "0", "data": {"task_id": "t"}}', None) == {"error": 0, "data": {"task_id": "t"}}
    assert decode_body(b"  <xml><error>0</error></xml>", None) == {"error": 0}


# ------------------------------------------------------------------------------------------ request bodies


def test_request_bodies_leave_out_none_and_write_booleans_as_words() -> None:
    payload = {"task_id": "t&<1>", "from_id": None, "flag": True, "limit": 20}
    assert json.loads(encode_body(payload, "json")) == {"task_id": "t&<1>", "flag": True, "limit": 20}
    assert (
        encode_body(payload, "xml")
        == b"<xml><task_id>t&amp;&lt;1&gt;</task_id><flag>true</flag><limit>20</limit></xml>"
    )


@pytest.mark.parametrize(
    "text", ["x\ud800", "x\ufffe", "a\x00b", "line\x0bfeed"], ids=["surrogate", "fffe", "nul", "vt"]
)
def test_a_value_an_xml_body_cannot_carry_is_refused_naming_its_field(text: str) -> None:
    """A lone surrogate failed with a bare UnicodeEncodeError; U+FFFE and C0 controls were sent in
    a body no XML parser reads. JSON carries them all (escaped)."""
    with pytest.raises(LoyaltyValidationError, match=r"^field_value: holds U\+[0-9A-F]{4} at position \d") as caught:
        encode_body({"field_name": "user_id", "field_value": text}, "xml")
    assert text not in str(caught.value)  # the value itself is never quoted: it may be the token
    assert json.loads(encode_body({"field_value": text}, "json")) == {"field_value": text}


def test_tabs_and_line_breaks_stay_in_an_xml_body() -> None:
    assert encode_body({"field_value": "a\tb\r\nc"}, "xml") == b"<xml><field_value>a\tb\r\nc</field_value></xml>"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
@pytest.mark.parametrize("prefix", [b"", b"\xef\xbb\xbf", b"\r\n  ", b"\xef\xbb\xbf\n"])
def test_a_reply_without_a_telling_content_type_is_recognised_by_its_first_character(
    content_type: str | None, prefix: bytes
) -> None:
    xml = (
        prefix
        + b'<?xml version="1.0"?>\n<xml><data><task_id>task_1</task_id></data><error>0</error><error_text/></xml>'
    )
    json_body = prefix + b'{"data": {"task_id": "task_1"}, "error": "0", "error_text": ""}'

    for body in (xml, json_body):
        assert decode_body(body, content_type) == {"data": {"task_id": "task_1"}, "error": 0, "error_text": ""}


# ------------------------------------------------------------------------------------------ JSON: msgspec, read as json reads


def _json_verdict(body: bytes) -> tuple[str, Any]:
    """What ``json.loads`` makes of a body: its value (by ``repr``: NaN and -0.0 compare), or that it errs."""
    try:
        return "value", repr(json.loads(body))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "error", None


def _codec_verdict(body: bytes) -> tuple[str, Any]:
    try:
        return "value", repr(decode_body(body, "application/json"))
    except LoyaltyResponseError:
        return "error", None


_JSON_ODDITIES = [
    b"NaN",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"123456789012345678901234567890",
    b"-0",
    b"-0.0",
    b"2.2250738585072011e-308",
    b'"\\ud800"',
    b'"\\udc00x"',
    b'"\\u0000"',
    b'{"a": 1, "a": 2}',
    b"[" * 3000 + b"]" * 3000,
    b'"caf\xc3\xa9"',
    b'"\xff"',
    b"1.",
    b"01",
    b"[1,]",
]


@pytest.mark.parametrize("value", _JSON_ODDITIES)
def test_a_json_value_decodes_as_json_reads_it_whichever_decoder_reads_it(value: bytes) -> None:
    """msgspec reads most replies; what it refuses (NaN, a lone surrogate, ...) json reads, as before."""
    body = b'{"v": ' + value + b"}"
    assert _codec_verdict(body) == _json_verdict(body)


@pytest.mark.parametrize(
    ("number", "decoded"),
    [
        ("100.10", 100.1),
        ("0.1", 0.1),
        ("1e3", 1000.0),
        ("-2.5e-3", -0.0025),
        ("123456789012345678901234567890.123456789", Decimal("123456789012345678901234567890.123456789")),
        ("9007199254740993.5", Decimal("9007199254740993.5")),
        ("1e400", Decimal("1e400")),
        ("0.10000000000000001", Decimal("0.10000000000000001")),  # PHP's serialize_precision=17
    ],
)
def test_a_json_number_is_a_float_only_where_one_writes_it_back_as_sent(number: str, decoded: Any) -> None:
    """An amount of 30 digits (or past 2**53) was read as the nearest float, and the member history
    file then held another number than the API sent."""
    page = b'{"error": 0, "data": [{"transaction_id": "t1", "amount": ' + number.encode() + b"}]}"
    value = decode_body(page, "application/json", schema=ACCOUNT_SCHEMA)["data"][0]["amount"]
    assert type(value) is type(decoded) and value == decoded
    # json.loads reads it so too, with exact_number for floats (also where msgspec refuses the body)
    assert json.loads(page, parse_float=exact_number)["data"][0]["amount"] == decoded
    written = json.loads(json_line({"v": value}), parse_float=Decimal)["v"]
    assert written == Decimal(number) if isinstance(value, Decimal) else float(written) == value


def test_numbers_of_other_replies_stay_floats_for_xcom_and_events() -> None:
    """A task's status goes to the sensor's XCom and the trigger's event: a ``Decimal('1E+5000')``
    there failed (or hung) XCom serialization, which turns a Decimal of positive exponent into an int."""
    body = b'{"error": 0, "data": {"status": "completed", "progress": 1e5000, "result": {"total": 0, "x": 0.30000000000000001}}}'
    data = decode_body(body, "application/json", schema=STATUS_SCHEMA)["data"]
    assert data["progress"] == float("inf") and type(data["result"]["x"]) is float


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_json_after_a_byte_order_mark_or_in_utf16_reads_as_json_reads_it(encoding: str) -> None:
    body = json.dumps({"error": 0, "data": {"task_id": "t\u00e9"}}).encode(encoding)
    assert _codec_verdict(body) == _json_verdict(body) == ("value", repr({"error": 0, "data": {"task_id": "t\u00e9"}}))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=30,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_json_document_decodes_to_what_json_reads(value: Any) -> None:
    body = json.dumps({"v": value}).encode()  # NaN and infinities as json writes them
    assert _codec_verdict(body) == _json_verdict(body)


@pytest.mark.parametrize(
    ("written", "value"),
    [("9007199254740993.0", 9007199254740993), ("12345678901234567890123.0", 12345678901234567890123), ("1E3", 1000)],
)
def test_a_whole_number_written_as_a_decimal_is_read_exactly(written: str, value: int) -> None:
    """Through a float, 9007199254740993.0 became ...992 and 12345678901234567890123.0 became
    12345678901234567741440 in a history file (probe)."""
    page = f"<xml><data><item><transaction_id>t</transaction_id><promo_iid>{written}</promo_iid></item></data>"
    body = (page + "<error>0</error></xml>").encode()
    assert decode_body(body, "application/xml", schema=ACCOUNT_SCHEMA)["data"][0]["promo_iid"] == value


def test_an_integer_longer_than_python_reads_from_text_is_a_number_not_invalid_json() -> None:
    """A 5,000-digit integer (legal JSON) failed the page as "reply is not valid JSON" (Python
    converts at most 4,300 digits to an int from text); it is read as a Decimal, written back
    exactly to a history file, and carried as its digits in an event (probe)."""
    from airflow_provider_loyalty.utils.json_lines import json_line
    from airflow_provider_loyalty.utils.storable import storable

    digits = "9" * 5000
    page = f'{{"data":[{{"transaction_id":"t","custom_json":{{"x":{digits}}}}}],"error":0}}'.encode()
    record = decode_body(page, "application/json", schema=ACCOUNT_SCHEMA)["data"][0]
    assert json_line(record) == f'{{"transaction_id": "t", "custom_json": {{"x": {digits}}}}}\n'.encode()
    status = f'{{"data":{{"status":"completed","result":{{"total":1,"x":{digits}}}}},"error":0}}'.encode()
    result = decode_body(status, "application/json", schema=STATUS_SCHEMA)["data"]["result"]
    assert storable(result) == {"total": 1, "x": digits}
