"""The token as the hooks send it is registered with Airflow's secrets masker, by either hook."""

from __future__ import annotations

import asyncio
import json

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
