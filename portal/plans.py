"""Plans, subscriptions and billing periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from .extensions import db
from .models import Plan, Subscription, Tenant, utcnow


class UnknownPlan(LookupError):
    def __init__(self, code: str) -> None:
        known = ", ".join(db.session.scalars(select(Plan.code).order_by(Plan.sort_order)))
        super().__init__(f"no plan {code!r}; plans are: {known}")


def billing_period(at: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) that contains ``at``: [start, end)."""
    at = at.astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


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
    plan = get_plan(code)
    for name, value in (
        ("monthly_quota", monthly_quota),
        ("per_minute", per_minute),
        ("per_hour", per_hour),
        ("per_day", per_day),
    ):
        if value is not None:
            if value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1; got {value}")
            setattr(plan, name, value)
    if unlimited_quota:
        plan.monthly_quota = None
    plan.updated_at = utcnow()
    return plan
