"""The pytest fixtures users get with the package."""

from __future__ import annotations

import json
import os

import requests

from airflow_provider_loyalty.testing import LoyaltyEmulator


def test_plugin_fixtures(loyalty_connection: LoyaltyEmulator) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_LOYALTY_DEFAULT"])
    assert conn == {
        "conn_type": "loyalty",
        "host": loyalty_connection.url,
        "password": loyalty_connection.token,
        "extra": {"content_type": "json"},
    }
    assert requests.get(conn["host"] + "/_emulator/health", timeout=5).status_code == 200
