from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.ibkr.calendar import EASTERN, downtime_end, in_downtime


def et(*args: int) -> datetime:
    return datetime(*args, tzinfo=EASTERN)


@pytest.mark.parametrize(
    ("local", "expected_end"),
    [
        (et(2026, 11, 24, 23, 50), et(2026, 11, 25, 0, 30)),  # Tuesday night
        (et(2026, 11, 25, 0, 10), et(2026, 11, 25, 0, 30)),  # Wednesday just after midnight
        (et(2026, 11, 27, 23, 46), et(2026, 11, 29, 15, 0)),  # Friday night runs into Sunday
        (et(2026, 11, 28, 12, 0), et(2026, 11, 29, 15, 0)),  # Saturday
        (et(2026, 11, 29, 14, 59), et(2026, 11, 29, 15, 0)),  # Sunday morning
        (et(2026, 11, 29, 23, 45), et(2026, 11, 30, 0, 30)),  # Sunday night
        (et(2026, 3, 7, 12, 0), et(2026, 3, 8, 15, 0)),  # the Saturday before DST starts
    ],
)
def test_downtime_windows_end_where_the_calendar_says(
    local: datetime, expected_end: datetime
) -> None:
    assert downtime_end(local) == expected_end.astimezone(UTC)


@pytest.mark.parametrize(
    "local",
    [
        et(2026, 11, 24, 10, 0),
        et(2026, 11, 24, 0, 30),
        et(2026, 11, 24, 23, 44),
        et(2026, 11, 29, 15, 0),
        et(2026, 11, 27, 23, 44),
    ],
)
def test_business_hours_are_not_downtime(local: datetime) -> None:
    assert not in_downtime(local)


def test_windows_follow_daylight_saving() -> None:
    # 23:45 ET is 04:45 UTC in winter (EST) and 03:45 UTC in summer (EDT).
    assert in_downtime(datetime(2026, 1, 14, 4, 46, tzinfo=UTC))
    assert not in_downtime(datetime(2026, 7, 15, 3, 40, tzinfo=UTC))
    assert in_downtime(datetime(2026, 7, 15, 3, 46, tzinfo=UTC))


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)))
def test_a_window_end_is_later_and_outside_any_window(naive: datetime) -> None:
    at = naive.replace(tzinfo=UTC)
    end = downtime_end(at)
    if end is not None:
        assert end > at
        assert not in_downtime(end)
        assert end - at <= timedelta(hours=40)
