"""LoyaltyAsyncHook: the loyalty API on asyncio (aiohttp), for triggers on the triggerer's event loop.

It speaks the same protocol as :class:`~airflow_provider_loyalty.hooks.loyalty.LoyaltyHook` through
the shared wire modules, so every rule exists once: bodies and reply checks
(:mod:`~airflow_provider_loyalty.utils.protocol`), retries
(:func:`~airflow_provider_loyalty.utils.retry.retry_policy`, with tenacity's ``AsyncRetrying``,
which sleeps with ``asyncio.sleep``), the reply-size cap and the mapping of transport failures
(:mod:`~airflow_provider_loyalty.utils.transport`), and one redaction point for the token.

Nothing here blocks the loop: the connection comes from the async connection API, the TLS context
(which loads CA files from disk) is built once per process in a worker thread and shared, and reply
bodies are read incrementally. The hooks of one loop share one session and its connection pool
(:mod:`~airflow_provider_loyalty.hooks.loop_sessions`), so a trigger costs the garbage collector a
few dozen objects, not a session's hundred. A thousand triggers started together do not open a thousand
sessions in one loop step: the first step of each (connection read, session open, first request)
passes a small gate of its loop and connection (:data:`STARTUP_CONCURRENCY`), and keeps its place
there at most :data:`STARTUP_SLOT_SECONDS`: a slow or dead API holds up neither the triggers of
other connections (their own gates) nor for long its own.

aiohttp rather than httpx: a triggerer runs up to a thousand of these polling at once, and the
benchmarks measured about a third of httpx's CPU per request (``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
import weakref
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp
import certifi
from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from airflow_provider_loyalty.exceptions import LoyaltyError
from airflow_provider_loyalty.hooks import loop_sessions
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.codec import ENVELOPE_SCHEMA, MIME_TYPES, STATUS_SCHEMA, Schema
from airflow_provider_loyalty.utils.connection import (
    USER_AGENT,
    LoyaltyConnectionSettings,
    names_files,
    settings_from_parts,
)
from airflow_provider_loyalty.utils.content_coding import ACCEPT_ENCODING, BodyDecoder
from airflow_provider_loyalty.utils.export_status import ExportTaskStatus
from airflow_provider_loyalty.utils.protocol import STATUS_PATH, check_reply, data_object, encode_request
from airflow_provider_loyalty.utils.redaction import redact_values, token_redacted
from airflow_provider_loyalty.utils.retry import call_with_retries_async, retry_policy
from airflow_provider_loyalty.utils.tls import reads_files, settings_context
from airflow_provider_loyalty.utils.transport import ReplyBuffer, transport_error

_READ_CHUNK_BYTES = 64 * 1024
#: Replies larger than this are decoded and interpreted in a worker thread, off the event loop
#: (about 20 ms of CPU per MiB; an ordinary status reply is a few hundred bytes).
OFF_LOOP_REPLY_BYTES = 1 << 20
#: How many triggers of one event loop and connection may be in their first step (connection read,
#: session open, first request) at once: a thousand starting together then queue instead of
#: stalling the loop.
STARTUP_CONCURRENCY = 8
#: Longest a first step keeps its place in the gate: one that waits on a slow or dead host (its
#: retries, a ``Retry-After``) lets the next trigger of its connection start.
STARTUP_SLOT_SECONDS = 1.0
# The TLS contexts this process's loops have built for settings that read no file of the user's
# (see :func:`~.utils.tls.client_context`): a hook's open() takes one without a trip to a thread.
_SSL_CONTEXTS: dict[tuple[bool | str, str | tuple[str, str] | None], ssl.SSLContext] = {}
_STARTUP_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def startup_gate(connection: str = "") -> asyncio.Semaphore:
    """The running loop's gate for the first steps of one connection's triggers (see
    :data:`STARTUP_CONCURRENCY`): the triggers of a slow or dead API never queue those of another.

    :param connection: the connection id the first steps use.
    """
    loop = asyncio.get_running_loop()
    gates = _STARTUP_GATES.get(loop)
    if gates is None:
        gates = _STARTUP_GATES[loop] = {}
    gate = gates.get(connection)
    if gate is None:
        gate = gates[connection] = asyncio.Semaphore(STARTUP_CONCURRENCY)
    return gate


@contextlib.asynccontextmanager
async def startup_slot(connection: str = "", max_hold: float = STARTUP_SLOT_SECONDS) -> AsyncIterator[None]:
    """A place in the running loop's :func:`startup_gate` of ``connection`` for one first step,
    given back when the step ends or after ``max_hold`` seconds, whichever comes first.

    :param connection: the connection id the step uses (each connection has its own gate).
    :param max_hold: the longest the place is kept.
    """
    gate = startup_gate(connection)
    await gate.acquire()
    held = True

    def give_back() -> None:
        nonlocal held
        if held:
            held = False
            gate.release()

    timer = asyncio.get_running_loop().call_later(max_hold, give_back)
    try:
        yield
    finally:
        timer.cancel()
        give_back()


async def _ssl_for(settings: LoyaltyConnectionSettings) -> ssl.SSLContext:
    """The connection's TLS context, built off the loop the first time: when simply verifying, against
    ``certifi``'s CA bundle, as the sync hook (a server the worker trusts, the triggerer trusts)."""
    key = (settings.effective_verify(), settings.client_cert)
    if reads_files(*key):  # checked again each time: a file renewed in place is read again
        return await asyncio.to_thread(settings_context, settings, certifi.where())
    context = _SSL_CONTEXTS.get(key)
    if context is None:
        context = _SSL_CONTEXTS[key] = await asyncio.to_thread(settings_context, settings, certifi.where())
    return context


async def _mask_secret(secret: str) -> None:
    """Register ``secret`` with the secrets masker without blocking the loop: Airflow 3.3.2+ has an
    async call; before, the synchronous one (it may message the supervisor) runs in a worker thread."""
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:
        from asgiref.sync import sync_to_async

        await sync_to_async(mask_secret)(secret)
    else:
        await amask_secret(secret)


class LoyaltyAsyncHook(BaseHook):
    """
    The loyalty API on asyncio: what a trigger needs, without blocking the event loop.

    Use it as an async context manager. The hooks open on one event loop share one
    ``aiohttp.ClientSession`` and its connection pool (:mod:`~airflow_provider_loyalty.hooks.loop_sessions`;
    the token, timeout and ``Accept`` header go with each request, no cookies are kept); leaving
    ``async with`` leaves it, also on cancellation, and the last hook to leave closes it::

        async with LoyaltyAsyncHook("loyalty_default") as hook:
            status = await hook.get_export_task_status("task_…")

    In a trigger of your own (the provider's
    :class:`~airflow_provider_loyalty.triggers.loyalty.LoyaltyExportTaskTrigger` is the complete
    one: deadline, progress logging); this example is run by the test suite::

        import asyncio

        from airflow.triggers.base import BaseTrigger, TriggerEvent

        from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook, startup_slot


        class ExportFinishedTrigger(BaseTrigger):
            def __init__(self, export_task_id: str, loyalty_conn_id: str = "loyalty_default", poll_interval=60.0):
                super().__init__()
                self.export_task_id = export_task_id
                self.loyalty_conn_id = loyalty_conn_id
                self.poll_interval = poll_interval

            def serialize(self):
                return f"{type(self).__module__}.{type(self).__qualname__}", {
                    "export_task_id": self.export_task_id,
                    "loyalty_conn_id": self.loyalty_conn_id,
                    "poll_interval": self.poll_interval,
                }

            async def run(self):
                hook = LoyaltyAsyncHook(self.loyalty_conn_id)
                try:
                    async with startup_slot(self.loyalty_conn_id):  # many starting at once queue here
                        await hook.open()
                        status = await hook.get_export_task_status(self.export_task_id)
                    while not status.state.is_terminal:
                        await asyncio.sleep(self.poll_interval)
                        status = await hook.get_export_task_status(self.export_task_id)
                    # bounded_raw(): what an event can carry (size-capped, storable in Airflow's database)
                    result = status.result.bounded_raw()[0] if status.result else None
                    event = {"status": status.state.value, "message": status.failure_text, "result": result}
                except Exception as error:  # no error leaving the hook holds the token
                    event = {"status": "error", "message": str(error)}
                finally:
                    await hook.aclose()  # also when the trigger is cancelled
                yield TriggerEvent(event)

    Redirects are not followed (the token is only sent to the configured host); the token travels
    in the ``Authorization`` header only and no error leaving the hook contains it. Proxies come
    from the connection's ``proxies`` extra or ``HTTP(S)_PROXY`` / ``NO_PROXY``; ``~/.netrc`` is
    never consulted.

    .. seealso:: :ref:`howto/connection:loyalty` for the connection's fields.

    :param loyalty_conn_id: the ``loyalty`` connection (Host = base URL, Password = API token).
    :param content_type: ``json`` or ``xml``; overrides the connection's extra.
    :param max_retries: retries of transient failures; overrides the connection's extra.
    :param timeout: seconds per request; overrides the connection's extra.
    """

    conn_name_attr = "loyalty_conn_id"
    default_conn_name = "loyalty_default"
    conn_type = "loyalty"
    hook_name = "Loyalty (async)"

    def __init__(
        self,
        loyalty_conn_id: str = default_conn_name,
        *,
        content_type: str | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.loyalty_conn_id = validation.check_conn_id(loyalty_conn_id, "loyalty_conn_id", templated=False)
        self._overrides: dict[str, Any] = {"content_type": content_type, "max_retries": max_retries, "timeout": timeout}
        self.settings: LoyaltyConnectionSettings | None = None
        self._shared: loop_sessions.LoopSession | None = None
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        self._timeout = aiohttp.ClientTimeout()
        self._ssl: ssl.SSLContext | bool = True
        self._proxy: str | None = None
        self._retry_policy: dict[str, Any] = {}
        self._last_reply_bytes = 0  # the size of the last reply read (see _reply_is_large)

    async def get_settings(self) -> LoyaltyConnectionSettings:
        """Read the connection once, without blocking the event loop (the common-compat async
        connection API runs any synchronous secrets-masker call in a worker thread)."""
        if self.settings is None:
            conn = await get_async_connection(self.loyalty_conn_id)
            extra = await get_async_extra_dejson(conn)
            read = functools.partial(
                settings_from_parts,
                host=conn.host,
                password=conn.password,
                extra=extra,
                schema=conn.schema,
                port=conn.port,
                conn_type=conn.conn_type,
                overrides=self._overrides,
            )
            # Checking that a CA bundle or client certificate exists touches the disk: not on the loop.
            settings = await asyncio.to_thread(read) if names_files(extra) else read()
            # The connection API masked the password as stored ("tok\n", "Bearer tok"): what is sent
            # is the token cleaned of those, and logs must show *** for it too, as the sync hook's.
            for secret in settings.secrets:
                await _mask_secret(secret)
            self.settings = settings
        return self.settings

    async def __aenter__(self) -> LoyaltyAsyncHook:
        """:meth:`open` the hook."""
        return await self.open()

    async def open(self) -> LoyaltyAsyncHook:
        """Read the connection and open the session (the shared TLS context is built off the loop).

        Opening an open hook does nothing; :meth:`aclose` (or leaving ``async with``) closes it.
        """
        if self._session is not None:
            return self
        settings = await self.get_settings()
        with token_redacted(settings.token):
            if settings.base_url.startswith("https://"):
                self._ssl = await _ssl_for(settings)
            self._proxy = settings.proxy_for(settings.base_url)
            self._retry_policy = retry_policy(settings, self.log)  # built once, used for every request
            self._headers = {
                "Authorization": f"Bearer {settings.token}",
                "User-Agent": USER_AGENT,
                "Accept": f"{MIME_TYPES[settings.content_type]}, */*;q=0.5",
                "Accept-Encoding": ACCEPT_ENCODING,
            }
            self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
            if self._shared is None:  # an open() of this hook running alongside may have got here first
                self._shared = loop_sessions.acquire()
                self._session = self._shared.session
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the session and its pooled connections."""
        await self.aclose()

    async def aclose(self) -> None:
        """Leave the loop's shared session (idempotent); the last hook to leave closes it, shielded
        so a cancellation cannot skip it."""
        shared, self._shared, self._session = self._shared, None, None
        if shared is not None:
            await loop_sessions.release(shared)

    async def get_task_status(self, export_task_id: str) -> dict[str, Any]:
        """Poll an export task: the ``data`` object of ``tasks/status`` as the API returned it (but
        for the token, masked wherever a server echoed it).

        :param export_task_id: the export task id.
        :raises LoyaltyApiError: API errors (auth errors included), after retries for transient ones.
        :raises LoyaltyResponseError: a reply that cannot be understood.
        """
        data = data_object(await self._status_envelope(export_task_id), "tasks/status")
        redacted: dict[str, Any] = redact_values(data, (await self.get_settings()).token)
        return redacted

    async def _status_envelope(self, export_task_id: str) -> dict[str, Any]:
        return await self._post(STATUS_PATH, {"task_id": validation.check_task_id(export_task_id)}, STATUS_SCHEMA)

    async def get_export_task_status(self, export_task_id: str) -> ExportTaskStatus:
        """Poll an export task and interpret the reply (state, checked result, failure text).

        :param export_task_id: the export task id.
        """
        envelope = await self._status_envelope(export_task_id)
        data = data_object(envelope, "tasks/status")
        settings = await self.get_settings()

        def interpret() -> ExportTaskStatus:
            with token_redacted(settings.token):
                return ExportTaskStatus.from_reply(export_task_id, data, settings.token, envelope.get("error_text"))

        return await asyncio.to_thread(interpret) if self._reply_is_large else interpret()

    async def _post(self, path: str, payload: dict[str, Any], schema: Schema = ENVELOPE_SCHEMA) -> dict[str, Any]:
        """POST a body with the shared retry policy; return the checked envelope."""
        settings = await self.get_settings()
        with token_redacted(settings.token):
            body, headers = encode_request(payload, settings.content_type)
            return await call_with_retries_async(
                self._retry_policy, lambda: self._post_once(settings, path, body, headers, schema)
            )

    async def _post_once(
        self, settings: LoyaltyConnectionSettings, path: str, body: bytes, headers: dict[str, str], schema: Schema
    ) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise RuntimeError("LoyaltyAsyncHook is not open: use it in 'async with', or await open() first")
        started = time.monotonic()
        failure: LoyaltyError | None = None
        try:
            async with session.post(
                settings.url(path),
                data=body,
                headers={**self._headers, **headers},
                timeout=self._timeout,
                ssl=self._ssl,
                proxy=self._proxy,
                allow_redirects=False,
            ) as reply:
                buffer = ReplyBuffer(path, reply.headers)
                # Every Content-Encoding line, as one list (RFC 9110, 5.3), as http.client joins them.
                codings = ", ".join(reply.headers.getall("Content-Encoding", ()))
                decoder = BodyDecoder(codings, path)
                async for chunk in reply.content.iter_chunked(_READ_CHUNK_BYTES):
                    for piece in decoder.feed(chunk):
                        buffer.add(piece)
                status, reply_headers = reply.status, reply.headers
        except Exception as error:
            failure = transport_error(settings, path, error)
        if failure is not None:
            # Raised outside the handler: a ``__context__`` would keep aiohttp's error, whose
            # request_info holds the request's headers, the token among them.
            raise failure
        self.log.debug("POST %s -> HTTP %s in %.0f ms", path, status, 1000 * (time.monotonic() - started))
        reply_body = buffer.body()
        self._last_reply_bytes = len(reply_body)
        check = functools.partial(
            check_reply,
            http_status=status,
            headers=reply_headers,
            body=reply_body,
            token=settings.token,
            schema=schema,
            conn_id=self.loyalty_conn_id,
            base_url=settings.base_url,
            path=path,
        )
        return await asyncio.to_thread(check) if self._reply_is_large else check()

    @property
    def _reply_is_large(self) -> bool:
        """Whether the last reply is large enough that reading it would stall the event loop (a
        25 MiB status reply took 0.4 s to decode and interpret): it is read in a worker thread."""
        return self._last_reply_bytes > OFF_LOOP_REPLY_BYTES
