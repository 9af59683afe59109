"""Fault rules for the loyalty API emulator.

A :class:`FaultRule` names an ``endpoint`` (``export``, ``status``, ``download``, ``account`` or ``*``),
a ``kind`` and when it fires: ``count`` (the first N matching requests), ``probability`` (0..1, drawn
from a :class:`random.Random` seeded with the emulator seed, so runs are reproducible) or neither
(every matching request). Rules are checked in list order; the first one that fires wins.

Kinds and their ``params``:

=========================  ==================================================================
``http_500``               500 with the error envelope (``error`` 1000).
``http_503``               503 with the error envelope (``error`` 1000); ``retry_after`` adds a
                           ``Retry-After`` header.
``rate_limit``             429 with ``Retry-After: <retry_after>`` (default 1; fractional values
                           such as 0.1 are sent as given) and ``error`` 1006.
``reset``                  the TCP connection is closed abruptly (RST, no response).
``slow``                   ``seconds`` (default 0.5) delay before the response, ``during``
                           (default 0) delay in the middle of the body.
``truncate``               headers promise the full body (Content-Length or chunked) but only
                           ``fraction`` (default 0.5) of it, at most ``after_bytes`` for
                           downloads (default 65536), is sent, then the connection closes.
``api_error``              HTTP 200 with ``error`` = ``code`` (default 1000) and ``error_text`` =
                           ``text``.
``task_failed``            (status) the task ends with ``status`` (default ``"failed"``; e.g.
                           ``"error"``) and ``text`` as ``error_text``/``message``; sticky.
``task_never_finishes``    (export or status) tasks created while the rule fires stay
                           ``in_progress`` forever; ``task_ids`` (list) pins existing tasks.
``download_gone``          (download) the file is gone for this request: ``http_status``
                           (default 404; 410 or 200 too) with ``error`` 1008 and ``text``
                           (default ``"File expired"``); ``format`` (``json``/``xml``) forces the
                           envelope's format. Use ``LoyaltyEmulator.expire_files`` for good.
``download_error_envelope``  (download) an API error instead of the zip: ``http_status`` (default
                           200) with ``error`` = ``code`` (default 1000), ``error_text`` = ``text``
                           (default ``"Internal error"``), as ``format`` (default ``json``).
``short_batch``            (download) the zip's CSV holds one row fewer than ``total``. Only the
                           first ``downloads`` (default 1) downloads of each batch (its period and
                           ``from_id``) are short: later ones, from the same task or from a task
                           created again from the same ``from_id``, are complete.
``zip_bomb_members``       (download) after the CSV, ``members`` (default 64) extra members of
                           ``member_bytes`` (default 1,048,000: just under 1 MiB) copies of
                           ``byte`` (default ``"0"``), deflated at level 9 (about 1000:1).
=========================  ==================================================================

Every applied fault is counted per kind in ``stats()["faults_applied"]``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DOWNLOAD_KINDS", "ENDPOINTS", "FAULT_KINDS", "TRANSPORT_KINDS", "FaultRule", "FaultSet"]

#: Endpoint names a rule can target (``*`` matches all four).
ENDPOINTS: frozenset[str] = frozenset({"export", "status", "download", "account", "*"})
#: Kinds handled before the endpoint logic runs (the request never reaches the API code).
TRANSPORT_KINDS: frozenset[str] = frozenset(
    {"http_500", "http_503", "rate_limit", "reset", "slow", "truncate", "api_error"}
)
#: Kinds that change what a download of a completed task's file answers.
DOWNLOAD_KINDS: frozenset[str] = frozenset(
    {"download_gone", "download_error_envelope", "short_batch", "zip_bomb_members"}
)
#: All supported kinds.
FAULT_KINDS: frozenset[str] = TRANSPORT_KINDS | DOWNLOAD_KINDS | {"task_failed", "task_never_finishes"}
#: Integer params and their minimum, per kind (checked when a rule is built).
_INT_PARAMS: dict[str, dict[str, int]] = {
    "download_gone": {"http_status": 100},
    "download_error_envelope": {"http_status": 100, "code": 0},
    "short_batch": {"downloads": 1},
    "zip_bomb_members": {"members": 1, "member_bytes": 1},
}


@dataclass
class FaultRule:
    """One fault injection rule.

    :param endpoint: ``export``, ``status``, ``download``, ``account`` or ``*``.
    :param kind: one of :data:`FAULT_KINDS`.
    :param count: fire for the first ``count`` matching requests (``None``: no limit).
    :param probability: fire with this probability (0..1) per matching request.
    :param params: kind-specific parameters (see the module docstring).
    """

    endpoint: str
    kind: str
    count: int | None = None
    probability: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"FaultRule.endpoint: expected one of {sorted(ENDPOINTS)}, got {self.endpoint!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"FaultRule.kind: expected one of {sorted(FAULT_KINDS)}, got {self.kind!r}")
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int)):
            raise ValueError(f"FaultRule.count: expected int or None, got {self.count!r}")
        if self.count is not None and self.count < 0:
            raise ValueError("FaultRule.count: must be >= 0")
        if self.probability is not None:
            if isinstance(self.probability, bool) or not isinstance(self.probability, (int, float)):
                raise ValueError(f"FaultRule.probability: expected a number, got {self.probability!r}")
            if not 0.0 <= float(self.probability) <= 1.0:
                raise ValueError("FaultRule.probability: must be within 0..1")
        if self.count is not None and self.probability is not None:
            raise ValueError("FaultRule: give count or probability, not both")
        if not isinstance(self.params, dict):
            raise ValueError("FaultRule.params: expected a dict")
        self._check_params()

    def _check_params(self) -> None:
        for name, minimum in _INT_PARAMS.get(self.kind, {}).items():
            value = self.params.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise ValueError(f"FaultRule.params.{name}: expected an int >= {minimum}, got {value!r}")
        fmt = self.params.get("format")
        if self.kind in DOWNLOAD_KINDS and fmt is not None and fmt not in ("json", "xml"):
            raise ValueError(f"FaultRule.params.format: expected 'json' or 'xml', got {fmt!r}")
        byte = self.params.get("byte")
        bad_byte = not isinstance(byte, str) or len(byte) != 1 or not byte.isascii()
        if self.kind == "zip_bomb_members" and byte is not None and bad_byte:
            raise ValueError(f"FaultRule.params.byte: expected one ASCII character, got {byte!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from a JSON object.

        :param data: mapping with the dataclass field names.
        :raises ValueError: on unknown keys or invalid values.
        """
        unknown = set(data) - {"endpoint", "kind", "count", "probability", "params"}
        if unknown:
            raise ValueError(f"FaultRule: unknown keys {sorted(unknown)}")
        if "endpoint" not in data or "kind" not in data:
            raise ValueError("FaultRule: 'endpoint' and 'kind' are required")
        return cls(
            endpoint=data["endpoint"],
            kind=data["kind"],
            count=data.get("count"),
            probability=data.get("probability"),
            params=dict(data.get("params") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the rule."""
        return asdict(self)


class FaultSet:
    """Thread-safe list of rules with their remaining counts and a seeded random source.

    :param seed: seed of the random source used for ``probability`` rules.
    """

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rules: list[FaultRule] = []
        self._remaining: list[int | None] = []
        self._random = random.Random(seed)

    def set(self, rules: Iterable[FaultRule | Mapping[str, Any]], seed: int | None = None) -> None:
        """Replace all rules (and reseed the random source).

        :param rules: rules or JSON objects of rules.
        :param seed: new seed (default: keep the current one).
        """
        parsed = [r if isinstance(r, FaultRule) else FaultRule.from_dict(r) for r in rules]
        with self._lock:
            if seed is not None:
                self._seed = seed
            self._rules = parsed
            self._remaining = [r.count for r in parsed]
            self._random = random.Random(self._seed)

    def rules(self) -> list[FaultRule]:
        """Return a copy of the current rules."""
        with self._lock:
            return list(self._rules)

    def remaining(self) -> list[int | None]:
        """Return the remaining counts, parallel to :meth:`rules` (``None`` for unlimited rules)."""
        with self._lock:
            return list(self._remaining)

    def match(
        self,
        endpoints: str | Collection[str],
        kinds: Iterable[str],
        predicate: Callable[[FaultRule], bool] | None = None,
    ) -> FaultRule | None:
        """Return the first rule of one of ``kinds`` that fires for the request (consuming it).

        :param endpoints: the endpoint of the request (or several names a rule may carry).
        :param kinds: kinds to consider.
        :param predicate: extra filter on candidate rules (checked before consuming).
        """
        wanted = set(kinds)
        names = {endpoints} if isinstance(endpoints, str) else set(endpoints)
        names.add("*")
        with self._lock:
            for pos, rule in enumerate(self._rules):
                if rule.kind not in wanted or rule.endpoint not in names:
                    continue
                if predicate is not None and not predicate(rule):
                    continue
                left = self._remaining[pos]
                if left is not None:
                    if left <= 0:
                        continue
                    self._remaining[pos] = left - 1
                    return rule
                if rule.probability is not None:
                    if self._random.random() < rule.probability:
                        return rule
                    continue
                return rule
        return None
