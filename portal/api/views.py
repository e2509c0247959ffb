from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from .. import reports
from ..billing_info import billing_usage, subscription_info
from ..redis_store import get_redis
from . import bp
from .guard import api_error, gate, rate_limited
from .schemas import (
    AccountUsageQuery,
    ApiUsageQuery,
    LogsQuery,
    RateLimitQuery,
    RateLimitsQuery,
    StatsQuery,
    describe_errors,
)

Q = TypeVar("Q", bound=BaseModel)


class InvalidQuery(HTTPException):
    code = 422


def category(name: str) -> Callable:
    """Tag a view with the usage category its calls are metered under."""

    def tag(view: Callable) -> Callable:
        view.usage_category = name
        return view

    return tag


def query(model: type[Q]) -> Q:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as error:
        raise InvalidQuery(describe_errors(error)) from None


def tenant_id() -> int:
    return g.api_call.entry.tenant_id


def utcnow() -> datetime:
    """The API's clock, as a UTC time (the same clock stamps the metered calls)."""
    return datetime.fromtimestamp(gate().clock(), UTC)


@bp.errorhandler(429)
def too_many_requests(error):
    call = g.get("api_call")
    if call is None or call.decision is None or call.decision.refused_by is None:
        return api_error(429, "Too many requests")
    return rate_limited(call.decision.refused_by)


@bp.errorhandler(InvalidQuery)
def invalid_query(error: InvalidQuery):
    return api_error(422, error.description)


@bp.get("/ping")
@category("system")
def ping():
    return {"ok": True}


@bp.get("/usage/stats")
@category("analytics")
def usage_stats():
    params = query(StatsQuery)
    return {"success": True, "stats": reports.usage_stats(tenant_id(), utcnow(), params.days, params.service)}


@bp.get("/usage/logs")
@category("analytics")
def usage_logs():
    params = query(LogsQuery)
    logs, total = reports.usage_logs(tenant_id(), params.service, params.limit, params.offset)
    return {"success": True, "logs": logs, "total": total, "limit": params.limit, "offset": params.offset}


@bp.get("/usage/summary")
@category("analytics")
def usage_summary():
    return {"success": True, "summary": reports.usage_summary(tenant_id(), utcnow())}


@bp.get("/usage/rate-limits")
@category("analytics")
def rate_limits():
    params = query(RateLimitsQuery)
    return {"success": True, "rate_limits": reports.rate_limits(tenant_id(), utcnow(), params.service)}


@bp.get("/usage/rate-limits/<service>")
@category("analytics")
def rate_limit(service: str):
    params = query(RateLimitQuery)
    status = reports.rate_limit_check(tenant_id(), utcnow(), service, params.limit_type)
    if status is None:
        return api_error(404, f"No {params.limit_type} limit is set for service {service!r}")
    return {"success": True, **status}


@bp.get("/account/usage")
@category("analytics")
def account_usage():
    params = query(AccountUsageQuery)
    report = reports.account_usage(tenant_id(), params.startDate, params.endDate, params.interval, params.category)
    return {"success": True, **report}


@bp.get("/billing/usage")
@category("billing")
def billing_usage_view():
    return {"success": True, "usage": billing_usage(get_redis(), tenant_id(), utcnow())}


@bp.get("/billing/subscription")
@category("billing")
def billing_subscription():
    return {"success": True, "subscription": subscription_info(tenant_id())}


@bp.get("/billing/api-usage")
@category("billing")
def billing_api_usage():
    params = query(ApiUsageQuery)
    return {"success": True, "data": reports.api_usage(get_redis(), tenant_id(), utcnow(), params.days)}
