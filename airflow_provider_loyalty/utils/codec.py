"""Request and response bodies in both of the API's content types.

The API speaks JSON or XML (an ``<xml>`` root whose children are the fields, as the seed shows).
Replies are decoded by their own Content-Type, so a JSON reply to an XML request still parses.
XML that could carry a DTD is parsed with :mod:`defusedxml` (no DTDs, no entities, no external
fetches); a UTF-8 body with no ``<!`` at all cannot, and takes the C parser directly. Scalars
arrive as text and are coerced to the types the API documents. Lists (the account endpoint's
``data``) are repeated child elements.

Anything that does not decode raises :class:`LoyaltyResponseError`, never a parser's own error.
"""

from __future__ import annotations

import json
import re
from typing import Any
from xml.etree.ElementTree import Element, SubElement, fromstring, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from airflow_provider_loyalty.exceptions import LoyaltyResponseError

MIME_TYPES = {"json": "application/json", "xml": "application/xml"}

# Field types documented by the seeds. Names are unique across endpoints, so one table serves all.
INT_FIELDS = frozenset(
    {
        "error",
        "loyalty_program_id",
        "points_currency_iid",
        "progress",
        "loyalty_id",
        "total",
        "total_count",
        "promo_iid",
        "source_iid",
        "source_subiid",
    }
)
BOOL_FIELDS = frozenset({"is_api", "is_temp", "canceled"})
# The account endpoint's ``data`` is a list: in XML a parent element with repeated children.
ACCOUNT_LIST_FIELDS = frozenset({"data"})
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def encode_body(payload: dict[str, Any], content_type: str) -> bytes:
    """Encode a request body; ``None`` values are left out (optional fields not sent)."""
    fields = {key: value for key, value in payload.items() if value is not None}
    if content_type == "json":
        return json.dumps(fields, separators=(",", ":")).encode("utf-8")
    root = Element("xml")
    for key, value in fields.items():
        _xml_append(root, key, value)
    encoded: bytes = tostring(root, encoding="utf-8", xml_declaration=False)
    return encoded


def _xml_append(parent: Element, key: str, value: Any) -> None:
    child = SubElement(parent, key)
    if isinstance(value, dict):
        for sub_key, sub_value in value.items():
            _xml_append(child, str(sub_key), sub_value)
    elif isinstance(value, bool):
        child.text = "true" if value else "false"
    else:
        child.text = str(value)


def decode_body(
    body: bytes, content_type_header: str | None, *, list_fields: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Decode a reply body into a dict, choosing the format from its Content-Type header.

    :param body: the raw reply bytes (already size-capped by the caller).
    :param content_type_header: the reply's ``Content-Type``; sniffed from the body when unknown.
    :param list_fields: XML fields that are lists (repeated children), even with zero or one child.
    """
    kind = _kind_of(content_type_header, body)
    document = _decode_json(body) if kind == "json" else _decode_xml(body, list_fields)
    if not isinstance(document, dict):
        raise LoyaltyResponseError(f"expected a {kind.upper()} object at the top level, got {type(document).__name__}")
    return document


def _kind_of(content_type_header: str | None, body: bytes) -> str:
    header = (content_type_header or "").lower()
    if "json" in header:
        return "json"
    if "xml" in header:
        return "xml"
    return "xml" if body.lstrip()[:1] == b"<" else "json"


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise LoyaltyResponseError(f"reply is not valid JSON: {type(err).__name__}: {str(err)[:200]}") from None


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


def _decode_xml(body: bytes, list_fields: frozenset[str]) -> Any:
    try:
        if _plainly_safe(body):
            root = fromstring(body)  # noqa: S314 - no DTD possible: checked just above
        else:
            root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as err:
        raise LoyaltyResponseError(f"reply XML refused for safety ({type(err).__name__})") from None
    except (SyntaxError, ValueError, RecursionError) as err:  # ParseError is a SyntaxError
        raise LoyaltyResponseError(f"reply is not valid XML: {str(err)[:200]}") from None
    if root.tag != "xml":
        raise LoyaltyResponseError(f"expected an <xml> root element, got <{root.tag}>")
    return _element_to_value(root, list_fields, is_list=False)


def _element_to_value(element: Element, list_fields: frozenset[str], *, is_list: bool) -> Any:
    if is_list:
        return [_element_to_value(child, list_fields, is_list=False) for child in element]
    if len(element) == 0:
        return element.text if element.text is not None else ""
    result: dict[str, Any] = {}
    for child in element:
        tag = child.tag
        if tag in result:
            raise LoyaltyResponseError(f"XML field <{tag}> appears more than once under <{element.tag}>")
        if len(child) == 0 and tag not in list_fields:  # a scalar: the common case, without recursing
            result[tag] = child.text if child.text is not None else ""
        else:
            result[tag] = _element_to_value(child, list_fields, is_list=tag in list_fields)
    return coerce_fields(result)


def coerce_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Coerce the documented int and bool fields of one object from text (XML) to their types."""
    for key in INT_FIELDS.intersection(record):
        if isinstance(record[key], str):
            record[key] = _to_int(key, record[key])
    for key in BOOL_FIELDS.intersection(record):
        if isinstance(record[key], str):
            record[key] = _to_bool(key, record[key])
    return record


def _to_int(key: str, text: str) -> int | None:
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return int(stripped)
    except ValueError:
        raise LoyaltyResponseError(f"field {key!r}: expected an integer, got {stripped[:40]!r}") from None


def _to_bool(key: str, text: str) -> bool | None:
    lowered = text.strip().lower()
    if not lowered:
        return None
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise LoyaltyResponseError(f"field {key!r}: expected true or false, got {lowered[:40]!r}")
