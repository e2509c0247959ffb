"""At this pace: the day the quota runs out, and the plan that would carry the pace."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from portal.billing.plans import set_overage
from portal.billing.recommend import recommend
from portal.billing.usage import current_subscription
from portal.extensions import db
from portal.kernel.redis_keys import quota_key
from portal.onboarding import create_tenant

# Mid-November: 17.5 of 30 days have passed.
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


@pytest.fixture
def tenant(ctx):
    def make(plan="starter"):
        tenant = create_tenant(f"Pace {plan}", plan, f"owner@pace-{plan}.example", "correct horse battery staple")
        db.session.flush()
        subscription = current_subscription(tenant.id)
        subscription.current_period_start = datetime(2026, 11, 1, tzinfo=UTC)
        subscription.current_period_end = datetime(2026, 12, 1, tzinfo=UTC)
        db.session.commit()
        return tenant

    return make


def test_a_pace_within_the_quota_needs_nothing(tenant, redis):
    t = tenant("starter")
    redis.set(quota_key(t.id, NOW), 35_000)  # 60,000 at this pace, of 100,000
    advice = recommend(redis, t.id, NOW)
    assert advice.projected_calls == 60_000
    assert advice.runs_out_on is None
    assert advice.plan is None
    assert advice.reason == "At this pace the quota lasts the period."


def test_the_day_the_quota_runs_out_and_the_plan_that_carries_the_pace(tenant, redis):
    t = tenant("starter")
    redis.set(quota_key(t.id, NOW), 70_000)  # 4,000 a day: the last 30,000 last 7.5 days
    advice = recommend(redis, t.id, NOW)
    assert advice.projected_calls == 120_000
    assert advice.runs_out_on == date(2026, 11, 26)
    assert advice.plan.code == "professional"
    assert "about 120,000 calls" in advice.reason and "1,000,000 calls" in advice.reason


def test_overage_at_pace_is_priced_when_the_subscription_bills_it(tenant, redis):
    t = tenant("starter")
    set_overage(current_subscription(t.id), True, Decimal("100.00"))
    db.session.commit()
    redis.set(quota_key(t.id, NOW), 70_000)
    advice = recommend(redis, t.id, NOW)
    # 20,000 calls over at $0.50 per 1,000.
    assert advice.overage_at_pace == Decimal("10.00")
    assert "overage would cost 10.00 USD" in advice.reason


def test_a_spent_quota_runs_out_today_even_early_in_the_period(tenant, redis):
    t = tenant("free")
    early = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    redis.set(quota_key(t.id, early), 10_000)
    advice = recommend(redis, t.id, early)
    assert advice.runs_out_on == early.date()
    assert advice.plan.code == "starter"


def test_no_forecast_before_a_tenth_of_the_period(tenant, redis):
    t = tenant("starter")
    early = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    redis.set(quota_key(t.id, early), 50_000)
    advice = recommend(redis, t.id, early)
    assert advice.projected_calls is None and advice.runs_out_on is None and advice.plan is None
    assert "10%" in advice.reason


def test_the_largest_plan_has_nothing_to_suggest(tenant, redis):
    t = tenant("professional")
    redis.set(quota_key(t.id, NOW), 900_000)
    advice = recommend(redis, t.id, NOW)
    assert advice.runs_out_on == date(2026, 11, 20)
    assert advice.plan.code == "enterprise"  # unlimited
