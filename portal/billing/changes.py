"""A tenant admin's plan changes, and the period so far.

An upgrade (a plan with a higher monthly price) applies at once: the next call gets the new
plan's windows and quota, and the fee is prorated between the two plans. A downgrade waits for
the end of the period and is shown as pending until then (choosing the current plan again
cancels it). Each change is an audit event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from ..kernel.audit import record_event
from ..kernel.times import iso
from ..models import Plan, Subscription, Tenant
from .plans import get_plan, subscribe
from .statements import draft_statements, to_cent
from .usage import current_subscription

# The forecast waits for this share of the period: a run rate of one morning says little.
FORECAST_AFTER = Decimal("0.1")


class PlanChangeError(ValueError):
    pass


def change_plan(
    tenant: Tenant, code: str, now: datetime, user_id: int | None = None, ip_address: str | None = None
) -> dict:
    """Move ``tenant`` to the plan ``code``: at once if it costs more, else at the period end."""
    plan = get_plan(code)
    subscription = current_subscription(tenant.id)
    current = subscription.plan
    if plan.id == current.id:
        if subscription.scheduled_plan_id is None:
            raise PlanChangeError(f"the account is on the {plan.name} plan already")
        subscription.scheduled_plan_id = None
        record_event("plan.change_cancelled", tenant.id, user_id, ip_address, plan=plan.code)
        return {"applies": "now", "plan": plan.code, "cancelled": True}
    if plan.monthly_price > current.monthly_price:
        new = subscribe(tenant, plan, now)
        new.allow_overage = subscription.allow_overage and plan.overage_price_per_1000 is not None
        new.overage_cap = subscription.overage_cap if new.allow_overage else None
        # The period stays where it was: only the plan changes, mid-period.
        new.current_period_start = subscription.current_period_start
        new.current_period_end = subscription.current_period_end
        moved = {"from": current.code, "to": plan.code, "applies": "now"}
        record_event("plan.changed", tenant.id, user_id, ip_address, **moved)
        return {"applies": "now", "plan": plan.code, "effective_at": iso(now)}
    subscription.scheduled_plan_id = plan.id
    record_event(
        "plan.change_scheduled",
        tenant.id,
        user_id,
        ip_address,
        **{"from": current.code, "to": plan.code, "applies": iso(subscription.current_period_end)},
    )
    return {"applies": "period_end", "plan": plan.code, "effective_at": iso(subscription.current_period_end)}


def pending_change(subscription: Subscription) -> dict | None:
    plan: Plan | None = subscription.scheduled_plan
    if plan is None:
        return None
    return {"plan": plan.code, "name": plan.name, "effectiveAt": iso(subscription.current_period_end)}


def upcoming(tenant_id: int, now: datetime) -> dict:
    """The statement the period would get if it closed now, and a forecast at the run rate."""
    subscription = current_subscription(tenant_id)
    start, end = subscription.current_period_start, subscription.current_period_end
    [draft] = draft_statements([tenant_id], start, end, now)
    elapsed = max((min(now, end) - start).total_seconds(), 1.0)
    span = (end - start).total_seconds()
    share = Decimal(elapsed) / Decimal(span)
    body = {
        "periodStart": iso(start),
        "periodEnd": iso(end),
        "asOf": iso(now),
        "elapsedShare": float(round(share, 4)),
        "statement": draft_json(draft),
        "pendingPlanChange": pending_change(subscription),
        "forecast": None,
    }
    if share < FORECAST_AFTER:
        body["forecastNote"] = f"a forecast is shown once {FORECAST_AFTER:.0%} of the period has passed"
        return body
    usage_now = draft.total - draft.total_of("plan")
    rate = Decimal(1) / share
    plan = subscription.plan
    requests_forecast = int(Decimal(draft.requests) * rate)
    forecast = {
        "requests": requests_forecast,
        "usageCost": str(to_cent(usage_now * rate)),
        "total": str(to_cent(draft.total_of("plan") + usage_now * rate)),
        "quotaRunsOutAt": None,
    }
    if plan.monthly_quota is not None and draft.requests > 0:
        per_second = Decimal(draft.requests) / Decimal(elapsed)
        remaining = plan.monthly_quota - draft.requests
        if remaining <= 0:
            forecast["quotaRunsOutAt"] = iso(now)
        else:
            runs_out = now + timedelta(seconds=float(Decimal(remaining) / per_second))
            forecast["quotaRunsOutAt"] = iso(runs_out) if runs_out < end else None
    body["forecast"] = forecast
    return body


def money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def draft_json(draft) -> dict:
    return {
        "planCode": draft.plan_code,
        "requests": draft.requests,
        "includedRequests": draft.included_requests,
        "overageRequests": draft.overage_requests,
        "planFee": money(draft.total_of("plan")),
        "overage": money(draft.total_of("overage")),
        "tokenCost": money(draft.total_of("tokens")),
        "serviceCost": money(draft.total_of("service")),
        "adjustments": money(draft.total_of("adjustment")),
        "unpricedCalls": draft.unpriced_calls,
        "total": money(draft.total),
        "lines": [
            {
                "kind": line.kind,
                "description": line.description,
                "quantity": line.quantity,
                "unitPrice": money(line.unit_price),
                "amount": money(line.amount),
                "service": line.service,
                "model": line.model or None,
                "referencePeriod": line.reference_period,
            }
            for line in draft.lines
        ],
    }
