"""Console script ``loyalty-emulator``: serve the loyalty API emulator until SIGINT/SIGTERM.

Example::

    loyalty-emulator --port 8765 --transactions 100000 --batch-size 10000 --faults faults.json

Prints exactly one line, ``loyalty-emulator listening on http://HOST:PORT`` (the real port when
``--port 0``), once the socket is bound. ``--config`` takes a JSON object of
:class:`~airflow_provider_loyalty.testing.EmulatorConfig` fields; explicit flags override it.
``--faults`` takes a JSON list of :class:`~airflow_provider_loyalty.testing.FaultRule` objects.
Fields without a flag (``created_at_timeline``, ``member_history_sizes``...) go in ``--config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from airflow_provider_loyalty.testing.config import (
    CSV_LINE_ENDINGS,
    CSV_STYLES,
    CURSOR_MODES,
    EMPTY_EXPORT_STYLES,
    EXPIRED_FILE_STATUSES,
    HASHED_FILE_STYLES,
    PROGRESS_STYLES,
    ZIP_MEMBER_ORDERS,
    EmulatorConfig,
)
from airflow_provider_loyalty.testing.server import LoyaltyEmulator

__all__ = ["build_parser", "main"]

#: CLI flag dest -> EmulatorConfig field
_FLAG_FIELDS = {
    "transactions": "transactions",
    "batch_size": "batch_size",
    "seed": "seed",
    "token": "token",
    "cursor_mode": "cursor_mode",
    "task_duration": "task_duration",
    "row_padding": "row_padding",
    "zip_compresslevel": "zip_compresslevel",
    "loyalty_program_id": "loyalty_program_id",
    "hashed_file_style": "hashed_file_style",
    "period_start": "period_start",
    "period_end": "period_end",
    "progress_style": "progress_style",
    "zip_members": "zip_members",
    "zip_member_order": "zip_member_order",
    "csv_style": "csv_style",
    "csv_bom": "csv_bom",
    "csv_line_ending": "csv_line_ending",
    "empty_export_style": "empty_export_style",
    "file_ttl": "file_ttl",
    "expired_file_status": "expired_file_status",
    "max_concurrent_requests": "max_concurrent_requests",
    "concurrency_retry_after": "concurrency_retry_after",
    "prebuilt_files": "prebuilt_files",
}


def _port(text: str) -> int:
    """A TCP port number, 0..65535 (0: a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: a free one), got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``loyalty-emulator``."""
    parser = argparse.ArgumentParser(prog="loyalty-emulator", description="Serve the loyalty API emulator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8765, help="TCP port, 0 for a free one (default 8765)")
    parser.add_argument("--config", type=Path, help="JSON file with EmulatorConfig fields")
    parser.add_argument("--faults", type=Path, help="JSON file with a list of fault rules")
    parser.add_argument("--transactions", type=int, help="transactions in the period")
    parser.add_argument("--batch-size", type=int, help="rows per export task")
    parser.add_argument("--seed", type=int, help="data / fault seed")
    parser.add_argument("--token", help="API token to accept")
    parser.add_argument("--cursor-mode", choices=CURSOR_MODES, help="from_id semantics")
    parser.add_argument("--task-duration", type=float, help="seconds an export task runs")
    parser.add_argument("--row-padding", type=int, help="filler characters per description")
    parser.add_argument("--zip-compresslevel", type=int, help="deflate level 0..9")
    parser.add_argument("--loyalty-program-id", type=int, help="the valid loyalty_program_id")
    parser.add_argument("--hashed-file-style", choices=HASHED_FILE_STYLES, help="hashed_file name style")
    parser.add_argument("--period-start", help="RFC3339 first created_at")
    parser.add_argument("--period-end", help="RFC3339 last created_at")
    parser.add_argument("--progress-style", choices=PROGRESS_STYLES, help="progress as int or decimal")
    parser.add_argument("--zip-members", type=int, help="CSV members per zip (rows split evenly)")
    parser.add_argument(
        "--zip-member-order", choices=ZIP_MEMBER_ORDERS, help="name (default) or reversed: the zip directory's order"
    )
    parser.add_argument(
        "--csv-style",
        choices=CSV_STYLES,
        help="stray_quotes: some unquoted fields hold a quote; rfc3339_shapes: times in every RFC3339 shape",
    )
    parser.add_argument(
        "--csv-bom", action="store_const", const=True, default=None, help="start each CSV with a UTF-8 BOM"
    )
    parser.add_argument("--csv-line-ending", choices=CSV_LINE_ENDINGS, help="crlf (default) or lf")
    parser.add_argument("--empty-export-style", choices=EMPTY_EXPORT_STYLES, help="how an empty batch looks")
    parser.add_argument("--file-ttl", type=float, help="seconds a completed task's file stays downloadable")
    parser.add_argument(
        "--expired-file-status", type=int, choices=EXPIRED_FILE_STATUSES, help="HTTP status of an expired file"
    )
    parser.add_argument("--max-concurrent-requests", type=int, help="answer 429 above this many requests at once")
    parser.add_argument("--concurrency-retry-after", type=float, help="Retry-After of those 429 answers")
    parser.add_argument(
        "--prebuilt-files",
        action="store_const",
        const=True,
        default=None,
        help="build each zip once on disk and serve it with Content-Length",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="Python log level (default WARNING)",
    )
    return parser


def _load_config(args: argparse.Namespace) -> EmulatorConfig:
    changes: dict[str, Any] = {}
    if args.config is not None:
        loaded = json.loads(args.config.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError("--config: expected a JSON object")
        changes.update(loaded)
    for dest, field_name in _FLAG_FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            changes[field_name] = value
    return EmulatorConfig.from_dict(changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM.

    :param argv: arguments (default ``sys.argv[1:]``).
    :return: process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _load_config(args)
        faults = json.loads(args.faults.read_text(encoding="utf-8")) if args.faults is not None else []
        if not isinstance(faults, list):
            raise ValueError("--faults: expected a JSON list of fault rules")
        emulator = LoyaltyEmulator(config, host=args.host, port=args.port)
        emulator.set_faults(faults)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        emulator.start()
    except OSError as exc:
        print(f"loyalty-emulator: {exc.strerror}", file=sys.stderr, flush=True)
        return 1
    try:
        print(f"loyalty-emulator listening on {emulator.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
