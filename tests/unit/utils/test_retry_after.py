"""``Retry-After`` in each form HTTP allows, read as GMT whatever the machine's timezone."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest

from airflow_provider_loyalty.utils.protocol import parse_retry_after


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker whose local time is not UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("form", ["imf-fixdate", "rfc850", "asctime"])
def test_an_http_date_in_any_form_is_read_as_gmt(new_york: None, form: str) -> None:
    """The asctime form has no zone: read in local time, 30 s away became five hours and 30 s."""
    when = time.gmtime(time.time() + 30)
    text = {
        "imf-fixdate": email.utils.formatdate(time.time() + 30, usegmt=True),
        "rfc850": time.strftime("%A, %d-%b-%y %H:%M:%S GMT", when),
        "asctime": time.strftime("%a %b %d %H:%M:%S %Y", when),
    }[form]
    seconds = parse_retry_after(text)
    assert seconds is not None and 20 <= seconds <= 31, (text, seconds)


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), (" 0.5 ", 0.5), ("-3", 0.0), ("", None), ("soon", None)])
def test_seconds_and_what_is_not_a_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value) == expected
