"""The API's cost operations: reporting outside-service calls, service limits and acquires,
budgets, cost reports and the account's settings."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from flask import Response, g, jsonify, request
from redis import RedisError

from ..costs import budgets as budget_domain
from ..costs import service_limits
from ..costs.events import report_events
from ..costs.report import cost_report, report_csv, report_json, shown
from ..extensions import db
from ..kernel import clock
from ..kernel.audit import record_event
from ..kernel.times import iso
from ..metering.stream import STREAM
from ..models import Tenant
from ..redis_store import get_redis
from . import bp
from .bodies import (
    FUTURE_SLACK,
    LATE_ARRIVAL,
    AccountSettingsBody,
    AcquireBody,
    BudgetBody,
    BudgetChange,
    EventsBody,
    ServiceLimitBody,
    UsageEvent,
    UsageEventFields,
)
from .guard import api_error
from .operations import operation, parse_body
from .schemas import CostReportQuery, RateLimitQuery
from .views import caller, limit_specs, tenant_id, utcnow


@bp.post("/usage/events")
@operation(
    "Report calls made to outside services",
    category="usage",
    tag="costs",
    status=202,
    budget_exempt=True,
    responses={503: "Redis is unreachable: nothing was stored, send the events again"},
    description=UsageEvent.__doc__ or "",
)
def usage_events():
    payload = _events_payload()
    now = clock.seconds()
    events = [event.as_event(now) for event in payload]
    call = g.api_call
    refused = _outside_window(events, now, call.entry.tenant_since, batch=len(payload) > 1)
    if refused:
        return api_error(422, refused)
    try:
        reported = report_events(get_redis(), STREAM, tenant_id(), call.entry.key_id, limit_specs(), events, now)
    except RedisError:
        response = api_error(503, "Service temporarily unavailable: the events were not stored; send them again")
        response.headers["Retry-After"] = "5"
        return response
    body = {"success": True, "accepted": len(events), "duplicates": reported.duplicates, "ids": reported.ids}
    return body, 202


def _outside_window(events: list[dict], now: float, tenant_since: float, batch: bool) -> str | None:
    """Why some events' times are refused: ahead of the clock, or older than the tenant or the
    late-arrival window (a period long closed). None when every time is accepted."""
    latest = now + FUTURE_SLACK.total_seconds()
    earliest = max(now - LATE_ARRIVAL.total_seconds(), tenant_since)

    def where(positions: list[int]) -> str:
        return ", ".join(f"events[{n}].occurred_at" for n in positions) if batch else "occurred_at"

    future = [n for n, event in enumerate(events) if event["occurred_at"] > latest]
    if future:
        return f"{where(future)}: lies in the future (more than 5 minutes ahead of the server's clock)"
    past = [n for n, event in enumerate(events) if event["occurred_at"] < earliest]
    if past:
        since = iso(earliest)
        why = (
            "the account was made then"
            if earliest == tenant_since
            else f"events arrive at most {LATE_ARRIVAL.days} days late"
        )
        return f"{where(past)}: too old; the earliest time accepted is {since} ({why})"
    return None


# The view validates its body itself (see _events_payload); it is documented as any other.
usage_events.operation = replace(usage_events.operation, body=EventsBody)


def _events_payload() -> list[UsageEventFields]:
    """The request's events: a batch valid as sent straight from its JSON bytes, anything else as
    every body is read (the same answers and the same 422s)."""
    if request.is_json:
        events = EventsBody.parse_batch_bytes(request.get_data(cache=True))
        if events is not None:
            return events
    return parse_body(EventsBody)


@bp.post("/usage/rate-limits/<service:service>/acquire")
@operation(
    "Take a permit to call an outside service, if every window allows it",
    category="usage",
    tag="costs",
    body=AcquireBody,
    responses={
        422: "the body is invalid, or the units exceed a window's whole limit",
        503: "Redis is unreachable and the account fails closed",
    },
)
def acquire(service: str, payload: AcquireBody):
    call = g.api_call
    service = service.lower()
    try:
        result = service_limits.acquire(
            get_redis(),
            tenant_id(),
            limit_specs(),
            service,
            units=payload.units,
            model=payload.model or "",
            key_id=call.entry.key_id,
            end_user=payload.user_id or "",
            now=clock.seconds(),
        )
    except service_limits.UnitsTooLarge as error:
        return api_error(422, str(error))
    except RedisError:
        return _acquire_without_redis(service, payload)
    if result.stop_detail:
        return api_error(402, result.stop_detail)
    body = {
        "success": True,
        "can_call": result.granted,
        "permit_id": result.permit_id,
        "service_name": service,
        "units": payload.units,
        "limits": result.windows,
    }
    if result.granted:
        return body
    waits = ", ".join(result.refused or [])
    body["detail"] = f"Rate limit exceeded for {service} ({waits}). Try again in {result.retry_after} seconds"
    response = jsonify(body)
    response.status_code = 429
    response.headers["Retry-After"] = str(result.retry_after)
    return response


def _acquire_without_redis(service: str, payload: AcquireBody):
    policy = db.session.get(Tenant, tenant_id()).limits_when_redis_down
    if policy == "closed":
        response = api_error(503, "Service limits cannot be checked now (the account fails closed); try again")
        response.headers["Retry-After"] = "5"
        return response
    # Seed 000's "best effort": the call may go ahead, and its event is counted when reported.
    return {
        "success": True,
        "can_call": True,
        "permit_id": None,
        "service_name": service,
        "units": payload.units,
        "limits": [],
        "degraded": True,
    }


@bp.put("/usage/rate-limits/<service:service>")
@operation(
    "Set a limit on an outside service (or one model of it)",
    category="usage",
    tag="costs",
    body=ServiceLimitBody,
    scope="admin",
)
def set_service_limit(service: str, payload: ServiceLimitBody):
    limit = service_limits.set_limit(
        tenant_id(),
        service.lower(),
        payload.limit_type,
        payload.limit_value,
        payload.unit,
        payload.model,
        ip_address=request.remote_addr,
    )
    db.session.commit()
    spec = service_limits.LimitSpec(limit.service, limit.model, limit.window, limit.limit_value, limit.unit)
    now = clock.seconds()
    [status] = service_limits.statuses(get_redis(), tenant_id(), [spec], now)
    return {"success": True, "rate_limit": status}


@bp.delete("/usage/rate-limits/<service:service>")
@operation(
    "Remove a limit on an outside service",
    category="usage",
    tag="costs",
    query=RateLimitQuery,
    scope="admin",
)
def delete_service_limit(service: str, params: RateLimitQuery):
    removed = service_limits.delete_limit(
        tenant_id(), service.lower(), params.limit_type, params.model or "", ip_address=request.remote_addr
    )
    if not removed:
        return api_error(404, f"No {params.limit_type} limit is set for service {service!r}")
    db.session.commit()
    return {"success": True}


# -- budgets --------------------------------------------------------------------------------------
def _budget_json(status: budget_domain.BudgetStatus) -> dict:
    b = status.budget
    return {
        "id": b.id,
        "name": b.name,
        "amount": float(b.monthly_amount),
        "service": b.service,
        "api_key_id": b.api_key_id,
        "user_id": b.end_user,
        "warning_percentages": b.warning_percentages,
        "hard_stop": b.hard_stop,
        "spend": shown(status.spend),
        "remaining": shown(max(b.monthly_amount - status.spend, Decimal(0))),
        "percentage_used": round(status.fraction * 100, 2),
        "crossed": status.crossed,
        "stopped": status.stopped,
        "period_start": iso(status.period_start),
        "resets_at": iso(status.period_end),
    }


def _saved(budget) -> dict:
    [status] = budget_domain.budget_statuses([budget], utcnow())
    return _budget_json(status)


def _actor() -> budget_domain.Actor:
    return budget_domain.Actor(**caller())


@bp.get("/budgets")
@operation("Budgets and their spend this month", category="costs", tag="costs", budget_exempt=True)
def list_budgets():
    statuses = budget_domain.budget_statuses(budget_domain.tenant_budgets(tenant_id()), utcnow())
    return {"success": True, "budgets": [_budget_json(s) for s in statuses]}


@bp.post("/budgets")
@operation(
    "Create a monthly budget",
    category="costs",
    tag="costs",
    body=BudgetBody,
    scope="admin",
    status=201,
    budget_exempt=True,
)
def create_budget(payload: BudgetBody):
    try:
        budget = budget_domain.add_budget(
            tenant_id(),
            payload.name,
            payload.amount,
            _actor(),
            get_redis(),
            utcnow(),
            service=payload.service,
            api_key_id=payload.api_key_id,
            end_user=payload.user_id,
            warning_percentages=payload.warning_percentages,
            hard_stop=payload.hard_stop,
        )
    except budget_domain.BudgetError as error:
        return api_error(422, str(error))
    return {"success": True, "budget": _saved(budget)}, 201


def _owned_budget(budget_id: str):
    budget = budget_domain.get_budget(tenant_id(), int(budget_id)) if int(budget_id) < 2**31 else None
    if budget is None:
        return None, api_error(404, f"No budget {budget_id}")
    return budget, None


@bp.put("/budgets/<record_id:budget_id>")
@operation("Change a budget", category="costs", tag="costs", body=BudgetChange, scope="admin", budget_exempt=True)
def update_budget(budget_id: str, payload: BudgetChange):
    budget, missing = _owned_budget(budget_id)
    if missing:
        return missing
    changes = payload.model_dump(exclude_unset=True)
    if "user_id" in changes:
        changes["end_user"] = changes.pop("user_id")
    # null leaves a field as it is; for a scope (service, key, end user) it removes the scope.
    changes = {k: v for k, v in changes.items() if v is not None or k in budget_domain.SCOPES}
    try:
        budget_domain.change_budget(budget, changes, _actor(), get_redis(), utcnow())
    except budget_domain.BudgetError as error:
        return api_error(422, str(error))
    return {"success": True, "budget": _saved(budget)}


@bp.delete("/budgets/<record_id:budget_id>")
@operation("Delete a budget", category="costs", tag="costs", scope="admin", budget_exempt=True)
def delete_budget(budget_id: str):
    budget, missing = _owned_budget(budget_id)
    if missing:
        return missing
    budget_domain.delete_budget(budget, _actor(), get_redis(), utcnow())
    return {"success": True}


# -- reports and settings -------------------------------------------------------------------------
@bp.get("/costs/report")
@operation(
    "Spend grouped by service, model, endpoint, key, end user or day",
    category="costs",
    tag="costs",
    query=CostReportQuery,
)
def costs_report(params: CostReportQuery):
    report = cost_report(tenant_id(), params.group_by, params.startDate, params.endDate, params.source, params.service)
    if params.format == "csv":
        name = f"costs-by-{params.group_by}-{params.startDate}-{params.endDate}.csv"
        return Response(
            report_csv(report),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return {"success": True, **report_json(report)}


@bp.get("/account/settings")
@operation("The account's settings", category="system", tag="account")
def account_settings():
    tenant = db.session.get(Tenant, tenant_id())
    return {"success": True, "settings": {"limits_when_redis_down": tenant.limits_when_redis_down}}


@bp.put("/account/settings")
@operation("Change the account's settings", category="system", tag="account", body=AccountSettingsBody, scope="admin")
def change_account_settings(payload: AccountSettingsBody):
    tenant = db.session.get(Tenant, tenant_id())
    if tenant.limits_when_redis_down != payload.limits_when_redis_down:
        tenant.limits_when_redis_down = payload.limits_when_redis_down
        record_event(
            "settings.changed",
            tenant.id,
            None,
            request.remote_addr,
            limits_when_redis_down=payload.limits_when_redis_down,
        )
    db.session.commit()
    return {"success": True, "settings": {"limits_when_redis_down": tenant.limits_when_redis_down}}
