"""The sync hook's HTTP on ``requests``: its session, and a lean POST for the API's endpoints.

The session keeps connections alive, carries Bearer auth (never ``~/.netrc``), never follows a
redirect, and takes proxies, CA bundle and client certificate from the connection's settings once
(``trust_env`` off, so nothing in the environment overrides them later).

:class:`ApiPoster` sends each POST through the session's own transport adapter from a request
prepared once per endpoint: the bytes on the wire are those ``Session.post`` would send, without
merging the session's settings, cookies and hooks again on every call, which cost about a third of
the client's CPU per page of the account endpoint. Only for internal usage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from airflow_provider_loyalty.utils.codec import MIME_TYPES
from airflow_provider_loyalty.utils.connection import USER_AGENT, LoyaltyConnectionSettings
from airflow_provider_loyalty.utils.content_coding import ACCEPT_ENCODING
from airflow_provider_loyalty.utils.transport import ReplyBuffer

_READ_CHUNK_BYTES = 64 * 1024


class NoRedirectSession(requests.Session):
    """A session that never resolves redirects: a 3xx comes back unread, so the reply check
    reports it (not retried) and its body stays under the reply cap. (With ``allow_redirects=False``
    plain ``requests`` still reads the 3xx body whole to prepare ``Response.next``.)"""

    def get_redirect_target(self, resp: requests.Response) -> None:
        """No redirect is ever followed."""
        return None


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` on requests to the API's own scheme, host and port (the
    session of :meth:`LoyaltyHook.get_conn` may be handed any URL: the token stays off others);
    ``repr`` never shows the token.

    :param token: the API token.
    :param origin: ``scheme://host[:port]`` of the API (``None``: every request).
    """

    def __init__(self, token: str, origin: str | None = None) -> None:
        self._token = token
        self._origin = origin

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set the header on a request being prepared, if it goes to the API."""
        if self._origin is None or _origin_of(request.url or "") == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(***)"


def _origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL, the port written out (``https://a`` is ``https://a:443``)."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def build_session(settings: LoyaltyConnectionSettings) -> requests.Session:
    """The hook's HTTP session: keep-alive, Bearer auth, proxies, CA bundle and client certificate.

    :param settings: the connection's settings.
    """
    session = NoRedirectSession()
    # Auth as an AuthBase (not a bare header): requests then never replaces it with ~/.netrc.
    session.auth = BearerAuth(settings.token, _origin_of(settings.base_url))
    session.headers.update(
        {
            "User-Agent": USER_AGENT,
            "Accept": f"{MIME_TYPES[settings.content_type]}, */*;q=0.5",
            # What every path asks for (requests adds br or zstd when brotli or zstandard is installed).
            "Accept-Encoding": ACCEPT_ENCODING,
        }
    )
    # The environment (proxies, REQUESTS_CA_BUNDLE) is read once here, not re-scanned by requests on
    # every call; ``verify`` also goes with each request so nothing can override verify_ssl/ca_bundle.
    session.trust_env = False
    proxy = settings.proxy_for(settings.base_url)
    if proxy:
        session.proxies.update({settings.base_url.split("://", 1)[0]: proxy})
    session.verify = settings.effective_verify()
    if settings.client_cert:
        session.cert = settings.client_cert
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class ApiPoster:
    """POSTs to the API's endpoints through a session, each from a request prepared once.

    The prepared request holds what does not change between calls of one endpoint (URL, session
    headers, the body's Content-Type, Bearer auth); each call copies it and sets the body. Replies
    are read whole within :data:`~airflow_provider_loyalty.utils.transport.MAX_REPLY_BYTES`.

    :param session: the session (see :func:`build_session`); its adapter, proxies, TLS settings.
    :param settings: the connection's settings (base URL, timeout).
    """

    def __init__(self, session: requests.Session, settings: LoyaltyConnectionSettings) -> None:
        self._session = session
        self._settings = settings
        self._verify = settings.effective_verify()
        self._prepared: dict[tuple[str, str], requests.PreparedRequest] = {}

    def close(self) -> None:
        """Nothing of its own to close: the session's pool is closed with the session."""

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """Send one POST; return the reply's HTTP status, headers and body.

        :param path: the API path (``/api/v1.1/tasks/status``).
        :param body: the encoded request body.
        :param headers: the request's own headers (its ``Content-Type``).
        :raises Exception: what ``requests`` / ``urllib3`` raise; the caller maps it to a typed error.
        """
        request = self._request_for(path, headers).copy()
        request.body = body
        request.headers["Content-Length"] = str(len(body))
        session = self._session
        response = session.get_adapter(request.url or "").send(
            request,
            stream=True,
            timeout=self._settings.timeout,
            verify=self._verify,
            cert=session.cert,
            proxies=session.proxies,
        )
        with response:
            return response.status_code, response.headers, read_reply(response, path)

    def _request_for(self, path: str, headers: Mapping[str, str]) -> requests.PreparedRequest:
        key = (path, headers.get("Content-Type", ""))
        prepared = self._prepared.get(key)
        if prepared is None:
            request = requests.Request("POST", self._settings.url(path), headers=dict(headers))
            prepared = self._prepared[key] = self._session.prepare_request(request)
        return prepared


def read_reply(response: requests.Response, path: str) -> bytes:
    """A reply's whole body, refused past the reply cap (also a compressed one, once inflated).

    :param response: a streamed response.
    :param path: the endpoint, for the error.
    """
    buffer = ReplyBuffer(path, response.headers)
    raw: Any = response.raw
    if response.headers.get("Content-Length") and not response.headers.get("Content-Encoding"):
        buffer.add(raw.read(decode_content=True))  # a declared length under the cap: one read
    else:
        for chunk in raw.stream(_READ_CHUNK_BYTES, decode_content=True):
            buffer.add(chunk)
    return buffer.body()
