"""The loyalty connection's settings, read once from an Airflow connection.

Shared by the sync and the async hook, so both read the connection the same way: host = base URL,
password = API token, extras = client settings. Extras arrive as JSON values or as text (URI form,
the UI); each is checked and converted here, naming the extra when it is wrong. The http provider's
names for the same things (``verify``, ``proxies``, ``cert``) are accepted as aliases; an unknown
key is logged with the closest known one, since a misspelt setting would otherwise do nothing.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import socket
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.tls import CA_BUNDLE_VARIABLES

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_MAX_RETRY_WAIT = 60.0
USER_AGENT = "airflow-provider-loyalty"

#: Extras the connection understands (the form's four fields and the advanced ones).
KNOWN_EXTRAS = frozenset(
    {
        "content_type",
        "timeout",
        "verify_ssl",
        "max_retries",
        "retry_backoff",
        "max_retry_wait",
        "ca_bundle",
        "client_cert",
        "proxies",
        "token",
    }
)
#: The http provider's names, accepted for the same settings (``verify`` naming a file: ``ca_bundle``).
EXTRA_ALIASES = {"verify": "verify_ssl", "cert": "client_cert", "proxy": "proxies"}
#: Extras whose value may name a file that reading the connection checks exists.
_PATH_EXTRAS = ("ca_bundle", "client_cert", "cert", "verify")


def names_files(extra: Any) -> bool:
    """Whether reading a connection with these extras checks files on this machine (a CA bundle,
    a client certificate): an async caller reads it in a thread then, off its event loop. Extras
    that are no JSON object name none (reading them fails with an error naming ``extra``)."""
    return isinstance(extra, Mapping) and any(extra.get(name) not in (None, "", True, False) for name in _PATH_EXTRAS)


@dataclass(frozen=True)
class LoyaltyConnectionSettings:
    """Everything a client needs to talk to the API; built by :func:`settings_from_parts`.

    :param base_url: scheme, host, port and optional path prefix, without a trailing slash.
    :param token: the API token (a secret: ``repr`` hides it).
    :param content_type: ``json`` or ``xml``.
    :param timeout: connect / read timeout in seconds.
    :param verify: ``True``/``False`` or a CA bundle path.
    :param max_retries: retries of transient failures.
    :param retry_backoff: base of the exponential backoff, in seconds.
    :param max_retry_wait: cap of a single backoff wait (also caps ``Retry-After``).
    :param proxies: proxy URL per scheme (``{"https": "http://proxy:3128"}``); empty: the standard
        ``HTTP(S)_PROXY`` / ``NO_PROXY`` environment variables decide.
    :param client_cert: a client certificate (PEM path, optionally with its key) for mutual TLS.
    :param scheme_assumed: the Host had no scheme and https was assumed (errors then say so).
    """

    base_url: str
    token: str = field(repr=False)
    content_type: str = "json"
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    proxies: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a proxy's password
    client_cert: str | tuple[str, str] | None = None
    scheme_assumed: bool = False

    @property
    def secrets(self) -> tuple[str, ...]:
        """What the secrets masker should hide: the token, and the password of any proxy URL (the
        connection's, or the environment's ``HTTP(S)_PROXY`` the hooks will use)."""
        proxies = {*self.proxies.values(), self.proxy_for(self.base_url) or ""}
        passwords = (urlsplit(url).password for url in proxies if url)
        return (self.token, *(unquote(password) for password in passwords if password))

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

    def effective_verify(self) -> bool | str:
        """The CA bundle in effect: the connection's own, else (when simply on) ``REQUESTS_CA_BUNDLE``
        / ``CURL_CA_BUNDLE`` / ``SSL_CERT_FILE`` from the environment, as requests would pick, so the
        sync and async hooks verify against the same bundle."""
        source = self.ca_bundle_source()
        return os.environ[source] if source in CA_BUNDLE_VARIABLES else self.verify

    def ca_bundle_source(self) -> str:
        """Where :meth:`effective_verify`'s CA bundle comes from: the environment variable that names
        it, else ``ca_bundle`` (the connection's own field), for errors."""
        if self.verify is True:
            for name in CA_BUNDLE_VARIABLES:
                if os.environ.get(name):
                    return name
        return "ca_bundle"

    def proxy_for(self, url: str) -> str | None:
        """The proxy for ``url``: the connection's ``proxies``, else ``HTTP(S)_PROXY`` unless
        ``NO_PROXY`` exempts its host (read from the environment only, no lookups)."""
        parts = urlsplit(url)
        if self.proxies:
            return self.proxies.get(parts.scheme) or self.proxies.get("all")
        proxy = urllib.request.getproxies_environment().get(parts.scheme)
        if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or ""):  # type: ignore[attr-defined]
            return None
        return proxy_url(proxy)


#: A base URL copied with the API's own path (``https://example.com/api/v1.1``): the paths the
#: provider requests start with ``/api/``, so that tail would be doubled.
_API_ROOT_SUFFIX = re.compile(r"/api(?:/v1\.1)?$", re.IGNORECASE)


#: ``https:/host``, ``https//host``, ``http:host``: a scheme typed without its ``://``.
_MISTYPED_SCHEME = re.compile(r"https?(?::/?(?!/)|//)", re.IGNORECASE)


def _shown_host(host: str | None) -> str:
    """The Host as an error quotes it: everything between the scheme and the last ``@`` (a
    ``user:password@``, not the connection's Password, so not masked by Airflow) replaced by
    ``***@``. Up to the *last* ``@``: a pasted token may hold ``/``, spaces or ``@`` itself."""
    text = host or ""
    if "@" in text:
        scheme, separator, rest = text.partition("://")
        if not separator:
            scheme, rest = "", text
        text = f"{scheme}{separator}***@{rest.rpartition('@')[2]}"
    return repr(text)


def _check_host_name(hostname: str, host: str | None) -> None:
    """A host name (letters of any script, digits, ``-``, ``.``, ``_``) or an IP address; anything
    else (a space, a second ``:port``) would only fail later, as a connection error that is retried.

    :param hostname: the base URL's host, as :func:`~urllib.parse.urlsplit` reads it.
    :param host: the connection's Host as given, for the error.
    """
    if ":" in hostname:  # IPv6, in brackets in the URL
        try:
            ipaddress.ip_address(hostname.split("%", 1)[0])
            return
        except ValueError:
            pass
    elif all(char.isalnum() or char in "-._" for char in hostname) and not hostname.startswith((".", "-")):
        return
    raise LoyaltyValidationError("host", f"{_shown_host(host)}: {hostname!r} is not a host name or IP address")


def normalize_base_url(
    host: str | None, schema: str | None = None, port: int | None = None, path_prefix: str | None = None
) -> tuple[str, bool]:
    """``example.com`` → ``https://example.com``; keeps an explicit scheme, port and path prefix
    (a proxy's), but drops a trailing ``/api`` or ``/api/v1.1`` the API's documented URLs carry.

    :param host: the connection's Host (the base URL, with or without a scheme).
    :param schema: ``http`` or ``https`` when the connection names the scheme apart from the Host.
    :param port: the connection's Port, when the Host has none.
    :param path_prefix: a path prefix given apart from the Host (a URI-form connection's path, which
        Airflow stores as the Schema field); used when the Host has no path of its own.
    :return: the base URL, and whether https was assumed for a Host without a scheme.
    """
    raw = (host or "").strip()
    if not raw:
        raise LoyaltyValidationError("host", "the loyalty connection needs a Host (the API base URL)")
    assumed = "://" not in raw and not schema
    if "://" not in raw:
        raw = _bracketed_ipv6(raw)
        if _MISTYPED_SCHEME.match(raw):
            raise LoyaltyValidationError(
                "host", f"{_shown_host(host)} looks like a mistyped scheme; expected https://<host>"
            )
        raw = f"{schema or 'https'}://{raw}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoyaltyValidationError("host", f"expected an http(s) base URL, got {_shown_host(host)}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise LoyaltyValidationError("host", "the base URL must not carry credentials, a query or a fragment")
    _check_host_name(parts.hostname, host)
    try:
        given_port = parts.port
    except ValueError:
        shown = _shown_host(host)
        raise LoyaltyValidationError("host", f"{shown} has a port that is not a number in 1..65535") from None
    if given_port == 0:
        raise LoyaltyValidationError("host", f"{_shown_host(host)} has port 0; expected a port in 1..65535")
    if port and not 0 < port < 65536:  # 0 is no port (Airflow's UI sends 0 for an empty Port field)
        raise LoyaltyValidationError("port", f"expected a port in 1..65535, got {port!r}")
    netloc = parts.netloc
    if port and given_port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if not path and path_prefix and path_prefix.strip("/"):
        path = "/" + quote(path_prefix.strip("/"), safe="/%:@!$&'()*+,;=-._~")
    path = _API_ROOT_SUFFIX.sub("", path)  # the provider adds /api/v1.1/... itself
    if any(segment in (".", "..") for segment in path.split("/")):
        # requests sends them as written, aiohttp resolves them: the two hooks would call two URLs.
        raise LoyaltyValidationError(
            "host", f"{_shown_host(host)} has a '.' or '..' path segment; write the path without them"
        )
    return f"{parts.scheme}://{netloc}{path}", assumed


def _bracketed_ipv6(raw: str) -> str:
    """A Host that is a bare IPv6 address (``2001:db8::1``, as Airflow stores the host of
    ``loyalty://:t@[2001:db8::1]:8443``), optionally with a path, in the brackets a URL needs."""
    address, slash, path = raw.partition("/")
    if address.count(":") < 2 or address.startswith("["):
        return raw
    try:
        ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return raw
    return f"[{address}]{slash}{path}"


#: A token pasted with its header: ``Bearer <token>`` or ``Authorization: Bearer <token>``, any case,
#: any blanks (space, tab) between the words.
_PASTED_HEADER = re.compile(r"(?:authorization\s*:\s*)?bearer\s+(\S.*)", re.IGNORECASE | re.DOTALL)


def check_token(raw: Any) -> str:
    """The API token: surrounding whitespace removed (a pasted newline), and a ``Bearer `` or
    ``Authorization: Bearer`` prefix (the whole header pasted); inner control characters and
    non-ASCII refused. The error never quotes the token."""
    token = str(raw).strip() if raw is not None else ""
    pasted_header = _PASTED_HEADER.match(token)
    if pasted_header:
        token = pasted_header.group(1)  # the provider sends "Authorization: Bearer <token>" itself
    if not token:
        raise LoyaltyValidationError("password", "the loyalty connection needs the API token in its Password field")
    if validation.first_control_character(token) is not None:
        raise LoyaltyValidationError(
            "password", "the API token contains a line break or another control character; paste it again"
        )
    if not token.isascii():
        raise LoyaltyValidationError(
            "password", "the API token contains non-ASCII characters; an HTTP header cannot carry them"
        )
    return token


def _extras(extra: dict[str, Any] | str | None) -> dict[str, Any]:
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError:
            raise LoyaltyValidationError("extra", "the connection's Extra is not valid JSON") from None
    if extra is not None and not isinstance(extra, dict):
        raise LoyaltyValidationError("extra", f"expected a JSON object, got {type(extra).__name__}")
    options: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in (extra or {}).items():
        if value is None or value == "":
            continue  # a field left empty in the form: the default applies
        name = EXTRA_ALIASES.get(key, key)
        if key == "verify" and isinstance(value, str) and not validation.is_bool_word(value):
            name = "ca_bundle"  # the http provider's ``verify`` may name a CA bundle
        if name not in KNOWN_EXTRAS:
            log.warning("The loyalty connection's extra %r is not a known setting and is ignored; %s", key, _hint(key))
            continue
        if name in options and not _same_setting(name, options[name], value):
            raise LoyaltyValidationError(
                name, f"given twice with different values, as {given_as[name]!r} and as {key!r}; keep one"
            )
        options[name], given_as[name] = value, key
    return options


def _same_setting(name: str, first: Any, second: Any) -> bool:
    """Whether a setting given twice (under its name and an alias) means one thing: ``true`` and
    ``True`` are one ``verify_ssl``."""
    if first == second:
        return True
    if name == "verify_ssl":
        try:
            return validation.parse_bool(first, name) == validation.parse_bool(second, name)
        except LoyaltyValidationError:
            return False
    return False


def _hint(key: str) -> str:
    """The known extra closest to a misspelt one (or the list of them when none is close)."""
    names = sorted(KNOWN_EXTRAS | set(EXTRA_ALIASES))
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.0)
    return f"did you mean {close[0]!r}? (known: {', '.join(names)})"


def _verify(options: dict[str, Any]) -> bool | str:
    verify: bool | str = validation.parse_bool(options.get("verify_ssl", True), "verify_ssl")
    if verify and options.get("ca_bundle"):
        verify = _existing_path(options["ca_bundle"], "ca_bundle", directory_too=True)
    return verify


def _existing_path(raw: Any, parameter: str, *, directory_too: bool = False) -> str:
    """A path the worker can read: a missing file is a setup error, not a connection failure to retry."""
    path = os.path.expanduser(str(raw).strip())
    if os.path.isfile(path) or (directory_too and os.path.isdir(path)):
        return path
    what = "a file or a directory" if directory_too else "a file"
    raise LoyaltyValidationError(
        parameter, f"expected the path of {what} on this machine ({socket.gethostname()}), got {path!r}: not found"
    )


def _proxies(raw: Any) -> dict[str, str]:
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip().startswith("{") else {"http": raw, "https": raw}
        except ValueError:
            raise LoyaltyValidationError("proxies", "expected a proxy URL or a JSON object of them") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise LoyaltyValidationError("proxies", f'expected {{"https": "http://proxy:3128"}} or a URL, got {raw!r}')
    return {scheme: proxy_url(url) for scheme, url in raw.items()}


def _given(value: Any, default: str) -> Any:
    """``value``, or ``default`` when the field was left empty (``None``, blank); ``false`` or
    ``0`` are values, to be checked, not empty fields."""
    return default if value is None or (isinstance(value, str) and not value.strip()) else value


def proxy_url(url: str) -> str:
    """A proxy URL with its scheme: ``proxy:3128`` (the form ``HTTP_PROXY`` often takes) is
    ``http://proxy:3128``, as requests reads it; aiohttp refused it as an invalid URL, and
    ``user:secret@proxy:3128`` read ``user`` as the scheme, so its password was not masked."""
    url = url.strip()
    return url if "://" in url else f"http://{url}"


def _client_cert(raw: Any) -> str | tuple[str, str] | None:
    if raw in (None, ""):
        return None
    if isinstance(raw, str):
        return _existing_path(raw, "client_cert")
    if isinstance(raw, list | tuple) and len(raw) == 2 and all(isinstance(part, str) for part in raw):
        return (_existing_path(raw[0], "client_cert"), _existing_path(raw[1], "client_cert"))
    raise LoyaltyValidationError("client_cert", "expected a PEM path, or [certificate path, key path]")


def settings_from_parts(
    *,
    host: str | None,
    password: str | None,
    extra: dict[str, Any] | str | None,
    schema: str | None = None,
    port: int | None = None,
    overrides: dict[str, Any] | None = None,
    conn_type: str | None = None,
) -> LoyaltyConnectionSettings:
    """Build settings from a connection's fields; ``overrides`` (hook arguments) win over extras.

    ``conn_type`` ``http`` or ``https`` (a URI-form connection written ``http://:TOKEN@host:8080``:
    Airflow takes its scheme for the type) is the scheme of a Host without one.
    """
    options = _extras(extra)
    options.update({key: value for key, value in (overrides or {}).items() if value is not None})
    # A URI-form connection (loyalty://:TOKEN@host:8443/prefix) keeps its path in the Schema field;
    # "http" or "https" there is the scheme, as the http provider reads its Schema field.
    scheme = schema.strip().lower() if isinstance(schema, str) and schema.strip().lower() in ("http", "https") else None
    path_prefix = None if scheme else schema
    if scheme is None and conn_type in ("http", "https"):
        scheme = conn_type
    base_url, assumed = normalize_base_url(host, scheme, port, path_prefix=path_prefix)
    return LoyaltyConnectionSettings(
        base_url=base_url,
        token=check_token(password or options.get("token")),
        content_type=validation.check_content_type(_given(options.get("content_type"), "json")),
        timeout=validation.parse_seconds(options.get("timeout", DEFAULT_TIMEOUT), "timeout"),
        verify=_verify(options),
        max_retries=validation.parse_count(options.get("max_retries", DEFAULT_MAX_RETRIES), "max_retries"),
        retry_backoff=validation.parse_seconds(options.get("retry_backoff", DEFAULT_RETRY_BACKOFF), "retry_backoff"),
        max_retry_wait=validation.parse_seconds(
            options.get("max_retry_wait", DEFAULT_MAX_RETRY_WAIT), "max_retry_wait"
        ),
        proxies=_proxies(options.get("proxies")),
        client_cert=_client_cert(options.get("client_cert")),
        scheme_assumed=assumed,
    )
