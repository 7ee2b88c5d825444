"""IBKR's scheduled Funds & Banking downtime (reference §8.2), in US Eastern time.

Daily 23:45-00:30 ET, all of Saturday, and Sunday before 15:00 ET; daylight saving follows
America/New_York. Pure functions of the time they are given.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
_NIGHTLY_START = time(23, 45)
_NIGHTLY_END = time(0, 30)
_SUNDAY_END = time(15, 0)
_FRIDAY, _SATURDAY, _SUNDAY = 4, 5, 6


def _at(day: datetime, clock_time: time) -> datetime:
    return datetime.combine(day.date(), clock_time, tzinfo=EASTERN)


def downtime_end(at: datetime) -> datetime | None:
    """The end (UTC) of the Funds & Banking downtime window containing `at`, or None when the
    API is scheduled to be up at `at` (a timezone-aware datetime)."""
    local = at.astimezone(EASTERN)
    weekday, clock_time = local.weekday(), local.time()
    next_day = local + timedelta(days=1)
    if weekday == _SATURDAY:
        end = _at(next_day, _SUNDAY_END)
    elif weekday == _SUNDAY and clock_time < _SUNDAY_END:
        end = _at(local, _SUNDAY_END)
    elif weekday == _FRIDAY and clock_time >= _NIGHTLY_START:
        end = _at(local + timedelta(days=2), _SUNDAY_END)
    elif clock_time >= _NIGHTLY_START:
        end = _at(next_day, _NIGHTLY_END)
    elif clock_time < _NIGHTLY_END:
        end = _at(local, _NIGHTLY_END)
    else:
        return None
    return end.astimezone(UTC)


def in_downtime(at: datetime) -> bool:
    """True when `at` falls inside a scheduled Funds & Banking downtime window."""
    return downtime_end(at) is not None
