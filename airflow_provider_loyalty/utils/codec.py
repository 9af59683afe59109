"""Request and response bodies in both of the API's content types.

The API speaks JSON or XML (an ``<xml>`` root whose children are the fields, as its documentation
shows). Replies are decoded by their own Content-Type, so a JSON reply to an XML request still
parses. XML that could carry a DTD is parsed with :mod:`defusedxml` (no DTDs, no entities, no
external fetches); a UTF-8 body with no ``<!`` at all cannot, and takes the C parser directly.

XML carries every scalar as text. Each endpoint has a :data:`Schema` naming its documented typed
fields at their documented place (``data.result.total``, not any ``total`` anywhere): those, and
only those, are coerced, in JSON replies too (a number sent as a string is still a number), so the
two formats decode alike and merchant-defined objects (``custom_json``) are never touched. Lists
(the account endpoint's ``data``) are repeated child elements in XML.

Anything that does not decode raises :class:`LoyaltyResponseError`, never a parser's own error.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Any, Union
from xml.etree.ElementTree import Element, SubElement, fromstring, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from airflow_provider_loyalty.exceptions import LoyaltyResponseError


class FieldType(enum.Enum):
    """The documented type of a scalar field."""

    INT = "integer"
    NUMBER = "number"
    BOOL = "boolean"


#: A reply's documented typed fields: a field name maps to its type, to the schema of a nested
#: object, or to a one-element list holding the schema of each item of a list.
Schema = Mapping[str, Union[FieldType, "Schema", list["Schema"]]]

_INT, _NUMBER, _BOOL = FieldType.INT, FieldType.NUMBER, FieldType.BOOL
#: Every reply: the envelope.
ENVELOPE_SCHEMA: Schema = {"error": _INT}
#: ``tasks/status``.
STATUS_SCHEMA: Schema = {
    "error": _INT,
    "data": {
        "progress": _NUMBER,
        "result": {"total": _INT, "loyalty_id": _INT, "points_currency_iid": _INT, "is_api": _BOOL},
    },
}
#: ``loyalty/account/transactions``: ``data`` is a list of transactions.
ACCOUNT_SCHEMA: Schema = {
    "error": _INT,
    "total_count": _INT,
    "data": [{"promo_iid": _INT, "source_iid": _INT, "source_subiid": _INT, "is_temp": _BOOL, "canceled": _BOOL}],
}
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

MIME_TYPES = {"json": "application/json", "xml": "application/xml"}


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


def decode_body(body: bytes, content_type_header: str | None, *, schema: Schema = ENVELOPE_SCHEMA) -> dict[str, Any]:
    """Decode a reply body into a dict, choosing the format from its Content-Type header.

    :param body: the raw reply bytes (already size-capped by the caller).
    :param content_type_header: the reply's ``Content-Type``; sniffed from the body when unknown.
    :param schema: the endpoint's documented typed fields (lists, in XML, come from it too).
    """
    kind = _kind_of(content_type_header, body)
    document = _decode_json(body) if kind == "json" else _decode_xml(body, schema)
    if not isinstance(document, dict):
        raise LoyaltyResponseError(f"expected a {kind.upper()} object at the top level, got {type(document).__name__}")
    return coerce(document, schema)


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


def _decode_xml(body: bytes, schema: Schema) -> Any:
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
    return _xml_object(root, schema)


def _xml_object(element: Element, schema: Schema | None) -> dict[str, Any] | str:
    """An element with children as a dict (lists where the schema has them); a leaf as its text."""
    if len(element) == 0:
        return element.text if element.text is not None else ""
    result: dict[str, Any] = {}
    for child in element:
        tag = child.tag
        if tag in result:
            raise LoyaltyResponseError(f"XML field <{tag}> appears more than once under <{element.tag}>")
        shape = schema.get(tag) if schema is not None else None
        if isinstance(shape, list):
            result[tag] = [_xml_object(item, shape[0]) for item in child]
        elif len(child) == 0:  # a scalar: the common case, without a call
            result[tag] = child.text if child.text is not None else ""
        else:
            result[tag] = _xml_object(child, shape if isinstance(shape, Mapping) else None)
    return result


def coerce(document: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """Coerce the schema's documented fields of a decoded reply from text to their types, in place.

    Other fields, and everything inside objects the schema does not describe, stay as they came.
    """
    _coerce_object(document, schema, "")
    return document


def _coerce_object(record: dict[str, Any], schema: Schema, path: str) -> None:
    for key, shape in schema.items():
        if key not in record:
            continue
        value = record[key]
        where = f"{path}{key}"
        if isinstance(shape, FieldType):
            if isinstance(value, str):
                record[key] = _coerce_text(shape, value, where)
        elif isinstance(shape, list):
            if value == "":
                record[key] = value = []  # an empty XML list element
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict):
                        _coerce_object(item, shape[0], f"{where}[{index}].")
        elif isinstance(value, dict):
            _coerce_object(value, shape, f"{where}.")


def _coerce_text(kind: FieldType, text: str, where: str) -> int | float | bool | None:
    stripped = text.strip()
    if not stripped:
        return None
    if kind is FieldType.BOOL:
        lowered = stripped.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    else:
        try:
            return int(stripped)
        except ValueError:
            if kind is FieldType.NUMBER:
                try:
                    number = float(stripped)
                except ValueError:
                    pass
                else:
                    if number == number and number not in (float("inf"), float("-inf")):
                        return number
    raise LoyaltyResponseError(f"field {where!r}: expected {kind.value}, got {stripped[:40]!r}")
