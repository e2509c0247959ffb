"""The portal's plan and billing page: the plans side by side and what choosing each would do,
the period so far (the statement it would get now) with its forecast, the closed statements,
the calls refused by rate limits day by day, and the quota forecast with its advice.

A fixed number of statements, whatever the number of statements, days or plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from redis import Redis
from sqlalchemy import func, select

from ..extensions import db
from ..models import Plan, Statement, Subscription, UsageRollup
from .changes import upcoming
from .plans import list_plans
from .recommend import Recommendation, recommend
from .statements import tenant_statements
from .usage import current_subscription

VIOLATION_DAYS = 90


def applies_now(current: Plan, target: Plan) -> bool:
    """The rule ``change_plan`` follows: a plan that costs more applies at once, any other at the
    period end."""
    return target.monthly_price > current.monthly_price


@dataclass(frozen=True)
class PlanOption:
    """One plan as the page offers it."""

    plan: Plan
    # "current", "keep" (the current plan, cancelling a scheduled change), "scheduled",
    # "upgrade" (applies now) or "downgrade" (applies at the period end)
    action: str


@dataclass(frozen=True)
class DraftLine:
    kind: str
    description: str
    quantity: int
    unit_price: Decimal | None
    amount: Decimal | None
    reference_period: str | None


@dataclass(frozen=True)
class PeriodSoFar:
    """The statement the period would get if it closed now, and the forecast at its pace."""

    start: datetime
    end: datetime
    elapsed_share: float
    requests: int
    included_requests: int | None
    overage_requests: int
    lines: list[DraftLine]
    plan_fee: Decimal
    overage: Decimal
    token_cost: Decimal
    service_cost: Decimal
    adjustments: Decimal
    unpriced_calls: int
    total: Decimal
    forecast_requests: int | None
    forecast_usage: Decimal | None
    forecast_total: Decimal | None
    forecast_note: str | None

    @property
    def last_day(self) -> datetime:
        return self.end - timedelta(days=1)


@dataclass(frozen=True)
class ViolationDay:
    day: date
    calls: int
    refused: int

    @property
    def share(self) -> float:
        return self.refused / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class BillingOverview:
    subscription: Subscription
    plan: Plan
    scheduled_plan: Plan | None
    options: list[PlanOption]
    period: PeriodSoFar
    statements: list[Statement]
    violations: list[ViolationDay]
    recommendation: Recommendation

    @property
    def refused_total(self) -> int:
        return sum(day.refused for day in self.violations)

    @property
    def violation_days(self) -> list[ViolationDay]:
        """The days with refusals, newest first."""
        return [day for day in reversed(self.violations) if day.refused]


def plan_options(plans: list[Plan], subscription: Subscription) -> list[PlanOption]:
    current = subscription.plan
    options = []
    for plan in plans:
        if plan.id == current.id:
            action = "keep" if subscription.scheduled_plan_id is not None else "current"
        elif plan.id == subscription.scheduled_plan_id:
            action = "scheduled"
        else:
            action = "upgrade" if applies_now(current, plan) else "downgrade"
        options.append(PlanOption(plan, action))
    return options


def _money(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def period_so_far(body: dict) -> PeriodSoFar:
    """``billing/upcoming``'s answer, typed."""
    statement = body["statement"]
    forecast = body["forecast"] or {}
    return PeriodSoFar(
        start=datetime.fromisoformat(body["periodStart"]),
        end=datetime.fromisoformat(body["periodEnd"]),
        elapsed_share=body["elapsedShare"],
        requests=statement["requests"],
        included_requests=statement["includedRequests"],
        overage_requests=statement["overageRequests"],
        lines=[
            DraftLine(
                kind=line["kind"],
                description=line["description"],
                quantity=line["quantity"],
                unit_price=_money(line["unitPrice"]),
                amount=_money(line["amount"]),
                reference_period=line["referencePeriod"],
            )
            for line in statement["lines"]
        ],
        plan_fee=Decimal(statement["planFee"]),
        overage=Decimal(statement["overage"]),
        token_cost=Decimal(statement["tokenCost"]),
        service_cost=Decimal(statement["serviceCost"]),
        adjustments=Decimal(statement["adjustments"]),
        unpriced_calls=statement["unpricedCalls"],
        total=Decimal(statement["total"]),
        forecast_requests=forecast.get("requests"),
        forecast_usage=_money(forecast.get("usageCost")),
        forecast_total=_money(forecast.get("total")),
        forecast_note=body.get("forecastNote"),
    )


def rate_limit_history(tenant_id: int, now: datetime, days: int = VIOLATION_DAYS) -> list[ViolationDay]:
    """Calls to the API and those refused with 429 (a window or the monthly quota), per day for
    the last ``days`` days up to today, zero-filled; from the daily rollups."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    rows = db.session.execute(
        select(UsageRollup.bucket_start, func.sum(UsageRollup.calls), func.sum(UsageRollup.rate_limited))
        .where(
            UsageRollup.tenant_id == tenant_id,
            UsageRollup.granularity == "day",
            UsageRollup.source == "api",
            UsageRollup.bucket_start >= first,
            UsageRollup.bucket_start < today + timedelta(days=1),
        )
        .group_by(UsageRollup.bucket_start)
    )
    found = {bucket.date(): (int(calls or 0), int(refused or 0)) for bucket, calls, refused in rows}
    return [
        ViolationDay(day, *found.get(day, (0, 0))) for day in ((first + timedelta(days=n)).date() for n in range(days))
    ]


def billing_overview(redis: Redis | None, tenant_id: int, now: datetime) -> BillingOverview:
    """Everything the plan and billing page shows."""
    subscription = current_subscription(tenant_id)
    plans = list_plans()
    by_id = {plan.id: plan for plan in plans}
    plan = by_id.get(subscription.plan_id) or subscription.plan
    period = period_so_far(upcoming(tenant_id, now))
    # The quota's pace from the counter the quota is held to (the statement counts stored records).
    advice = recommend(redis, tenant_id, now, subscription=subscription, plans=plans)
    scheduled = None
    if subscription.scheduled_plan_id is not None:
        scheduled = by_id.get(subscription.scheduled_plan_id) or subscription.scheduled_plan
    return BillingOverview(
        subscription=subscription,
        plan=plan,
        scheduled_plan=scheduled,
        options=plan_options(plans, subscription),
        period=period,
        statements=tenant_statements(tenant_id),
        violations=rate_limit_history(tenant_id, now),
        recommendation=advice,
    )
