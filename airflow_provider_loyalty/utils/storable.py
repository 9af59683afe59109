"""Server text made storable in Airflow's database (a trigger event, an XCom).

A JSON reply may legally hold what no stored event or XCom can: a lone surrogate escape
(``"\\ud83d"``, an emoji cut in half, RFC 8259 section 8.2), which the triggerer's msgpack refuses
(``UnicodeEncodeError``: the whole triggerer stopped, every trigger on it), and ``\\u0000`` or a
number past the float range, which PostgreSQL's ``jsonb`` refuses, and an integer past 64 bits
(``"loyalty_id": 123456789012345678901234567890`` is legal JSON), which msgpack refuses too. The
text a user reads keeps what the server sent, written as its JSON escape; such a number is kept as
its digits in a string; everything else passes unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

#: A surrogate code point left alone in a decoded string (a JSON ``"\ud83d"``: half an emoji).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: The integers msgpack packs (signed 64-bit below zero, unsigned 64-bit above).
_PACKABLE_INTS = (-(2**63), 2**64 - 1)


def storable(value: Any) -> Any:
    """``value`` with every string (and mapping key) storable and every non-finite float as text.

    Strings that need nothing (the common case) are returned as they are; containers are copied
    only when something inside them changed.

    :param value: a decoded reply value: ``dict``, ``list``, ``str``, numbers, ``None``.
    """
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'inf', '-inf', 'nan': what the server sent, not a number JSON can store
    if isinstance(value, int) and not _PACKABLE_INTS[0] <= value <= _PACKABLE_INTS[1]:
        return str(value)  # its digits: msgpack packs 64 bits at most
    if isinstance(value, Decimal):
        return str(value)  # a number of more digits than Python reads as an int: as sent
    if isinstance(value, Mapping):
        items = [(storable_text(str(key)), storable(item)) for key, item in value.items()]
        if all(
            new_key is key and new is item for (new_key, new), (key, item) in zip(items, value.items(), strict=True)
        ):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        converted = [storable(item) for item in value]
        if all(new is item for new, item in zip(converted, value, strict=True)):
            return value
        return converted
    return value


def storable_text(text: str) -> str:
    """``text`` with each NUL and lone surrogate written as its JSON escape (``\\u0000``)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    if has_lone_surrogate(text):
        return text.encode("utf-8", "backslashreplace").decode("utf-8")  # '\ud83d' as the 6 characters
    return text


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (legal in JSON, storable nowhere as it is)."""
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None
