"""Billing periods (calendar months, UTC) and day bounds, as every capability counts them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from .times import iso


def billing_period(at: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) that contains ``at``: [start, end)."""
    at = at.astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


@dataclass(frozen=True)
class PeriodBounds:
    """A billing period as the hot path needs it: epoch seconds and its texts."""

    start: float
    end: float
    month: str  # "YYYYMM", names the period's quota counter
    end_iso: str  # when it ends (the quota resets), ISO 8601 UTC


_last_period = PeriodBounds(0.0, 0.0, "", "")


def period_bounds(now: float) -> PeriodBounds:
    """The billing period containing the epoch time ``now`` (the last one is remembered)."""
    global _last_period
    period = _last_period
    if not period.start <= now < period.end:
        start, end = billing_period(datetime.fromtimestamp(now, UTC))
        period = _last_period = PeriodBounds(start.timestamp(), end.timestamp(), f"{start:%Y%m}", iso(end))
    return period


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """The days ``start`` to ``end`` (both included) as [midnight UTC, midnight UTC)."""
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    if end >= date.max:
        return begin, datetime.max.replace(tzinfo=UTC)
    finish = end + timedelta(days=1)
    return begin, datetime(finish.year, finish.month, finish.day, tzinfo=UTC)
