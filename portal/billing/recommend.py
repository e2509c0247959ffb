"""At this pace: when the monthly quota runs out, and the plan that would carry the pace.

Read by the dashboard and the plan page. The pace is the calls admitted so far this period
divided by the share of the period that has passed, shown once ``FORECAST_AFTER`` of it has
(as ``billing/upcoming`` does), so a quiet first morning does not predict the month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from redis import Redis

from ..metering.quota import quota_used
from ..models import Plan, Subscription
from .changes import FORECAST_AFTER
from .plans import list_plans
from .statements import admitted_calls, to_cent
from .usage import current_subscription


@dataclass(frozen=True)
class Recommendation:
    used: int
    quota: int | None
    # Calls the whole period would see at this pace; None before FORECAST_AFTER of it passed.
    projected_calls: int | None
    # The day (UTC) the quota runs out at this pace, when that falls within the period.
    runs_out_on: date | None
    # The cheapest larger plan whose quota carries the pace; None when none is needed (or none fits).
    plan: Plan | None
    # What staying costs in overage at this pace, when the subscription bills overage.
    overage_at_pace: Decimal | None
    reason: str

    @property
    def runs_out(self) -> bool:
        return self.runs_out_on is not None


def _fits(plan: Plan, calls: int) -> bool:
    return plan.monthly_quota is None or plan.monthly_quota >= calls


def _overage(plan: Plan, subscription: Subscription, calls: int) -> Decimal | None:
    if not (subscription.allow_overage and plan.allows_overage and plan.monthly_quota is not None):
        return None
    extra = max(calls - plan.monthly_quota, 0)
    amount = to_cent(Decimal(extra) * plan.overage_price_per_1000 / 1000)
    if subscription.overage_cap is not None:
        amount = min(amount, subscription.overage_cap)
    return amount


def recommend(
    redis: Redis | None,
    tenant_id: int,
    now: datetime,
    used: int | None = None,
    subscription: Subscription | None = None,
    plans: list[Plan] | None = None,
) -> Recommendation:
    """The quota forecast and upgrade advice for ``tenant_id`` at ``now``.

    ``used`` (calls admitted this period), ``subscription`` and ``plans`` may be passed by a page
    that has them already; otherwise they are read (the quota counter, rebuilt from the records if missing)."""
    subscription = subscription or current_subscription(tenant_id)
    plan = subscription.plan
    start, end = subscription.current_period_start, subscription.current_period_end
    if used is None:
        if redis is None:
            used = admitted_calls([tenant_id], start, end)[tenant_id]
        else:
            # What the quota is enforced with (rebuilt from the records when missing).
            used = quota_used(redis, tenant_id, min(max(now, start), end - timedelta(seconds=1)))
    quota = plan.monthly_quota
    elapsed = max(min(now, end) - start, timedelta(seconds=1))
    share = elapsed / max(end - start, timedelta(seconds=1))

    if quota is not None and used >= quota:
        runs_out_on: date | None = now.date()
    else:
        runs_out_on = None
    if share < float(FORECAST_AFTER):
        note = f"A forecast is shown once {FORECAST_AFTER:.0%} of the billing period has passed."
        if runs_out_on is None:
            return Recommendation(used, quota, None, None, None, None, note)
        projected = used
    else:
        projected = round(used / share)
        if runs_out_on is None and quota is not None and used > 0:
            at = now + elapsed * (quota - used) / used
            runs_out_on = at.date() if at < end else None

    overage = _overage(plan, subscription, projected)
    if runs_out_on is None:
        return Recommendation(used, quota, projected, None, None, overage, "At this pace the quota lasts the period.")

    candidates = plans if plans is not None else list_plans()
    larger = [p for p in candidates if p.monthly_price > plan.monthly_price and p.id != plan.id]
    fitting = sorted((p for p in larger if _fits(p, projected)), key=lambda p: (p.monthly_price, p.sort_order))
    suggestion = fitting[0] if fitting else None
    if suggestion is None:
        reason = "No larger plan carries this pace; contact us about a custom plan."
    elif overage is not None:
        reason = (
            f"At this pace overage would cost {overage:,.2f} USD this period; the {suggestion.name} plan "
            f"includes {_quota_text(suggestion)} for {suggestion.monthly_price:,.2f} USD a month."
        )
    else:
        reason = (
            f"At this pace about {projected:,} calls are needed this period; the {suggestion.name} plan "
            f"includes {_quota_text(suggestion)}."
        )
    return Recommendation(used, quota, projected, runs_out_on, suggestion, overage, reason)


def _quota_text(plan: Plan) -> str:
    return "unlimited calls" if plan.monthly_quota is None else f"{plan.monthly_quota:,} calls"
