"""What the alert rules measure, read for every tenant at once.

Every figure comes from the hourly rollups and Redis counters, never from raw rows. A trailing
window of N minutes is estimated from hourly buckets as a sliding window: the hour under way
counts whole, and each earlier hour with the part of it the window covers, as if its calls were
spread evenly over it. With a 60-minute window at 12:20 that is the 12:00 bucket and two thirds
of the 11:00 one.

The queries are set-based — one per kind of figure for all tenants — so one evaluation pass
costs the same handful of statements for ten tenants or ten thousand.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from redis import Redis
from sqlalchemy import and_, func, or_, select

from ..billing.statements import admitted_calls
from ..extensions import db
from ..kernel.periods import billing_period
from ..kernel.redis_keys import auth_failure_key, quota_key
from ..metering.admission import window_keys
from ..models import LATENCY_BUCKETS_MS, LATENCY_COLUMNS, AlertRule, AuditEvent, Plan, Subscription, UsageRollup

HOUR = timedelta(hours=1)
# Windows up to this length are read by the one all-tenants query; longer or filtered windows
# are read per rule (still one query for all such rules).
SHORT_WINDOW = timedelta(minutes=60)
SPIKE_WEEKS = 4
MGET_CHUNK = 5000


@dataclass
class Sums:
    """A window's calls, errors and latency histogram (weighted, so possibly fractional)."""

    calls: float = 0.0
    errors: float = 0.0
    rate_limited: float = 0.0
    tokens: float = 0.0
    cost: Decimal = Decimal(0)
    duration_sum: float = 0.0
    histogram: list[float] = field(default_factory=lambda: [0.0] * len(LATENCY_COLUMNS))

    def add(self, row, weight: float) -> None:
        # PostgreSQL sums bigints as NUMERIC (Decimal): counts are read as floats here.
        self.calls += float(row.calls) * weight
        self.errors += float(row.errors) * weight
        self.rate_limited += float(row.rate_limited) * weight
        self.tokens += float(row.tokens) * weight
        self.cost += Decimal(row.cost or 0) * Decimal(str(round(weight, 6)))
        self.duration_sum += float(row.duration_sum) * weight
        for i, column in enumerate(LATENCY_COLUMNS):
            self.histogram[i] += float(getattr(row, column)) * weight

    @property
    def answered(self) -> float:
        """Calls that got an answer from the handler (those refused with 429 did not)."""
        return self.calls - self.rate_limited

    @property
    def failed(self) -> float:
        """Calls answered 4xx or 5xx, the rate limit's 429s not counted."""
        return self.errors - self.rate_limited

    def error_rate(self) -> float | None:
        return None if self.answered <= 0 else 100.0 * self.failed / self.answered

    def average_ms(self) -> float | None:
        return None if self.calls <= 0 else self.duration_sum / self.calls

    def percentile_ms(self, fraction: float) -> float | None:
        """The latency below which ``fraction`` of the calls fell, interpolated in its bucket."""
        total = sum(self.histogram)
        if total <= 0:
            return None
        rank = fraction * total
        seen = 0.0
        low = 0.0
        for count, high in zip(self.histogram, (*LATENCY_BUCKETS_MS, None), strict=True):
            if count > 0 and seen + count >= rank:
                if high is None:  # the open-ended bucket: say its lower bound
                    return low
                return low + (high - low) * (rank - seen) / count
            seen += count
            if high is not None:
                low = float(high)
        return low


def bucket_weight(bucket_start: datetime, since: datetime, now: datetime) -> float:
    """The share of an hourly bucket's calls counted in the trailing window [since, now].

    The hour under way counts whole (its calls so far are recent; a window shorter than the
    part of the hour gone by reads it as if all of them fell inside, which errs on the side of
    telling); a past hour counts with the part of it the window covers."""
    if bucket_start <= now < bucket_start + HOUR:
        return 1.0
    return past_weight(bucket_start, since, now)


def past_weight(bucket_start: datetime, since: datetime, until: datetime) -> float:
    """The part of a complete hourly bucket that lies in [since, until]."""
    inside = (min(bucket_start + HOUR, until) - max(bucket_start, since)).total_seconds()
    return max(0.0, min(1.0, inside / HOUR.total_seconds()))


def _sum_columns():
    return (
        func.sum(UsageRollup.calls).label("calls"),
        func.sum(UsageRollup.errors).label("errors"),
        func.sum(UsageRollup.rate_limited).label("rate_limited"),
        func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out).label("tokens"),
        func.sum(UsageRollup.cost).label("cost"),
        func.sum(UsageRollup.duration_ms_sum).label("duration_sum"),
        *(func.sum(getattr(UsageRollup, c)).label(c) for c in LATENCY_COLUMNS),
    )


def _only(query, column, only: list[int] | None):
    """``query`` narrowed to some tenants (a pass over part of them), or not at all."""
    return query if only is None else query.where(column.in_(only))


def tenant_windows(now: datetime, window: timedelta = SHORT_WINDOW, only: list[int] | None = None) -> dict[int, Sums]:
    """Every tenant's sums over the trailing ``window`` (at most an hour)."""
    since = now - window
    first = since.replace(minute=0, second=0, microsecond=0)
    query = (
        select(UsageRollup.tenant_id, UsageRollup.bucket_start, *_sum_columns())
        .where(UsageRollup.granularity == "hour", UsageRollup.bucket_start >= first, UsageRollup.bucket_start <= now)
        .group_by(UsageRollup.tenant_id, UsageRollup.bucket_start)
    )
    rows = db.session.execute(_only(query, UsageRollup.tenant_id, only))
    sums: dict[int, Sums] = defaultdict(Sums)
    for row in rows:
        sums[row.tenant_id].add(row, bucket_weight(row.bucket_start, since, now))
    return sums


def rule_windows(rules: list, now: datetime) -> dict[int, Sums]:
    """The sums of rules with a filter or a window over an hour, per rule id, in one query."""
    if not rules:
        return {}
    longest = max(timedelta(minutes=r.window_minutes) for r in rules)
    first = (now - longest).replace(minute=0, second=0, microsecond=0)
    ids = [r.id for r in rules]
    query = (
        select(AlertRule.id.label("rule_id"), UsageRollup.bucket_start, *_sum_columns())
        .join(
            UsageRollup,
            and_(
                UsageRollup.tenant_id == AlertRule.tenant_id,
                UsageRollup.granularity == "hour",
                UsageRollup.bucket_start >= first,
                UsageRollup.bucket_start <= now,
                or_(AlertRule.service.is_(None), UsageRollup.service == AlertRule.service),
                or_(AlertRule.endpoint.is_(None), UsageRollup.endpoint == AlertRule.endpoint),
                or_(AlertRule.api_key_id.is_(None), UsageRollup.api_key_id == AlertRule.api_key_id),
                or_(AlertRule.end_user.is_(None), UsageRollup.end_user == AlertRule.end_user),
            ),
        )
        .where(AlertRule.id.in_(ids))
        .group_by(AlertRule.id, UsageRollup.bucket_start)
    )
    windows = {r.id: timedelta(minutes=r.window_minutes) for r in rules}
    sums: dict[int, Sums] = defaultdict(Sums)
    for row in db.session.execute(query):
        since = now - windows[row.rule_id]
        sums[row.rule_id].add(row, bucket_weight(row.bucket_start, since, now))
    return sums


def normal_calls(now: datetime, window: timedelta = SHORT_WINDOW, only: list[int] | None = None) -> dict[int, float]:
    """Each tenant's normal calls for the trailing window: the median of the same window of the
    week over the last four weeks (weeks before the tenant had any traffic are not counted).
    Those hours are complete, so each counts with the part of it the window covers."""
    moments = [now - timedelta(weeks=k) for k in range(1, SPIKE_WEEKS + 1)]
    starts = []
    for moment in moments:
        first = (moment - window).replace(minute=0, second=0, microsecond=0)
        starts += [first, first + HOUR] if first + HOUR <= moment else [first]
    query = (
        select(UsageRollup.tenant_id, UsageRollup.bucket_start, func.sum(UsageRollup.calls).label("calls"))
        .where(UsageRollup.granularity == "hour", UsageRollup.bucket_start.in_(starts))
        .group_by(UsageRollup.tenant_id, UsageRollup.bucket_start)
    )
    rows = db.session.execute(_only(query, UsageRollup.tenant_id, only))
    by_tenant: dict[int, dict[datetime, float]] = defaultdict(dict)
    for row in rows:
        by_tenant[row.tenant_id][row.bucket_start] = float(row.calls)
    oldest = _first_traffic(list(by_tenant))
    normal = {}
    for tenant_id, buckets in by_tenant.items():
        weeks = []
        for moment in moments:
            if oldest.get(tenant_id) is None or oldest[tenant_id] > moment - window:
                continue  # the tenant had no traffic yet that week
            since = moment - window
            weeks.append(
                sum(
                    calls * bucket_weight(start, since, moment)
                    for start, calls in buckets.items()
                    if start <= moment and start + HOUR > since
                )
            )
        if len(weeks) >= 2:
            weeks.sort()
            middle = len(weeks) // 2
            normal[tenant_id] = weeks[middle] if len(weeks) % 2 else (weeks[middle - 1] + weeks[middle]) / 2
    return normal


def _first_traffic(tenant_ids: list[int]) -> dict[int, datetime]:
    if not tenant_ids:
        return {}
    rows = db.session.execute(
        select(UsageRollup.tenant_id, func.min(UsageRollup.bucket_start))
        .where(UsageRollup.granularity == "day", UsageRollup.tenant_id.in_(tenant_ids))
        .group_by(UsageRollup.tenant_id)
    )
    return dict(rows.all())


def cost_today(now: datetime, only: list[int] | None = None) -> dict[int, Decimal]:
    """Each tenant's cost so far today (UTC), from the day's rollups."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    query = (
        select(UsageRollup.tenant_id, func.sum(UsageRollup.cost))
        .where(UsageRollup.granularity == "day", UsageRollup.bucket_start == day)
        .group_by(UsageRollup.tenant_id)
    )
    rows = db.session.execute(_only(query, UsageRollup.tenant_id, only))
    return {tenant_id: Decimal(cost or 0) for tenant_id, cost in rows}


@dataclass(frozen=True)
class PlanLimits:
    monthly_quota: int | None
    per_day: int


def plan_limits(only: list[int] | None = None) -> dict[int, PlanLimits]:
    query = (
        select(Subscription.tenant_id, Plan.monthly_quota, Plan.per_day)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(Subscription.ended_at.is_(None))
    )
    rows = db.session.execute(_only(query, Subscription.tenant_id, only))
    return {tenant_id: PlanLimits(quota, per_day) for tenant_id, quota, per_day in rows}


def _mget(redis: Redis, names: list[str]) -> list[int | None]:
    values: list[int | None] = []
    for i in range(0, len(names), MGET_CHUNK):
        values += [None if v is None else int(v) for v in redis.mget(names[i : i + MGET_CHUNK])]
    return values


def day_window_key(tenant_id: int, now: datetime) -> str:
    """The admission script's per-day counter (see portal.metering.admission)."""
    return window_keys(tenant_id, int(now.timestamp()))[2]


@dataclass
class Counters:
    quota_used: dict[int, int]
    day_used: dict[int, int]
    failed_auth: dict[int, float]


def redis_counters(redis: Redis, tenant_ids: list[int], now: datetime, only: list[int] | None = None) -> Counters:
    """The live counters: calls admitted this period and today, failed authentications in the
    trailing hour (API keys from Redis, portal sign-ins from the audit log)."""
    hour = int(now.timestamp()) // 3600
    since = now - HOUR
    previous_weight = bucket_weight(datetime.fromtimestamp((hour - 1) * 3600, now.tzinfo), since, now)
    names = []
    for tenant_id in tenant_ids:
        names += [
            quota_key(tenant_id, now),
            day_window_key(tenant_id, now),
            auth_failure_key(tenant_id, hour),
            auth_failure_key(tenant_id, hour - 1),
        ]
    values = _mget(redis, names)
    counters = Counters({}, {}, {})
    counters_lost = []
    for i, tenant_id in enumerate(tenant_ids):
        quota, day, this_hour, last_hour = values[4 * i : 4 * i + 4]
        if quota is None:
            counters_lost.append(tenant_id)
        counters.quota_used[tenant_id] = quota or 0
        counters.day_used[tenant_id] = day or 0
        counters.failed_auth[tenant_id] = (this_hour or 0) + (last_hour or 0) * previous_weight
    if counters_lost:  # no call admitted since Redis lost the counter: the stored records count
        counters.quota_used.update(admitted_calls(counters_lost, *billing_period(now)))
    query = (
        select(AuditEvent.tenant_id, func.count())
        .where(AuditEvent.action == "login.failure", AuditEvent.created_at > since, AuditEvent.tenant_id.is_not(None))
        .group_by(AuditEvent.tenant_id)
    )
    sign_ins = db.session.execute(_only(query, AuditEvent.tenant_id, only))
    for tenant_id, count in sign_ins:
        counters.failed_auth[tenant_id] = counters.failed_auth.get(tenant_id, 0) + count
    return counters


def period_keys(now: datetime) -> dict[str, str]:
    start, _ = billing_period(now)
    return {"month": f"{start:%Y-%m}", "day": f"{now:%Y-%m-%d}"}
