"""Which errors are final (Airflow fails the task without spending its retries) and which are not.

The list below is the contract (``docs/errors.rst`` says the same): a new error class fails the
first test until it is put on one side. Then the errors as they are really raised — a refused
token, a redirect, bad input, a cursor that repeats, ``max_batches`` — are final, and one
``dag.test()`` run shows it in Airflow: a task with ``retries=2`` makes exactly one request on a
wrong token, while an API error that a retry may fix is tried three times.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

from airflow_provider_loyalty import exceptions
from airflow_provider_loyalty.exceptions import (
    LoyaltyApiError,
    LoyaltyAuthError,
    LoyaltyBatchUnusableError,
    LoyaltyCursorError,
    LoyaltyEmptyExportError,
    LoyaltyError,
    LoyaltyExportStopped,
    LoyaltyExportTaskFailed,
    LoyaltyFinalError,
    LoyaltyLocationBusyError,
    LoyaltyNotFoundError,
    LoyaltyOutputFormatError,
    LoyaltyRedirectError,
    LoyaltyResponseError,
    LoyaltyStorageError,
    LoyaltyTlsError,
    LoyaltyTransientError,
    LoyaltyUnsafeDataError,
    LoyaltyValidationError,
    LoyaltyVerificationError,
)
from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook
from airflow_provider_loyalty.testing import EmulatorConfig, LoyaltyEmulator
from tests.reliability.support import loopback_server, send
from tests.support.dag_runner import run_dag_test
from tests.support.helpers import point_connection_at, requests_seen

#: A retry cannot fix these: the same input, token, Base URL or cursor fails the same way.
FINAL = {
    LoyaltyFinalError,
    LoyaltyValidationError,
    LoyaltyAuthError,
    LoyaltyRedirectError,
    LoyaltyTlsError,
    LoyaltyCursorError,
    LoyaltyOutputFormatError,
}
#: A retry may get past these (a later attempt, a re-created batch, another moment).
NOT_FINAL = {
    LoyaltyError,
    LoyaltyApiError,
    LoyaltyNotFoundError,
    LoyaltyTransientError,
    LoyaltyResponseError,
    LoyaltyUnsafeDataError,
    LoyaltyExportTaskFailed,
    LoyaltyVerificationError,
    LoyaltyBatchUnusableError,
    LoyaltyEmptyExportError,
    LoyaltyLocationBusyError,
    LoyaltyStorageError,
    LoyaltyExportStopped,
}
EXPORT = {"loyalty_program_id": 123, "points_currency_eid": "bonus_points", "date_from": "2023-09-01"}


def test_every_error_class_is_listed_as_final_or_not() -> None:
    declared = {
        value
        for value in vars(exceptions).values()
        if inspect.isclass(value) and issubclass(value, LoyaltyError) and value.__module__ == exceptions.__name__
    }
    assert declared == FINAL | NOT_FINAL
    assert not FINAL & NOT_FINAL


@pytest.mark.parametrize("error_class", sorted(FINAL, key=lambda cls: cls.__name__), ids=lambda cls: cls.__name__)
def test_final_errors_fail_the_task_without_retries(error_class: type[LoyaltyError]) -> None:
    assert issubclass(error_class, AirflowFailException)
    assert issubclass(error_class, LoyaltyFinalError) and issubclass(error_class, LoyaltyError)


@pytest.mark.parametrize("error_class", sorted(NOT_FINAL, key=lambda cls: cls.__name__), ids=lambda cls: cls.__name__)
def test_other_errors_use_the_tasks_retries(error_class: type[LoyaltyError]) -> None:
    assert issubclass(error_class, AirflowException)
    assert not issubclass(error_class, AirflowFailException)


def test_api_errors_that_are_final_keep_their_api_fields() -> None:
    for error_class in (LoyaltyAuthError, LoyaltyRedirectError, LoyaltyTlsError):
        error = error_class(1002, "Authentication failed", 401)
        assert isinstance(error, LoyaltyApiError) and isinstance(error, AirflowFailException)
        assert (error.code, error.text, error.http_status) == (1002, "Authentication failed", 401)
    assert isinstance(LoyaltyValidationError("limit", "bad"), ValueError)


# ------------------------------------------------------------------------------------- as they are raised


@pytest.fixture
def loyalty_emulator_config() -> EmulatorConfig:
    return EmulatorConfig(transactions=2500, batch_size=1000, task_duration=0.0)


def test_a_refused_token_is_final(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    point_connection_at(monkeypatch, loyalty_emulator, token="wrong-token-value")
    with pytest.raises(AirflowFailException) as caught:
        LoyaltyHook().create_transactions_export(**EXPORT, date_to="2023-09-30")
    assert isinstance(caught.value, LoyaltyAuthError)


def test_bad_input_is_final(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    point_connection_at(monkeypatch, loyalty_emulator)
    with pytest.raises(AirflowFailException) as caught:
        LoyaltyHook().create_transactions_export(**EXPORT, date_to="2023-08-31")
    assert isinstance(caught.value, LoyaltyValidationError) and caught.value.parameter == "date_from"


def test_a_redirect_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    def redirect(handler, _server) -> None:
        send(handler, 301, b"", "text/plain", Location="https://api.example.com/api/v1.1/tasks/status")

    with loopback_server(redirect) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "token-value"}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        with pytest.raises(AirflowFailException) as caught:
            LoyaltyHook().get_task_status("task_x")
    assert isinstance(caught.value, LoyaltyRedirectError)


def test_a_repeating_cursor_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    page = {"data": [{"transaction_id": "t1"}], "next_from_id": "same-cursor", "total_count": 9, "error": 0}

    def account(handler, _server) -> None:
        send(handler, 200, json.dumps(page).encode(), "application/json")

    with loopback_server(account) as server:
        connection = {"conn_type": "loyalty", "host": server.url, "password": "token-value"}
        monkeypatch.setenv("AIRFLOW_CONN_LOYALTY_DEFAULT", json.dumps(connection))
        member = {"loyalty_program_id": 123, "points_currency_iid": 1, "matching": "email", "email": "m@x"}
        with pytest.raises(AirflowFailException) as caught:
            list(LoyaltyHook().iter_account_transactions(**member))
    assert isinstance(caught.value, LoyaltyCursorError)


def test_max_batches_is_final(loyalty_emulator: LoyaltyEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from airflow_provider_loyalty.operators.loyalty import LoyaltyExportOperator
    from tests.support.operator_driver import context_for

    point_connection_at(monkeypatch, loyalty_emulator)
    operator = LoyaltyExportOperator(
        task_id="capped", **EXPORT, date_to="2023-09-30", output_path=str(tmp_path), max_batches=1, poll_interval=0.05
    )
    with pytest.raises(AirflowFailException) as caught:
        operator.execute(context_for())
    assert isinstance(caught.value, LoyaltyCursorError) and "max_batches" in str(caught.value)


# ------------------------------------------------------------------------------------- in Airflow itself

DAG_SOURCE = """
import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_loyalty.hooks.loyalty import LoyaltyHook

with DAG("loyalty_final_errors", schedule=None, start_date=pendulum.datetime(2023, 9, 1, tz="UTC")) as dag:

    @task(retries=2, retry_delay=timedelta(seconds=0))
    def create_export() -> str:
        return LoyaltyHook().create_transactions_export(
            loyalty_program_id=int(os.environ["LOYALTY_TEST_PROGRAM"]),
            points_currency_eid="bonus_points",
            date_from="2023-09-01",
            date_to="2023-09-30",
        )

    create_export()
"""


@pytest.mark.parametrize(
    ("token", "program", "tries"),
    [
        pytest.param("wrong-token-value", "123", 1, id="refused-token-is-final"),
        # The control: the same task retried on an error a retry may fix (slow: three tries).
        pytest.param(None, "999", 3, id="api-error-is-retried", marks=pytest.mark.slow),
    ],
)
def test_a_final_error_ends_a_task_with_retries_after_one_try(
    airflow_db: str, tmp_path: Path, token: str | None, program: str, tries: int
) -> None:
    dag_file = tmp_path / "loyalty_final_errors.py"
    dag_file.write_text(textwrap.dedent(DAG_SOURCE))
    with LoyaltyEmulator(EmulatorConfig(task_duration=0.0)) as emulator:
        connection = {
            "conn_type": "loyalty",
            "host": emulator.url,
            "password": token or emulator.token,
            "extra": {"max_retries": 0},
        }
        env = {"AIRFLOW_CONN_LOYALTY_DEFAULT": json.dumps(connection), "LOYALTY_TEST_PROGRAM": program}
        outcome = run_dag_test(dag_file, "loyalty_final_errors", env)
        made = requests_seen(emulator, "export")
    assert outcome.tasks == {"create_export": "failed"}, outcome.output[-4000:]
    assert made == tries, f"{made} requests for {tries} expected tries:\n{outcome.output[-4000:]}"


def _every_error() -> list[BaseException]:
    from airflow_provider_loyalty import exceptions as errors

    made: list[BaseException] = [
        errors.LoyaltyValidationError("limit", "expected 1..100, got 0"),
        errors.LoyaltyApiError(1000, "Internal error", 500),
        errors.LoyaltyAuthError(None, "token refused", 401),
        errors.LoyaltyRedirectError(None, "redirect to https://x", 302),
        errors.LoyaltyNotFoundError(1007, "not found", 404),
        errors.LoyaltyTlsError(None, "certificate verify failed"),
        errors.LoyaltyTransientError(1006, "Rate limit exceeded", 429, 2.5, unprocessed=True),
        errors.LoyaltyExportTaskFailed("task_1", "failed", "disk full"),
        errors.LoyaltyLocationBusyError("s3://b/p/", "task t (try 1)", "busy"),
    ]
    plain = [name for name, value in vars(errors).items() if isinstance(value, type) and name.startswith("Loyalty")]
    made += [
        getattr(errors, name)("a message")
        for name in plain
        if "__init__" not in vars(getattr(errors, name))
        and not issubclass(getattr(errors, name), errors.LoyaltyApiError)
    ]
    return made


@pytest.mark.parametrize("error", _every_error(), ids=lambda error: type(error).__name__)
def test_every_error_survives_pickle_and_copy(error: BaseException) -> None:
    """A hook's error crossing a process (a process pool, a result backend) was unpickled by calling
    the class with its message alone: ``TypeError: missing 'text'`` replaced the API's error."""
    import copy
    import pickle

    for again in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error), copy.copy(error)):  # noqa: S301 - our own bytes
        assert type(again) is type(error)
        assert str(again) == str(error)
        assert vars(again) == vars(error)
