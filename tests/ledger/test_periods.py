"""`--since` / `--until` moments and the calendar periods reports group by."""

import argparse
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.ledger.periods import local_day, month_of, parse_moment, parse_since, parse_until, week_of

NOW = 1_795_500_000.0  # 2026-11-24T... UTC


@pytest.fixture
def paris(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@given(amount=st.integers(0, 10_000), unit=st.sampled_from("smhdw"))
def test_relative_moments_count_back_from_now(amount, unit):
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_moment(f"{amount}{unit}", now=NOW) == int((NOW - amount * seconds) * 1e9)


def test_dates_and_times_are_local_unless_they_say_otherwise(paris):
    assert parse_since("2026-11-24") == parse_since("2026-11-23T23:00:00Z")
    assert parse_since("2026-11-24T09:30") == parse_since("2026-11-24T08:30Z")
    assert parse_since("2026-11-24T09:30+02:00") == parse_since("2026-11-24T07:30Z")
    # a date alone as the end of a window includes that day
    assert parse_until("2026-11-24") == parse_since("2026-11-25")
    assert parse_until("2026-11-24T12:00") == parse_since("2026-11-24T12:00")
    assert local_day(parse_since("2026-11-24T23:30Z")) == "2026-11-25"


@pytest.mark.parametrize("raw", ["yesterday", "7 days", "-3d", "2026-13-01", ""])
def test_anything_else_is_one_clear_error(raw):
    with pytest.raises(argparse.ArgumentTypeError, match=r"cannot read --until .*use e\.g\. 2h"):
        parse_until(raw)


def test_weeks_are_iso_weeks_and_months_calendar_months():
    assert week_of("2026-11-24") == "2026-W48"
    assert week_of("2027-01-01") == "2026-W53"  # a Friday: still the last ISO week of 2026
    assert week_of("2026-01-01") == "2026-W01"
    assert month_of("2026-11-24") == "2026-11"
