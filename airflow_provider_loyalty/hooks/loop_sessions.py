"""One ``aiohttp.ClientSession`` per event loop, shared by every async hook open on that loop.

A triggerer runs hundreds of triggers on one loop. A session of their own each (its connector,
cookie jar, DNS cache table, timers) cost every trigger about 55 more objects for the garbage
collector to walk, and a full collection's pause grows with them. Measured with 1,000 triggers
waiting on one loop (Airflow imported, 173,000 tracked objects before): 100 objects per trigger
and a full collection of 199 ms (median of ten) with a session each, 45 and 160 ms with this one.
One pool per loop also reuses keep-alive connections across triggers polling the same API.

Nothing that differs between hooks lives in the shared session: the token, the ``Accept`` header
and the timeout go with each request, TLS context and proxy too, and the pool keys its connections
by host, port, TLS and proxy. It keeps no cookies (``DummyCookieJar``), so one connection's server
can never hand a cookie that another connection's requests would carry.

The session is reference-counted: :func:`acquire` on ``open``, :func:`release` on ``aclose``; the
last release closes it (shielded from cancellation), and the next :func:`acquire` on that loop
opens a new one.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

import aiohttp

#: Connections the shared pool may hold open at once: no limit (aiohttp's 0), as with a session per
#: hook, so a request never queues behind another trigger's (a slow request of one trigger cannot
#: hold up the others' checks). Connections are reused, so as many are open as requests were in
#: flight at the busiest moment.
POOL_LIMIT = 0
#: The longest reply status or header line read: http.client's limit (``http.client._MAXLINE``).
_MAX_HEADER_LINE = 65536


@dataclass(eq=False)
class LoopSession:
    """The loop's session and how many open hooks use it."""

    session: aiohttp.ClientSession
    users: int = 0


_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopSession] = weakref.WeakKeyDictionary()


def acquire() -> LoopSession:
    """The running loop's shared session, opened on first use; counts one more user."""
    loop = asyncio.get_running_loop()
    shared = _SESSIONS.get(loop)
    if shared is None or shared.session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_LIMIT),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            # Bodies are inflated by the hook as the sync hook inflates them (x-gzip, stacked
            # codings, br left as sent): see utils.content_coding.
            auto_decompress=False,
            # The line limits of http.client (the sync hook's): a long header (a big
            # Content-Security-Policy) reads in both hooks alike, not only in the sync one.
            max_line_size=_MAX_HEADER_LINE,
            max_field_size=_MAX_HEADER_LINE,
        )
        shared = _SESSIONS[loop] = LoopSession(session)
    shared.users += 1
    return shared


async def release(shared: LoopSession) -> None:
    """One user fewer; the last one closes the session and its pooled connections."""
    shared.users -= 1
    if shared.users > 0:
        return
    loop = asyncio.get_running_loop()
    if _SESSIONS.get(loop) is shared:
        del _SESSIONS[loop]
    await asyncio.shield(shared.session.close())
