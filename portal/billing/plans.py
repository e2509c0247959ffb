"""Plans, subscriptions and billing periods."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select

from ..extensions import db
from ..kernel.changes import mark_access_changed
from ..kernel.periods import billing_period
from ..models import Plan, Subscription, Tenant, utcnow


class UnknownPlan(LookupError):
    def __init__(self, code: str) -> None:
        known = ", ".join(db.session.scalars(select(Plan.code).order_by(Plan.sort_order)))
        super().__init__(f"no plan {code!r}; plans are: {known}")


def get_plan(code: str) -> Plan:
    plan = db.session.scalar(select(Plan).where(Plan.code == code))
    if plan is None:
        raise UnknownPlan(code)
    return plan


def list_plans() -> list[Plan]:
    return list(db.session.scalars(select(Plan).order_by(Plan.sort_order)))


def subscribe(tenant: Tenant, plan: Plan, now: datetime | None = None) -> Subscription:
    """Put ``tenant`` on ``plan`` from now on, ending the subscription in force (history kept)."""
    now = now or utcnow()
    current = tenant.subscription
    if current is not None:
        current.ended_at = now
        current.status = "ended"
    start, end = billing_period(now)
    subscription = Subscription(
        tenant=tenant,
        plan=plan,
        status="active",
        current_period_start=start,
        current_period_end=end,
        started_at=now,
    )
    db.session.add(subscription)
    mark_access_changed()
    return subscription


def update_plan_limits(
    code: str,
    monthly_quota: int | None = None,
    per_minute: int | None = None,
    per_hour: int | None = None,
    per_day: int | None = None,
    unlimited_quota: bool = False,
) -> Plan:
    """Change a plan's numbers; every tenant on it gets them on their next call."""
    if unlimited_quota and monthly_quota is not None:
        raise ValueError("give either --monthly-quota or --unlimited, not both")
    changes = {
        name: value
        for name, value in (
            ("monthly_quota", monthly_quota),
            ("per_minute", per_minute),
            ("per_hour", per_hour),
            ("per_day", per_day),
        )
        if value is not None
    }
    # Every number is checked before any is applied: a refused change leaves nothing behind.
    for name, value in changes.items():
        if value < 1:
            raise ValueError(f"{name.replace('_', '-')} must be at least 1; got {value}")
    plan = get_plan(code)
    for name, value in changes.items():
        setattr(plan, name, value)
    if unlimited_quota:
        plan.monthly_quota = None
    plan.updated_at = utcnow()
    mark_access_changed()
    return plan


def set_overage(subscription: Subscription, allow: bool, cap: Decimal | None = None) -> Subscription:
    """Let calls go on past the quota (billed as overage), optionally up to ``cap`` dollars."""
    plan = subscription.plan
    if allow and (plan.overage_price_per_1000 is None or plan.monthly_quota is None):
        raise ValueError(f"the {plan.name} plan has no overage; upgrade to a paid plan with a quota")
    if cap is not None and cap < 0:
        raise ValueError("the overage cap cannot be negative")
    subscription.allow_overage = allow
    subscription.overage_cap = cap if allow else None
    mark_access_changed()
    return subscription
