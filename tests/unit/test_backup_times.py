"""Cinder's timestamps read as aware UTC datetimes, by the fast path and
the slow one alike (backups.parse_time reads 100,000 of them a plan)."""

import datetime

from hypothesis import given
from hypothesis import strategies as st

from cinderbak import backups

UTC = datetime.UTC
TIMESPECS = ("auto", "seconds", "milliseconds", "microseconds")
naive_times = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(9999, 12, 30),
)


@given(naive_times, st.sampled_from(TIMESPECS), st.sampled_from("T "))
def test_a_naive_timestamp_is_read_as_utc(when, timespec, sep):
    text = when.isoformat(sep=sep, timespec=timespec)
    parsed = backups.parse_time(text)
    assert parsed.tzinfo is UTC
    assert parsed.replace(tzinfo=None) == datetime.datetime.fromisoformat(text)


@given(
    naive_times,
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda m: datetime.timezone(datetime.timedelta(minutes=m))
    ),
)
def test_a_timestamp_with_an_offset_keeps_it(when, zone):
    aware = when.replace(tzinfo=zone)
    assert backups.parse_time(aware.isoformat()) == aware


@given(st.dates())
def test_a_date_alone_is_midnight_utc(day):
    parsed = backups.parse_time(day.isoformat())
    assert parsed == datetime.datetime.combine(day, datetime.time(), UTC)
    assert parsed.tzinfo is UTC


def test_nothing_is_none():
    assert backups.parse_time(None) is None
    assert backups.parse_time("") is None
