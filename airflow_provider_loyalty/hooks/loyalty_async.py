"""The trigger's small async client of the loyalty API (aiohttp), for the triggerer's event loop.

It speaks the same protocol as the sync hook through the shared pieces, so rules exist once:
bodies via :func:`~airflow_provider_loyalty.utils.codec.encode_body`, replies via
:func:`~airflow_provider_loyalty.utils.protocol.check_reply`, retries via
:func:`~airflow_provider_loyalty.utils.retry.retry_policy` (tenacity ``AsyncRetrying``, which sleeps
with ``asyncio.sleep``). Nothing here blocks the loop: the connection comes from the async
connection API, the TLS context (which loads CA files from disk) is built once per process in a
worker thread and shared, and reply bodies are read incrementally under :data:`MAX_REPLY_BYTES`.

aiohttp rather than httpx: a triggerer runs up to a thousand of these polling at once, and the
benchmarks measured about a third of httpx's CPU per request (``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import urllib.request
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from tenacity import AsyncRetrying

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyResponseError,
    LoyaltyTransientError,
    LoyaltyValidationError,
)
from airflow_provider_loyalty.utils.codec import MIME_TYPES, encode_body
from airflow_provider_loyalty.utils.connection import (
    USER_AGENT,
    LoyaltyConnectionSettings,
    ca_bundle_from_env,
    settings_from_parts,
)
from airflow_provider_loyalty.utils.protocol import MAX_REPLY_BYTES, STATUS_PATH, check_reply, data_object
from airflow_provider_loyalty.utils.retry import retry_policy

_READ_CHUNK_BYTES = 64 * 1024
# One TLS context per verify setting for the whole process (building one costs ~28 ms of CPU).
_SSL_CONTEXTS: dict[bool | str, ssl.SSLContext | bool] = {}


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


def _build_ssl(verify: bool | str) -> ssl.SSLContext | bool:
    """``False`` (no verification), or a verifying context for the CA bundle in effect."""
    if verify is False:
        return False
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


async def _ssl_for(verify: bool | str) -> ssl.SSLContext | bool:
    resolved = ca_bundle_from_env(verify)
    context = _SSL_CONTEXTS.get(resolved)
    if context is None:
        context = _SSL_CONTEXTS[resolved] = await asyncio.to_thread(_build_ssl, resolved)
    return context


def _proxy_for(url: str) -> str | None:
    """The ``HTTP(S)_PROXY`` for ``url`` unless ``NO_PROXY`` exempts its host (env only, no lookups)."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies_environment().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or ""):  # type: ignore[attr-defined]
        return None
    return proxy


def _is_tls_failure(err: BaseException) -> bool:
    """Whether a transport error was caused by a TLS handshake / verification failure."""
    if isinstance(err, aiohttp.ClientSSLError):
        return True
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class AsyncLoyaltyClient:
    """An async context manager holding one ``aiohttp.ClientSession`` for the life of a trigger run.

    The session is closed on exit, including when the trigger is cancelled. Redirects are not
    followed (the token is only sent to the configured host); the token travels in the
    ``Authorization`` header only and is removed from any error text. Proxies come from
    ``HTTP(S)_PROXY`` / ``NO_PROXY``; ``~/.netrc`` is never consulted.

    :param settings: the connection's settings (see :func:`async_settings`).
    :param log: logger for retry warnings and request timings.
    """

    def __init__(self, settings: LoyaltyConnectionSettings, log: logging.Logger | Any) -> None:
        self.settings = settings
        self.log = log
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._proxy = _proxy_for(settings.base_url)
        self._retry_policy = retry_policy(settings, log)  # built once, used for every request

    async def __aenter__(self) -> AsyncLoyaltyClient:
        """Open the session (the shared TLS context is built off the loop the first time)."""
        settings = self.settings
        if settings.base_url.startswith("https://"):
            self._ssl = await _ssl_for(settings.verify)
        self._session = aiohttp.ClientSession(
            headers={
                "Authorization": f"Bearer {settings.token}",
                "User-Agent": USER_AGENT,
                "Accept": f"{MIME_TYPES[settings.content_type]}, */*;q=0.5",
            },
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            connector=aiohttp.TCPConnector(limit=2),
            trust_env=False,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the session and its pooled connections."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session (idempotent); shielded so a cancellation cannot skip it."""
        session, self._session = self._session, None
        if session is not None:
            await asyncio.shield(session.close())

    @property
    def is_closed(self) -> bool:
        """``True`` once the client was closed (or never opened)."""
        return self._session is None or self._session.closed

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
        session = self._session
        if session is None:
            raise RuntimeError("AsyncLoyaltyClient used outside 'async with'")
        started = time.monotonic()
        try:
            async with session.post(
                self.settings.url(path),
                data=body,
                headers=headers,
                ssl=self._ssl,
                proxy=self._proxy,
                allow_redirects=False,
            ) as reply:
                data = await self._read_capped(reply, path)
                status, reply_headers = reply.status, reply.headers
        except TimeoutError:
            raise LoyaltyTransientError(None, f"{path}: timed out", None) from None
        except aiohttp.ClientPayloadError as err:
            raise LoyaltyTransientError(None, f"{path}: reply body cut short ({type(err).__name__})", None) from None
        except aiohttp.ClientError as err:
            if _is_tls_failure(err):
                raise LoyaltyApiError(None, f"{path}: TLS verification failed: {err}", None) from None
            raise LoyaltyTransientError(None, f"{path}: connection failed ({type(err).__name__})", None) from None
        self.log.debug("POST %s -> HTTP %s in %.0f ms", path, status, 1000 * (time.monotonic() - started))
        return check_reply(http_status=status, headers=reply_headers, body=data, token=self.settings.token)

    @staticmethod
    async def _read_capped(reply: aiohttp.ClientResponse, path: str) -> bytes:
        declared = reply.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_REPLY_BYTES:
            raise LoyaltyResponseError(f"{path}: reply of {declared} bytes is over the {MAX_REPLY_BYTES} byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in reply.content.iter_chunked(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise LoyaltyResponseError(f"{path}: reply is over the {MAX_REPLY_BYTES} byte cap")
            chunks.append(chunk)
        return b"".join(chunks)
