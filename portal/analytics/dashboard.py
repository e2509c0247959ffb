"""The dashboard's figures: plan, quota, live windows, today and this month, the API's health,
the last 30 days, top endpoints and consumers, and open alerts.

Everything comes from the daily rollups and one Redis round trip (the admission script's window
counters and the quota counter), in a fixed number of statements: the count does not grow with
keys, end users or days.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import and_, func, select

from ..alerts.metrics import Sums
from ..alerts.service import list_alerts, open_counts
from ..billing.recommend import Recommendation, recommend
from ..extensions import db
from ..kernel.periods import billing_period
from ..kernel.redis_keys import quota_key
from ..metering.admission import WINDOWS, window_keys
from ..metering.quota import rebuild_quota_counter
from ..models import LATENCY_COLUMNS, Alert, ApiKey, Plan, Subscription, UsageRollup
from .totals import DayCalls

log = logging.getLogger("tollgate.dashboard")

CHART_DAYS = 30
TOP_ENDPOINTS = 8
TOP_CONSUMERS = 5
SHOWN_ALERTS = 5
WINDOW_LABELS = {"minute": "This minute", "hour": "This hour", "day": "Today"}
# Categories as the badges say them; others are shown capitalised.
CATEGORY_LABELS = {
    "": "Uncategorised",
    "auth": "Authentication",
    "analytics": "Analytics",
    "billing": "Billing",
    "system": "System",
    "llm": "LLM",
    "social": "Social",
}


def category_label(category: str) -> str:
    return CATEGORY_LABELS.get(category, category.replace("_", " ").replace("-", " ").capitalize())


# -- the figures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowUse:
    """One plan window's live use (minute, hour or day)."""

    name: str
    used: int
    limit: int
    resets_at: datetime

    @property
    def label(self) -> str:
        return WINDOW_LABELS[self.name]

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


@dataclass(frozen=True)
class Quota:
    """The monthly quota: calls admitted this period, of how many, and when it resets."""

    used: int
    limit: int | None
    resets_at: datetime
    # True when ``used`` is the live Redis counter, False when it was counted from the rollups.
    live: bool

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    @property
    def fraction(self) -> float | None:
        return None if not self.limit else self.used / self.limit


@dataclass(frozen=True)
class Figures:
    calls: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)


@dataclass(frozen=True)
class ApiHealth:
    """The protected API's calls this period: outcomes and latency."""

    calls: int
    errors: int
    rate_limited: int
    duration_ms_sum: int
    p95_ms: float | None

    @property
    def success_rate(self) -> float | None:
        return None if not self.calls else (self.calls - self.errors) / self.calls

    @property
    def error_rate(self) -> float | None:
        return None if not self.calls else self.errors / self.calls

    @property
    def avg_ms(self) -> float | None:
        return None if not self.calls else self.duration_ms_sum / self.calls


@dataclass(frozen=True)
class EndpointUse:
    endpoint: str
    method: str
    category: str
    calls: int
    errors: int
    share: float

    @property
    def category_label(self) -> str:
        return category_label(self.category)

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Consumer:
    """An API key or an end user, with its use this period."""

    name: str
    calls: int
    tokens: int
    cost: Decimal
    key_id: int | None = None
    prefix: str | None = None
    # False for a key deleted since (its rollups outlive it).
    exists: bool = True


@dataclass(frozen=True)
class Dashboard:
    plan: Plan
    subscription: Subscription
    now: datetime
    period_start: datetime
    period_end: datetime
    quota: Quota
    # None when Redis could not be read.
    windows: list[WindowUse] | None
    today: Figures
    month: Figures
    api: ApiHealth
    days: list[DayCalls]
    endpoints: list[EndpointUse]
    top_keys: list[Consumer]
    top_end_users: list[Consumer]
    alerts: list[Alert]
    open_alerts: int
    # The quota forecast at this pace and the upgrade it calls for.
    recommendation: Recommendation

    @property
    def period_last_day(self) -> datetime:
        return self.period_end - timedelta(days=1)


# -- reading -------------------------------------------------------------------------------------
def day_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def plan_and_subscription(tenant_id: int) -> tuple[Plan, Subscription]:
    """The subscription in force and its plan, in one statement."""
    return db.session.execute(
        select(Plan, Subscription)
        .join(Subscription, Subscription.plan_id == Plan.id)
        .where(Subscription.tenant_id == tenant_id, Subscription.ended_at.is_(None))
        .order_by(Subscription.started_at.desc())
        .limit(1)
    ).one()


def live_counters(redis: Redis, tenant_id: int, now: datetime) -> list[int | None] | None:
    """The minute, hour and day window counts and the period's quota count (None where the
    counter does not exist), in one MGET; None when Redis cannot be read."""
    names = [*window_keys(tenant_id, int(now.timestamp())), quota_key(tenant_id, now)]
    try:
        values = redis.mget(names)
    except RedisError as error:
        log.warning("dashboard: live counters unavailable for tenant %s: %s", tenant_id, error)
        return None
    return [None if v is None else int(v) for v in values]


def window_uses(plan: Plan, counts: list[int | None], now: datetime) -> list[WindowUse]:
    second = int(now.timestamp())
    limits = {"minute": plan.per_minute, "hour": plan.per_hour, "day": plan.per_day}
    return [
        WindowUse(name, count or 0, limits[name], datetime.fromtimestamp((second // span + 1) * span, UTC))
        for (name, span), count in zip(WINDOWS, counts, strict=True)
    ]


def _in_period(tenant_id: int, start: datetime, end: datetime) -> list:
    return [
        UsageRollup.tenant_id == tenant_id,
        UsageRollup.granularity == "day",
        UsageRollup.bucket_start >= start,
        UsageRollup.bucket_start < end,
    ]


def _tokens():
    return func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out)


def _days(tenant_id: int, start: datetime, end: datetime) -> list:
    """Per day and source: counts, tokens, cost, durations and the latency histogram."""
    return db.session.execute(
        select(
            UsageRollup.bucket_start,
            UsageRollup.source,
            func.sum(UsageRollup.calls).label("calls"),
            func.sum(UsageRollup.errors).label("errors"),
            func.sum(UsageRollup.rate_limited).label("rate_limited"),
            _tokens().label("tokens"),
            func.sum(UsageRollup.cost).label("cost"),
            func.sum(UsageRollup.duration_ms_sum).label("duration_sum"),
            *(func.sum(getattr(UsageRollup, c)).label(c) for c in LATENCY_COLUMNS),
        )
        .where(*_in_period(tenant_id, start, end))
        .group_by(UsageRollup.bucket_start, UsageRollup.source)
    ).all()


def _figures(rows: list) -> Figures:
    return Figures(
        sum(int(r.calls) for r in rows),
        sum(int(r.tokens) for r in rows),
        sum((Decimal(r.cost or 0) for r in rows), Decimal(0)),
    )


def _api_health(rows: list) -> ApiHealth:
    histogram = Sums()
    for row in rows:
        for i, column in enumerate(LATENCY_COLUMNS):
            histogram.histogram[i] += float(getattr(row, column))
    p95 = histogram.percentile_ms(0.95)
    return ApiHealth(
        calls=sum(int(r.calls) for r in rows),
        errors=sum(int(r.errors) for r in rows),
        rate_limited=sum(int(r.rate_limited) for r in rows),
        duration_ms_sum=sum(int(r.duration_sum) for r in rows),
        p95_ms=None if p95 is None else round(p95, 1),
    )


def _chart(rows: list, first: datetime, days: int) -> list[DayCalls]:
    by_day: dict = {}
    for row in rows:
        if row.source == "api":
            by_day[row.bucket_start.date()] = (int(row.calls), int(row.errors))
    chart = []
    for offset in range(days):
        day = (first + timedelta(days=offset)).date()
        calls, errors = by_day.get(day, (0, 0))
        chart.append(DayCalls(day, calls, errors))
    return chart


def top_endpoints(tenant_id: int, start: datetime, end: datetime, total_calls: int) -> list[EndpointUse]:
    """The protected API's busiest endpoints: their category, share of calls and errors."""
    calls = func.sum(UsageRollup.calls)
    rows = db.session.execute(
        select(UsageRollup.endpoint, UsageRollup.method, UsageRollup.category, calls, func.sum(UsageRollup.errors))
        .where(*_in_period(tenant_id, start, end), UsageRollup.source == "api")
        .group_by(UsageRollup.endpoint, UsageRollup.method, UsageRollup.category)
        .order_by(calls.desc(), UsageRollup.endpoint, UsageRollup.method)
        .limit(TOP_ENDPOINTS)
    ).all()
    return [
        EndpointUse(endpoint, method, category, int(c), int(e), int(c) / total_calls if total_calls else 0.0)
        for endpoint, method, category, c, e in rows
    ]


def top_keys(tenant_id: int, start: datetime, end: datetime) -> list[Consumer]:
    """The API keys with the most calls (of both sources), their names joined in."""
    calls = func.sum(UsageRollup.calls)
    rows = db.session.execute(
        select(
            UsageRollup.api_key_id,
            ApiKey.name,
            ApiKey.prefix,
            calls,
            _tokens(),
            func.sum(UsageRollup.cost),
        )
        .outerjoin(ApiKey, and_(ApiKey.id == UsageRollup.api_key_id, ApiKey.tenant_id == UsageRollup.tenant_id))
        .where(*_in_period(tenant_id, start, end), UsageRollup.api_key_id != 0)
        .group_by(UsageRollup.api_key_id, ApiKey.name, ApiKey.prefix)
        .order_by(calls.desc(), UsageRollup.api_key_id)
        .limit(TOP_CONSUMERS)
    ).all()
    return [
        Consumer(
            name or "Deleted key",
            int(c),
            int(t),
            Decimal(cost or 0),
            key_id=key_id,
            prefix=prefix,
            exists=name is not None,
        )
        for key_id, name, prefix, c, t, cost in rows
    ]


def top_end_users(tenant_id: int, start: datetime, end: datetime) -> list[Consumer]:
    calls = func.sum(UsageRollup.calls)
    rows = db.session.execute(
        select(UsageRollup.end_user, calls, _tokens(), func.sum(UsageRollup.cost))
        .where(*_in_period(tenant_id, start, end), UsageRollup.end_user != "")
        .group_by(UsageRollup.end_user)
        .order_by(calls.desc(), UsageRollup.end_user)
        .limit(TOP_CONSUMERS)
    ).all()
    return [Consumer(user, int(c), int(t), Decimal(cost or 0)) for user, c, t, cost in rows]


def build(redis: Redis, tenant_id: int, now: datetime) -> Dashboard:
    """Every figure of the tenant's dashboard at ``now``."""
    plan, subscription = plan_and_subscription(tenant_id)
    period_start, period_end = billing_period(now)
    today = day_start(now)
    tomorrow = today + timedelta(days=1)
    chart_start = today - timedelta(days=CHART_DAYS - 1)
    rows = _days(tenant_id, min(period_start, chart_start), tomorrow)
    month_rows = [r for r in rows if r.bucket_start >= period_start]
    api_month = [r for r in month_rows if r.source == "api"]
    api = _api_health(api_month)

    counters = live_counters(redis, tenant_id, now)
    quota_count = None if counters is None else counters[3]
    if counters is not None and quota_count is None:
        # The period's counter is gone (or the period is new): rebuilt from the records, as the
        # next call would.
        try:
            quota_count = rebuild_quota_counter(redis, tenant_id, now.timestamp())
        except RedisError as error:
            log.warning("dashboard: quota counter of tenant %s not rebuilt: %s", tenant_id, error)
    # Without Redis, count admitted calls from the rollups: refused calls (429) used no quota.
    used = api.calls - api.rate_limited if quota_count is None else quota_count
    quota = Quota(used, plan.monthly_quota, period_end, live=quota_count is not None)

    return Dashboard(
        plan=plan,
        subscription=subscription,
        now=now,
        period_start=period_start,
        period_end=period_end,
        quota=quota,
        windows=None if counters is None else window_uses(plan, counters[:3], now),
        today=_figures([r for r in rows if r.bucket_start == today]),
        month=_figures(month_rows),
        api=api,
        days=_chart(rows, chart_start, CHART_DAYS),
        endpoints=top_endpoints(tenant_id, period_start, tomorrow, api.calls),
        top_keys=top_keys(tenant_id, period_start, tomorrow),
        top_end_users=top_end_users(tenant_id, period_start, tomorrow),
        alerts=list_alerts(tenant_id, limit=SHOWN_ALERTS),
        open_alerts=open_counts([tenant_id]).get(tenant_id, 0),
        recommendation=recommend(redis, tenant_id, now, used=quota.used, subscription=subscription),
    )


def countdown_text(until: datetime, now: datetime) -> str:
    """How long until ``until``, as the countdown script first shows it ("in 12d 11h")."""
    seconds = int((until - now).total_seconds())
    if seconds <= 0:
        return "now"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"in {days}d {hours}h"
    if hours:
        return f"in {hours}h {minutes}m"
    return f"in {minutes}m {seconds}s"
