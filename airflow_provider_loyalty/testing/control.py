"""The control endpoints under ``/_emulator/``: drive the emulator from outside its process.

Answered only to loopback clients (403 otherwise), without a token, always in JSON:

==============================================  =======================================================
``GET  /_emulator/health``                      liveness: ``{"status": "ok"}``
``GET  /_emulator/stats``                       ``LoyaltyEmulator.stats()``
``GET|POST /_emulator/faults``                  read / replace the fault rules (a JSON list)
``GET|POST /_emulator/config``                  read / update ``EmulatorConfig`` fields (a JSON object)
``POST /_emulator/reset``                       ``LoyaltyEmulator.reset()``
``POST /_emulator/expire``                      ``expire_files()``; body ``{"task_ids": [...]}`` or
                                                empty for all: ``{"expired": n}``
``GET  /_emulator/tasks``                       every export task: id, period, from_id, total,
                                                next_from_id, hashed_file, expired, failed
``GET  /_emulator/expected_ids``                ``expected_ids()``; query ``date_from``, ``date_to``
                                                (both optional): ``{"count": n, "ids": [...]}``
==============================================  =======================================================
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from airflow_provider_loyalty.testing.errors import ApiError, invalid

if TYPE_CHECKING:
    from airflow_provider_loyalty.testing.server import LoyaltyEmulator

__all__ = ["CONTROL_PREFIX", "handle_control", "is_loopback"]

CONTROL_PREFIX = "/_emulator/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a client address, maybe with an IPv6 zone) is a loopback address.

    :param host: the address.
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def handle_control(emulator: LoyaltyEmulator, method: str, name: str, body: bytes, query: str) -> Any:
    """Answer a control request; return the ``data`` of the success envelope.

    :param emulator: the emulator to drive.
    :param method: HTTP method.
    :param name: the path below ``/_emulator/``.
    :param body: the request body (JSON for POST).
    :param query: the URL's query string.
    :raises ApiError: 1001 for invalid bodies, 1007 for unknown control endpoints.
    """
    if method == "GET":
        readers = {
            "health": lambda: {"status": "ok"},
            "stats": emulator.stats,
            "faults": lambda: [r.to_dict() for r in emulator.faults.rules()],
            "config": lambda: emulator.config.to_dict(),
            "tasks": emulator.export_tasks,
            "expected_ids": lambda: _expected_ids(emulator, query),
        }
        if name in readers:
            return readers[name]()
    if method == "POST":
        writers = {
            "faults": _set_faults,
            "config": _update_config,
            "reset": _reset,
            "expire": _expire,
        }
        if name in writers:
            return writers[name](emulator, _load_json(body))
    raise ApiError(1007, f"Unknown endpoint: {method} {CONTROL_PREFIX}{name[:100]}")


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(1001, f"Invalid request body: malformed JSON body: {exc}") from None


def _set_faults(emulator: LoyaltyEmulator, rules: Any) -> Any:
    if isinstance(rules, dict):
        rules = rules.get("faults", [])
    if not isinstance(rules, list):
        raise invalid("faults", "expected a JSON list of fault rules")
    try:
        emulator.set_faults(rules)
    except (ValueError, TypeError) as exc:
        raise invalid("faults", str(exc)) from None
    return [r.to_dict() for r in emulator.faults.rules()]


def _update_config(emulator: LoyaltyEmulator, changes: Any) -> Any:
    if not isinstance(changes, dict):
        raise invalid("config", "expected a JSON object")
    try:
        emulator.config.update(changes)
    except (ValueError, TypeError) as exc:
        raise invalid("config", str(exc)) from None
    return emulator.config.to_dict()


def _reset(emulator: LoyaltyEmulator, _: Any) -> Any:
    emulator.reset()
    return {"reset": True}


def _expire(emulator: LoyaltyEmulator, body: Any) -> Any:
    task_ids = body.get("task_ids") if isinstance(body, dict) else None
    if task_ids is not None and (not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids)):
        raise invalid("task_ids", "expected a JSON list of task ids")
    return {"expired": emulator.expire_files(task_ids)}


def _expected_ids(emulator: LoyaltyEmulator, query: str) -> Any:
    values = {key: found[-1] for key, found in parse_qs(query).items()}
    try:
        ids = emulator.expected_ids(values.get("date_from"), values.get("date_to"))
    except ValueError as exc:
        raise invalid("date_from/date_to", str(exc)) from None
    return {"count": len(ids), "ids": ids}
