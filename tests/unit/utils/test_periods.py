"""Export periods (``utils/periods.py``): whole days, Airflow's default timezone, DST, odd years.

Airflow's ``[core] default_timezone`` is set through its environment variable in each test: the
module reads it at call time, as a running worker would after a configuration change.
"""

from __future__ import annotations

import datetime as dt

import pendulum
import pytest

from airflow_provider_loyalty.exceptions import LoyaltyValidationError
from airflow_provider_loyalty.utils import validation
from airflow_provider_loyalty.utils.periods import check_period, default_timezone, format_rfc3339, period_bound

TZ_VARIABLE = "AIRFLOW__CORE__DEFAULT_TIMEZONE"


@pytest.fixture(autouse=True)
def utc_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TZ_VARIABLE, raising=False)


def in_zone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(TZ_VARIABLE, name)


# ------------------------------------------------------------------------------------- whole days


@pytest.mark.parametrize(
    "day",
    ["2023-09-30", " 2023-09-30 ", "20230930", dt.date(2023, 9, 30), pendulum.Date(2023, 9, 30)],
    ids=["text", "padded", "ds_nodash", "date", "pendulum-date"],
)
def test_a_date_means_the_whole_day(day: object) -> None:
    assert check_period(day, day) == ("2023-09-30T00:00:00Z", "2023-09-30T23:59:59Z")


def test_ds_as_airflow_renders_it_is_a_whole_day() -> None:
    from jinja2 import Template

    ds = Template("{{ ds }}").render(ds=pendulum.datetime(2023, 9, 30, tz="UTC").to_date_string())
    assert check_period(ds, ds) == ("2023-09-30T00:00:00Z", "2023-09-30T23:59:59Z")


def test_ds_nodash_as_a_native_template_renders_it_is_a_whole_day() -> None:
    """``render_template_as_native_obj`` renders ``{{ ds_nodash }}`` as the int 20230930."""
    assert check_period(20230901, 20230930) == check_period("2023-09-01", "2023-09-30")
    with pytest.raises(LoyaltyValidationError, match="date_to"):
        check_period(20230901, 2023093)


def test_a_currency_code_rendered_as_a_number_is_refused_saying_why() -> None:
    """Not read as its digits: a native template renders "007" as 7, another currency."""
    with pytest.raises(LoyaltyValidationError, match=r"points_currency_eid: .*int 7 .*dropping leading zeros"):
        validation.check_currency(7, None)


def test_a_month_of_dates_is_every_second_of_it() -> None:
    assert check_period("2023-09-01", "2023-09-30") == ("2023-09-01T00:00:00Z", "2023-09-30T23:59:59Z")


def test_whole_days_are_read_in_the_default_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    in_zone(monkeypatch, "Asia/Tokyo")
    assert check_period("2023-09-30", "2023-09-30") == ("2023-09-29T15:00:00Z", "2023-09-30T14:59:59Z")


def test_the_timezone_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_period("2023-09-30", "2023-09-30")[0] == "2023-09-30T00:00:00Z"
    in_zone(monkeypatch, "America/New_York")
    assert default_timezone().utcoffset(dt.datetime(2023, 9, 30)) == dt.timedelta(hours=-4)
    assert check_period("2023-09-30", "2023-09-30") == ("2023-09-30T04:00:00Z", "2023-10-01T03:59:59Z")
    in_zone(monkeypatch, "system")
    assert default_timezone() is not None


def test_an_invalid_timezone_name_reads_naive_values_as_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    in_zone(monkeypatch, "Mars/Olympus_Mons")
    assert check_period("2023-09-30", "2023-09-30") == ("2023-09-30T00:00:00Z", "2023-09-30T23:59:59Z")


# ------------------------------------------------------------------------------------- DST days


@pytest.mark.parametrize(
    ("zone", "day", "expected", "hours"),
    [
        ("Europe/Berlin", "2023-03-26", ("2023-03-25T23:00:00Z", "2023-03-26T21:59:59Z"), 23),
        ("Europe/Berlin", "2023-10-29", ("2023-10-28T22:00:00Z", "2023-10-29T22:59:59Z"), 25),
        ("America/New_York", "2023-03-12", ("2023-03-12T05:00:00Z", "2023-03-13T03:59:59Z"), 23),
        ("America/New_York", "2023-11-05", ("2023-11-05T04:00:00Z", "2023-11-06T04:59:59Z"), 25),
        # Clocks jump at midnight: the day starts at 01:00.
        ("America/Santiago", "2023-09-03", ("2023-09-03T04:00:00Z", "2023-09-04T02:59:59Z"), 23),
        # 24:00 goes back to 23:00: the day ends with the second run of its last hour.
        ("America/Santiago", "2023-04-01", ("2023-04-01T03:00:00Z", "2023-04-02T03:59:59Z"), 25),
        # 01:00 goes back to 00:00: the day starts with the first run of its first hour.
        ("America/Havana", "2023-11-05", ("2023-11-05T04:00:00Z", "2023-11-06T04:59:59Z"), 25),
    ],
)
def test_dst_days_stay_whole(
    monkeypatch: pytest.MonkeyPatch, zone: str, day: str, expected: tuple[str, str], hours: int
) -> None:
    in_zone(monkeypatch, zone)
    start, end = check_period(day, day)
    assert (start, end) == expected
    length = dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start) + dt.timedelta(seconds=1)
    assert length == dt.timedelta(hours=hours)


def test_consecutive_days_meet_without_gap_or_overlap_across_dst(monkeypatch: pytest.MonkeyPatch) -> None:
    in_zone(monkeypatch, "America/Santiago")
    days = [dt.date(2023, 3, 30) + dt.timedelta(days=n) for n in range(200)]
    periods = [check_period(day, day) for day in days]
    for (_, end), (start, _) in zip(periods, periods[1:], strict=False):
        assert dt.datetime.fromisoformat(start) - dt.datetime.fromisoformat(end) == dt.timedelta(seconds=1)


def test_a_repeated_wall_time_is_read_widest(monkeypatch: pytest.MonkeyPatch) -> None:
    in_zone(monkeypatch, "Europe/Berlin")
    # 02:30 happens twice on 2023-10-29 (CEST, then CET): a start takes the first, an end the second.
    assert check_period("2023-10-29T02:30:00", "2023-10-29T02:30:00") == (
        "2023-10-29T00:30:00Z",
        "2023-10-29T01:30:00Z",
    )


def test_a_period_inside_the_skipped_hour_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """It said "date_from must not be after date_to" though the user gave them in order."""
    in_zone(monkeypatch, "America/New_York")
    with pytest.raises(LoyaltyValidationError, match=r"lies in the hour skipped when daylight saving time starts"):
        check_period("2023-03-12T02:30:00", "2023-03-12T02:59:59")
    with pytest.raises(LoyaltyValidationError, match=r"must not be after date_to"):
        check_period("2023-03-12T03:30:00", "2023-03-12T02:59:59")


def test_a_skipped_wall_time_is_the_jump(monkeypatch: pytest.MonkeyPatch) -> None:
    in_zone(monkeypatch, "Europe/Berlin")
    # 02:00..02:59 never happen on 2023-03-26: clocks jump from 02:00 CET to 03:00 CEST (01:00Z).
    assert period_bound("2023-03-26T02:30", "date_from", end=False) == dt.datetime(2023, 3, 26, 1, tzinfo=dt.UTC)
    assert period_bound(dt.datetime(2023, 3, 26, 2, 30), "date_to", end=True) == dt.datetime(
        2023, 3, 26, 0, 59, 59, tzinfo=dt.UTC
    )


def test_a_naive_pendulum_time_in_the_skipped_hour_is_the_jump_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pendulum.naive`` (or a rendered ``.naive()``) in the gap: pendulum's own arithmetic on it
    stays naive, which once met the aware bisection with a bare TypeError."""
    in_zone(monkeypatch, "Europe/Berlin")
    # 2024-03-31: clocks jump from 02:00 CET to 03:00 CEST (01:00Z).
    assert period_bound(pendulum.naive(2024, 3, 31, 2, 30), "date_from", end=False) == dt.datetime(
        2024, 3, 31, 1, tzinfo=dt.UTC
    )
    assert period_bound(pendulum.naive(2024, 3, 31, 2, 30), "date_to", end=True) == dt.datetime(
        2024, 3, 31, 0, 59, 59, tzinfo=dt.UTC
    )
    assert check_period(pendulum.naive(2024, 3, 31, 2, 30), "2024-03-31T12:00:00") == (
        "2024-03-31T01:00:00Z",
        "2024-03-31T10:00:00Z",
    )


# ------------------------------------------------------------------------------------- naive and aware


def test_naive_values_are_read_in_the_default_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    in_zone(monkeypatch, "Europe/Berlin")
    expected = ("2023-09-01T22:00:00Z", "2023-09-02T21:59:59Z")
    assert check_period("2023-09-02T00:00:00", "2023-09-02 23:59:59") == expected
    assert check_period(dt.datetime(2023, 9, 2), dt.datetime(2023, 9, 2, 23, 59, 59)) == expected
    assert check_period(pendulum.naive(2023, 9, 2), pendulum.naive(2023, 9, 2, 23, 59, 59)) == expected


def test_naive_values_are_utc_when_the_timezone_is_unset() -> None:
    assert check_period("2023-09-02T10:00:00", dt.datetime(2023, 9, 2, 11)) == (
        "2023-09-02T10:00:00Z",
        "2023-09-02T11:00:00Z",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-09-02T10:00:00+02:00", "2023-09-02T08:00:00Z"),
        ("2023-09-02T10:00:00-0530", "2023-09-02T15:30:00Z"),
        ("2023-09-02t10:00:00z", "2023-09-02T10:00:00Z"),
        (dt.datetime(2023, 9, 2, 10, tzinfo=dt.timezone(dt.timedelta(hours=-3))), "2023-09-02T13:00:00Z"),
        (pendulum.datetime(2023, 9, 2, 10, tz="Asia/Kolkata"), "2023-09-02T04:30:00Z"),
    ],
)
def test_aware_values_keep_their_offset(monkeypatch: pytest.MonkeyPatch, value: object, expected: str) -> None:
    in_zone(monkeypatch, "Europe/Berlin")  # must not matter
    assert check_period(value, "2099-01-01T00:00:00Z")[0] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-09-02T10:00:00.999999Z", "2023-09-02T10:00:00Z"),
        ("2023-09-02T10:00:00.123456789+00:00", "2023-09-02T10:00:00Z"),
        ("2023-09-02T10:00:59.5", "2023-09-02T10:00:59Z"),
        ("2023-09-02T10:00:59,5Z", "2023-09-02T10:00:59Z"),
        (dt.datetime(2023, 9, 2, 10, 0, 0, 500_000, tzinfo=dt.UTC), "2023-09-02T10:00:00Z"),
    ],
)
def test_fractions_of_a_second_are_dropped(value: object, expected: str) -> None:
    assert period_bound(value, "date_to", end=True) == dt.datetime.fromisoformat(expected)
    assert format_rfc3339(period_bound(value, "date_from", end=False)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59Z"),
        ("2016-12-31 23:59:60.999Z", "2016-12-31T23:59:59Z"),
        ("2017-01-01T02:59:60+03:00", "2016-12-31T23:59:59Z"),
        ("2016-12-31T23:59:60", "2016-12-31T23:59:59Z"),
    ],
)
def test_a_leap_second_is_the_second_before_it(value: str, expected: str) -> None:
    assert check_period(value, value) == (expected, expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ts_nodash }}", "2023-09-30T10:15:30Z"),
        ("{{ ts_nodash_with_tz }}", "2023-09-30T10:15:30Z"),
        ("20230930T131530+0300", "2023-09-30T10:15:30Z"),
        ("20230930t101530.25z", "2023-09-30T10:15:30Z"),
        ("20161231T235960Z", "2016-12-31T23:59:59Z"),
    ],
)
def test_iso_basic_format_as_airflow_renders_it(template: str, expected: str) -> None:
    """``{{ ts_nodash }}`` was refused as "not a date" though ``{{ ds_nodash }}`` was read."""
    from jinja2 import Template

    logical = pendulum.datetime(2023, 9, 30, 10, 15, 30, tz="UTC")
    value = Template(template).render(
        ts_nodash=logical.strftime("%Y%m%dT%H%M%S"),
        ts_nodash_with_tz=logical.isoformat().replace("-", "").replace(":", ""),
    )
    assert check_period(value, value) == (expected, expected)


def test_the_operators_default_end_meets_the_next_start_exactly() -> None:
    interval_end = pendulum.datetime(2023, 9, 2, 10, 0, 0, 500_000, tz="UTC")
    _, end = check_period("2023-09-01", interval_end.subtract(seconds=1))
    start, _ = check_period(interval_end, "2023-09-03")
    assert (end, start) == ("2023-09-02T09:59:59Z", "2023-09-02T10:00:00Z")


# ------------------------------------------------------------------------------------- odd years


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0999-06-01", ("0999-06-01T00:00:00Z", "0999-06-01T23:59:59Z")),
        (dt.date(12, 1, 2), ("0012-01-02T00:00:00Z", "0012-01-02T23:59:59Z")),
        ("0001-01-01T00:00:00Z", ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z")),
        ("9999-12-31", ("9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z")),
    ],
)
def test_years_before_1000_and_the_last_day_are_four_digit_rfc3339(value: object, expected: tuple[str, str]) -> None:
    assert check_period(value, value) == expected


@pytest.mark.parametrize(
    ("zone", "value", "parameter"),
    [("Asia/Tokyo", "0001-01-01", "date_from"), ("America/New_York", "9999-12-31", "date_to")],
)
def test_a_day_outside_the_calendar_in_utc_names_the_parameter(
    monkeypatch: pytest.MonkeyPatch, zone: str, value: str, parameter: str
) -> None:
    in_zone(monkeypatch, zone)
    with pytest.raises(LoyaltyValidationError) as caught:
        check_period(value, value)
    assert caught.value.parameter == parameter and "outside the years" in str(caught.value)


# ------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "bad",
    [
        "now",
        "today",
        "2023-09",
        "2023",
        "2023-W39-1",
        "2023-02-30",
        "2023-09-30T24:00:00Z",
        "2023-09-30T23:60:00Z",
        "2023-09-30T23:59:61Z",
        "2023-09-30T10:00:00+25:00",
        "30/09/2023",
        "",
        "   ",
        None,
        1696032000,
        12.5,
        True,
        dt.time(10, 0),
        ["2023-09-30"],
    ],
)
@pytest.mark.parametrize("parameter", ["date_from", "date_to"])
def test_bad_values_name_the_parameter(bad: object, parameter: str) -> None:
    good = "2023-09-30"
    arguments = (bad, good) if parameter == "date_from" else (good, bad)
    with pytest.raises(LoyaltyValidationError) as caught:
        check_period(*arguments)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}: expected a datetime, a date, or text")


def test_a_start_after_the_end_names_date_from() -> None:
    with pytest.raises(LoyaltyValidationError) as caught:
        check_period("2023-10-01", "2023-09-30")
    assert caught.value.parameter == "date_from"
    assert "2023-10-01T00:00:00Z > 2023-09-30T23:59:59Z" in str(caught.value)


def test_the_validation_module_reaches_the_same_checks() -> None:
    assert validation.check_period is check_period
    assert validation.period_bound is period_bound


@pytest.mark.parametrize("name", ["System", "Europe/Berlin ", " Asia/Tokyo"])
def test_a_timezone_setting_airflow_cannot_read_is_utc_here_too(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Airflow matches ``system`` exactly and reads the name as written, falling back to UTC; read
    otherwise here (stripped, any case), a naive value meant another period than Airflow's dates."""
    in_zone(monkeypatch, name)
    assert check_period("2023-09-30", "2023-09-30") == ("2023-09-30T00:00:00Z", "2023-09-30T23:59:59Z")
