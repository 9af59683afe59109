"""Connection settings (``utils/connection.py``): extras, the http provider's names, proxies, tokens.

Proxies are proven end to end: a tiny forward proxy on loopback counts what passes through it,
between the sync and the async hook and the emulator.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_provider_loyalty.exceptions import LoyaltyTransientError, LoyaltyValidationError
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from airflow_provider_loyalty.utils.connection import check_token, normalize_base_url, settings_from_parts
from tests.support.helpers import point_connection_at, requests_seen

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


def settings(**extra: Any):
    return settings_from_parts(host="https://api.example.com", password="token-value", extra=extra)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------------------ extras


def test_the_form_fields_and_their_defaults() -> None:
    default = settings()
    assert (default.content_type, default.timeout, default.verify, default.max_retries) == ("json", 60.0, True, 5)
    given = settings(content_type="XML", timeout="7.5", verify_ssl="false", max_retries="2")
    assert (given.content_type, given.timeout, given.verify, given.max_retries) == ("xml", 7.5, False, 2)


@pytest.mark.parametrize(
    ("written", "content_type"),
    [
        ("application/json; charset=utf-8", "json"),
        (" Application/XML ", "xml"),
        ("text/xml", "xml"),
        ("xml\n", "xml"),
    ],
)
def test_content_type_as_a_header_writes_it(written: str, content_type: str) -> None:
    assert settings(content_type=written).content_type == content_type


def test_a_content_type_the_api_does_not_speak_is_refused_naming_it() -> None:
    with pytest.raises(LoyaltyValidationError, match="content_type: expected 'json' or 'xml', got 'text/csv'"):
        settings(content_type="text/csv")


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        ({"verify": False}, "verify", False),
        ({"verify": "false"}, "verify", False),
        ({"verify": "CERTS/private-ca.pem"}, "verify", "CERTS/private-ca.pem"),
        ({"cert": "CERTS/client.pem"}, "client_cert", "CERTS/client.pem"),
        (
            {"cert": ["CERTS/client.pem", "CERTS/client.key"]},
            "client_cert",
            ("CERTS/client.pem", "CERTS/client.key"),
        ),
        ({"proxies": {"https": "http://proxy:3128"}}, "proxies", {"https": "http://proxy:3128"}),
        ({"proxies": '{"https": "http://proxy:3128"}'}, "proxies", {"https": "http://proxy:3128"}),
        ({"proxy": "http://proxy:3128"}, "proxies", {"http": "http://proxy:3128", "https": "http://proxy:3128"}),
    ],
    ids=["verify", "verify-text", "verify-ca-path", "cert", "cert-and-key", "proxies", "proxies-text", "proxy"],
)
def test_the_http_providers_names_are_aliases(
    extra: dict[str, Any], field: str, expected: Any, certificates: Any
) -> None:
    assert getattr(settings(**certificates(extra)), field) == certificates(expected)


def test_an_alias_and_its_setting_with_different_values_is_an_error() -> None:
    with pytest.raises(LoyaltyValidationError) as caught:
        settings(verify_ssl=True, verify=False)
    assert caught.value.parameter == "verify_ssl"
    assert "'verify_ssl'" in str(caught.value) and "'verify'" in str(caught.value)
    assert settings(verify_ssl=False, verify=False).verify is False  # the same value twice is fine


@pytest.mark.parametrize(
    ("key", "closest"),
    [("verfy_ssl", "verify_ssl"), ("max_retry", "max_retries"), ("contenttype", "content_type"), ("timout", "timeout")],
)
def test_an_unknown_extra_is_a_warning_naming_the_closest_known_key(
    caplog: pytest.LogCaptureFixture, key: str, closest: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="airflow_provider_loyalty.utils.connection"):
        result = settings(**{key: "1"})
    (record,) = [r for r in caplog.records if r.name == "airflow_provider_loyalty.utils.connection"]
    assert f"extra {key!r} is not a known setting and is ignored" in record.getMessage()
    assert f"did you mean {closest!r}?" in record.getMessage()
    assert result == settings()  # ignored


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"content_type": "yaml"}, "content_type"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 1e10}, "timeout"),  # overflowed the socket's timeout: every request "unreachable"
        ({"max_retry_wait": "1e12"}, "max_retry_wait"),  # an OverflowError out of the retry's sleep
        ({"retry_backoff": 1e12}, "retry_backoff"),
        ({"max_retries": -1}, "max_retries"),
        ({"verify_ssl": "perhaps please"}, "verify_ssl"),
        ({"proxies": ["http://proxy"]}, "proxies"),
        ({"cert": 42}, "client_cert"),
    ],
)
def test_bad_extras_name_the_field(extra: dict[str, Any], parameter: str) -> None:
    with pytest.raises(LoyaltyValidationError) as caught:
        settings(**extra)
    assert caught.value.parameter == parameter or parameter in str(caught.value)


def test_verify_naming_a_file_is_the_ca_bundle(certificates: Any) -> None:
    # The http provider's ``verify`` may be a CA bundle path; ``verify_ssl`` is a yes/no field.
    ca = certificates("CERTS/private-ca.pem")
    assert settings(verify=ca) == settings(ca_bundle=ca)
    with pytest.raises(LoyaltyValidationError, match="verify_ssl: expected true or false"):
        settings(verify_ssl=ca)
    with pytest.raises(LoyaltyValidationError, match="given twice"):
        settings(verify=certificates("CERTS/a.pem"), ca_bundle=certificates("CERTS/b.pem"))


@pytest.mark.parametrize(
    ("as_name", "as_alias", "verify"),
    [(True, "true", True), ("false", False, False), (False, "False", False), ("yes", "1", True)],
)
def test_a_setting_given_under_its_name_and_its_alias_with_one_meaning_is_taken(
    as_name: Any, as_alias: Any, verify: bool
) -> None:
    """``true`` and ``True`` are one ``verify_ssl``: comparing them as given refused the connection."""
    assert settings(**{"verify_ssl": as_name, "verify": as_alias}).verify is verify
    with pytest.raises(LoyaltyValidationError, match="given twice with different values"):
        settings(**{"verify_ssl": as_name, "verify": not verify})


@pytest.fixture
def certificates(tmp_path: Path) -> Any:
    """Replace ``CERTS/`` in values by a folder whose named files exist (paths are checked)."""

    def real(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("CERTS/"):
            path = tmp_path / value.removeprefix("CERTS/")
            path.write_text("PEM")
            return str(path)
        if isinstance(value, dict):
            return {key: real(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(real(item) for item in value)
        return value

    return real


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"ca_bundle": "/nowhere/ca.pem"}, "ca_bundle"),
        ({"verify": "/nowhere/ca.pem"}, "ca_bundle"),
        ({"cert": "/nowhere/client.pem"}, "client_cert"),
        ({"cert": ["CERTS/client.pem", "/nowhere/client.key"]}, "client_cert"),
    ],
)
def test_a_certificate_path_that_is_not_there_is_refused_naming_it(
    extra: dict[str, Any], parameter: str, certificates: Any
) -> None:
    """Not a connection failure to retry with backoff (sync) or a raw FileNotFoundError (async)."""
    with pytest.raises(LoyaltyValidationError) as caught:
        settings(**certificates(extra))
    assert caught.value.parameter == parameter and "/nowhere/" in str(caught.value)


# ------------------------------------------------------------------------------------------ base URL and token


@pytest.mark.parametrize(
    ("host", "schema", "port", "expected"),
    [
        ("example.com", None, None, ("https://example.com", True)),
        ("http://127.0.0.1:8080/", None, None, ("http://127.0.0.1:8080", False)),
        ("example.com", "http", 8080, ("http://example.com:8080", False)),
        ("https://example.com/loyalty/", None, None, ("https://example.com/loyalty", False)),
        # the documented URLs' own path, pasted with the host: the provider adds it
        ("https://example.com/api/v1.1/", None, None, ("https://example.com", False)),
        ("https://example.com/api", None, None, ("https://example.com", False)),
        ("gw.example.com/loyalty/api/v1.1", None, None, ("https://gw.example.com/loyalty", True)),
        ("https://example.com/apis", None, None, ("https://example.com/apis", False)),
    ],
)
def test_base_urls(host: str, schema: str | None, port: int | None, expected: tuple[str, bool]) -> None:
    assert normalize_base_url(host, schema, port) == expected


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("example.com", 0, "https://example.com"),  # Airflow's UI sends 0 for an empty Port field
        ("example.com", 8443, "https://example.com:8443"),
        ("https://[::1]:8080", None, "https://[::1]:8080"),
        ("https://exa_mple.internal", None, "https://exa_mple.internal"),
        ("münchen.example", None, "https://münchen.example"),
        ("http-gateway.example.com", None, "https://http-gateway.example.com"),
    ],
)
def test_unusual_but_valid_hosts_and_ports(host: str, port: int | None, expected: str) -> None:
    assert normalize_base_url(host, None, port)[0] == expected


def test_a_port_field_out_of_range_is_refused_naming_it() -> None:
    with pytest.raises(LoyaltyValidationError, match=r"^port: expected a port in 1..65535, got 70000"):
        normalize_base_url("example.com", None, 70000)


@pytest.mark.parametrize(
    ("uri", "base_url"),
    [
        ("loyalty://:TOKEN-1@gw.example.com:8443/loyalty?timeout=30", "https://gw.example.com:8443/loyalty"),
        ("loyalty://:TOKEN-1@gw.example.com/gw%2Floyalty%2Fapi%2Fv1.1", "https://gw.example.com/gw/loyalty"),
        ("loyalty://:TOKEN-1@example.com/api/v1.1", "https://example.com"),
        ("loyalty://:TOKEN-1@example.com", "https://example.com"),
        ("loyalty://:TOKEN-1@example.com:8080/http", "http://example.com:8080"),  # the scheme, as before
        ("loyalty://:TOKEN-1@example.com:8443/HTTPS", "https://example.com:8443"),  # in any case
        # the URI's scheme is Airflow's connection type: http:// was read as https, and the hint
        # said to put http:// in the Base URL, where the user had put it
        ("http://:TOKEN-1@127.0.0.1:18765", "http://127.0.0.1:18765"),
        ("https://:TOKEN-1@example.com/loyalty", "https://example.com/loyalty"),
    ],
)
def test_a_uri_form_connections_path_is_the_path_prefix(
    monkeypatch: pytest.MonkeyPatch, uri: str, base_url: str
) -> None:
    """Airflow keeps a connection URI's path in the Schema field; it was dropped, so every request
    of loyalty://:T@gw:8443/loyalty went to gw:8443/api/... instead of gw:8443/loyalty/api/..."""
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", uri)
    assert LoyaltyHook().settings.base_url == base_url


@pytest.mark.parametrize(
    ("connection", "base_url"),
    [
        ("loyalty://:T@[2001:db8::1]:8443?timeout=30", "https://[2001:db8::1]:8443"),
        ("loyalty://:T@[::1]:8443/loyalty", "https://[::1]:8443/loyalty"),
        (
            '{"conn_type": "loyalty", "host": "::1", "port": 8765, "schema": "http", "password": "T"}',
            "http://[::1]:8765",
        ),
        ('{"conn_type": "loyalty", "host": "2001:db8::1", "password": "T"}', "https://[2001:db8::1]"),
        ('{"conn_type": "loyalty", "host": "http://[::1]:8765", "password": "T"}', "http://[::1]:8765"),
    ],
)
def test_an_ipv6_host_is_bracketed_in_the_base_url(monkeypatch: pytest.MonkeyPatch, connection: str, base_url: str):
    """Airflow stores the host of loyalty://:T@[2001:db8::1]:8443 without its brackets; it was
    refused as 'a port that is not a number' (or 'expected an http(s) base URL')."""
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", connection)
    assert LoyaltyHook().settings.base_url == base_url


@pytest.mark.parametrize(
    "host",
    [
        "",
        "ftp://example.com",
        "https://user:pw@example.com",
        "https://x.com/?a=1",
        # mistyped: each was taken, then failed every request as a retried connection error
        "https:/api.example.com",
        "http//api.example.com",
        "https:api.example.com",
        "api.example.com:abc",
        "https://api.example.com:99999",
        "https://api.example.com:443:443",
        "https://api.example.com:0",
        "https://api .example.com",
        "https://-api.example.com",
        # a password typed into the Host: not the connection's Password, so Airflow does not mask it
        "ftp://user:Sup3rSecret@example.com",
        "https:/user:Sup3rSecret@example.com",
        "https://:Sup3rSecret@example.com:99999",
        "Sup3rSecret@example.com:abc",
        "https://u:Sup3rSecret@-bad.example.com",
        # a base64 token pasted unencoded holds "/", "+" or a space: the error showed what came
        # before its last "/" (https://:Sup3r/***@...)
        "https://:Sup3r/Secret+x==@example.com",
        "loyalty://:Sup3r/Secret@example.com:8443",
        ":Sup3r/Secret@example.com",
        "ftp://:Sup3r Secret@example.com",
        "https://:Sup3r@Secret@example.com",
    ],
)
def test_bad_base_urls_name_the_host(host: str) -> None:
    with pytest.raises(LoyaltyValidationError) as caught:
        normalize_base_url(host)
    assert caught.value.parameter == "host"
    assert "Sup3r" not in str(caught.value)  # no piece of it quoted in the error
    assert "Secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        ("abc def", "abc def"),
        ("tok\n", "tok"),
        ("  tok \r\n", "tok"),
        ("a/b?c#d&e=f+g%h", "a/b?c#d&e=f+g%h"),
        # the whole header value pasted: the provider adds "Bearer " itself
        ("Bearer tok-123\n", "tok-123"),
        ("bearer  tok-123", "tok-123"),
        ("Bearer\ttok-123", "tok-123"),
        ("Authorization: Bearer tok-123", "tok-123"),
        ("authorization:bearer\t tok-123\r\n", "tok-123"),
        ("Bearer", "Bearer"),
        ("Bearertok", "Bearertok"),
    ],
)
def test_tokens_lose_only_their_surrounding_blanks(raw: str, token: str) -> None:
    assert check_token(raw) == token


@pytest.mark.parametrize("raw", ["secret-1\nsecret-2", "secret-1\x00secret-2", "secret-1\x7fsecret-2", "sécret-1"])
def test_tokens_no_header_can_carry_are_refused_unquoted(raw: str) -> None:
    with pytest.raises(LoyaltyValidationError) as caught:
        check_token(raw)
    assert caught.value.parameter == "password"
    assert "secret-1" not in str(caught.value) and "sécret" not in str(caught.value)


def test_settings_never_show_the_token() -> None:
    assert "token-value" not in repr(settings())


# ------------------------------------------------------------------------------------------ proxies, for real


@dataclass
class ForwardProxy:
    """What passed through the proxy."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def forward_proxy() -> Iterator[ForwardProxy]:
    """A plain-HTTP forward proxy on loopback: takes ``METHOD http://host:port/path``, forwards it."""
    state = ForwardProxy(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            target = urlsplit(self.path)
            state.requests.append(f"{self.command} {target.path}")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            hop_by_hop = {"proxy-connection", "connection", "keep-alive", "proxy-authorization", "host"}
            headers = {name: value for name, value in self.headers.items() if name.lower() not in hop_by_hop}
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            try:
                upstream.request(self.command, target.path, body=body, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
            finally:
                upstream.close()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                if name.lower() not in {"transfer-encoding", "connection", "content-length", "keep-alive"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


EXPORT = {
    "loyalty_program_id": 123,
    "points_currency_eid": "bonus_points",
    "date_from": "2023-09-01",
    "date_to": "2023-09-30",
}


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=300, batch_size=100, task_duration=0.0)


def sync_calls(tmp_path) -> None:
    hook = LoyaltyHook()
    task_id = hook.create_transactions_export(**EXPORT)
    result = hook.get_export_task_status(task_id).completed_result()
    assert hook.download_export(result.hashed_file, tmp_path / "b.zip") > 0
    hook.close()


def async_calls(task_id: str) -> None:
    async def poll() -> None:
        async with LoyaltyAsyncHook() as hook:
            assert (await hook.get_export_task_status(task_id)).completed_result().total == 100

    asyncio.run(poll())


@pytest.mark.parametrize("scheme", ["http://", ""], ids=["url", "host-port"])
@pytest.mark.parametrize("how", ["proxies-extra", "proxy-alias", "env"])
def test_requests_go_through_the_proxy(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path, how: str, scheme: str
) -> None:
    """``host-port``: a proxy given without its scheme (``HTTP_PROXY=proxy:3128``, a common form)
    worked for the sync hook (requests adds ``http://``), and failed every call of the async hook
    (the triggerer) as an invalid URL, blaming the Base URL."""
    with forward_proxy() as proxy:
        url = scheme + proxy.url.split("://", 1)[1]
        extra: dict[str, Any] = {}
        if how == "proxies-extra":
            extra["proxies"] = {"http": url}
        elif how == "proxy-alias":
            extra["proxy"] = url
        else:
            monkeypatch.setenv("HTTP_PROXY", url)
        point_connection_at(monkeypatch, loyalty_emulator, **extra)
        sync_calls(tmp_path)
        assert proxy.requests[:2] == ["POST /api/v1.1/loyalty/transactions_export", "POST /api/v1.1/tasks/status"]
        assert proxy.requests[2].startswith("GET /api/download/")
        async_calls(LoyaltyHook().create_transactions_export(**EXPORT))
        assert proxy.requests[-1] == "POST /api/v1.1/tasks/status"
    assert len(proxy.requests) == requests_seen(loyalty_emulator) == 5  # every request, none around it


def test_a_proxy_that_cannot_be_reached_is_named_not_the_api_host(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, "cannot connect to <the API's host>: ... check the Base URL's host": the Base URL
    was right, the proxy was down."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    point_connection_at(
        monkeypatch, loyalty_emulator, proxies={"http": f"http://user:pw@127.0.0.1:{port}"}, max_retries=0
    )
    with pytest.raises(LoyaltyTransientError) as sync_error:
        LoyaltyHook().get_task_status("task_1")

    async def poll() -> None:
        async with LoyaltyAsyncHook() as hook:
            await hook.get_export_task_status("task_1")

    with pytest.raises(LoyaltyTransientError) as async_error:
        asyncio.run(poll())
    for error in (sync_error.value, async_error.value):
        assert f"cannot connect to the proxy 127.0.0.1:{port}" in str(error)
        assert "proxies extra" in str(error) and "Base URL" not in str(error)
        assert "pw" not in str(error)
    assert requests_seen(loyalty_emulator) == 0


def test_no_proxy_exempts_the_api_host(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path):
    with forward_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        point_connection_at(monkeypatch, loyalty_emulator)
        sync_calls(tmp_path)
        async_calls(LoyaltyHook().create_transactions_export(**EXPORT))
    assert proxy.requests == []
    assert requests_seen(loyalty_emulator) == 5


def test_the_connections_proxies_win_over_the_environment(
    loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    with forward_proxy() as chosen, forward_proxy() as ambient:
        monkeypatch.setenv("HTTP_PROXY", ambient.url)
        point_connection_at(monkeypatch, loyalty_emulator, proxies=json.dumps({"http": chosen.url}))
        sync_calls(tmp_path)
    assert len(chosen.requests) == 3 and ambient.requests == []


@pytest.mark.parametrize(("given", "expected"), [(0, False), (1, True), ("0", False), ("1", True)])
def test_verify_ssl_as_a_json_number_reads_as_its_text(given: Any, expected: bool) -> None:
    assert settings(verify_ssl=given).verify is expected


def test_verify_ssl_as_another_number_is_refused() -> None:
    with pytest.raises(LoyaltyValidationError, match="verify_ssl: expected true or false"):
        settings(verify_ssl=2)


def test_a_numeric_profile_id_rendered_natively_is_its_digits() -> None:
    from airflow_provider_loyalty.utils.validation import check_matching

    assert check_matching("profile_id", profile_id=15550000003) == {
        "matching": "profile_id",
        "profile_id": "15550000003",
    }
    for matching in ("phone", "profile_id"):
        with pytest.raises(LoyaltyValidationError, match=matching):
            check_matching(matching, **{matching: True})


def test_a_phone_rendered_natively_as_a_number_is_refused_not_sent_without_its_plus() -> None:
    """A native template renders "+15550000003" as the int 15550000003: sending its digits would
    look up another number (the API wants the international format), so it is refused, saying why."""
    from airflow_provider_loyalty.utils.validation import check_matching

    with pytest.raises(LoyaltyValidationError, match=r'phone: expected the phone number as text .*dropping the "\+"'):
        check_matching("phone", phone=15550000003)
    assert check_matching("phone", phone="+15550000003") == {"matching": "phone", "phone": "+15550000003"}


# ------------------------------------------------------------------ what a user may type, read alike by both hooks


@pytest.mark.parametrize("path", ["/.", "/./", "/a/..", "/a/../b", "/a/./b", "/gw/../api/v1.1"])
def test_a_base_url_with_dot_segments_is_refused_naming_the_host(path: str) -> None:
    """requests sent ``/a/../b/api/...`` as written, aiohttp (the triggerer) resolved it to
    ``/b/api/...``: one hook reached the API and the other did not."""
    with pytest.raises(LoyaltyValidationError) as caught:
        normalize_base_url(f"https://api.example.com{path}")
    assert caught.value.parameter == "host" and "'..'" in str(caught.value)


@pytest.mark.parametrize(
    ("host", "base_url"),
    [
        ("https://example.com/API/V1.1", "https://example.com"),  # the documented tail in any case
        ("https://example.com/Api", "https://example.com"),
        ("https://gw.example.com/api/v2", "https://gw.example.com/api/v2"),  # not the API's: a gateway's
        ("https://gw.example.com/api/v1", "https://gw.example.com/api/v1"),
    ],
)
def test_only_the_documented_api_tail_is_dropped_from_the_base_url(host: str, base_url: str) -> None:
    """The docs promise ``/api`` and ``/api/v1.1`` are dropped; any ``/api/v<N>`` was, so a gateway
    prefix ending in ``/api/v2`` vanished, while ``/API/V1.1`` was kept and doubled."""
    assert normalize_base_url(host)[0] == base_url


@pytest.mark.parametrize("value", [False, 0, [], {}, 1])
def test_a_content_type_that_is_no_text_is_refused_not_taken_for_json(value: Any) -> None:
    """``false``, ``0``, ``[]`` and ``{}`` silently meant json (``or "json"``) while ``1`` was refused."""
    with pytest.raises(LoyaltyValidationError) as caught:
        settings(content_type=value)
    assert caught.value.parameter == "content_type"


@pytest.mark.parametrize("content_type", [None, "", "  "])
def test_an_empty_content_type_is_json(content_type: Any) -> None:
    assert settings(content_type=content_type).content_type == "json"


@pytest.mark.parametrize("extra", ["30", "[1, 2]", "true", '"text"'])
def test_an_extra_that_is_no_json_object_is_refused_alike_by_both_hooks(
    monkeypatch: pytest.MonkeyPatch, extra: str
) -> None:
    """The async hook (triggers) failed with ``AttributeError: 'int' object has no attribute 'get'``.
    (Airflow 3.1 itself refuses to read such a connection: both hooks then say it is not defined.)"""
    connection = {"conn_type": "loyalty", "host": "https://api.example.com", "password": "t0ken-1", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    with pytest.raises(Exception) as sync_error:
        LoyaltyHook().settings  # noqa: B018 - reading them is the test
    with pytest.raises(Exception) as async_error:
        asyncio.run(LoyaltyAsyncHook().get_settings())
    errors = (sync_error.value, async_error.value)
    assert type(errors[0]) is type(errors[1]), errors
    if isinstance(errors[0], LoyaltyValidationError):  # Airflow 3.2+ reads the connection
        assert [error.parameter for error in errors] == ["extra", "extra"]  # type: ignore[attr-defined]
    else:
        assert "loyalty_default" in str(errors[0]) and "loyalty_default" in str(errors[1])
