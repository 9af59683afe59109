"""One record as a line of JSON Lines: valid JSON (RFC 8259) and UTF-8, whatever the API sent.

Only for internal usage of the member-history operator. :meta private:

A reply the API may legally send holds two things ``json.dumps`` would write as no JSON or no
UTF-8: a number past the float range (``1e400`` decodes to infinity, written ``Infinity``) or a
``NaN`` literal (which Python's JSON reader accepts), and a lone surrogate escape (``"\\ud83d"``,
half of an emoji cut off), which UTF-8 cannot encode. Infinities are written ``1e999`` (a JSON
number every reader takes for infinity again), ``NaN`` as ``null``, and a lone surrogate as the
``\\uXXXX`` escape it arrived as. Any other record is written exactly as ``json.dumps`` writes it.
"""

from __future__ import annotations

import json
import math
from typing import Any

_INFINITY = "\x00loyalty-infinity\x00"  # stand-ins for the infinities while json.dumps writes: strings
_MINUS_INFINITY = "\x00loyalty-minus-infinity\x00"  # no record holds (NUL-fenced, like no API text)


def json_line(record: Any) -> bytes:
    """``record`` as one line of JSON Lines, newline included.

    :param record: a decoded record (dicts, lists, strings, numbers, booleans, ``None``).
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # a float out of JSON's range: infinity or NaN
        text = json.dumps(_finite(record), ensure_ascii=False, default=str)
        text = text.replace(json.dumps(_INFINITY), "1e999").replace(json.dumps(_MINUS_INFINITY), "-1e999")
    return text.encode("utf-8", "backslashreplace") + b"\n"  # a lone surrogate as its \uXXXX escape


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (_INFINITY if value > 0 else _MINUS_INFINITY)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
