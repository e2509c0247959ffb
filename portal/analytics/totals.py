"""Usage figures for the portal, read from the rollups (never by scanning raw rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from ..extensions import db
from ..models import UsageRollup


@dataclass(frozen=True)
class Totals:
    calls: int = 0
    errors: int = 0
    rate_limited: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    duration_ms_sum: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def avg_duration_ms(self) -> float:
        return self.duration_ms_sum / self.calls if self.calls else 0.0


def _daily(tenant_id: int, start: datetime, end: datetime, source: str | None, service: str | None = None):
    conditions = [
        UsageRollup.tenant_id == tenant_id,
        UsageRollup.granularity == "day",
        UsageRollup.bucket_start >= start,
        UsageRollup.bucket_start < end,
    ]
    if source is not None:
        conditions.append(UsageRollup.source == source)
    if service is not None:
        conditions.append(UsageRollup.service == service)
    return conditions


def totals(
    tenant_id: int, start: datetime, end: datetime, source: str | None = None, service: str | None = None
) -> Totals:
    """Sums over whole days from ``start`` (a midnight UTC) to ``end``."""
    row = db.session.execute(
        select(
            func.coalesce(func.sum(UsageRollup.calls), 0),
            func.coalesce(func.sum(UsageRollup.errors), 0),
            func.coalesce(func.sum(UsageRollup.rate_limited), 0),
            func.coalesce(func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out), 0),
            func.coalesce(func.sum(UsageRollup.cost), 0),
            func.coalesce(func.sum(UsageRollup.duration_ms_sum), 0),
        ).where(*_daily(tenant_id, start, end, source, service))
    ).one()
    return Totals(int(row[0]), int(row[1]), int(row[2]), int(row[3]), Decimal(row[4]), int(row[5]))


@dataclass(frozen=True)
class DayCalls:
    day: date
    calls: int
    errors: int


def calls_per_day(tenant_id: int, start: datetime, end: datetime, source: str | None = None) -> list[DayCalls]:
    """One entry per day in [start, end), zero-filled."""
    rows = db.session.execute(
        select(UsageRollup.bucket_start, func.sum(UsageRollup.calls), func.sum(UsageRollup.errors))
        .where(*_daily(tenant_id, start, end, source))
        .group_by(UsageRollup.bucket_start)
    )
    by_day = {bucket.date(): (int(calls), int(errors)) for bucket, calls, errors in rows}
    days = []
    day = start.date()
    while day < end.date():
        calls, errors = by_day.get(day, (0, 0))
        days.append(DayCalls(day, calls, errors))
        day += timedelta(days=1)
    return days
