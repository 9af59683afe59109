"""The loyalty connection's settings, read once from an Airflow connection.

Shared by the sync hook (requests) and the trigger's async client (aiohttp), so both read the
connection the same way: host = base URL, password = API token, extras = client settings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.utils.validation import check_content_type, check_positive_number

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_MAX_RETRY_WAIT = 60.0
USER_AGENT = "airflow-provider-loyalty"


@dataclass(frozen=True)
class LoyaltyConnectionSettings:
    """Everything a client needs to talk to the API; built by :func:`settings_from_connection`.

    :param base_url: scheme, host, port and optional path prefix, without a trailing slash.
    :param token: the API token (a secret: ``repr`` hides it).
    :param content_type: ``json`` or ``xml``.
    :param timeout: connect / read timeout in seconds.
    :param verify: ``True``/``False`` or a CA bundle path.
    :param max_retries: retries of transient failures.
    :param retry_backoff: base of the exponential backoff, in seconds.
    :param max_retry_wait: cap of a single backoff wait (also caps ``Retry-After``).
    """

    base_url: str
    token: str = field(repr=False)
    content_type: str = "json"
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT

    @property
    def netloc(self) -> str:
        """``host[:port]`` of the base URL: downloads must stay on it."""
        return urlsplit(self.base_url).netloc

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the base URL."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def base_path(self) -> str:
        """The base URL's path prefix ('' for a bare host)."""
        return urlsplit(self.base_url).path.rstrip("/")

    def url(self, path: str) -> str:
        """An absolute URL for an API path such as ``/api/v1.1/tasks/status``."""
        return f"{self.base_url}{path}"


def ca_bundle_from_env(verify: bool | str) -> bool | str:
    """The CA bundle in effect: the connection's own, else (when simply on) ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE`` / ``SSL_CERT_FILE`` from the environment, as requests would pick; both of the
    provider's clients verify against the same bundle."""
    if verify is True:
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
            if os.environ.get(name):
                return os.environ[name]
    return verify


def normalize_base_url(host: str | None, schema: str | None = None, port: int | None = None) -> str:
    """``example.com`` → ``https://example.com``; keeps an explicit scheme, port and path prefix."""
    raw = (host or "").strip()
    if not raw:
        raise LoyaltyValidationError("host", "the loyalty connection needs a Host (the API base URL)")
    if "://" not in raw:
        raw = f"{schema or 'https'}://{raw}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoyaltyValidationError("host", f"expected an http(s) base URL, got {host!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise LoyaltyValidationError("host", "the base URL must not carry credentials, a query or a fragment")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _as_bool(value: Any, parameter: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise LoyaltyValidationError(parameter, f"expected true or false, got {value!r}")


def _as_int(value: Any, parameter: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LoyaltyValidationError(parameter, f"expected a non-negative integer, got {value!r}")
    return value


def _as_number(value: Any, parameter: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise LoyaltyValidationError(parameter, f"expected a number, got {value!r}") from None
    return check_positive_number(value, parameter)


def settings_from_parts(
    *,
    host: str | None,
    password: str | None,
    extra: dict[str, Any] | str | None,
    schema: str | None = None,
    port: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> LoyaltyConnectionSettings:
    """Build settings from a connection's fields; ``overrides`` (hook arguments) win over extras."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError:
            raise LoyaltyValidationError("extra", "the connection's Extra is not valid JSON") from None
    options: dict[str, Any] = dict(extra or {})
    options.update({key: value for key, value in (overrides or {}).items() if value is not None})
    token = password or options.pop("token", None)
    if not token:
        raise LoyaltyValidationError("password", "the loyalty connection needs the API token in its Password field")
    verify: bool | str = _as_bool(options.get("verify_ssl", True), "verify_ssl")
    if verify and options.get("ca_bundle"):
        verify = str(options["ca_bundle"])
    return LoyaltyConnectionSettings(
        base_url=normalize_base_url(host, schema if schema in ("http", "https") else None, port),
        token=str(token),
        content_type=check_content_type(options.get("content_type") or "json"),
        timeout=_as_number(options.get("timeout", DEFAULT_TIMEOUT), "timeout"),
        verify=verify,
        max_retries=_as_int(options.get("max_retries", DEFAULT_MAX_RETRIES), "max_retries"),
        retry_backoff=_as_number(options.get("retry_backoff", DEFAULT_RETRY_BACKOFF), "retry_backoff"),
        max_retry_wait=_as_number(options.get("max_retry_wait", DEFAULT_MAX_RETRY_WAIT), "max_retry_wait"),
    )
