"""The tenant's subscription and its use of the plan this period, for the API and the portal."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from ..extensions import db
from ..kernel.periods import billing_period
from ..kernel.times import iso
from ..models import Subscription, UsageRollup


def current_subscription(tenant_id: int) -> Subscription:
    return db.session.scalars(
        select(Subscription)
        .where(Subscription.tenant_id == tenant_id, Subscription.ended_at.is_(None))
        .order_by(Subscription.started_at.desc())
        .limit(1)
    ).one()


def billing_usage(tenant_id: int, now: datetime, used: int) -> dict:
    """Seed 004's ``/billing/usage``: each plan limit, how much of it is used (``used``: calls
    admitted this period, the quota counter's count), when it resets."""
    subscription = current_subscription(tenant_id)
    plan = subscription.plan
    start, end = billing_period(now)
    quota = plan.monthly_quota
    tokens = db.session.scalar(
        select(func.coalesce(func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out), 0)).where(
            UsageRollup.tenant_id == tenant_id,
            UsageRollup.granularity == "day",
            UsageRollup.bucket_start >= start,
            UsageRollup.bucket_start < end,
        )
    )
    allowance = plan.monthly_token_allowance
    return {
        "plan": plan.code,
        "periodStart": iso(start),
        "periodEnd": iso(end),
        "apiCalls": {
            "used": used,
            "limit": quota,
            "remaining": None if quota is None else max(0, quota - used),
            "percentage": None if not quota else round(used / quota * 100, 2),
            "unlimited": quota is None,
            "overageAllowed": subscription.allow_overage and plan.overage_price_per_1000 is not None,
            "resetDate": iso(end),
        },
        "tokens": {
            "used": int(tokens),
            "limit": allowance,
            "remaining": None if allowance is None else max(0, allowance - int(tokens)),
            "percentage": None if not allowance else round(int(tokens) / allowance * 100, 2),
        },
        "rateLimits": {"perMinute": plan.per_minute, "perHour": plan.per_hour, "perDay": plan.per_day},
    }


def subscription_info(tenant_id: int) -> dict:
    """Seed 004's ``/billing/subscription``: the plan, its limits and the current period."""
    subscription = current_subscription(tenant_id)
    plan = subscription.plan
    return {
        "id": subscription.id,
        "status": subscription.status,
        "currentPeriodStart": iso(subscription.current_period_start),
        "currentPeriodEnd": iso(subscription.current_period_end),
        "startedAt": iso(subscription.started_at),
        "allowOverage": subscription.allow_overage,
        "pendingPlanChange": None
        if subscription.scheduled_plan is None
        else {
            "plan": subscription.scheduled_plan.code,
            "name": subscription.scheduled_plan.name,
            "effectiveAt": iso(subscription.current_period_end),
        },
        "overageCap": None if subscription.overage_cap is None else str(subscription.overage_cap),
        "plan": {
            "code": plan.code,
            "name": plan.name,
            "monthlyPrice": str(plan.monthly_price),
            "monthlyQuota": plan.monthly_quota,
            "perMinute": plan.per_minute,
            "perHour": plan.per_hour,
            "perDay": plan.per_day,
            "monthlyTokenAllowance": plan.monthly_token_allowance,
            "overagePricePer1000": None if plan.overage_price_per_1000 is None else str(plan.overage_price_per_1000),
            "retentionDays": plan.retention_days,
        },
    }
