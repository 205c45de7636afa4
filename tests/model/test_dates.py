"""FHIR date/dateTime/instant text -> closed microsecond ranges."""
from __future__ import annotations

import datetime as dt

import pytest

from fhir_server.model.dates import format_instant, parse_range
from fhir_server.search.entries import DATE_MAX, DATE_MIN

US = 1_000_000


def us(*args: int, micro: int = 0, tz: dt.timezone = dt.timezone.utc) -> int:
    d = dt.datetime(*args, tzinfo=tz)
    return (d - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) + micro


def test_year() -> None:
    assert parse_range("2020") == (us(2020, 1, 1), us(2021, 1, 1) - 1)


def test_month() -> None:
    assert parse_range("2020-02") == (us(2020, 2, 1), us(2020, 3, 1) - 1)
    assert parse_range("2019-12") == (us(2019, 12, 1), us(2020, 1, 1) - 1)


def test_leap_years() -> None:
    assert parse_range("2020-02-29") == (us(2020, 2, 29), us(2020, 3, 1) - 1)
    assert parse_range("2000-02-29")[0] == us(2000, 2, 29)
    for bad in ("2019-02-29", "1900-02-29", "2021-02-30"):
        with pytest.raises(ValueError):
            parse_range(bad)
    # February of a leap year has 29 days
    low, high = parse_range("2024-02")
    assert (high + 1 - low) == 29 * 86400 * US


def test_day() -> None:
    assert parse_range("1974-12-25") == (us(1974, 12, 25), us(1974, 12, 26) - 1)


def test_minutes_without_seconds() -> None:
    assert parse_range("2020-01-01T10:00") == (us(2020, 1, 1, 10, 0), us(2020, 1, 1, 10, 1) - 1)
    assert parse_range("2020-01-01T10:00Z") == parse_range("2020-01-01T10:00")
    assert parse_range("2020-01-01T10:00+02:00")[0] == us(2020, 1, 1, 8, 0)


def test_seconds_and_fractions() -> None:
    assert parse_range("2020-01-01T10:00:05Z") == (us(2020, 1, 1, 10, 0, 5), us(2020, 1, 1, 10, 0, 6) - 1)
    assert parse_range("2020-01-01T10:00:05.1Z") == (us(2020, 1, 1, 10, 0, 5, micro=100_000),
                                                      us(2020, 1, 1, 10, 0, 5, micro=199_999))
    assert parse_range("2020-01-01T10:00:05.123Z") == (us(2020, 1, 1, 10, 0, 5, micro=123_000),
                                                        us(2020, 1, 1, 10, 0, 5, micro=123_999))
    assert parse_range("2020-01-01T10:00:05.123456Z") == (us(2020, 1, 1, 10, 0, 5, micro=123_456),) * 2
    # more digits than microseconds: truncated to the microsecond
    assert parse_range("2020-01-01T10:00:05.1234567Z") == (us(2020, 1, 1, 10, 0, 5, micro=123_456),) * 2


def test_zones() -> None:
    utc = parse_range("2015-01-17T16:00:00Z")
    assert parse_range("2015-01-17T16:00:00+00:00") == utc
    assert parse_range("2015-01-17T16:00:00-00:00") == utc
    assert parse_range("2015-01-17T16:00:00+10:00")[0] == utc[0] - 10 * 3600 * US
    assert parse_range("2015-01-17T16:00:00-05:30")[0] == utc[0] + (5 * 3600 + 1800) * US
    assert parse_range("2015-01-17T16:00:00+14:00")[0] == utc[0] - 14 * 3600 * US


def test_no_zone_is_utc() -> None:
    assert parse_range("2015-01-17T16:00:00") == parse_range("2015-01-17T16:00:00Z")


def test_leap_second_is_next_minute_start() -> None:
    assert parse_range("2016-12-31T23:59:60Z")[0] == us(2017, 1, 1)


def test_bounds_are_clamped() -> None:
    assert parse_range("0001")[0] == DATE_MIN
    assert parse_range("9999")[1] == DATE_MAX
    assert parse_range("9999-12")[1] == DATE_MAX
    assert parse_range("0001-01-01T00:00:00+01:00")[0] == DATE_MIN
    assert parse_range("9999-12-31T23:59:59-01:00")[1] == DATE_MAX


@pytest.mark.parametrize("bad", [
    "", "20", "202", "20201", "2020-1", "2020-13", "2020-00", "2020-01-32", "2020-01-00", "2020-01-1",
    "0000", "2020-01-01T", "2020-01-01T10", "2020-01-01T24:00:00Z", "2020-01-01T10:60:00Z",
    "2020-01-01T10:00:61Z", "2020-01-01T10:00:00.Z", "2020-01-01T10:00:00+1:00", "2020-01-01T10:00:00+15:00",
    "2020-01-01T10:00:00+10:60", "2020-01-01Z", "2020Z", "2020-01-01 10:00:00", "2020/01/01", " 2020",
    "2020 ", "abcd", "2020-01-01T10:00:00ZZ", "+2020", "2020-01-01T10:00:00.123+",
])
def test_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_range(bad)


@pytest.mark.parametrize("bad", [2020, None, ["2020"], b"2020"])
def test_non_string_raises_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_range(bad)  # type: ignore[arg-type]


def test_non_ascii_digits_are_rejected() -> None:
    with pytest.raises(ValueError):
        parse_range("\u0662\u0660\u0662\u0660")  # Arabic-Indic digits


def test_format_instant() -> None:
    assert format_instant(0) == "1970-01-01T00:00:00Z"
    assert format_instant(us(2020, 1, 1, 10, 0, 5, micro=123_000)) == "2020-01-01T10:00:05.123Z"
    assert format_instant(us(2020, 1, 1, 10, 0, 5, micro=123_456)) == "2020-01-01T10:00:05.123456Z"
    assert format_instant(DATE_MAX) == "9999-12-31T23:59:59.999999Z"
    assert format_instant(DATE_MIN) == "0001-01-01T00:00:00Z"
    assert format_instant(-1) == "1969-12-31T23:59:59.999999Z"


@pytest.mark.parametrize("text", ["2020-01-01T10:00:05Z", "2020-02-29T23:59:59.5Z",
                                  "1850-06-01T00:00:00.000123Z"])
def test_format_round_trip(text: str) -> None:
    low = parse_range(text)[0]
    assert parse_range(format_instant(low))[0] == low
