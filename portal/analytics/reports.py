"""Usage reports for the JSON API, in the seeds' shapes.

Plain functions over the models: they take a tenant id and plain values and return
JSON-ready dictionaries. Aggregates come from the rollups; only the logs (and the current
minute/hour of an outside service's window) read raw records.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Select, func, select

from ..billing.usage import current_subscription
from ..extensions import db
from ..kernel.periods import billing_period, day_bounds
from ..kernel.times import iso
from ..metering.quota import quota_used
from ..metering.stream import EVENT_ID_PREFIX
from ..models import ApiKey, UsageRecord, UsageRollup
from .totals import totals as usage_totals

COST_PLACES = Decimal("0.000001")


def money(value: Decimal | int | None) -> float:
    """A cost for JSON: exact to the millionth of a dollar."""
    return float(Decimal(value or 0).quantize(COST_PLACES))


def day_start(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def rollup_conditions(tenant_id: int, start: datetime, end: datetime, granularity: str = "day") -> list:
    return [
        UsageRollup.tenant_id == tenant_id,
        UsageRollup.granularity == granularity,
        UsageRollup.bucket_start >= start,
        UsageRollup.bucket_start < end,
    ]


def _sums(query: Select) -> Select:
    return query.add_columns(
        func.coalesce(func.sum(UsageRollup.calls), 0),
        func.coalesce(func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out), 0),
        func.coalesce(func.sum(UsageRollup.cost), 0),
    )


def _totals(tenant_id: int, start: datetime, end: datetime) -> dict:
    sums = usage_totals(tenant_id, start, end)
    return {"calls": sums.calls, "tokens": sums.tokens, "cost": money(sums.cost)}


def usage_stats(tenant_id: int, now: datetime, days: int, service: str | None) -> dict:
    """Seed 003's ``/usage/stats``: totals, by service and by day over the last ``days`` days."""
    start = day_start(now) - timedelta(days=days - 1)
    end = day_start(now) + timedelta(days=1)
    conditions = rollup_conditions(tenant_id, start, end)
    if service:
        conditions.append(UsageRollup.service == service)
    services = db.session.execute(
        _sums(select(UsageRollup.service))
        .where(*conditions)
        .group_by(UsageRollup.service)
        .order_by(UsageRollup.service)
    ).all()
    by_service = {
        name: {"calls": int(calls), "tokens": int(tokens), "cost": money(cost)}
        for name, calls, tokens, cost in services
    }
    by_day = [
        {"date": bucket.date().isoformat(), "calls": int(calls), "tokens": int(tokens), "cost": money(cost)}
        for bucket, calls, tokens, cost in db.session.execute(
            _sums(select(UsageRollup.bucket_start))
            .where(*conditions)
            .group_by(UsageRollup.bucket_start)
            .order_by(UsageRollup.bucket_start)
        )
    ]
    total = {
        "total_calls": sum(s["calls"] for s in by_service.values()),
        "total_tokens": sum(s["tokens"] for s in by_service.values()),
        # Summed exactly, rounded once (as costs/report does).
        "total_cost": money(sum((Decimal(cost) for *_, cost in services), Decimal(0))),
    }
    return {**total, "by_service": by_service, "by_day": by_day}


def usage_logs(tenant_id: int, service: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
    """Seed 003's ``/usage/logs``: newest first, with the total for paging."""
    conditions = [UsageRecord.tenant_id == tenant_id]
    if service:
        conditions.append(UsageRecord.service == service)
    total = db.session.scalar(select(func.count()).select_from(UsageRecord).where(*conditions))
    records = db.session.scalars(
        select(UsageRecord)
        .where(*conditions)
        .order_by(UsageRecord.occurred_at.desc(), UsageRecord.id.desc())
        .limit(limit)
        .offset(offset)
    )
    logs = [
        {
            # A reported event shows the id its sender gave it.
            "id": record.idempotency_key.removeprefix(EVENT_ID_PREFIX)
            if record.source == "external"
            else record.idempotency_key,
            "service_name": record.service,
            "endpoint": record.endpoint,
            "method": record.method,
            "status_code": record.status_code,
            "tokens_used": record.tokens_used,
            "cost_usd": None if record.cost is None else money(record.cost),
            "duration_ms": record.duration_ms,
            "metadata": {**(record.meta or {}), **({"model": record.model} if record.model else {})},
            "created_at": iso(record.occurred_at),
        }
        for record in records
    ]
    return logs, int(total)


def usage_summary(tenant_id: int, now: datetime, limits: list[dict]) -> dict:
    """Seed 002's ``/usage/summary``: today, this month, and each outside service's limits
    (``limits``: their statuses, as :func:`portal.costs.service_limits.statuses` gives them)."""
    today = day_start(now)
    period_start, period_end = billing_period(now)
    summary: dict = {
        "today": _totals(tenant_id, today, today + timedelta(days=1)),
        "this_month": _totals(tenant_id, period_start, period_end),
    }
    for status in limits:
        name = status["service_name"] + (f"_{status['model']}" if status["model"] else "")
        summary.setdefault(f"{name}_limits", {})[f"per_{status['limit_type']}"] = {
            key: status[key] for key in ("can_call", "current_count", "limit_value", "remaining")
        }
    return summary


INTERVALS = ("hourly", "daily", "weekly", "monthly")


def interval_start(at: datetime, interval: str) -> datetime:
    """The start of the interval containing a rollup bucket (hourly and daily buckets are one)."""
    if interval in ("hourly", "daily"):
        return at
    if interval == "weekly":
        return day_start(at) - timedelta(days=at.weekday())
    return billing_period(at)[0]


def account_usage(tenant_id: int, start: date, end: date, interval: str, category: str | None) -> dict:
    """Seed 002's ``/account/usage``: requests per interval between two dates (inclusive)."""
    begin, finish = day_bounds(start, end)
    granularity = "hour" if interval == "hourly" else "day"
    conditions = rollup_conditions(tenant_id, begin, finish, granularity)
    conditions.append(UsageRollup.source == "api")
    if category:
        conditions.append(UsageRollup.category == category)
    rows = db.session.execute(
        select(
            UsageRollup.bucket_start,
            UsageRollup.category,
            UsageRollup.endpoint,
            func.sum(UsageRollup.calls),
            func.sum(UsageRollup.errors),
            func.sum(UsageRollup.duration_ms_sum),
        )
        .where(*conditions)
        .group_by(UsageRollup.bucket_start, UsageRollup.category, UsageRollup.endpoint)
    ).all()
    buckets: dict[datetime, list[int]] = {}
    by_category: dict[str, int] = {}
    by_endpoint: dict[str, list[int]] = {}
    for bucket, cat, endpoint, calls, errors, duration in rows:
        key = interval_start(bucket, interval)
        totals = buckets.setdefault(key, [0, 0, 0])
        totals[0] += int(calls)
        totals[1] += int(errors)
        totals[2] += int(duration)
        by_category[cat or "uncategorised"] = by_category.get(cat or "uncategorised", 0) + int(calls)
        ep = by_endpoint.setdefault(endpoint, [0, 0])
        ep[0] += int(calls)
        ep[1] += int(errors)
    usage = [_usage_point(key, *buckets[key], interval) for key in sorted(buckets)]
    calls = sum(b[0] for b in buckets.values())
    errors = sum(b[1] for b in buckets.values())
    duration = sum(b[2] for b in buckets.values())
    return {
        "startDate": start.isoformat(),
        "endDate": end.isoformat(),
        "interval": interval,
        "category": category,
        "totals": _usage_point(None, calls, errors, duration, interval),
        "usage": usage,
        "byCategory": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "topEndpoints": [
            {"endpoint": ep, "requests": c, "errors": e, "errorRate": round(e / c * 100, 2) if c else 0.0}
            for ep, (c, e) in sorted(by_endpoint.items(), key=lambda kv: -kv[1][0])[:10]
        ],
    }


def _usage_point(key: datetime | None, calls: int, errors: int, duration: int, interval: str) -> dict:
    point = {
        "requests": calls,
        "successful": calls - errors,
        "errors": errors,
        "successRate": round((calls - errors) / calls * 100, 2) if calls else 0.0,
        "errorRate": round(errors / calls * 100, 2) if calls else 0.0,
        "averageResponseTime": round(duration / calls, 1) if calls else 0.0,
    }
    if key is not None:
        point = {"period": iso(key) if interval == "hourly" else key.date().isoformat(), **point}
    return point


def top_keys(tenant_id: int, start: datetime, end: datetime, limit: int = 5) -> list[dict]:
    rows = db.session.execute(
        select(
            UsageRollup.api_key_id,
            func.sum(UsageRollup.calls),
            func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out),
            func.sum(UsageRollup.cost),
        )
        .where(*rollup_conditions(tenant_id, start, end), UsageRollup.api_key_id != 0)
        .group_by(UsageRollup.api_key_id)
        .order_by(func.sum(UsageRollup.calls).desc())
        .limit(limit)
    ).all()
    names = dict(
        db.session.execute(
            select(ApiKey.id, ApiKey.name).where(ApiKey.tenant_id == tenant_id, ApiKey.id.in_([r[0] for r in rows]))
        ).all()
    )
    return [
        {
            "apiKeyId": key_id,
            "name": names.get(key_id, "deleted key"),
            "requests": int(calls),
            "tokens": int(tokens),
            "cost": money(cost),
        }
        for key_id, calls, tokens, cost in rows
    ]


def api_usage(redis, tenant_id: int, now: datetime, days: int) -> dict:
    """Seed 004's ``/billing/api-usage``: summary, quota status, daily trend, endpoints,
    outcomes and top consumers (API keys) of the protected API."""
    start = day_start(now) - timedelta(days=days - 1)
    end = day_start(now) + timedelta(days=1)
    conditions = [*rollup_conditions(tenant_id, start, end), UsageRollup.source == "api"]
    sums = usage_totals(tenant_id, start, end, source="api")
    calls, errors, limited = sums.calls, sums.errors, sums.rate_limited
    trends = [
        {"date": bucket.date().isoformat(), "requests": int(c), "errors": int(e), "tokens": int(t)}
        for bucket, c, e, t in db.session.execute(
            select(
                UsageRollup.bucket_start,
                func.sum(UsageRollup.calls),
                func.sum(UsageRollup.errors),
                func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out),
            )
            .where(*conditions)
            .group_by(UsageRollup.bucket_start)
            .order_by(UsageRollup.bucket_start)
        )
    ]
    endpoints = [
        {
            "endpoint": endpoint,
            "method": method,
            "requests": int(c),
            "errors": int(e),
            "averageResponseTime": round(int(d) / int(c), 1) if c else 0.0,
        }
        for endpoint, method, c, e, d in db.session.execute(
            select(
                UsageRollup.endpoint,
                UsageRollup.method,
                func.sum(UsageRollup.calls),
                func.sum(UsageRollup.errors),
                func.sum(UsageRollup.duration_ms_sum),
            )
            .where(*conditions)
            .group_by(UsageRollup.endpoint, UsageRollup.method)
            .order_by(func.sum(UsageRollup.calls).desc())
            .limit(20)
        )
    ]
    quota = current_subscription(tenant_id).plan.monthly_quota
    used = quota_used(redis, tenant_id, now)
    return {
        "summary": {
            "totalRequests": calls,
            "successRate": round((calls - errors) / calls * 100, 2) if calls else 0.0,
            "totalTokens": sums.tokens,
            "averageResponseTime": round(sums.avg_duration_ms, 1),
            "estimatedCost": money(sums.cost),
        },
        "rateLimit": {
            "currentUsage": used,
            "monthlyLimit": quota,
            "remaining": None if quota is None else max(0, quota - used),
            "resetDate": iso(billing_period(now)[1]),
        },
        "statusCodes": {"success": calls - errors, "errors": errors - limited, "rateLimited": limited},
        "trends": trends,
        "endpoints": endpoints,
        "topConsumers": top_keys(tenant_id, start, end),
    }
