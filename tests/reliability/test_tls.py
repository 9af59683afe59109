"""TLS: certificates are verified by default; a private CA works through ``ca_bundle``.

An HTTPS emulator with a certificate the test makes itself (``openssl`` CLI): the default
connection refuses it with a clear, typed error that is not retried; the same connection with the
certificate as its ``ca_bundle`` extra, or with ``verify_ssl`` false, runs a whole export — in the
worker (requests) and through the trigger (aiohttp). ``LoyaltyAsyncHook`` is checked on its own too.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyError,
    LoyaltyTlsError,
    LoyaltyTransientError,
    LoyaltyValidationError,
)
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.reliability.support import PROGRAM
from tests.support.operator_driver import context_for, run_with_deferrals

N = 2500


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,digitalSignature",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:  # pragma: no cover
        pytest.skip(f"openssl unavailable: {exc}")
    return cert, key


@pytest.fixture
def https_emulator(certificate) -> LoyaltyEmulator:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    config = EmulatorConfig(transactions=N, batch_size=1000, task_duration=0.1)
    with LoyaltyEmulator(config, ssl_context=context) as emulator:
        assert emulator.url.startswith("https://")
        yield emulator


def connect(monkeypatch, emulator: LoyaltyEmulator, **extra) -> None:
    options = {"retry_backoff": 0.05, "max_retries": 4, **extra}
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOYALTY_DEFAULT",
        json.dumps({"conn_type": "loyalty", "host": emulator.url, "password": emulator.token, "extra": options}),
    )


def export(tmp_path: Path, deferrable: bool = False) -> dict:
    operator = LoyaltyExportOperator(
        task_id="tls", **PROGRAM, output_path=str(tmp_path / "out"), date_from="2023-09-01T00:00:00Z",
        date_to="2023-09-30T23:59:59Z", poll_interval=0.05, deferrable=deferrable,
    )  # fmt: skip
    return run_with_deferrals(operator, context_for())


async def async_status_of_an_unknown_task() -> BaseException:
    """What ``LoyaltyAsyncHook`` raises asking for a task that does not exist: ``LoyaltyNotFoundError``
    once the TLS handshake passed, a ``LoyaltyTlsError`` when it did not."""
    from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook

    async with LoyaltyAsyncHook() as hook:
        try:
            await hook.get_task_status("task_x")
        except LoyaltyError as error:
            return error
    raise AssertionError("an unknown task was found")


def test_verify_ssl_is_on_by_default(monkeypatch, https_emulator):
    connect(monkeypatch, https_emulator)
    assert LoyaltyHook().settings.verify is True


def test_untrusted_certificate_fails_clearly_and_is_not_retried(monkeypatch, https_emulator, tmp_path):
    connect(monkeypatch, https_emulator)  # max_retries=4: a retried failure would make 5 connections
    started = time.monotonic()
    with pytest.raises(LoyaltyError) as caught:
        export(tmp_path)
    elapsed = time.monotonic() - started
    err = caught.value
    assert isinstance(err, LoyaltyApiError) and not isinstance(err, LoyaltyTransientError), repr(err)
    assert "TLS verification failed" in str(err)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err) or "certificate" in str(err).lower()
    assert https_emulator.token not in str(err)
    assert https_emulator.stats()["connections"] == 1, "the TLS failure was retried"
    assert https_emulator.stats()["requests_total"] == 0  # no request got through the handshake
    assert elapsed < 5
    assert not list((tmp_path / "out").glob("_manifest.json"))


def test_untrusted_certificate_in_the_trigger_is_a_clear_error_event(monkeypatch, https_emulator):
    import asyncio

    from airflow_provider_loyalty.triggers.loyalty import LoyaltyExportTaskTrigger

    connect(monkeypatch, https_emulator)
    trigger = LoyaltyExportTaskTrigger(export_task_id="task_x", poll_interval=0.05)

    async def first_event() -> dict:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    event = asyncio.run(first_event())
    assert event["status"] == "error"
    assert "TLS verification failed" in event["message"]
    assert https_emulator.stats()["connections"] == 1, "the TLS failure was retried"


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "trigger"])
def test_ca_bundle_from_the_connection_verifies(monkeypatch, https_emulator, certificate, tmp_path, deferrable):
    connect(monkeypatch, https_emulator, ca_bundle=str(certificate[0]))
    manifest = export(tmp_path, deferrable=deferrable)
    assert manifest["total_rows"] == N


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "trigger"])
def test_verify_ssl_false_connects(monkeypatch, https_emulator, tmp_path, deferrable):
    connect(monkeypatch, https_emulator, verify_ssl=False)
    manifest = export(tmp_path, deferrable=deferrable)
    assert manifest["total_rows"] == N


def test_ca_bundle_wins_over_requests_ca_bundle_env(monkeypatch, https_emulator, certificate, tmp_path):
    """An environment-wide REQUESTS_CA_BUNDLE must not silently replace the connection's own choice."""
    connect(monkeypatch, https_emulator, ca_bundle=str(certificate[0]))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().cafile or "/nonexistent-ca.pem")
    assert export(tmp_path)["total_rows"] == N


def test_the_async_hook_verifies_by_default_and_trusts_a_private_ca(monkeypatch, https_emulator, certificate):
    import asyncio

    from airflow_provider_loyalty.exceptions import LoyaltyNotFoundError, LoyaltyTlsError

    connect(monkeypatch, https_emulator)
    refused = asyncio.run(async_status_of_an_unknown_task())
    assert isinstance(refused, LoyaltyTlsError) and "TLS verification failed" in str(refused), refused
    assert https_emulator.stats()["connections"] == 1, "the TLS failure was retried"
    for extra in ({"ca_bundle": str(certificate[0])}, {"verify": str(certificate[0])}, {"verify_ssl": False}):
        connect(monkeypatch, https_emulator, **extra)
        answered = asyncio.run(async_status_of_an_unknown_task())
        assert isinstance(answered, LoyaltyNotFoundError), (extra, answered)  # the handshake passed


@pytest.fixture
def mutual_tls_emulator(certificate) -> LoyaltyEmulator:
    """An HTTPS emulator that requires a client certificate its own (self-signed CA) certificate signs."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cert)
    context.verify_mode = ssl.CERT_REQUIRED
    with LoyaltyEmulator(EmulatorConfig(transactions=10, task_duration=0.0), ssl_context=context) as emulator:
        yield emulator


@pytest.mark.parametrize("form", ["pair", "one-file"])
def test_both_hooks_present_the_connections_client_certificate(
    monkeypatch, mutual_tls_emulator, certificate, tmp_path, form
):
    cert, key = certificate
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    client_cert = [str(cert), str(key)] if form == "pair" else str(both)
    connect(monkeypatch, mutual_tls_emulator, ca_bundle=str(cert))
    # No certificate: the server ends the handshake (its alert, when it arrives before the close,
    # is explained as a missing client certificate), a TLS error that is not retried.
    with pytest.raises(LoyaltyTlsError):
        LoyaltyHook().create_transactions_export(**PROGRAM, date_from="2023-09-01", date_to="2023-09-30")
    assert mutual_tls_emulator.stats()["requests_total"] == 0
    assert mutual_tls_emulator.stats()["connections"] == 1, "the refusal was retried"
    connect(monkeypatch, mutual_tls_emulator, ca_bundle=str(cert), client_cert=client_cert)
    hook = LoyaltyHook()
    task_id = hook.create_transactions_export(**PROGRAM, date_from="2023-09-01", date_to="2023-09-30")
    assert hook.get_export_task_status(task_id).completed_result().total == 10
    hook.close()

    import asyncio

    from airflow_provider_loyalty.hooks.loyalty_async import LoyaltyAsyncHook

    async def status() -> int:
        async with LoyaltyAsyncHook() as async_hook:
            return (await async_hook.get_export_task_status(task_id)).completed_result().total

    assert asyncio.run(status()) == 10


@pytest.mark.parametrize(
    ("alert", "client_cert", "said"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", None, "none was configured"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "/certs/client.pem", "it did not take the configured one"),
        ("TLSV1_ALERT_UNKNOWN_CA", "/certs/client.pem", "it did not take the configured one"),
    ],
)
def test_a_server_refusing_the_client_certificate_is_explained_as_that(alert, client_cert, said) -> None:
    """The server's alert (which a race may turn into a bare EOF, as above) names the client certificate,
    not the server's: the advice is the client_cert extra, not ca_bundle or verify_ssl."""
    from dataclasses import replace

    from airflow_provider_loyalty.utils.connection import settings_from_parts
    from airflow_provider_loyalty.utils.transport import transport_error

    settings = replace(
        settings_from_parts(host="https://api.example.com", password="t0ken-value", extra={}), client_cert=client_cert
    )
    error = transport_error(settings, "/api/v1.1/tasks/status", ssl.SSLError(1, f"[SSL: {alert}] alert (_ssl.c:2580)"))
    assert isinstance(error, LoyaltyTlsError) and not isinstance(error, LoyaltyTransientError)
    assert f"api.example.com wants a TLS client certificate it trusts and {said}" in str(error)
    assert "client_cert extra" in str(error) and "verify_ssl" not in str(error)


def test_a_ca_directory_verifies_in_both_hooks(monkeypatch, https_emulator, certificate, tmp_path):
    """``ca_bundle`` naming a directory of hashed CA files (``openssl rehash``), as ``requests`` takes
    one: both hooks verify with it (the async hook once read it as a file)."""
    import asyncio
    import shutil

    from airflow_provider_loyalty.exceptions import LoyaltyNotFoundError

    cert = certificate[0]
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert)], check=True, capture_output=True, text=True
    ).stdout.strip()
    directory = tmp_path / "cas"
    directory.mkdir()
    shutil.copy(cert, directory / f"{subject_hash}.0")
    connect(monkeypatch, https_emulator, ca_bundle=str(directory))
    hook = LoyaltyHook()
    task_id = hook.create_transactions_export(**PROGRAM, date_from="2023-09-01", date_to="2023-09-30")
    hook.close()

    assert task_id
    assert isinstance(asyncio.run(async_status_of_an_unknown_task()), LoyaltyNotFoundError)  # the handshake passed


# ------------------------------------------------------------------------- files renewed or unusable


def _status_by_both_hooks() -> tuple[BaseException, BaseException]:
    """What each hook raises asking for an unknown task (a ``LoyaltyNotFoundError`` once TLS passed)."""
    import asyncio

    with pytest.raises(LoyaltyError) as sync_error:
        LoyaltyHook().get_task_status("task_x")
    try:
        async_error = asyncio.run(async_status_of_an_unknown_task())
    except LoyaltyError as error:  # raised opening the hook
        async_error = error
    return sync_error.value, async_error


def test_a_ca_bundle_renewed_in_place_is_read_again_by_both_hooks(
    monkeypatch, https_emulator, certificate, tmp_path
) -> None:
    """The context of a CA bundle was cached by its path for the life of the process: a bundle fixed
    in place (the error's own advice) kept failing every new hook, and the API server's Test button,
    until a restart; a client certificate renewed in place was presented expired the same way."""
    from airflow_provider_loyalty.exceptions import LoyaltyNotFoundError

    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(certifi_where()).read_text())  # public CAs: not the emulator's
    connect(monkeypatch, https_emulator, ca_bundle=str(bundle))
    assert all(isinstance(error, LoyaltyTlsError) for error in _status_by_both_hooks())
    bundle.write_bytes(certificate[0].read_bytes())  # the same path, now the right CA
    assert all(isinstance(error, LoyaltyNotFoundError) for error in _status_by_both_hooks())


def certifi_where() -> str:
    import certifi

    return certifi.where()


@pytest.mark.parametrize("content", ["", "not a certificate\n"], ids=["empty", "garbage"])
@pytest.mark.parametrize("field", ["ca_bundle", "client_cert", "REQUESTS_CA_BUNDLE"])
def test_a_tls_file_that_cannot_be_used_is_named_by_both_hooks(
    monkeypatch, https_emulator, tmp_path, field: str, content: str
) -> None:
    """A CA bundle or client certificate that exists but holds no PEM failed with a bare
    ``SSLError: [X509: NO_CERTIFICATE_OR_CRL_FOUND]`` / ``[SSL] PEM lib``, naming no field, and
    ``REQUESTS_CA_BUNDLE`` naming a missing file with ``FileNotFoundError`` and no path."""
    path = tmp_path / f"{field}.pem"
    path.write_text(content)
    if field == "REQUESTS_CA_BUNDLE":
        monkeypatch.setenv(field, str(path if content else tmp_path / "missing.pem"))
        connect(monkeypatch, https_emulator)
    else:
        connect(monkeypatch, https_emulator, **{field: str(path)})
    for error in _status_by_both_hooks():
        assert isinstance(error, LoyaltyValidationError), repr(error)
        assert error.parameter == field and str(tmp_path) in str(error)
    ok, message = LoyaltyHook().test_connection()
    assert not ok and field in message
    assert https_emulator.stats()["requests_total"] == 0  # refused before any request
