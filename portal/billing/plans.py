"""Plans, subscriptions and billing periods."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import select

from ..extensions import db
from ..models import Plan, Subscription, Tenant, utcnow
from ..tenancy.changes import mark_access_changed


@dataclass(frozen=True)
class PlanLimits:
    """What the admission script needs to know about a tenant's plan."""

    plan_code: str
    per_minute: int
    per_hour: int
    per_day: int
    # Calls a period may admit (quota plus any overage allowance); None = no limit.
    quota: int | None
    # The plan's quota shown in headers; None = unlimited.
    shown_quota: int | None

    @property
    def limit_string(self) -> str:
        return f"{self.per_minute}/minute;{self.per_hour}/hour;{self.per_day}/day"


def plan_limits(plan: Plan, subscription: Subscription) -> PlanLimits:
    """The windows and the number of calls a period may admit under this subscription.

    With overage allowed on a paid plan, calls go on past the quota: without a cap, without
    limit; with a cap, until the overage would cost more than the cap.
    """
    admitted = plan.monthly_quota
    if admitted is not None and subscription.allow_overage and plan.overage_price_per_1000:
        if subscription.overage_cap is None:
            admitted = None
        else:
            extra = (subscription.overage_cap / plan.overage_price_per_1000 * 1000).to_integral_value(ROUND_FLOOR)
            admitted += int(extra)
    return PlanLimits(plan.code, plan.per_minute, plan.per_hour, plan.per_day, admitted, plan.monthly_quota)


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


@dataclass(frozen=True)
class PeriodBounds:
    """A billing period as the hot path needs it: epoch seconds and its texts."""

    start: float
    end: float
    month: str  # "YYYYMM", names the period's quota counter
    end_iso: str  # when it ends (the quota resets), ISO 8601 UTC


_last_period = PeriodBounds(0.0, 0.0, "", "")


def period_bounds(now: float) -> PeriodBounds:
    """The billing period containing the epoch time ``now`` (the last one is remembered)."""
    global _last_period
    period = _last_period
    if not period.start <= now < period.end:
        start, end = billing_period(datetime.fromtimestamp(now, UTC))
        period = _last_period = PeriodBounds(
            start.timestamp(), end.timestamp(), f"{start:%Y%m}", f"{end:%Y-%m-%dT%H:%M:%SZ}"
        )
    return period


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
