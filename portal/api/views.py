"""The API's operations (the seeds' usage, rate-limit, account and billing endpoints)."""

from __future__ import annotations

from datetime import datetime

from flask import current_app, g, request

from ..analytics import reports
from ..billing.usage import billing_usage, subscription_info
from ..costs import service_limits
from ..kernel import clock
from ..metering.quota import quota_used
from ..redis_store import get_redis
from . import bp, docs_bp
from .guard import api_error, gate, rate_limited
from .openapi import build_openapi
from .operations import InvalidBody, InvalidQuery, ScopeRequired, operation
from .schemas import (
    AccountUsageQuery,
    ApiUsageQuery,
    LogsQuery,
    RateLimitQuery,
    RateLimitsQuery,
    StatsQuery,
)


def tenant_id() -> int:
    return g.api_call.entry.tenant_id


def limit_specs() -> tuple[service_limits.LimitSpec, ...]:
    """The tenant's outside-service limits (cached per process, per configuration version)."""
    state = gate()
    return state.limits.get(tenant_id(), state.keys.version)


def caller() -> dict:
    """Who makes a change through the API, for its audit event: no user, the caller's address
    and API key."""
    call = g.get("api_call")
    return {"user_id": None, "ip_address": request.remote_addr, "api_key_id": call.entry.key_id if call else None}


def utcnow() -> datetime:
    """The API's clock, as a UTC time (the same clock stamps the metered calls)."""
    return clock.now()


@bp.errorhandler(429)
def too_many_requests(error):
    call = g.get("api_call")
    if call is None or call.decision is None or call.decision.refused_by is None:
        return api_error(429, "Too many requests")
    return rate_limited(call.decision.refused_by)


@bp.errorhandler(InvalidQuery)
@bp.errorhandler(InvalidBody)
@bp.errorhandler(ScopeRequired)
def invalid_request(error):
    return api_error(error.code, error.description)


@bp.get("/ping")
@operation("Check a key: the smallest protected call", category="system", tag="system")
def ping():
    return {"ok": True}


@bp.get("/usage/stats")
@operation("Usage totals by service and by day", category="analytics", tag="usage", query=StatsQuery)
def usage_stats(params: StatsQuery):
    return {"success": True, "stats": reports.usage_stats(tenant_id(), utcnow(), params.days, params.service)}


@bp.get("/usage/logs")
@operation("Metered calls, newest first, paged", category="analytics", tag="usage", query=LogsQuery)
def usage_logs(params: LogsQuery):
    logs, total = reports.usage_logs(tenant_id(), params.service, params.limit, params.offset)
    return {"success": True, "logs": logs, "total": total, "limit": params.limit, "offset": params.offset}


@bp.get("/usage/summary")
@operation("Today, this month and outside services' limits", category="analytics", tag="usage")
def usage_summary():
    limits = service_limits.statuses(get_redis(), tenant_id(), list(limit_specs()), clock.seconds())
    return {"success": True, "summary": reports.usage_summary(tenant_id(), utcnow(), limits)}


@bp.get("/usage/rate-limits")
@operation("Every limit on outside services and its use", category="analytics", tag="usage", query=RateLimitsQuery)
def rate_limits(params: RateLimitsQuery):
    specs = [spec for spec in limit_specs() if not params.service or spec.service == params.service.lower()]
    statuses = service_limits.statuses(get_redis(), tenant_id(), specs, clock.seconds())
    for status in statuses:
        del status["can_call"]
    return {"success": True, "rate_limits": statuses}


@bp.get("/usage/rate-limits/<service:service>")
@operation("Whether an outside service may be called now", category="analytics", tag="usage", query=RateLimitQuery)
def rate_limit(service: str, params: RateLimitQuery):
    model = params.model or ""
    specs = [
        spec
        for spec in limit_specs()
        if spec.service == service.lower() and spec.window == params.limit_type and spec.model == model
    ]
    if not specs:
        return api_error(404, f"No {params.limit_type} limit is set for service {service!r}")
    [status] = service_limits.statuses(get_redis(), tenant_id(), specs, clock.seconds())
    keys = ("can_call", "current_count", "limit_value", "remaining", "reset_at", "unit")
    return {"success": True, **{key: status[key] for key in keys}}


@bp.get("/account/usage")
@operation("API requests per interval between two dates", category="analytics", tag="account", query=AccountUsageQuery)
def account_usage(params: AccountUsageQuery):
    report = reports.account_usage(tenant_id(), params.startDate, params.endDate, params.interval, params.category)
    return {"success": True, **report}


@bp.get("/billing/usage")
@operation("Use of each plan limit this billing period", category="billing", tag="billing")
def billing_usage_view():
    now = utcnow()
    used = quota_used(get_redis(), tenant_id(), now)
    return {"success": True, "usage": billing_usage(tenant_id(), now, used)}


@bp.get("/billing/subscription")
@operation("The subscription, its plan and period", category="billing", tag="billing")
def billing_subscription():
    return {"success": True, "subscription": subscription_info(tenant_id())}


@bp.get("/billing/api-usage")
@operation("Analytics of the protected API's use", category="billing", tag="billing", query=ApiUsageQuery)
def billing_api_usage(params: ApiUsageQuery):
    return {"success": True, "data": reports.api_usage(get_redis(), tenant_id(), utcnow(), params.days)}


@docs_bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI description of this API (public, no key needed)."""
    document = current_app.extensions.get("tollgate.openapi")
    if document is None:
        document = current_app.extensions["tollgate.openapi"] = build_openapi(current_app)
    return document
