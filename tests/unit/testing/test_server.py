"""LoyaltyEmulator: lifecycle, and its independence from the provider it checks."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator


def test_stop_closes_keepalive_connections() -> None:
    emulator = LoyaltyEmulator(EmulatorConfig(transactions=10)).start()
    session = requests.Session()
    session.get(emulator.url + "/_emulator/health", timeout=5)
    assert emulator.stats()["open_connections"] == 1
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 3
    with pytest.raises(requests.ConnectionError):
        session.get(emulator.url + "/_emulator/health", timeout=5)
    emulator.stop()  # idempotent


def test_imports_nothing_from_the_provider() -> None:
    code = (
        "import sys, airflow_provider_loyalty.testing as t\n"
        "with t.LoyaltyEmulator(t.EmulatorConfig(transactions=1)): pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('airflow_provider_loyalty')"
        " and not m.startswith('airflow_provider_loyalty.testing')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "['airflow_provider_loyalty']"  # the package root (its version) only


def test_config_can_be_replaced_while_running(emulator: LoyaltyEmulator) -> None:
    emulator.config = EmulatorConfig(transactions=7, task_duration=0)
    assert emulator.api.config is emulator.config
    assert emulator.expected_ids() == emulator.expected_ids(None, None)
    assert len(emulator.expected_ids()) == 7


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_it_serves_on_an_ipv6_loopback_host(host: str) -> None:
    """Binding ``::1`` failed (``Address family for hostname not supported``): the server was IPv4 only."""
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with LoyaltyEmulator(EmulatorConfig(transactions=5), host=host) as emulator:
        assert emulator.url.startswith("http://[::1]:")
        response = requests.post(
            emulator.url + "/api/v1.1/tasks/status",
            json={"task_id": "task_unknown"},
            headers={"Authorization": f"Bearer {emulator.token}"},
            timeout=10,
        )
        assert response.json()["error"] != 0  # an API answer, from the IPv6 socket
        assert emulator.stats()["requests"]["status"] == 1


def test_a_port_in_use_is_named_in_the_error() -> None:
    """``LoyaltyEmulator(port=...)`` on a busy port says which address, as the CLI does."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"the emulator cannot listen on 127.0.0.1:{port}: "):
            LoyaltyEmulator(port=port).start()
