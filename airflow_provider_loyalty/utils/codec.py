"""Request and response bodies in both of the API's content types.

The API speaks JSON or XML (an ``<xml>`` root whose children are the fields, as its documentation
shows). Replies are decoded by their own Content-Type, so a JSON reply to an XML request still
parses. XML that could carry a DTD is parsed with :mod:`defusedxml` (a DOCTYPE is read, but no
entities and no external fetches); a UTF-8 body with no ``<!`` at all cannot, and takes the C parser directly.

XML carries every scalar as text. Each endpoint has a :data:`Schema` naming its documented typed
fields at their documented place (``data.result.total``, not any ``total`` anywhere): those, and
only those, are coerced, in JSON replies too (a number sent as a string is still a number), so the
two formats decode alike and merchant-defined objects (``custom_json``) are never touched. Lists
are repeated child elements in XML: a field the schema documents as a list (the account
endpoint's ``data``) with any number of them, any other element when two or more children share
one tag (a merchant's list inside ``custom_json``). The account endpoint's records come either as
children of one ``<data>`` or as one ``<data>`` per record (PHP-style serializers write arrays
so); both read alike.

JSON is UTF-8 (RFC 8259, also with a byte order mark; UTF-16 and UTF-32 are recognised as
:mod:`json` recognises them), whatever a ``charset`` parameter says; a body that is not UTF-8 is
read in the charset its Content-Type names, or refused naming it.

A reply that decodes as neither and is an HTML page (a captive portal, a proxy's login page, a
wrong Base URL), or whose Content-Type is no JSON or XML type, is said to be that, with a short
excerpt; the caller (:func:`~airflow_provider_loyalty.utils.protocol.check_reply`) removes the
token from it.

What XML cannot tell apart, and JSON can: an empty element (``<custom_json/>``) is ``""``, though
JSON may have meant ``{}``, ``[]`` or ``null`` (the schema settles it for documented fields: a
typed field decodes it as ``None``, a list as ``[]``, an object as ``{}``); a merchant list of
one item reads as an object of one field. A bare carriage return in text reaches the parser as a
line feed unless the server writes ``&#13;``.

Anything that does not decode raises :class:`LoyaltyResponseError`, never a parser's own error.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import gc
import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Union
from xml.etree.ElementTree import Element, fromstring
from xml.sax.saxutils import escape as xml_escape

import defusedxml.ElementTree as SafeET
import msgspec
from defusedxml import DefusedXmlException

from airflow_provider_loyalty.exceptions import LoyaltyResponseError, LoyaltyValidationError
from airflow_provider_loyalty.utils.redaction import clip


class FieldType(enum.Enum):
    """The documented type of a scalar field."""

    INT = "integer"
    NUMBER = "number"
    BOOL = "boolean"


@dataclasses.dataclass(frozen=True)
class Informational:
    """A documented field the provider only logs or passes on (a task's ``progress``, ids it echoes):
    of its type when its value reads as one, else kept as sent, so an odd value fails nothing."""

    kind: FieldType


#: A reply's documented typed fields: a field name maps to its type (:class:`Informational` for
#: one nothing depends on), to the schema of a nested object, or to a one-element list holding the
#: schema of each item of a list.
Schema = Mapping[str, Union[FieldType, Informational, "Schema", list["Schema"]]]

_INT, _NUMBER, _BOOL = FieldType.INT, FieldType.NUMBER, FieldType.BOOL
#: Every reply: the envelope.
ENVELOPE_SCHEMA: Schema = {"error": _INT}
#: ``tasks/status``.
STATUS_SCHEMA: Schema = {
    "error": _INT,
    "data": {
        "progress": Informational(_NUMBER),
        "result": {
            "total": _INT,
            "loyalty_id": Informational(_INT),
            "points_currency_iid": Informational(_INT),
            "is_api": Informational(_BOOL),
        },
    },
}
#: ``loyalty/account/transactions``: ``data`` is a list of transactions. Their fields are written
#: to the history file, never read by the provider: each is of its type when it reads as one, else
#: kept as sent (one promo id of ``"SUMMER-2023"`` refused a whole history).
ACCOUNT_SCHEMA: Schema = {
    "error": _INT,
    "total_count": _INT,
    "data": [
        {
            "promo_iid": Informational(_INT),
            "source_iid": Informational(_INT),
            "source_subiid": Informational(_INT),
            "is_temp": Informational(_BOOL),
            "canceled": Informational(_BOOL),
        }
    ],
}

#: Every reply field the seeds document, typed or not: in XML, one of them given twice beside other
#: fields is refused (which one the server meant is unknown); any other field repeated is a list.
DOCUMENTED_FIELDS = frozenset(
    {
        *("error", "error_text", "data", "task_id", "status", "progress", "result", "hashed_file"),
        *("next_from_id", "total", "loyalty_id", "points_currency_iid", "is_api", "total_count"),
        *("transaction_id", "transaction_eid", "created_at", "transaction_type", "amount", "balance_before"),
        *("balance_after", "promo_iid", "promo_eid", "description", "activation_date", "expiration_date"),
        *("source_type", "source_iid", "source_sid", "source_subiid", "is_temp", "custom_json", "product_eid"),
        *("sku_eid", "canceled"),
    }
)

MIME_TYPES = {"json": "application/json", "xml": "application/xml"}


def encode_body(payload: dict[str, Any], content_type: str) -> bytes:
    """Encode a request body; ``None`` values are left out (optional fields not sent).

    XML is written as text directly (field names are the API's own; values escaped as
    ElementTree escapes text), a tenth of the CPU of building an element tree to serialize it.

    :param payload: the request's fields (scalars, or objects of them).
    :param content_type: ``json`` or ``xml``.
    """
    fields = {key: value for key, value in payload.items() if value is not None}
    if content_type == "json":
        return json.dumps(fields, separators=(",", ":")).encode("utf-8")
    return f"<xml>{''.join(_xml_field(key, value) for key, value in fields.items())}</xml>".encode()


def _xml_field(name: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml_field(str(key), item) for key, item in value.items() if item is not None)
        return f"<{name}>{inner}</{name}>"
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if refused := _NOT_XML.search(text):  # the value itself is not quoted: it may be the token
        raise LoyaltyValidationError(
            name,
            f"holds U+{ord(refused.group()):04X} at position {refused.start()}, a character an XML body cannot "
            "carry (XML 1.0); send it with content_type json, or remove it",
        )
    return f"<{name}>{xml_escape(text)}</{name}>"


#: What XML 1.0 cannot carry (its ``Char`` production): C0 controls but tab, newline and carriage
#: return, lone surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def decode_body(body: bytes, content_type_header: str | None, *, schema: Schema = ENVELOPE_SCHEMA) -> dict[str, Any]:
    """Decode a reply body into a dict, choosing the format from its Content-Type header.

    :param body: the raw reply bytes (already size-capped by the caller).
    :param content_type_header: the reply's ``Content-Type``; sniffed from the body when unknown.
    :param schema: the endpoint's documented typed fields (lists, in XML, come from it too).
    """
    kind = _kind_of(content_type_header, body)
    compiled = _compiled(schema)
    try:
        if kind == "json":
            # History records go to files as the API sent them: their numbers keep their digits.
            # Other replies (a task's status) go to XCom and events, which take floats, not Decimals.
            document = _decode_json(body, content_type_header, exact_numbers=schema is ACCOUNT_SCHEMA)
        else:
            document = _decode_xml(body, compiled, content_type_header)
        if document.__class__ is not dict:
            raise LoyaltyResponseError(
                f"expected a {kind.upper()} object at the top level, got {type(document).__name__}"
            )
    except LoyaltyResponseError:
        _refuse_if_not_the_api(body, content_type_header, kind)
        raise
    _coerce_fields(document, compiled)
    return document


def _kind_of(content_type_header: str | None, body: bytes) -> str:
    header = (content_type_header or "").lower()
    if "json" in header:
        return "json"
    if "xml" in header:
        return "xml"
    # A UTF-8 byte order mark or blank lines may come before either; no JSON text starts with "<".
    return "xml" if body[:256].lstrip(b" \t\r\n\xef\xbb\xbf")[:1] == b"<" else "json"


def exact_number(text: str) -> float | Decimal:
    """A JSON number with a fraction or an exponent: a ``float`` when one holds its value exactly as
    written (``100.10``, ``0.1``, ``1e3``), else a :class:`~decimal.Decimal` (an amount of 30 digits,
    ``9007199254740993.5``, ``1e400``), so no record is rounded on its way to a file."""
    number = float(text)
    if repr(number) == text or (math.isfinite(number) and Decimal(repr(number)) == Decimal(text)):
        return number
    return Decimal(text)


#: msgspec (which Airflow itself depends on) decodes JSON in about half the CPU of :mod:`json`.
_fast_json_decode = msgspec.json.Decoder().decode
_exact_json_decode = msgspec.json.Decoder(float_hook=exact_number).decode


def _decode_json(body: bytes, content_type_header: str | None, *, exact_numbers: bool = False) -> Any:
    """The JSON document: by msgspec where it reads the body, else by :mod:`json`.

    Where msgspec reads a body, it gives what ``json.loads`` gives (the same values, the last of
    repeated keys; with ``exact_numbers`` both read numbers by :func:`exact_number`). What it
    refuses and ``json`` reads (``NaN``, a number past the float range, a lone surrogate escape, a
    byte order mark, UTF-16) and every error go to ``json``, so what is accepted and what each
    error says stay ``json``'s. Only a body that is not UTF-8 (nor UTF-16 or UTF-32) is read in the
    charset its Content-Type names (:func:`_json_text`).
    """
    try:
        return (_exact_json_decode if exact_numbers else _fast_json_decode)(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):  # msgspec 0.19 raises UnicodeDecodeError too
        pass
    try:
        return json.loads(body, parse_float=exact_number if exact_numbers else float, parse_int=_whole_number)
    except UnicodeDecodeError as err:
        not_utf8 = err
    except (ValueError, RecursionError) as err:
        raise LoyaltyResponseError(f"reply is not valid JSON: {type(err).__name__}: {str(err)[:200]}") from None
    # Not UTF-8 (nor UTF-16/32): the text in its declared charset, decoded as UTF-8 like any other.
    text, charset = _json_text(body, content_type_header, not_utf8)
    try:
        return _decode_json(text.encode("utf-8", "surrogatepass"), None, exact_numbers=exact_numbers)
    except LoyaltyResponseError as err:
        raise LoyaltyResponseError(f"{err} (read as {charset}, the charset its Content-Type names)") from None


def _whole_number(text: str) -> int | Decimal:
    """A JSON integer: an ``int``, or a ``Decimal`` past the digits Python converts to ``int`` from
    text (4,300 by default: a longer one is legal JSON, not "invalid JSON")."""
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


_CHARSET = re.compile(r";\s*charset\s*=\s*[\"']?([^\"';\s]+)", re.IGNORECASE)


def _declared_charset(content_type_header: str | None) -> str | None:
    """The ``charset`` a Content-Type names (at most 40 characters: a name, not a payload), or ``None``."""
    declared = _CHARSET.search(content_type_header or "")
    return declared.group(1)[:40] if declared else None


def _json_text(body: bytes, content_type_header: str | None, not_utf8: UnicodeDecodeError) -> tuple[str, str]:
    """A JSON body that is not UTF-8, as text in the charset its Content-Type names (and that name).

    RFC 8259 wants UTF-8 (a mislabelled UTF-8 body is read as UTF-8 before this is asked), yet a
    server may still send ``charset=iso-8859-1`` or ``windows-1251`` and mean it. No charset, one
    Python does not know as a text encoding, or one the body is not valid in, is refused naming it.
    """
    charset = _declared_charset(content_type_header) or "utf-8"
    try:
        codec = codecs.lookup(charset).name
        if codec == "utf-8":  # what it was read as: the body is no UTF-8
            raise LoyaltyResponseError(f"reply is not valid JSON: UnicodeDecodeError: {str(not_utf8)[:200]}") from None
        text = body.decode(codec)
    except LookupError:  # unknown, or no text encoding (base64, rot13)
        raise LoyaltyResponseError(
            f"reply is not UTF-8 JSON, and its Content-Type's charset {charset!r} is not a text encoding "
            "Python knows; JSON is UTF-8 (RFC 8259)"
        ) from None
    except UnicodeError as err:
        raise LoyaltyResponseError(
            f"reply is not UTF-8 JSON and is not {charset} text, the charset its Content-Type names: {str(err)[:200]}"
        ) from None
    return text.removeprefix("\ufeff"), charset


_XML_DECLARED_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


def _plainly_safe(body: bytes) -> bool:
    """No DTD can hide in this body, so the C parser needs no defusing.

    Entities (billion laughs, external fetches) need a ``<!DOCTYPE``; a UTF-8/ASCII body without
    ``<!`` has none. Bodies in other encodings (NULs for UTF-16, a declared non-UTF-8 encoding)
    could spell ``<!`` differently, so they go through defusedxml like anything else unusual.
    """
    if b"<!" in body or b"\x00" in body:
        return False
    declared = _XML_DECLARED_ENCODING.match(body[:200])
    return declared is None or declared.group(1).lower() in (b"utf-8", b"utf8", b"us-ascii", b"ascii")


def _decode_xml(body: bytes, schema: _Compiled, content_type_header: str | None = None) -> Any:
    """The ``<xml>`` document as a dict (see :func:`_xml_object`).

    A body without an encoding declaration is UTF-8 to the parser; one that does not parse so is
    read again in the ``charset`` its Content-Type names, when it names another (RFC 7303).

    The cyclic garbage collector is paused while the element tree lives: the tree has no cycles
    and is freed by reference counting as soon as its values are taken, so collections during
    the parse would only traverse the growing tree, again and again (a third of the CPU of a
    100-record page, measured).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        body = _in_the_charset_that_reads_it(body, content_type_header)
        try:
            root = _parse_xml(body)
        except LoyaltyResponseError:
            transcoded = _xml_in_declared_charset(body, content_type_header)
            if transcoded is None:
                transcoded = _xml_in_its_declared_encoding(body)
            if transcoded is None:  # its own declaration is wrong (a fixed prolog): the header's word
                transcoded = _xml_in_declared_charset(body, content_type_header, over_its_declaration=True)
            if transcoded is None:
                raise
            root = _parse_xml(transcoded)
        if b"xmlns" in body or (b"\x00" in body[:4] and b"xmlns" in body.replace(b"\x00", b"")):  # UTF-16/32 too
            _drop_namespaces(root)
        if root.tag != "xml":
            raise LoyaltyResponseError(f"expected an <xml> root element, got <{root.tag}>")
        try:
            return _xml_object(root, schema)
        except RecursionError:
            raise LoyaltyResponseError("reply XML is nested too deeply") from None
    finally:
        if collecting:
            gc.enable()


def _in_the_charset_that_reads_it(body: bytes, content_type_header: str | None) -> bytes:
    """``body`` as the parser should read it when its Content-Type's charset and its own encoding
    declaration (UTF-8 when it has none) disagree; else ``body`` unchanged.

    RFC 7303 makes the Content-Type's charset the authority, but the two disagree mostly where one
    is a fixed template (a prolog saying ``ISO-8859-1`` over UTF-8 text, or a default header): a
    single-byte charset reads any bytes, so reading by the wrong one garbles text without an error.
    So when either says UTF-8 and the body is valid UTF-8, it is read as UTF-8 (other text is
    valid UTF-8 by chance almost never); otherwise the Content-Type's charset decides, when the
    body is valid in it. Without a charset in the Content-Type, see :func:`_utf8_under_another_prolog`.
    """
    header_charset = _declared_charset(content_type_header)
    if header_charset is None:
        return _utf8_under_another_prolog(body)
    try:
        by_header = codecs.lookup(header_charset).name
        declared = _declared_xml_encoding(body)
        by_declaration = codecs.lookup(declared).name if declared else "utf-8"
    except LookupError:
        return body  # a name Python does not know: the parse and its fallbacks decide
    if by_header == by_declaration or body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return body
    if "utf-8" in (by_header, by_declaration) and _is_utf8(body):
        return body if by_declaration == "utf-8" else (_xml_as_utf8(body, "utf-8") or body)
    return _xml_as_utf8(body, by_header) or body


def _utf8_under_another_prolog(body: bytes) -> bytes:
    """``body`` as UTF-8 when its prolog names another encoding but its bytes, non-ASCII ones among
    them, are valid UTF-8 (a fixed ``encoding="ISO-8859-1"`` template over UTF-8 text, sent without
    a charset, as PHP sends ``application/xml``); else unchanged. Text in a single-byte encoding
    with letters past ASCII is valid UTF-8 almost never; UTF-16 and UTF-32 are left to the parser."""
    declared = _declared_xml_encoding(body)
    if declared is None or body.isascii():
        return body
    try:
        codec = codecs.lookup(declared).name
    except LookupError:
        return body
    if codec == "utf-8" or codec.startswith(("utf-16", "utf-32")) or not _is_utf8(body):
        return body
    return _xml_as_utf8(body, "utf-8") or body


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _xml_in_declared_charset(
    body: bytes, content_type_header: str | None, *, over_its_declaration: bool = False
) -> bytes | None:
    """``body`` as UTF-8, read in the non-UTF-8 charset its Content-Type names; ``None`` when it
    names none (or UTF-8, or one Python does not know), when the body declares its own encoding
    (unless ``over_its_declaration``: that declaration did not read it), or when the body is not
    valid in that charset."""
    charset = _declared_charset(content_type_header)
    if charset is None or (_declared_xml_encoding(body) is not None and not over_its_declaration):
        return None
    try:
        if codecs.lookup(charset).name == "utf-8":
            return None
    except LookupError:
        return None
    return _xml_as_utf8(body, charset)


_UTF32_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _xml_in_its_declared_encoding(body: bytes) -> bytes | None:
    """``body`` as UTF-8 (its declaration dropped), read in the encoding its declaration names or
    as UTF-32 by its byte order mark: for what expat cannot read itself (multi-byte encodings such
    as GBK, Shift_JIS, Big5, EUC-KR; UTF-32). ``None`` when it declares none Python knows as a text
    encoding, or the body is not valid in it."""
    encoding = "utf-32" if body.startswith(_UTF32_BOMS) else _declared_xml_encoding(body)
    return None if encoding is None else _xml_as_utf8(body, encoding)


def _declared_xml_encoding(body: bytes) -> str | None:
    """The encoding an ASCII-readable XML declaration names (after a UTF-8 BOM or blanks), or ``None``."""
    declared = _XML_DECLARED_ENCODING.match(body[:200].lstrip(b"\xef\xbb\xbf \t\r\n"))
    return declared.group(1).decode("ascii") if declared else None


def _xml_as_utf8(body: bytes, encoding: str) -> bytes | None:
    """``body`` read in ``encoding`` and written as UTF-8, without a byte order mark or the XML
    declaration (which would name the encoding it no longer is); ``None`` when Python knows no
    such text encoding or the body is not valid in it."""
    try:
        text = body.decode(codecs.lookup(encoding).name).removeprefix("\ufeff")
    except (LookupError, UnicodeError):
        return None
    return _XML_DECLARATION.sub("", text, count=1).encode("utf-8")


def _parse_xml(body: bytes) -> Element:
    # Blank lines before the declaration (a common server-side slip, also after a byte order mark)
    # are not XML, but they change nothing: read the document from its first "<".
    if body[:1] in (b" ", b"\t", b"\r", b"\n", b"\xef"):
        body = body.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    try:
        if _plainly_safe(body):
            return fromstring(body)  # noqa: S314 - no DTD possible: checked just above
        # A DOCTYPE alone is XML like any other (declarations of elements and attributes change
        # nothing here); entities, and anything fetched from outside, are refused.
        return SafeET.fromstring(body, forbid_dtd=False, forbid_entities=True, forbid_external=True)  # type: ignore[no-any-return]
    except DefusedXmlException as err:
        raise LoyaltyResponseError(f"reply XML refused for safety ({type(err).__name__})") from None
    except (SyntaxError, ValueError, RecursionError) as err:  # ParseError is a SyntaxError
        raise LoyaltyResponseError(f"reply is not valid XML: {str(err)[:200]}") from None


_HTML_MEDIA = ("text/html", "application/xhtml+xml")
#: An HTML document's start: ``<!DOCTYPE html`` or ``<html``, after an XML declaration if any.
_HTML_START = re.compile(rb"(?:<\?xml[^>]{0,200}\?>\s*)?<(?:!doctype\s+html|html)[\s>]", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
#: The most of a reply's text an error shows (a line); the token is removed by the caller.
_EXCERPT_CHARS = 80


def _refuse_if_not_the_api(body: bytes, content_type_header: str | None, kind: str) -> None:
    """Raise what a reply that did not decode really is, when it is not the API's JSON or XML.

    An HTML page (by its Content-Type, unless the body starts like JSON, or by its first tag) and
    a reply of another declared type say so, with a short excerpt and where to look: the
    connection's host and Base URL. Only called once decoding failed, so it costs a reply that
    decodes nothing.
    """
    header = (content_type_header or "").strip()
    media = header.partition(";")[0].strip().lower()
    start = body[:4096].removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if (media in _HTML_MEDIA and kind == "xml") or _HTML_START.match(start):
        raise LoyaltyResponseError(
            f"reply is an HTML page (Content-Type: {clip(header, 100) or 'none'}), not the API's JSON or XML: "
            "check the connection's host and Base URL (a wrong Base URL, or a proxy or captive portal "
            f"answering in the API's place){_excerpt(body, html_page=True)}"
        ) from None
    if media and "json" not in media and "xml" not in media:
        raise LoyaltyResponseError(
            f"reply is {clip(media, 60)} (Content-Type: {clip(header, 100)}), not the API's JSON or XML: check the "
            f"connection's host and Base URL{_excerpt(body, html_page=False)}"
        ) from None


def error_page_text(body: bytes, content_type_header: str | None) -> str:
    """What an HTTP error reply that is no API envelope says: ``an HTML page, not the API's reply;
    it reads: 'Not Found'`` (a proxy's or web server's page: a wrong Base URL or path prefix). The
    caller removes the token.

    :param body: the reply's body.
    :param content_type_header: its ``Content-Type``.
    """
    header = (content_type_header or "").strip()
    media = header.partition(";")[0].strip().lower()
    start = body[:4096].removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    html_page = media in _HTML_MEDIA or bool(_HTML_START.match(start))
    what = "an HTML page" if html_page else f"{clip(media, 60) or 'a body'} with no error/error_text"
    return f"{what}, not the API's reply{_excerpt(body, html_page=html_page)}"


def _excerpt(body: bytes, *, html_page: bool) -> str:
    """``; it reads: '...'``: a page's title (or its first words), a text's first words; a line at most."""
    head = body[:8192].decode("utf-8", "replace")
    if "\x00" in head or head.count("\ufffd") * 10 > len(head):
        return f"; it is {len(body)} bytes that are not text"
    if html_page:
        title = _TITLE.search(head)
        head = html.unescape(title.group(1) if title else _TAG.sub(" ", _HIDDEN.sub(" ", head)))
    words = "".join(char if char.isprintable() else " " for char in head).split()
    text = clip(" ".join(words[:_EXCERPT_CHARS]), _EXCERPT_CHARS)  # a token: whole (then masked) or not at all
    if text.startswith("…"):  # one word longer than a line: nothing worth showing
        text = ""
    return f"; it reads: {text!r}" if text else ""


def _drop_namespaces(root: Element) -> None:
    """Read ``<xml xmlns="...">`` or ``<l:xml xmlns:l="...">`` as ``<xml>``: every element by its
    local name (the API's fields are not namespaced; a server that declares a namespace means the
    same fields)."""
    for element in root.iter():
        if element.tag[:1] == "{":
            element.tag = element.tag.partition("}")[2]


# ------------------------------------------------------------------------------------------ schemas, compiled


class _Compiled:
    """A :data:`Schema` in the shape the decoder walks: typed scalars, objects and lists apart."""

    __slots__ = ("flat", "lists", "objects", "scalars")

    def __init__(self, schema: Schema) -> None:
        self.scalars = tuple(
            (key, _CONVERTERS[shape], False) if isinstance(shape, FieldType) else (key, _CONVERTERS[shape.kind], True)
            for key, shape in schema.items()
            if isinstance(shape, FieldType | Informational)
        )
        self.objects = {key: _compiled(shape) for key, shape in schema.items() if isinstance(shape, Mapping)}
        self.lists = {key: _compiled(shape[0]) for key, shape in schema.items() if isinstance(shape, list)}
        self.flat = not self.objects and not self.lists


_COMPILED: dict[int, tuple[Schema, _Compiled]] = {}
_NO_LISTS: Mapping[str, Any] = {}


def _compiled(schema: Schema) -> _Compiled:
    """The compiled form of a schema, built once per schema object (schemas are module constants)."""
    entry = _COMPILED.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = _COMPILED[id(schema)] = (schema, _Compiled(schema))
    return entry[1]


# ------------------------------------------------------------------------------------------ XML elements


def _xml_object(element: Element, schema: _Compiled | None) -> dict[str, Any] | list[Any] | str:
    """An element's value: a leaf's text; children as a dict, or as a list where they repeat.

    A list is an element whose children all share one tag (two or more of them; the API writes a
    list as repeated children), or a field the schema documents as a list (any number, see
    :func:`_xml_list`). Fields the schema describes as objects are decoded with their own schema;
    anything else (merchant objects such as ``custom_json``) without one.
    """
    if not len(element):
        return element.text or ""
    if schema is None and _mixed(element):
        return _inner_xml(element)
    if schema is None or schema.flat:  # merchant data and list items: no call per leaf
        result = {child.tag: _xml_object(child, None) if len(child) else (child.text or "") for child in element}
        if len(result) == len(element):
            return result
        return _xml_grouped(element) if schema is None else _xml_with_repeats(element, schema)
    result = {}
    spread = 0  # elements of documented lists written one per item, past the first of each
    for child in element:
        tag = child.tag
        items = schema.lists.get(tag)
        if items is not None:
            if tag not in result:
                occurrences = element.findall(tag)
                result[tag] = _xml_list(occurrences, items)
                spread += len(occurrences) - 1
            continue
        result[tag] = _xml_documented_field(child, schema.objects.get(tag))
    return result if len(result) + spread == len(element) else _xml_with_repeats(element, schema)


def _xml_documented_field(child: Element, fields: _Compiled | None) -> Any:
    """One field of a documented object (``fields``: its schema, when the schema describes it)."""
    if len(child):
        return _xml_object(child, fields)
    if fields is not None and not (child.text or "").strip():
        return {}  # a documented object without fields
    return child.text or ""


def _xml_with_repeats(element: Element, schema: _Compiled) -> dict[str, Any] | list[Any]:
    """A documented object with a tag repeated beside other fields (the rare case, off the hot path).

    A field the API does not document, repeated, is a list in document order, as the same reply as
    JSON reads (``"warnings": ["slow", "partial"]`` is ``<warnings>slow</warnings><warnings>
    partial</warnings>``; a whole reply failed on it). A documented field (:data:`DOCUMENTED_FIELDS`)
    other than a list given twice is refused: which of the two the server meant is unknown.
    Children that all share one tag are a list (:func:`_xml_repeated`).
    """
    counts = Counter(child.tag for child in element)
    if len(counts) == 1:
        return _xml_repeated(element, schema.lists)
    twice = sorted(
        tag for tag, count in counts.items() if count > 1 and tag not in schema.lists and tag in DOCUMENTED_FIELDS
    )
    if twice:
        raise LoyaltyResponseError(
            f"XML field <{twice[0]}> appears more than once under <{element.tag}> beside other fields; "
            "expected it once (a documented field that is not a list)"
        )
    result: dict[str, Any] = {}
    for child in element:
        tag = child.tag
        items = schema.lists.get(tag)
        if items is not None:
            if tag not in result:
                result[tag] = _xml_list(element.findall(tag), items)
        elif counts[tag] > 1:
            result.setdefault(tag, []).append(_xml_object(child, None))
        else:
            result[tag] = _xml_documented_field(child, schema.objects.get(tag))
    return result


def _mixed(element: Element) -> bool:
    """Whether text stands beside an element's children (``Bonus for <b>#123</b> at store 5``)."""
    if element.text and not element.text.isspace():
        return True
    return any(child.tail and not child.tail.isspace() for child in element)


def _inner_xml(element: Element) -> str:
    """A field whose text holds markup a server did not escape, as that text (what a JSON server
    would send: ``A & B <b>x</b>``, entities read as every XML text is): its children are not
    fields, and reading them as an object would drop the words around them."""
    return (element.text or "") + "".join(_markup(child) + (child.tail or "") for child in element)


def _markup(element: Element) -> str:
    attributes = "".join(f' {name}="{value}"' for name, value in element.attrib.items())
    if not len(element) and not element.text:
        return f"<{element.tag}{attributes}/>"
    return f"<{element.tag}{attributes}>{_inner_xml(element)}</{element.tag}>"


def _xml_list(occurrences: list[Element], items: _Compiled) -> list[Any]:
    """A documented list, from its element(s): one element around the items, or one per item.

    One element holds the items (``<data><item>…</item><item>…</item></data>``) unless it holds
    the fields of one record: a text field among children that do not repeat a tag (items are
    objects; a record has a ``transaction_id``). Several elements are one item each
    (``<data>…</data><data>…</data>``); one of them that reads as items is neither form.
    """
    if len(occurrences) == 1:
        (element,) = occurrences
        if _holds_one_record(element):
            return [_xml_object(element, items)]
        return [_xml_object(item, items) for item in element]
    for number, element in enumerate(occurrences, 1):
        if len(element) and not _holds_one_record(element):
            raise LoyaltyResponseError(
                f"XML field <{element.tag}> appears {len(occurrences)} times, one per item, but number {number} "
                "holds items, not one record's fields; expected one element around all items or one per item"
            )
    return [_xml_object(element, items) for element in occurrences]


def _holds_one_record(element: Element) -> bool:
    """Whether a list's element holds one record's fields rather than the list's items.

    Items are objects and share a tag as a rule, so the usual list answers at its first two
    children (objects of one tag); a record's own field written twice first (an undocumented
    ``<tags>a</tags><tags>b</tags>``) is text, not items. Only one item, or items of distinct tags,
    look further (for a field that is text).
    """
    count = len(element)
    if not count or (count > 1 and element[0].tag == element[1].tag and len(element[0])):
        return False
    return not all(map(len, element))


def _xml_grouped(element: Element) -> dict[str, Any] | list[Any]:
    """Merchant data (no schema) whose children repeat a tag beside other tags: each repeated tag
    is a list, in document order, as the same data sent as JSON reads (``{"key": "v", "tags":
    ["a", "b"]}`` is ``<key>v</key><tags>a</tags><tags>b</tags>``). One tag repeated alone is a list."""
    counts = Counter(child.tag for child in element)
    if len(counts) == 1:
        return _xml_repeated(element)
    result: dict[str, Any] = {}
    for child in element:
        value = _xml_object(child, None)
        if counts[child.tag] == 1:
            result[child.tag] = value
        else:
            result.setdefault(child.tag, []).append(value)
    return result


def _xml_repeated(element: Element, lists: Mapping[str, Any] = _NO_LISTS) -> list[Any]:
    """Children that repeat one tag are a list; a repeated tag beside other tags is no JSON value
    (but for ``lists``: documented lists, which may be written one element per item)."""
    tags = {child.tag for child in element}
    if len(tags) != 1:
        repeated = sorted(
            tag for tag in tags if tag not in lists and sum(1 for child in element if child.tag == tag) > 1
        )
        raise LoyaltyResponseError(
            f"XML field <{repeated[0]}> appears more than once under <{element.tag}> beside other fields; "
            "expected an object (distinct fields) or a list (one repeated field)"
        )
    return [_xml_object(child, None) for child in element]


# ------------------------------------------------------------------------------------------ coercion


def coerce(document: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """Coerce the schema's documented fields of a decoded reply from text to their types, in place.

    Other fields, and everything inside objects the schema does not describe, stay as they came.
    """
    _coerce_fields(document, _compiled(schema))
    return document


class _BadField(Exception):
    """A documented field that is not of its type; the path is completed while unwinding."""

    def __init__(self, kind: FieldType, text: str) -> None:
        super().__init__()
        self.kind, self.text, self.path = kind, text, ""

    def within(self, segment: str) -> _BadField:
        self.path = f"{segment}.{self.path}" if self.path and not self.path.startswith("[") else segment + self.path
        return self


def _coerce_fields(document: dict[str, Any], schema: _Compiled) -> None:
    try:
        _coerce_object(document, schema)
    except _BadField as bad:
        raise LoyaltyResponseError(f"field {bad.path!r}: expected {bad.kind.value}, got {bad.text!r}") from None


def _coerce_object(record: dict[str, Any], schema: _Compiled) -> None:
    _coerce_scalars(record, schema.scalars)
    for key, fields in schema.objects.items():
        value = record.get(key)
        if value.__class__ is dict:
            try:
                _coerce_object(value, fields)
            except _BadField as bad:
                raise bad.within(key) from None
    for key, items in schema.lists.items():
        value = record.get(key)
        if value == "":
            record[key] = value = []  # an empty XML list element
        elif value.__class__ is dict and value and _index_keyed(value):
            record[key] = value = [value[index] for index in sorted(value, key=int)]
        if value.__class__ is list:
            try:
                _coerce_items(value, items)
            except _BadField as bad:
                raise bad.within(key) from None


def _index_keyed(value: dict[str, Any]) -> bool:
    """A documented list sent as an object keyed ``"0"``, ``"1"``, ... (what a PHP server's array
    becomes in JSON once filtering left gaps in its keys): read as the list, in key order."""
    return all(key.__class__ is str and key.isascii() and key.isdigit() for key in value)


def _coerce_scalars(record: dict[str, Any], scalars: tuple[tuple[str, Callable[[str], Any], bool], ...]) -> None:
    """Each typed field of ``record`` as its type; one that is not refused, unless it is
    :class:`Informational` (then kept as sent)."""
    for key, convert, informational in scalars:
        value = record.get(key)
        try:
            if value.__class__ is str:
                record[key] = convert(value)
            elif (value.__class__ is float or value.__class__ is Decimal) and convert is _to_int:  # JSON's 1000.0
                if not _whole(value):
                    raise _BadField(FieldType.INT, str(value)[:40])
                record[key] = int(value)
            elif value.__class__ is int and convert is _to_bool:  # JSON's 0 / 1 for a boolean, as "0" / "1"
                if value not in (0, 1):
                    raise _BadField(FieldType.BOOL, repr(value))
                record[key] = value == 1
        except _BadField as bad:
            if not informational:
                raise bad.within(key) from None


def _whole(number: float | Decimal) -> bool:
    """Whether a decoded number is a whole one an int field takes (``1e999999`` is not: no count is
    that large, and the int would take the worker's memory)."""
    if number.__class__ is float:
        return float(number).is_integer()
    decimal = Decimal(number)
    return decimal.is_finite() and decimal.adjusted() < 40 and decimal == decimal.to_integral_value()


def _coerce_items(items: list[Any], schema: _Compiled) -> None:
    """The items of a documented list; flat items (a page of transactions) need only their scalars."""
    for index, item in enumerate(items):
        if item.__class__ is not dict:
            continue
        try:
            if schema.flat:
                _coerce_scalars(item, schema.scalars)
            else:
                _coerce_object(item, schema)
        except _BadField as bad:
            bad.path = f"[{index}].{bad.path}"
            raise


def _to_int(text: str) -> int | None:
    try:
        return int(text)  # surrounding whitespace is fine for int()
    except ValueError:
        pass
    try:
        number = Decimal(text.strip())  # "1000.0" or "1e3": whole numbers written as decimals
    except InvalidOperation:
        _refuse_unless_blank(FieldType.INT, text)
        return None
    # Exactly, not through a float: "9007199254740993.0" is 9007199254740993, not ...992.
    if number.is_finite() and number == number.to_integral_value() and abs(number.adjusted()) < 4300:
        return int(number)
    raise _BadField(FieldType.INT, clip(text.strip(), 40))


def _to_number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    text = text.strip().removesuffix("%")  # a percentage written as one ("42%"): progress is the one number field
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        _refuse_unless_blank(FieldType.NUMBER, text)
        return None
    if math.isfinite(number):
        return number
    raise _BadField(FieldType.NUMBER, clip(text.strip(), 40))


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _to_bool(text: str) -> bool | None:
    value = _BOOL_WORDS.get(text)
    if value is None:
        value = _BOOL_WORDS.get(text.strip().lower())
        if value is None:
            _refuse_unless_blank(FieldType.BOOL, text)
    return value


def _refuse_unless_blank(kind: FieldType, text: str) -> None:
    """An empty (or all-blank) text is no value (``None``); anything else is not of the documented type."""
    if text.strip():
        raise _BadField(kind, clip(text.strip(), 40))


_CONVERTERS: dict[FieldType, Callable[[str], Any]] = {
    FieldType.INT: _to_int,
    FieldType.NUMBER: _to_number,
    FieldType.BOOL: _to_bool,
}
