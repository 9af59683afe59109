"""One record as a line of JSON Lines: valid JSON (RFC 8259) and UTF-8, whatever the API sent.

Only for internal usage of the member-history operator. :meta private:

A reply the API may legally send holds two things ``json.dumps`` would write as no JSON or no
UTF-8: an ``Infinity`` or ``NaN`` literal (which Python's JSON reader accepts; ``json.dumps``
writes them back as no JSON), and a lone surrogate escape (``"\\ud83d"``,
half of an emoji cut off), which UTF-8 cannot encode. Infinities are written ``1e999`` (a JSON
number every reader takes for infinity again), ``NaN`` as ``null``, and a lone surrogate as the
``\\uXXXX`` escape it arrived as. A number no float holds exactly (decoded as a
:class:`~decimal.Decimal`, see :func:`~airflow_provider_loyalty.utils.codec.exact_number`) is
written with its digits, as a JSON number. Any other record is written exactly as ``json.dumps``
writes it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from decimal import Decimal
from typing import Any

#: Stand-ins for the numbers json.dumps cannot write, while it writes: strings no record holds,
#: NUL-fenced around a nonce drawn per process (a server cannot send one to be turned into a number).
_FENCE = f"\x00{secrets.token_hex(8)}"
_INFINITY = f"{_FENCE}:infinity\x00"
_MINUS_INFINITY = f"{_FENCE}:minus-infinity\x00"
_NUMBER = _FENCE + ":number:{}\x00"  # a Decimal's, holding its digits
_WRITTEN_NUMBER = re.compile(re.escape(json.dumps(_FENCE)[:-1]) + r":number:([-+0-9.Ee]+)\\u0000\"")


#: Characters JSON allows raw in a string but ``str.splitlines()`` splits on: written escaped, so
#: one record is one line for every reader.
_LINE_SEPARATORS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _not_plain(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def json_line(record: Any) -> bytes:
    """``record`` as one line of JSON Lines, newline included.

    :param record: a decoded record (dicts, lists, strings, numbers, booleans, ``None``).
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_not_plain)
    except (ValueError, TypeError):  # a float out of JSON's range (infinity, NaN), or a Decimal
        text = json.dumps(_written(record), ensure_ascii=False, default=str)
        text = text.replace(json.dumps(_INFINITY), "1e999").replace(json.dumps(_MINUS_INFINITY), "-1e999")
        text = _WRITTEN_NUMBER.sub(lambda number: number.group(1), text)
    if not text.isascii():  # line separators some readers split on (str.splitlines, older JavaScript)
        text = text.translate(_LINE_SEPARATORS)
    return text.encode("utf-8", "backslashreplace") + b"\n"  # a lone surrogate as its \uXXXX escape


def _written(value: Any) -> Any:
    """``value`` with the numbers ``json.dumps`` cannot write as JSON replaced by stand-ins."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (_INFINITY if value > 0 else _MINUS_INFINITY)
    if isinstance(value, Decimal):
        return _NUMBER.format(value) if value.is_finite() else _written(float(value))
    if isinstance(value, dict):
        return {key: _written(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_written(item) for item in value]
    return value
