"""JSON and XML bodies of the loyalty API, as its documentation shows them.

XML documents have an ``<xml>`` root; scalars are child elements with text, nested dicts are child
elements with children, lists are repeated child elements (``<data><transaction>...</transaction></data>``,
an empty list is ``<data />``), booleans are ``true``/``false``. Requests are parsed with
:mod:`defusedxml` (no entities, no DTDs, no external fetches).
"""

from __future__ import annotations

import json
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

__all__ = [
    "FORMATS",
    "BodyError",
    "content_type_for",
    "decode_body",
    "encode_body",
    "format_from_content_type",
]

#: Wire formats and the Content-Type the emulator answers with.
FORMATS: dict[str, str] = {"json": "application/json", "xml": "application/xml"}
_XML_TYPES = frozenset({"application/xml", "text/xml"})
#: Element names of list items, by the list's key.
_LIST_ITEM_NAMES = {"data": "transaction"}


class BodyError(ValueError):
    """A request body that cannot be decoded (malformed JSON/XML, wrong root)."""


def format_from_content_type(header: str | None) -> str | None:
    """Map a ``Content-Type`` header to ``"json"``/``"xml"`` (``None`` if missing or unsupported).

    :param header: the header value, parameters (``; charset=...``) allowed.
    """
    if not header:
        return None
    media = header.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    if media in _XML_TYPES or (media.startswith("application/") and media.endswith("+xml")):
        return "xml"
    return None


def content_type_for(fmt: str) -> str:
    """Return the response Content-Type (with charset) for a format.

    :param fmt: ``"json"`` or ``"xml"``.
    """
    return f"{FORMATS[fmt]}; charset=utf-8"


def decode_body(body: bytes, fmt: str) -> dict[str, Any]:
    """Decode a request body into a dict (XML scalars stay strings; type checks happen later).

    :param body: raw bytes.
    :param fmt: ``"json"`` or ``"xml"``.
    :raises BodyError: when the body is malformed or not an object / ``<xml>`` document.
    """
    if fmt == "json":
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BodyError(f"malformed JSON body: {exc}") from None
        if not isinstance(value, dict):
            raise BodyError("JSON body must be an object")
        return value
    try:
        root = SafeET.fromstring(body)
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise BodyError(f"malformed XML body: {exc}") from None
    if root.tag != "xml":
        raise BodyError(f"XML root element must be <xml>, got <{root.tag}>")
    result = _element_to_value(root)
    return result if isinstance(result, dict) else {}


def _element_to_value(element: Element) -> Any:
    children = list(element)
    if not children:
        return element.text.strip() if element.text else ""
    result: dict[str, Any] = {}
    for child in children:
        result[child.tag] = _element_to_value(child)
    return result


def encode_body(payload: dict[str, Any], fmt: str) -> bytes:
    """Serialize a response payload.

    :param payload: the envelope dict (key order is kept).
    :param fmt: ``"json"`` or ``"xml"``.
    """
    if fmt == "json":
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")
    root = Element("xml")
    for key, value in payload.items():
        _append(root, key, value)
    return bytes(tostring(root, encoding="utf-8"))


def _append(parent: Element, name: str, value: Any) -> None:
    element = SubElement(parent, name)
    if isinstance(value, dict):
        for key, item in value.items():
            _append(element, key, item)
    elif isinstance(value, list):
        item_name = _LIST_ITEM_NAMES.get(name, "item")
        for item in value:
            _append(element, item_name, item)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = str(value)
