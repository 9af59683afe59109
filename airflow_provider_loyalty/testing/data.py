"""Deterministic synthetic transactions for the loyalty API emulator.

Every transaction is a pure function of ``(seed, stream, index)``: nothing is stored, so a dataset of
millions of rows costs O(1) memory and any row can be produced on demand.

* ``transaction_id`` is UUID-formatted. Its first 12 hex digits encode the *id prefix* (the row index
  for the program dataset, ``(member + 1) << 32 | index`` for member histories) zero-padded, so the
  lexicographic order of ids equals the index order and :func:`index_from_transaction_id` recovers the
  prefix from any id. The remaining digits come from a hash of ``(seed, stream, index)``.
* ``created_at`` grows monotonically (non-decreasing, whole seconds) with the index: spread evenly
  across the configured period, or taken from an explicit timeline (one RFC3339 time per row, see
  :func:`parse_timeline`). Either way the rows inside ``[date_from, date_to]`` form a contiguous
  index range found by bisection (:meth:`TransactionStream.index_range`), never by scanning.
* Some descriptions contain commas, double quotes and newlines so CSV quoting is exercised;
  ``row_padding`` appends that many filler characters to every description (for benchmarks).
"""

from __future__ import annotations

import bisect
import csv
import functools
import hashlib
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "TRANSACTION_FIELDS",
    "TransactionStream",
    "csv_header",
    "format_rfc3339",
    "index_from_transaction_id",
    "member_stream",
    "parse_rfc3339",
    "parse_timeline",
    "program_stream",
    "transaction_to_csv_row",
]

#: Transaction fields in the order of the account transactions endpoint; also the CSV column order of exports.
TRANSACTION_FIELDS: tuple[str, ...] = (
    "transaction_id",
    "transaction_eid",
    "created_at",
    "transaction_type",
    "amount",
    "balance_before",
    "balance_after",
    "promo_iid",
    "promo_eid",
    "description",
    "activation_date",
    "expiration_date",
    "source_type",
    "source_iid",
    "source_sid",
    "source_subiid",
    "is_temp",
    "custom_json",
    "product_eid",
    "sku_eid",
    "canceled",
)

_TRANSACTION_TYPES = ("accrual", "accrual", "accrual", "redeem", "redeem", "expire", "refund", "adjustment")
_SOURCE_TYPES = ("api", "manual", "system", "order", "workflow", "tier_group")
_CHANNELS = ("web", "mobile", "pos", "call_center")
_DESCRIPTIONS = (
    "Points accrual for a purchase",
    "Points redemption",
    'Bonus for order, "welcome" campaign',
    "Manual adjustment, see ticket\nline two of the note",
    'Refund of "gift" points, partial',
    "Expiration of unused points",
    "Tier upgrade bonus",
    "Birthday gift",
)
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$")
_EXPIRY_SECONDS = 90 * 86400
_MAX_PREFIX = 16**12 - 1


def parse_rfc3339(value: str) -> float:
    """Parse an RFC3339 date-time that carries a timezone (``Z`` or ``±hh:mm``).

    :param value: the text, e.g. ``"2023-09-01T00:00:00Z"``.
    :return: POSIX timestamp in seconds.
    :raises ValueError: when the text is not an RFC3339 date-time with a timezone.
    """
    if not _RFC3339_RE.match(value):
        raise ValueError(f"not an RFC3339 date-time with timezone: {value!r}")
    text = value.replace("z", "Z").replace("t", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # fromisoformat in 3.11 accepts at most 6 fraction digits
        head, _, rest = text.partition(".")
        digits = rest[:-6]
        text = f"{head}.{(digits + '000000')[:6]}{rest[-6:]}"
    return datetime.fromisoformat(text).timestamp()


def format_rfc3339(timestamp: float) -> str:
    """Format POSIX seconds as RFC3339 UTC (``2023-09-01T12:34:56Z``; fractions as microseconds).

    :param timestamp: POSIX timestamp in seconds.
    """
    if isinstance(timestamp, int):  # the per-row path: whole seconds
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
    whole = int(timestamp // 1)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    micros = round((timestamp - whole) * 1_000_000)
    if micros == 0:
        return text + "Z"
    if micros >= 1_000_000:
        return format_rfc3339(whole + 1)
    return f"{text}.{micros:06d}".rstrip("0") + "Z"


def parse_timeline(values: Sequence[str]) -> tuple[int, ...]:
    """Parse an explicit ``created_at`` timeline: RFC3339 whole-second times, non-decreasing.

    :param values: one RFC3339 date-time per transaction, e.g. ``["2023-09-30T12:00:00Z", ...]``.
    :return: whole POSIX seconds per transaction.
    :raises ValueError: naming the first entry that is not a whole-second RFC3339 time or that
        goes back in time.
    """
    stamps: list[int] = []
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"entry {position}: expected an RFC3339 string, got {value!r}")
        stamp = parse_rfc3339(value)
        if stamp != int(stamp):
            raise ValueError(f"entry {position}: {value!r} has a fraction of a second (whole seconds only)")
        if stamps and stamp < stamps[-1]:
            raise ValueError(f"entry {position}: {value!r} is before the previous entry (must be non-decreasing)")
        stamps.append(int(stamp))
    return tuple(stamps)


def index_from_transaction_id(transaction_id: str) -> int:
    """Recover the id prefix (the row index for the program dataset) from a transaction id.

    :param transaction_id: an id produced by :class:`TransactionStream`.
    :raises ValueError: when the id does not carry a hex prefix.
    """
    return int(transaction_id[0:8] + transaction_id[9:13], 16)


@functools.lru_cache(maxsize=16)
def _make_filler(seed: int, padding: int) -> str:
    """Lowercase filler long enough to slice ``padding`` characters from any offset below 2048."""
    digest = b"".join(hashlib.blake2b(f"filler:{seed}:{n}".encode(), digest_size=64).digest() for n in range(64))
    block = "".join(chr(ord("a") + b % 26) for b in digest)  # 4096 lowercase letters
    return block * (padding // len(block) + 2)


@dataclass(frozen=True)
class TransactionStream:
    """An ordered, virtual list of ``count`` transactions.

    :param seed: dataset seed.
    :param stream: stream name mixed into the hash (``"program"``, ``"member3"``...).
    :param count: number of transactions.
    :param period_start: POSIX seconds of the first ``created_at``.
    :param period_end: POSIX seconds of the last ``created_at``.
    :param prefix_base: added to the index to form the 12-hex-digit id prefix.
    :param row_padding: filler characters appended to every description.
    :param timeline: if set, row ``i``'s ``created_at`` is ``timeline[i]`` (whole POSIX seconds,
        non-decreasing, ``count`` entries) instead of a point spread evenly over the period.
    """

    seed: int
    stream: str
    count: int
    period_start: int
    period_end: int
    prefix_base: int = 0
    row_padding: int = 0
    timeline: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")
        if self.timeline is not None:
            if len(self.timeline) != self.count:
                raise ValueError(f"timeline has {len(self.timeline)} entries for {self.count} transactions")
            if any(a > b for a, b in zip(self.timeline, self.timeline[1:], strict=False)):
                raise ValueError("timeline must be non-decreasing")
        if self.period_end < self.period_start:
            raise ValueError("period end must not be before period start")
        if self.prefix_base + self.count - 1 > _MAX_PREFIX:
            raise ValueError("too many transactions for the 12-hex-digit id prefix")

    def __len__(self) -> int:
        return self.count

    def _digest(self, index: int) -> bytes:
        return hashlib.blake2b(f"{self.seed}:{self.stream}:{index}".encode(), digest_size=32).digest()

    def created_at_ts(self, index: int) -> int:
        """Whole POSIX seconds of row ``index``'s ``created_at`` (non-decreasing in ``index``).

        :param index: 0-based row index.
        """
        if self.timeline is not None:
            return self.timeline[index]
        if self.count <= 1:
            return self.period_start
        return self.period_start + (index * (self.period_end - self.period_start)) // (self.count - 1)

    def transaction_id(self, index: int) -> str:
        """Return the id of row ``index`` (see the module docstring for its shape).

        :param index: 0-based row index.
        """
        return self._id_from_digest(index, self._digest(index))

    def _id_from_digest(self, index: int, digest: bytes) -> str:
        prefix = f"{self.prefix_base + index:012x}"
        tail = digest[16:26].hex()  # 20 hex digits
        variant = "89ab"[digest[26] & 3]
        return f"{prefix[:8]}-{prefix[8:]}-4{tail[:3]}-{variant}{tail[3:6]}-{tail[6:18]}"

    def index_range(self, date_from: float, date_to: float) -> tuple[int, int]:
        """Half-open index range ``[lo, hi)`` of rows with ``date_from <= created_at <= date_to``.

        :param date_from: POSIX seconds, inclusive.
        :param date_to: POSIX seconds, inclusive.
        """
        rows = range(self.count)
        lo = bisect.bisect_left(rows, date_from, key=self.created_at_ts)
        hi = bisect.bisect_right(rows, date_to, lo=lo, key=self.created_at_ts)
        return lo, hi

    def first_index_after(self, transaction_id: str, lo: int, hi: int, *, inclusive: bool) -> int:
        """First index in ``[lo, hi)`` whose id is ``> transaction_id`` (``>=`` when ``inclusive``).

        Ids compare as lowercase strings, so ids from elsewhere (other seeds, the documentation's
        example ``a1b2c3d4-...``) still give a well-defined position.

        :param transaction_id: the cursor.
        :param lo: range start.
        :param hi: range end (exclusive).
        :param inclusive: whether a row equal to the cursor is included.
        """
        key = transaction_id.lower()
        find = bisect.bisect_left if inclusive else bisect.bisect_right
        return find(range(self.count), key, lo=lo, hi=hi, key=self.transaction_id)

    def transaction(self, index: int) -> dict[str, Any]:
        """Row ``index`` as a dict with the account endpoint's types, keys in :data:`TRANSACTION_FIELDS` order.

        :param index: 0-based row index.
        """
        if not 0 <= index < self.count:
            raise IndexError(index)
        d = self._digest(index)
        ts = self.created_at_ts(index)
        created = format_rfc3339(ts)
        ttype = _TRANSACTION_TYPES[d[0] % len(_TRANSACTION_TYPES)]
        amount_tenths = 1 + int.from_bytes(d[1:4], "little") % 50_000
        before_tenths = int.from_bytes(d[4:8], "little") % 1_000_000
        sign = -1 if ttype in ("redeem", "expire") else 1
        if sign < 0:
            amount_tenths = min(amount_tenths, before_tenths) or 1
            before_tenths = max(before_tenths, amount_tenths)
        after_tenths = before_tenths + sign * amount_tenths
        source_type = _SOURCE_TYPES[d[8] % len(_SOURCE_TYPES)]
        description = _DESCRIPTIONS[d[9] % len(_DESCRIPTIONS)]
        if self.row_padding:
            start = d[10] * 8
            filler = _make_filler(self.seed, self.row_padding)
            description = f"{description} {filler[start : start + self.row_padding]}"
        promo = int.from_bytes(d[11:13], "little") % 500
        return {
            "transaction_id": self._id_from_digest(index, d),
            "transaction_eid": f"trans_{self.stream}_{index}",
            "created_at": created,
            "transaction_type": ttype,
            "amount": _tenths(amount_tenths),
            "balance_before": _tenths(before_tenths),
            "balance_after": _tenths(after_tenths),
            "promo_iid": promo,
            "promo_eid": f"promo_{promo}",
            "description": description,
            "activation_date": created,
            "expiration_date": format_rfc3339(ts + _EXPIRY_SECONDS),
            "source_type": source_type,
            "source_iid": int.from_bytes(d[13:15], "little"),
            "source_sid": f"{source_type}_{int.from_bytes(d[15:17], 'little')}",
            "source_subiid": d[27] % 10,
            "is_temp": d[28] % 10 == 0,
            "custom_json": {"channel": _CHANNELS[d[29] % len(_CHANNELS)], "store": f"store_{d[30] % 50}"},
            "product_eid": f"prod_{int.from_bytes(d[17:19], 'little') % 1000}",
            "sku_eid": f"sku_{int.from_bytes(d[19:21], 'little') % 5000}",
            "canceled": d[31] % 20 == 0,
        }


def _tenths(value: int) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value // 10}.{value % 10}"


def transaction_to_csv_row(transaction: dict[str, Any]) -> list[str]:
    """Serialize a transaction dict to CSV cells.

    Booleans become ``true``/``false``, ``custom_json`` a compact JSON string, ``None`` empty.

    :param transaction: a dict as returned by :meth:`TransactionStream.transaction`.
    """
    cells: list[str] = []
    for name in TRANSACTION_FIELDS:
        value = transaction[name]
        if isinstance(value, bool):
            cells.append("true" if value else "false")
        elif value is None:
            cells.append("")
        elif isinstance(value, dict):
            cells.append(json.dumps(value, separators=(",", ":"), sort_keys=True))
        else:
            cells.append(str(value))
    return cells


def csv_header(line_ending: str = "\r\n") -> str:
    r"""Return the CSV header line.

    :param line_ending: the line terminator (``\r\n`` as RFC 4180, or ``\n``).
    """
    buf = io.StringIO()
    csv.writer(buf, lineterminator=line_ending).writerow(TRANSACTION_FIELDS)
    return buf.getvalue()


def program_stream(
    seed: int,
    transactions: int,
    period_start: str,
    period_end: str,
    row_padding: int = 0,
    created_at_timeline: Sequence[str] | None = None,
) -> TransactionStream:
    """Return the program's export dataset (id prefix == row index).

    Transaction ids depend only on ``seed`` and the row index, never on the timeline or the period.

    :param seed: dataset seed.
    :param transactions: number of rows.
    :param period_start: RFC3339 start of the period.
    :param period_end: RFC3339 end of the period.
    :param row_padding: filler characters appended to every description.
    :param created_at_timeline: explicit ``created_at`` per row (see :func:`parse_timeline`);
        ``period_start`` / ``period_end`` are then not used for rows.
    """
    return TransactionStream(
        seed=seed,
        stream="program",
        count=transactions,
        period_start=int(parse_rfc3339(period_start)),
        period_end=int(parse_rfc3339(period_end)),
        row_padding=row_padding,
        timeline=None if created_at_timeline is None else parse_timeline(created_at_timeline),
    )


def member_stream(seed: int, member: int, size: int, period_start: str, period_end: str) -> TransactionStream:
    """Return member ``member``'s account history (id prefix ``(member + 1) << 32 | index``).

    :param seed: dataset seed.
    :param member: 0-based member number.
    :param size: number of transactions in the history.
    :param period_start: RFC3339 start of the period.
    :param period_end: RFC3339 end of the period.
    """
    return TransactionStream(
        seed=seed,
        stream=f"member{member}",
        count=size,
        period_start=int(parse_rfc3339(period_start)),
        period_end=int(parse_rfc3339(period_end)),
        prefix_base=(member + 1) << 32,
    )
