"""The token as the hooks send it is registered with Airflow's secrets masker, by either hook."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from airflow.sdk._shared.secrets_masker import redact as airflow_redact

from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook


@pytest.mark.parametrize("pasted", ["{token}\n", "{token}\r\n", "Bearer {token}"], ids=["lf", "crlf", "bearer"])
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_the_token_as_sent_is_masked_in_airflows_logs_by_either_hook(
    monkeypatch: pytest.MonkeyPatch, hook_kind: str, pasted: str
) -> None:
    r"""Airflow masks the password as stored (``"tok\n"``, ``"Bearer tok"``); the hooks send it cleaned,
    so they register that form with the secrets masker too: any log line (a library's, the user's)
    shows ``***``. The async hook (triggers) did not."""
    token = f"masked-{hook_kind}-{len(pasted)}-{pasted[:3].strip()}-7c1e9a4b0f3e"
    connection = {"conn_type": "loyalty", "host": "http://127.0.0.1:9", "password": pasted.format(token=token)}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    assert airflow_redact(f"a line with {token}") == f"a line with {token}"  # not known before the hook reads it
    settings = LoyaltyHook().settings if hook_kind == "sync" else asyncio.run(LoyaltyAsyncHook().get_settings())
    assert settings.token == token
    assert airflow_redact(f"a line with {token}") == "a line with ***"


@pytest.mark.parametrize("scheme", ["http://", ""], ids=["url", "no-scheme"])
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_a_proxys_password_is_masked_and_left_out_of_the_settings_repr(
    monkeypatch: pytest.MonkeyPatch, hook_kind: str, scheme: str
) -> None:
    """A proxy URL with credentials (the ``proxies`` extra) showed its password in ``repr`` of the
    settings, and nothing masked it in logs. ``no-scheme``: ``svc:secret@proxy:3128`` read ``svc``
    as the URL's scheme, so no password was found to mask."""
    password = f"pr0xy-{hook_kind}-{scheme[:4]}-s3cret/+x"
    proxy = f"svc:{quote(password, safe='')}@proxy.example.com:3128"
    extra = {"proxies": {"https": scheme + proxy}}
    connection = {"conn_type": "loyalty", "host": "https://api.example.com", "password": "t0ken-1", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    settings = LoyaltyHook().settings if hook_kind == "sync" else asyncio.run(LoyaltyAsyncHook().get_settings())
    assert settings.proxies == {"https": f"http://{proxy}"}
    assert password not in repr(settings) and quote(password, safe="") not in repr(settings)
    assert airflow_redact(f"via {password}") == "via ***"


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_the_password_of_the_environments_proxy_is_masked(monkeypatch: pytest.MonkeyPatch, hook_kind: str) -> None:
    """``HTTPS_PROXY=http://svc:secret@proxy:3128`` is used by both hooks; its password was masked
    only when the proxy came from the connection's extra."""
    password = f"env-pr0xy-{hook_kind}-7c1e9a4b"
    for name in ("https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"svc:{password}@proxy.example.com:3128")
    connection = {"conn_type": "loyalty", "host": "https://api.example.com", "password": "t0ken-1"}
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    assert airflow_redact(f"via {password}") == f"via {password}"
    settings = LoyaltyHook().settings if hook_kind == "sync" else asyncio.run(LoyaltyAsyncHook().get_settings())
    assert settings.proxy_for(settings.base_url) == f"http://svc:{password}@proxy.example.com:3128"
    assert airflow_redact(f"via {password}") == "via ***"
