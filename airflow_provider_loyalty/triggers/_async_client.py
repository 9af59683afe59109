"""The trigger's small async client of the loyalty API (httpx), for the triggerer's event loop.

It speaks the same protocol as the sync hook through the shared pieces, so rules exist once:
bodies via :func:`~airflow_provider_loyalty._codec.encode_body`, replies via
:func:`~airflow_provider_loyalty._protocol.check_reply`, retries via
:func:`~airflow_provider_loyalty._retry.retry_policy` (tenacity ``AsyncRetrying``, which sleeps
with ``asyncio.sleep``). Nothing here blocks the loop: the connection comes from the async
connection API, the ``httpx.AsyncClient`` (whose TLS context loads CA files from disk) is built in
a worker thread, and reply bodies are read incrementally under :data:`MAX_REPLY_BYTES`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from types import TracebackType
from typing import Any

import httpx
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from tenacity import AsyncRetrying

from airflow_provider_loyalty._codec import MIME_TYPES, encode_body
from airflow_provider_loyalty._connection import USER_AGENT, LoyaltyConnectionSettings, settings_from_parts
from airflow_provider_loyalty._protocol import MAX_REPLY_BYTES, STATUS_PATH, check_reply, data_object
from airflow_provider_loyalty._retry import retry_policy
from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyValidationError,
)

_READ_CHUNK_BYTES = 64 * 1024


async def async_settings(loyalty_conn_id: str, overrides: dict[str, Any] | None = None) -> LoyaltyConnectionSettings:
    """Read the ``loyalty`` connection without blocking the event loop.

    Uses the common-compat async connection API: on Airflow versions whose ``aget_connection`` or
    ``extra_dejson`` would mask secrets with a synchronous call to the supervisor, it runs that
    call in a worker thread instead.

    :param loyalty_conn_id: the Airflow connection id.
    :param overrides: settings that win over the connection's extras (``None`` values ignored).
    """
    conn = await get_async_connection(loyalty_conn_id)
    extra = await get_async_extra_dejson(conn)
    return settings_from_parts(
        host=conn.host,
        password=conn.password,
        extra=extra,
        schema=conn.schema,
        port=conn.port,
        overrides=overrides,
    )


def _is_tls_failure(err: BaseException) -> bool:
    """Whether a transport error was caused by a TLS handshake / verification failure."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """One TLS context per verify setting, shared by every trigger of the process.

    Building a context loads the CA bundle (~28 ms of CPU and ~800 KiB each); a triggerer running a
    thousand triggers must not pay that a thousand times.
    """
    return httpx.create_ssl_context(verify=verify)


class AsyncLoyaltyClient:
    """An async context manager holding one ``httpx.AsyncClient`` for the life of a trigger run.

    The client is closed on exit, including when the trigger is cancelled. Redirects are not
    followed (the token is only sent to the configured host); the token travels in the
    ``Authorization`` header only and is removed from any error text.

    :param settings: the connection's settings (see :func:`async_settings`).
    :param log: logger for retry warnings and request timings.
    """

    def __init__(self, settings: LoyaltyConnectionSettings, log: logging.Logger | Any) -> None:
        self.settings = settings
        self.log = log
        self._client: httpx.AsyncClient | None = None
        self._retry_policy = retry_policy(settings, log)  # built once, used for every request

    def _build_client(self) -> httpx.AsyncClient:
        settings = self.settings
        return httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {settings.token}",
                "User-Agent": USER_AGENT,
                "Accept": f"{MIME_TYPES[settings.content_type]}, */*;q=0.5",
            },
            verify=_ssl_context(settings.verify),
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        )

    async def __aenter__(self) -> AsyncLoyaltyClient:
        """Build the HTTP client off the loop (its TLS context reads CA bundles from disk)."""
        self._client = await asyncio.to_thread(self._build_client)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the HTTP client and its pooled connections."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent); shielded so a cancellation cannot skip it."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.shield(client.aclose())

    @property
    def is_closed(self) -> bool:
        """``True`` once the client was closed (or never opened)."""
        return self._client is None or self._client.is_closed

    async def get_task_status(self, export_task_id: str) -> dict[str, Any]:
        """Poll an export task: the ``data`` object of ``tasks/status`` (``status``, ``progress``, ...).

        :param export_task_id: the export task id.
        :raises LoyaltyApiError: API errors (auth errors included), after retries for transient ones.
        :raises LoyaltyResponseError: a reply that cannot be understood.
        """
        if not isinstance(export_task_id, str) or not export_task_id.strip():
            raise LoyaltyValidationError("export_task_id", f"expected a task id string, got {export_task_id!r}")
        envelope = await self._post(STATUS_PATH, {"task_id": export_task_id})
        return data_object(envelope, "tasks/status")

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST a body with the shared retry policy; return the checked envelope."""
        content_type = self.settings.content_type
        body = encode_body(payload, content_type)
        headers = {"Content-Type": MIME_TYPES[content_type]}
        async for attempt in AsyncRetrying(**self._retry_policy):
            with attempt:
                return await self._post_once(path, body, headers)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _post_once(self, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        client = self._client
        if client is None:
            raise RuntimeError("AsyncLoyaltyClient used outside 'async with'")
        started = time.monotonic()
        try:
            async with client.stream("POST", self.settings.url(path), content=body, headers=headers) as reply:
                data = await self._read_capped(reply, path)
        except httpx.TimeoutException:
            raise LoyaltyTransientError(None, f"{path}: timed out", None) from None
        except httpx.DecodingError as err:
            raise LoyaltyResponseError(f"{path}: reply body could not be decoded: {err}") from None
        except httpx.TransportError as err:
            if _is_tls_failure(err):
                raise LoyaltyApiError(None, f"{path}: TLS verification failed: {err}", None) from None
            raise LoyaltyTransientError(None, f"{path}: connection failed ({type(err).__name__})", None) from None
        self.log.debug("POST %s -> HTTP %s in %.0f ms", path, reply.status_code, 1000 * (time.monotonic() - started))
        return check_reply(http_status=reply.status_code, headers=reply.headers, body=data, token=self.settings.token)

    @staticmethod
    async def _read_capped(reply: httpx.Response, path: str) -> bytes:
        declared = reply.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
            raise LoyaltyResponseError(f"{path}: reply of {declared} bytes is over the {MAX_REPLY_BYTES} byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in reply.aiter_bytes(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise LoyaltyResponseError(f"{path}: reply is over the {MAX_REPLY_BYTES} byte cap")
            chunks.append(chunk)
        return b"".join(chunks)
