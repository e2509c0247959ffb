"""The usage explorer: figures per interval over a date range, filtered, against the period of
the same length just before, and calls by hour of day and weekday.

Read from the rollups only: hourly ones for the hourly interval and the peak-hours grid, daily
ones for the rest. A report runs a fixed number of statements whatever the range or the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select

from ..extensions import db
from ..kernel.csv_export import csv_document
from ..kernel.periods import billing_period, day_bounds
from ..kernel.times import iso
from ..models import ApiKey, Plan, Subscription, UsageRollup
from .reports import INTERVALS, interval_start, rollup_conditions
from .totals import Totals

__all__ = ["INTERVALS", "MAX_DAYS", "MAX_HOURLY_DAYS", "Filters", "Report", "explore"]

MAX_DAYS = 366
MAX_HOURLY_DAYS = 31
# Options offered per filter (the most used first, then shown by name).
MAX_CHOICES = 200
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# (name, label) of every figure the page shows, compares and exports.
FIGURES = (
    ("calls", "Calls"),
    ("errors", "Errors"),
    ("error_rate", "Error rate"),
    ("rate_limited", "Rate-limited"),
    ("tokens", "Tokens"),
    ("cost", "Cost"),
    ("avg_duration_ms", "Avg latency"),
)
COST_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class Filters:
    """Only the rollups with these values (None: any)."""

    category: str | None = None
    service: str | None = None
    api_key_id: int | None = None
    endpoint: str | None = None
    end_user: str | None = None

    def conditions(self) -> list:
        columns = {
            "category": UsageRollup.category,
            "service": UsageRollup.service,
            "api_key_id": UsageRollup.api_key_id,
            "endpoint": UsageRollup.endpoint,
            "end_user": UsageRollup.end_user,
        }
        return [columns[f.name] == getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None]

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Point:
    """One interval of the series: it starts at ``start`` (UTC)."""

    start: datetime
    figures: Totals


@dataclass(frozen=True)
class PeakHours:
    """Calls per weekday (Monday first) and hour of day (UTC)."""

    calls: list[list[int]] = field(default_factory=lambda: [[0] * 24 for _ in WEEKDAYS])

    @property
    def peak(self) -> int:
        return max(max(row) for row in self.calls)

    @property
    def busiest(self) -> tuple[str, int, int] | None:
        """(weekday, hour, calls) of the busiest cell, None without calls."""
        if not self.peak:
            return None
        day, hour = max(((d, h) for d in range(7) for h in range(24)), key=lambda c: self.calls[c[0]][c[1]])
        return WEEKDAYS[day], hour, self.calls[day][hour]


@dataclass(frozen=True)
class Report:
    start: date
    end: date
    interval: str
    filters: Filters
    series: list[Point]
    totals: Totals
    previous_start: date
    previous_end: date
    previous: Totals
    peak_hours: PeakHours

    @property
    def changes(self) -> dict[str, float | None]:
        """Each figure's change against the previous period (a fraction; None when it was 0)."""
        return {name: change(figure(self.totals, name), figure(self.previous, name)) for name, _ in FIGURES}


def figure(totals: Totals, name: str) -> int | float | Decimal:
    return getattr(totals, name)


def change(current: float | Decimal, previous: float | Decimal) -> float | None:
    if not previous:
        return None
    return float((Decimal(str(current)) - Decimal(str(previous))) / Decimal(str(previous)))


def previous_period(start: date, end: date) -> tuple[date, date]:
    """The days of the same number immediately before ``start``."""
    length = (end - start).days + 1
    return start - timedelta(days=length), start - timedelta(days=1)


def _sum_columns() -> tuple:
    return (
        func.coalesce(func.sum(UsageRollup.calls), 0),
        func.coalesce(func.sum(UsageRollup.errors), 0),
        func.coalesce(func.sum(UsageRollup.rate_limited), 0),
        func.coalesce(func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out), 0),
        func.coalesce(func.sum(UsageRollup.cost), 0),
        func.coalesce(func.sum(UsageRollup.duration_ms_sum), 0),
    )


def _totals(row: Sequence) -> Totals:
    calls, errors, limited, tokens, cost, duration = row
    return Totals(int(calls), int(errors), int(limited), int(tokens), Decimal(cost), int(duration))


def _add(a: Totals, b: Totals) -> Totals:
    return Totals(
        a.calls + b.calls,
        a.errors + b.errors,
        a.rate_limited + b.rate_limited,
        a.tokens + b.tokens,
        a.cost + b.cost,
        a.duration_ms_sum + b.duration_ms_sum,
    )


def interval_starts(begin: datetime, finish: datetime, interval: str) -> list[datetime]:
    """The start of every interval that meets [begin, finish), in order."""
    starts = []
    at = interval_start(begin, interval)
    while at < finish:
        starts.append(at)
        if interval == "hourly":
            at += timedelta(hours=1)
        elif interval == "daily":
            at += timedelta(days=1)
        elif interval == "weekly":
            at += timedelta(days=7)
        else:
            at = billing_period(at)[1]
    return starts


def _by_bucket(tenant_id: int, begin: datetime, finish: datetime, granularity: str, filters: Filters) -> list:
    return db.session.execute(
        select(UsageRollup.bucket_start, *_sum_columns())
        .where(*rollup_conditions(tenant_id, begin, finish, granularity), *filters.conditions())
        .group_by(UsageRollup.bucket_start)
    ).all()


def _peak_hours(rows: Iterable[tuple[datetime, int]]) -> PeakHours:
    grid = PeakHours()
    for bucket, calls in rows:
        grid.calls[bucket.weekday()][bucket.hour] += int(calls)
    return grid


def explore(tenant_id: int, start: date, end: date, interval: str, filters: Filters | None = None) -> Report:
    """The explorer's figures for the days ``start`` to ``end`` (both included, UTC).

    Three statements: the series, the previous period's totals and the hourly calls for the
    grid (two with the hourly interval, whose series is the grid's source too).
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}")
    filters = filters or Filters()
    begin, finish = day_bounds(start, end)
    granularity = "hour" if interval == "hourly" else "day"
    rows = _by_bucket(tenant_id, begin, finish, granularity, filters)
    buckets: dict[datetime, Totals] = {}
    for bucket, *sums in rows:
        key = interval_start(bucket, interval)
        buckets[key] = _add(buckets.get(key, Totals()), _totals(sums))
    series = [Point(at, buckets.get(at, Totals())) for at in interval_starts(begin, finish, interval)]
    totals = Totals()
    for point in series:
        totals = _add(totals, point.figures)

    previous_start, previous_end = previous_period(start, end)
    previous_begin, previous_finish = day_bounds(previous_start, previous_end)
    previous = _totals(
        db.session.execute(
            select(*_sum_columns()).where(
                *rollup_conditions(tenant_id, previous_begin, previous_finish, "day"), *filters.conditions()
            )
        ).one()
    )

    if interval == "hourly":
        hourly = [(bucket, sums[0]) for bucket, *sums in rows]
    else:
        hourly = db.session.execute(
            select(UsageRollup.bucket_start, func.sum(UsageRollup.calls))
            .where(*rollup_conditions(tenant_id, begin, finish, "hour"), *filters.conditions())
            .group_by(UsageRollup.bucket_start)
        ).all()
    return Report(
        start, end, interval, filters, series, totals, previous_start, previous_end, previous, _peak_hours(hourly)
    )


# --- What the filters offer -----------------------------------------------------------------


@dataclass(frozen=True)
class Choices:
    """The values each filter offers: what the rollups of a range hold."""

    categories: list[str]
    services: list[str]
    endpoints: list[str]
    end_users: list[str]
    keys: list[tuple[int, str]]  # (id, name)


def _top(counts: dict, limit: int = MAX_CHOICES) -> list:
    top = sorted(counts, key=lambda value: -counts[value])[:limit]
    return sorted(top, key=lambda value: (str(value).lower(), str(value)))


def filter_choices(tenant_id: int, begin: datetime, finish: datetime) -> Choices:
    """Every category, service, endpoint, end user and key with calls in [begin, finish)
    (at most ``MAX_CHOICES`` of each, the most widely used), and the tenant's keys by name.

    Two statements: the dimensions of the daily rollups, and the keys.
    """
    # DISTINCT costs a third of a GROUP BY with sums here; a value's rank is how many
    # combinations it takes part in.
    rows = db.session.execute(
        select(
            UsageRollup.category,
            UsageRollup.service,
            UsageRollup.endpoint,
            UsageRollup.end_user,
            UsageRollup.api_key_id,
        )
        .where(*rollup_conditions(tenant_id, begin, finish, "day"))
        .distinct()
    ).all()
    counts: list[dict] = [{}, {}, {}, {}, {}]
    for values in rows:
        for n, value in enumerate(values):
            if value not in ("", 0, None):
                counts[n][value] = counts[n].get(value, 0) + 1
    keys = key_names(tenant_id)
    used_keys = counts[4]
    named = [(key_id, name) for key_id, name in keys.items()]
    named += [(key_id, f"deleted key #{key_id}") for key_id in used_keys if key_id not in keys]
    return Choices(
        _top(counts[0]),
        _top(counts[1]),
        _top(counts[2]),
        _top(counts[3]),
        sorted(named, key=lambda pair: (pair[1].lower(), pair[0])),
    )


def key_names(tenant_id: int) -> dict[int, str]:
    """The tenant's keys, id to name (one statement)."""
    return dict(db.session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.tenant_id == tenant_id)).all())


def retention_days(tenant_id: int) -> int | None:
    """How many days the tenant's plan keeps raw records (and, as long, hourly figures)."""
    return db.session.scalar(
        select(Plan.retention_days)
        .join(Subscription, Subscription.plan_id == Plan.id)
        .where(Subscription.tenant_id == tenant_id, Subscription.ended_at.is_(None))
        .order_by(Subscription.started_at.desc())
        .limit(1)
    )


# --- Export: the page's figures as JSON and CSV ---------------------------------------------


def exact_cost(amount: Decimal) -> str:
    return f"{Decimal(amount).quantize(COST_PLACES)}"


def figures_dict(totals: Totals) -> dict:
    return {
        "calls": totals.calls,
        "errors": totals.errors,
        "error_rate": round(totals.error_rate, 6),
        "rate_limited": totals.rate_limited,
        "tokens": totals.tokens,
        "cost": exact_cost(totals.cost),
        "avg_latency_ms": round(totals.avg_duration_ms, 1),
    }


def period_label(at: datetime, interval: str) -> str:
    """An interval's start as the API's ``account/usage`` writes it."""
    return iso(at) if interval == "hourly" else at.date().isoformat()


def report_json(report: Report) -> dict:
    filters = report.filters.as_dict()
    filters["key"] = filters.pop("api_key_id")
    return {
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "interval": report.interval,
        "filters": filters,
        "totals": figures_dict(report.totals),
        "previous": {
            "start": report.previous_start.isoformat(),
            "end": report.previous_end.isoformat(),
            **figures_dict(report.previous),
        },
        "change": {name: None if c is None else round(c, 6) for name, c in report.changes.items()},
        "series": [
            {"period": period_label(p.start, report.interval), **figures_dict(p.figures)} for p in report.series
        ],
        "peak_hours": {"weekdays": list(WEEKDAYS), "hours_utc": list(range(24)), "calls": report.peak_hours.calls},
    }


CSV_COLUMNS = ("calls", "errors", "error_rate", "rate_limited", "tokens", "cost", "avg_latency_ms")


def _csv_figures(totals: Totals) -> list:
    row = figures_dict(totals)
    row["cost"] = Decimal(row["cost"])  # a number in the CSV, so a spreadsheet sums the column
    return [row[c] for c in CSV_COLUMNS]


def report_csv(report: Report) -> str:
    """The series, then its total and the previous period's total."""
    rows: list[list] = [["period", *CSV_COLUMNS]]
    for point in report.series:
        rows.append([period_label(point.start, report.interval), *_csv_figures(point.figures)])
    rows.append(["total", *_csv_figures(report.totals)])
    label = f"previous {report.previous_start.isoformat()}..{report.previous_end.isoformat()}"
    rows.append([label, *_csv_figures(report.previous)])
    return csv_document(rows)
