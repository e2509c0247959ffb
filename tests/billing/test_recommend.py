"""At this pace: the day the quota runs out, and the plan that would carry the pace."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from portal.billing.plans import set_overage
from portal.billing.recommend import recommend
from portal.billing.usage import current_subscription
from portal.extensions import db
from portal.kernel.redis_keys import quota_key
from tests.factories import new_tenant

# Mid-November: 17.5 of 30 days have passed.
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


def on_plan(app, plan: str = "starter") -> int:
    """A tenant on ``plan`` whose billing period is November 2026; its id."""
    tenant_id = new_tenant(app, f"Pace {plan}", plan).tenant_id
    subscription = current_subscription(tenant_id)
    subscription.current_period_start = datetime(2026, 11, 1, tzinfo=UTC)
    subscription.current_period_end = datetime(2026, 12, 1, tzinfo=UTC)
    db.session.commit()
    return tenant_id


def test_a_pace_within_the_quota_needs_nothing(app, ctx, redis):
    t = on_plan(app, "starter")
    redis.set(quota_key(t, NOW), 35_000)  # 60,000 at this pace, of 100,000
    advice = recommend(redis, t, NOW)
    assert advice.projected_calls == 60_000
    assert advice.runs_out_on is None
    assert advice.plan is None
    assert advice.reason == "At this pace the quota lasts the period."


def test_the_day_the_quota_runs_out_and_the_plan_that_carries_the_pace(app, ctx, redis):
    t = on_plan(app, "starter")
    redis.set(quota_key(t, NOW), 70_000)  # 4,000 a day: the last 30,000 last 7.5 days
    advice = recommend(redis, t, NOW)
    assert advice.projected_calls == 120_000
    assert advice.runs_out_on == date(2026, 11, 26)
    assert advice.plan.code == "professional"
    assert "about 120,000 calls" in advice.reason and "1,000,000 calls" in advice.reason


def test_overage_at_pace_is_priced_when_the_subscription_bills_it(app, ctx, redis):
    t = on_plan(app, "starter")
    set_overage(current_subscription(t), True, Decimal("100.00"))
    db.session.commit()
    redis.set(quota_key(t, NOW), 70_000)
    advice = recommend(redis, t, NOW)
    # 20,000 calls over at $0.50 per 1,000.
    assert advice.overage_at_pace == Decimal("10.00")
    assert "overage would cost 10.00 USD" in advice.reason


def test_a_spent_quota_runs_out_today_even_early_in_the_period(app, ctx, redis):
    t = on_plan(app, "free")
    early = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    redis.set(quota_key(t, early), 10_000)
    advice = recommend(redis, t, early)
    assert advice.runs_out_on == early.date()
    assert advice.plan.code == "starter"


def test_no_forecast_before_a_tenth_of_the_period(app, ctx, redis):
    t = on_plan(app, "starter")
    early = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    redis.set(quota_key(t, early), 50_000)
    advice = recommend(redis, t, early)
    assert advice.projected_calls is None and advice.runs_out_on is None and advice.plan is None
    assert "10%" in advice.reason


def test_the_largest_plan_has_nothing_to_suggest(app, ctx, redis):
    t = on_plan(app, "professional")
    redis.set(quota_key(t, NOW), 900_000)
    advice = recommend(redis, t, NOW)
    assert advice.runs_out_on == date(2026, 11, 20)
    assert advice.plan.code == "enterprise"  # unlimited
