"""Pytest fixtures for testing DAGs and code against the loyalty API emulator.

Loaded automatically once the package is installed (``pytest11`` entry point ``loyalty_emulator``);
with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p loyalty_emulator``.

* ``loyalty_emulator_config``: the :class:`EmulatorConfig` used by ``loyalty_emulator``; override
  this fixture to change the data, batch size, cursor mode...
* ``loyalty_emulator``: a started :class:`LoyaltyEmulator` on a free loopback port (function scope).
* ``loyalty_connection``: the same emulator, with ``AIRFLOW_CONN_LOYALTY_DEFAULT`` set to a JSON
  connection pointing at it (``content_type`` ``json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from airflow_provider_loyalty.testing.config import EmulatorConfig
from airflow_provider_loyalty.testing.server import LoyaltyEmulator

__all__ = ["loyalty_connection", "loyalty_emulator", "loyalty_emulator_config"]


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    """Return the configuration for :func:`loyalty_emulator` (fast tasks: ``task_duration=0.05``)."""
    return EmulatorConfig(task_duration=0.05)


@pytest.fixture
def loyalty_emulator(loyalty_emulator_config: EmulatorConfig) -> Iterator[LoyaltyEmulator]:
    """Yield a running emulator on ``127.0.0.1`` and a free port; stopped after the test.

    :param loyalty_emulator_config: the config fixture.
    """
    with LoyaltyEmulator(loyalty_emulator_config) as emulator:
        yield emulator


@pytest.fixture
def loyalty_connection(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> LoyaltyEmulator:
    """Point the ``loyalty_default`` Airflow connection at :func:`loyalty_emulator`.

    :param loyalty_emulator: the emulator fixture.
    :param monkeypatch: pytest's monkeypatch (restores the environment afterwards).
    """
    connection = {
        "conn_type": "loyalty",
        "host": loyalty_emulator.url,
        "password": loyalty_emulator.token,
        "extra": {"content_type": "json"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
    return loyalty_emulator
