"""Fuzz the reply codec and the download URL builder with hypothesis.

Whatever bytes or documents a server sends, ``utils.protocol.check_reply`` and ``utils.codec.decode_body``
either return a dict or raise one of the provider's typed errors (``LoyaltyError`` subclasses),
never a parser's or Python's own exception. Whatever ``hashed_file`` a server sends,
``utils.protocol.download_url`` either returns a URL on the connection's host under ``/api/download/``
(one segment per ``/``, none of them a dot segment after decoding, no query or fragment) or raises
``LoyaltyUnsafeDataError``. Example counts are bounded so the default run takes seconds; the slow
variant runs many more.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element, SubElement, tostring

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_loyalty.exceptions import LoyaltyError, LoyaltyUnsafeDataError
from airflow_provider_loyalty.utils.codec import ACCOUNT_SCHEMA, ENVELOPE_SCHEMA, STATUS_SCHEMA, Schema, decode_body
from airflow_provider_loyalty.utils.connection import settings_from_parts
from airflow_provider_loyalty.utils.protocol import check_reply, download_url

TOKEN = "fuzz-token-0123456789abcdef"
FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=5000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

CONTENT_TYPES = st.sampled_from(
    [None, "", "application/json", "application/xml", "text/xml; charset=utf-8", "text/html", "application/zip"]
)
STATUSES = st.sampled_from([200, 200, 200, 201, 204, 301, 302, 400, 401, 403, 404, 409, 429, 500, 502, 503])
SCHEMAS = st.sampled_from([ENVELOPE_SCHEMA, STATUS_SCHEMA, ACCOUNT_SCHEMA])
RETRY_AFTER = st.one_of(st.none(), st.text(max_size=40), st.integers(-10, 10**6).map(str))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
FIELD_NAMES = st.sampled_from(
    ["error", "error_text", "data", "task_id", "status", "progress", "result", "total", "hashed_file",
     "next_from_id", "is_api", "loyalty_id", "total_count", "canceled"]
)  # fmt: skip
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "error": st.one_of(st.integers(-5, 2000), st.text(max_size=6), st.booleans(), st.none(), st.floats()),
        "error_text": st.one_of(st.text(max_size=40), st.just(TOKEN), st.none()),
        "data": json_values,
    },
)

xml_tag = st.one_of(FIELD_NAMES, st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.-]{0,10}\Z"))
xml_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20
).filter(lambda t: all(c in "\t\n\r" or ord(c) >= 0x20 for c in t) and "\ufffe" not in t and "\uffff" not in t)


@st.composite
def xml_documents(draw: Any) -> bytes:
    root = Element(draw(st.sampled_from(["xml", "xml", "xml", "html", "data"])))

    def fill(parent: Element, depth: int) -> None:
        for _ in range(draw(st.integers(0, 4 if depth < 3 else 0))):
            child = SubElement(parent, draw(xml_tag))
            if draw(st.booleans()):
                child.text = draw(xml_text)
            else:
                fill(child, depth + 1)

    fill(root, 0)
    return tostring(root, encoding="utf-8")


def check(body: bytes, status: int, content_type: str | None, schema: Schema, retry_after=None) -> None:
    headers = requests.structures.CaseInsensitiveDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    error: LoyaltyError | None = None
    try:
        envelope = check_reply(http_status=status, headers=headers, body=body, token=TOKEN, schema=schema)
    except LoyaltyError as err:
        error = err
    if error is not None:
        assert TOKEN not in str(error), "the token leaked into an exception message"
        return
    assert isinstance(envelope, dict)
    assert 200 <= status < 300


def decode(body: bytes, content_type: str | None, schema: Schema) -> None:
    try:
        document = decode_body(body, content_type, schema=schema)
    except LoyaltyError:
        return
    assert isinstance(document, dict)


# ------------------------------------------------------------------------------------------ reply bodies


@FAST
@given(
    body=st.binary(max_size=400),
    status=STATUSES,
    content_type=CONTENT_TYPES,
    schema=SCHEMAS,
    retry_after=RETRY_AFTER,
)
def test_arbitrary_bytes_only_raise_typed_errors(body, status, content_type, schema, retry_after):
    check(body, status, content_type, schema, retry_after)
    decode(body, content_type, schema)


@FAST
@given(document=st.one_of(envelopes, json_values), status=STATUSES, content_type=CONTENT_TYPES, schema=SCHEMAS)
def test_arbitrary_json_documents_only_raise_typed_errors(document, status, content_type, schema):
    body = json.dumps(document).encode()
    check(body, status, content_type, schema)
    decode(body, content_type, schema)


@FAST
@given(body=xml_documents(), status=STATUSES, content_type=CONTENT_TYPES, schema=SCHEMAS)
def test_arbitrary_xml_documents_only_raise_typed_errors(body, status, content_type, schema):
    check(body, status, content_type, schema)
    decode(body, content_type, schema)


@FAST
@given(body=xml_documents(), cut=st.integers(0, 200), junk=st.binary(max_size=20))
def test_mangled_xml_only_raises_typed_errors(body, cut, junk):
    mangled = body[: max(0, len(body) - cut)] + junk
    check(mangled, 200, "application/xml", ENVELOPE_SCHEMA)


# ------------------------------------------------------------------------------------------ hashed_file

BASES = ["http://127.0.0.1:8080", "https://api.example.com/loyalty/v2"]
SEGMENT_CHARS = st.characters(blacklist_categories=["Cs"])
hashed_files = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.one_of(
            st.text(SEGMENT_CHARS, max_size=12),
            st.sampled_from(
                [".", "..", "%2e", "%2E%2e", "%252e%252e", "a%2fb", "a%5cb", "%00", "http:", "x@y", "?q", "#f"]
            ),
        ),
        min_size=1,
        max_size=5,
    ).map("/".join),
    st.sampled_from(["http://evil/x", "//evil/x", "https:/evil", "\\\\evil\\x", "a/\u2215b", "C:\\x"]),
)


def assert_safe_url(base: str, hashed_file: Any) -> None:
    conn = settings_from_parts(host=base, password=TOKEN, extra={})
    try:
        url = download_url(conn, hashed_file)
    except LoyaltyUnsafeDataError:
        return
    parts = urlsplit(url)
    assert parts.scheme == urlsplit(base).scheme
    assert parts.netloc == conn.netloc
    prefix = conn.base_path + "/api/download/"
    assert parts.path.startswith(prefix), url
    assert parts.query == "" and parts.fragment == "", url
    assert "\\" not in url and TOKEN not in url
    # What actually goes on the wire after requests prepares (and re-quotes) it:
    prepared = requests.Request("GET", url).prepare()
    wire = urlsplit(prepared.url)
    assert wire.netloc == conn.netloc and wire.path.startswith(prefix), prepared.url
    for segment in wire.path[len(prefix) :].split("/"):
        assert unquote(segment) not in ("", ".", ".."), prepared.url


@FAST
@given(hashed_file=hashed_files, base=st.sampled_from(BASES))
def test_download_url_stays_on_host_or_refuses(hashed_file, base):
    assert_safe_url(base, hashed_file)


@FAST
@given(value=st.one_of(st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3))))
def test_download_url_refuses_non_strings(value):
    conn = settings_from_parts(host=BASES[0], password=TOKEN, extra={})
    with pytest.raises(LoyaltyUnsafeDataError):
        download_url(conn, value)


# ------------------------------------------------------------------------------------------ long variant


@pytest.mark.slow
@SLOW
@given(body=st.binary(max_size=2000), status=STATUSES, content_type=CONTENT_TYPES, schema=SCHEMAS)
def test_arbitrary_bytes_only_raise_typed_errors_long(body, status, content_type, schema):
    check(body, status, content_type, schema)


@pytest.mark.slow
@SLOW
@given(document=st.one_of(envelopes, json_values), body=xml_documents(), content_type=CONTENT_TYPES)
def test_arbitrary_documents_only_raise_typed_errors_long(document, body, content_type):
    check(json.dumps(document).encode(), 200, content_type, ENVELOPE_SCHEMA)
    check(body, 200, content_type, ENVELOPE_SCHEMA)


@pytest.mark.slow
@SLOW
@given(hashed_file=hashed_files, base=st.sampled_from(BASES))
def test_download_url_stays_on_host_or_refuses_long(hashed_file, base):
    assert_safe_url(base, hashed_file)


@pytest.mark.parametrize(
    ("hashed_file", "path"),
    [
        ("Transactions_loyalty_1_1_2023-09-01T00:00:00Z.zip", "Transactions_loyalty_1_1_2023-09-01T00%3A00%3A00Z.zip"),
        ("Tx-2023-09-01T00:00:00Z.zip", "Tx-2023-09-01T00%3A00%3A00Z.zip"),
    ],
)
def test_a_bare_file_name_with_colons_is_a_name(hashed_file: str, path: str) -> None:
    """The API's names hold colons; with no folder before them they are still no URL."""
    conn = settings_from_parts(host=BASES[0], password=TOKEN, extra={})
    assert download_url(conn, hashed_file).endswith("/api/download/" + path)
    assert_safe_url(BASES[0], hashed_file)


@pytest.mark.parametrize(
    "hashed_file", ["https:/evil/x", "http:", "C:/evil.zip", "c:evil.zip", "javascript:alert(1)/x", "mailto:x"]
)
def test_a_scheme_or_drive_before_the_first_slash_is_refused(hashed_file: str) -> None:
    conn = settings_from_parts(host=BASES[0], password=TOKEN, extra={})
    with pytest.raises(LoyaltyUnsafeDataError, match="absolute URL or path"):
        download_url(conn, hashed_file)
