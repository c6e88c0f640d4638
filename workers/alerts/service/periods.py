"""The time windows rules look at: billing periods, hours, the anomaly history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]  # the worker's clock: utc_now, or a test's

HOUR = timedelta(hours=1)
ANOMALY_DAYS = 7


def hour_of(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def calendar_month(t: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month around ``t``: the period of subjects without a subscription."""
    start = t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def in_period(hour: datetime, start: datetime, end: datetime) -> bool:
    """Whether the hour starting at ``hour`` overlaps the period [start, end)."""
    return start < hour + HOUR and hour < end


def anomaly_hours(hour: datetime) -> list[datetime]:
    """The same hour on each of the 7 days before ``hour``, oldest first."""
    return [hour - timedelta(days=d) for d in range(ANOMALY_DAYS, 0, -1)]


def evaluates_anomaly(hour: datetime, now: datetime) -> bool:
    """Only the current and the previous hour are "the last hour"; older ones are history."""
    return hour >= hour_of(now) - HOUR


def utc_now() -> datetime:
    return datetime.now(UTC)
