"""Helpers shared by the reliability tests (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_provider_loyalty.transfers.loyalty_to_s3 import LoyaltyTransactionsToS3Operator

PROGRAM = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points"}


def fresh_seed() -> int:
    """A random seed for the randomized variants (printed by the tests that use it); a failure is
    replayed with ``LOYALTY_TEST_SEED=<the printed seed>``."""
    pinned = os.environ.get("LOYALTY_TEST_SEED")
    return int(pinned) if pinned else random.SystemRandom().randrange(1, 2**31)


def make_s3_operator(bucket: str, prefix: str, **kwargs: Any) -> LoyaltyTransactionsToS3Operator:
    params = {
        "task_id": "to_s3",
        **PROGRAM,
        "s3_bucket": bucket,
        "s3_key_prefix": prefix,
        "poll_interval": 0.05,
        "deferrable": False,
        **kwargs,
    }
    return LoyaltyTransactionsToS3Operator(**params)


def keys_under(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def ids_in_s3(s3_client: Any, bucket: str, manifest: dict[str, Any]) -> list[str]:
    """Transaction ids of the manifest's parts, in order."""
    ids: list[str] = []
    for part in manifest["parts"]:
        body = s3_client.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
        header = next(reader)
        column = header.index("transaction_id")
        ids.extend(row[column] for row in reader if row)
    return ids


def stored_manifest(s3_client: Any, bucket: str, prefix: str) -> dict[str, Any]:
    return json.loads(s3_client.get_object(Bucket=bucket, Key=f"{prefix}/_manifest.json")["Body"].read())


def assert_true_manifest(s3_client: Any, bucket: str, prefix: str, expected_ids: list[str]) -> dict[str, Any]:
    """The stored manifest tells the truth: each part's bytes/sha256/rows, the total, the exact id set.

    Also: the prefix holds exactly the manifest's parts and the manifest (no stale or doubled part,
    no leftover checkpoint).
    """
    manifest = stored_manifest(s3_client, bucket, prefix)
    ids: list[str] = []
    for part in manifest["parts"]:
        body = s3_client.get_object(Bucket=bucket, Key=part["key"])["Body"].read()
        assert part["bytes"] == len(body), part["key"]
        assert part["sha256"] == hashlib.sha256(body).hexdigest(), part["key"]
        reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
        header = next(reader)
        column = header.index("transaction_id")
        rows = [row[column] for row in reader if row]
        assert part["rows"] == len(rows), part["key"]
        ids.extend(rows)
    assert manifest["total_rows"] == len(ids)
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate transaction ids"
    assert ids == expected_ids, f"{len(ids)} ids landed, {len(expected_ids)} expected"
    expected_keys = sorted([f"{prefix}/_manifest.json"] + [part["key"] for part in manifest["parts"]])
    assert keys_under(s3_client, bucket, prefix) == expected_keys
    return manifest


# ---------------------------------------------------------------------------------------- loopback servers


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class LoopbackServer:
    """A tiny HTTP server on loopback that records every request it receives."""

    url: str
    host: str
    port: int
    requests: list[SeenRequest] = field(default_factory=list)

    @property
    def authorized_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if any(k.lower() == "authorization" for k in r.headers)]


Responder = Callable[[BaseHTTPRequestHandler, "LoopbackServer"], None]


def _default_responder(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
    body = b'{"error": 0, "error_text": "stolen"}'
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _bindable(host: str) -> bool:
    import socket

    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
        return True
    except OSError:
        return False


@contextmanager
def loopback_server(responder: Responder = _default_responder, host: str = "127.0.0.1") -> Iterator[LoopbackServer]:
    """Serve ``responder`` on ``host`` (another loopback address if asked and available)."""
    if not _bindable(host):
        host = "127.0.0.1"
    state = LoopbackServer(url="", host=host, port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append(SeenRequest(self.command, self.path, dict(self.headers.items()), body))
            try:
                responder(self, state)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_HEAD = _any

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    state.url = f"http://{host}:{state.port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def envelope(data: Any) -> bytes:
    return json.dumps({"data": data, "error": 0, "error_text": "Successful operation"}).encode()


def fake_api(
    *,
    download: Responder | None = None,
    export: Responder | None = None,
    status: Responder | None = None,
    hashed_file: str = "abc/Transactions.zip",
    total: int = 3,
) -> Responder:
    """Just enough of the seed API: export → task id, status → completed, download → ``download``."""

    def respond(handler: BaseHTTPRequestHandler, server: LoopbackServer) -> None:
        path = handler.path
        if path.endswith("/loyalty/transactions_export"):
            if export is not None:
                return export(handler, server)
            return send(handler, 200, envelope({"task_id": "task_hostile"}), "application/json")
        if path.endswith("/tasks/status"):
            if status is not None:
                return status(handler, server)
            result = {"hashed_file": hashed_file, "total": total, "next_from_id": "", "is_api": True}
            return send(
                handler, 200, envelope({"status": "completed", "progress": 100, "result": result}), "application/json"
            )
        if path.startswith("/api/download/") and download is not None:
            return download(handler, server)
        return send(handler, 404, b'{"error": 1007, "error_text": "Unknown endpoint"}', "application/json")

    return respond
