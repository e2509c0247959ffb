"""Plans as designed, billing periods as calendar months in UTC, subscriptions that keep their
history, and plan limits that refuse nonsense."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from portal.billing.plans import UnknownPlan, get_plan, list_plans, subscribe, update_plan_limits
from portal.kernel.periods import billing_period, period_bounds
from portal.models import Plan, Subscription, Tenant
from portal.onboarding import create_tenant

# DESIGN.md's table: code, price/month, requests/month, per minute, per hour, per day,
# overage per 1,000 requests, days raw data is kept.
DESIGN_PLANS = [
    ("free", "0.00", 10_000, 100, 1_000, 10_000, None, 90),
    ("starter", "29.00", 100_000, 300, 5_000, 50_000, "0.50", 90),
    ("professional", "99.00", 1_000_000, 1_000, 20_000, 200_000, "0.30", 180),
    ("enterprise", "499.00", None, 5_000, 100_000, 2_000_000, None, 365),
]


def as_row(plan: Plan) -> tuple:
    def money(value: Decimal | None) -> str | None:
        assert value is None or isinstance(value, Decimal)
        return None if value is None else str(value)

    return (
        plan.code,
        money(plan.monthly_price),
        plan.monthly_quota,
        plan.per_minute,
        plan.per_hour,
        plan.per_day,
        money(plan.overage_price_per_1000),
        plan.retention_days,
    )


def test_the_default_plans_are_the_designed_ones(db):
    assert [as_row(plan) for plan in list_plans()] == DESIGN_PLANS


def test_only_paid_plans_with_a_quota_have_overage(db):
    assert {plan.code: plan.allows_overage for plan in list_plans()} == {
        "free": False,
        "starter": True,
        "professional": True,
        "enterprise": False,
    }
    assert get_plan("enterprise").is_unlimited


def test_an_unknown_plan_is_refused_listing_the_plans(db):
    with pytest.raises(UnknownPlan, match="no plan 'gold'; plans are: free, starter, professional, enterprise"):
        get_plan("gold")


# --- billing periods --------------------------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (utc(2026, 11, 18, 12, 30), utc(2026, 11, 1), utc(2026, 12, 1)),
        (utc(2026, 11, 30, 23, 59, 59, 999_999), utc(2026, 11, 1), utc(2026, 12, 1)),
        (utc(2026, 12, 1), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
        (utc(2028, 2, 29, 23, 59, 59), utc(2028, 2, 1), utc(2028, 3, 1)),
        (utc(2027, 2, 28, 12), utc(2027, 2, 1), utc(2027, 3, 1)),
        # New Year's Eve in UTC is already New Year's Day in Berlin: still December's bill.
        (datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), utc(2026, 12, 1), utc(2027, 1, 1)),
    ],
    ids=[
        "mid-month",
        "last instant of a month",
        "first instant of a month",
        "last second of December",
        "first instant of January",
        "leap February",
        "ordinary February",
        "local time ahead of UTC",
    ],
)
def test_the_billing_period_is_the_calendar_month_in_utc(at, start, end):
    assert billing_period(at) == (start, end)
    assert billing_period(at)[0].utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("at", "month", "resets"),
    [
        (utc(2026, 11, 18, 12, 30), "202611", "2026-12-01T00:00:00Z"),
        (utc(2026, 12, 31, 23, 59, 59), "202612", "2027-01-01T00:00:00Z"),
        (utc(2027, 1, 1), "202701", "2027-02-01T00:00:00Z"),
        (utc(2028, 2, 29, 23, 59, 59), "202802", "2028-03-01T00:00:00Z"),
    ],
)
def test_the_quota_counter_and_its_reset_time_follow_the_billing_period(at, month, resets):
    bounds = period_bounds(at.timestamp())
    assert (bounds.month, bounds.end_iso) == (month, resets)
    assert (bounds.start, bounds.end) == tuple(moment.timestamp() for moment in billing_period(at))


# --- subscriptions ----------------------------------------------------------------------------


def test_a_plan_change_ends_the_old_subscription_and_keeps_it(db):
    tenant = create_tenant("Globex", "free", "owner@globex.example", "a long password")
    db.session.commit()
    first = tenant.subscription
    assert (first.plan.code, first.status, first.ended_at) == ("free", "active", None)

    changed_at = first.started_at + timedelta(days=3)
    second = subscribe(tenant, get_plan("starter"), now=changed_at)
    db.session.commit()
    tenant_id, second_id = tenant.id, second.id
    db.session.remove()

    tenant = db.session.get(Tenant, tenant_id)
    history = db.session.scalars(
        select(Subscription).where(Subscription.tenant_id == tenant_id).order_by(Subscription.started_at)
    ).all()
    assert [(s.plan.code, s.status) for s in history] == [("free", "ended"), ("starter", "active")]
    old, new = history
    assert old.ended_at == changed_at
    assert new.id == second_id
    assert new.started_at == changed_at and new.ended_at is None
    assert (new.current_period_start, new.current_period_end) == billing_period(changed_at)
    assert tenant.subscription.id == new.id
    assert [s.plan.code for s in tenant.subscriptions] == ["free", "starter"]


def test_each_plan_change_adds_to_the_history(db):
    tenant = create_tenant("Hooli", "starter", "owner@hooli.example", "a long password")
    db.session.commit()
    start = tenant.subscription.started_at
    subscribe(tenant, get_plan("professional"), now=start + timedelta(days=1))
    subscribe(tenant, get_plan("enterprise"), now=start + timedelta(days=2))
    db.session.commit()
    assert [(s.plan.code, s.ended_at is None) for s in tenant.subscriptions] == [
        ("starter", False),
        ("professional", False),
        ("enterprise", True),
    ]
    assert tenant.subscription.plan.code == "enterprise"


# --- plan limits ------------------------------------------------------------------------------


def test_plan_limits_change_for_good(db):
    update_plan_limits("starter", monthly_quota=250_000, per_minute=600, per_hour=9_000, per_day=90_000)
    db.session.commit()
    db.session.remove()
    plan = get_plan("starter")
    assert (plan.monthly_quota, plan.per_minute, plan.per_hour, plan.per_day) == (250_000, 600, 9_000, 90_000)
    update_plan_limits("starter", unlimited_quota=True)
    db.session.commit()
    assert get_plan("starter").monthly_quota is None


@pytest.mark.parametrize(
    ("option", "value"),
    [("monthly_quota", 0), ("per_minute", 0), ("per_hour", -1), ("per_day", 0)],
)
def test_plan_limits_below_one_are_refused_naming_the_option(db, option, value):
    with pytest.raises(ValueError, match=f"{option.replace('_', '-')} must be at least 1; got {value}"):
        update_plan_limits("free", **{option: value})


def test_a_quota_and_unlimited_together_are_refused(db):
    with pytest.raises(ValueError, match="either --monthly-quota or --unlimited, not both"):
        update_plan_limits("free", monthly_quota=5, unlimited_quota=True)


def test_a_refused_change_changes_nothing_even_if_the_caller_commits(db):
    # One bad number refuses the whole change; nothing of it is left pending in the session
    # for the caller's next commit to save.
    with pytest.raises(ValueError, match="per-hour must be at least 1"):
        update_plan_limits("starter", per_minute=50, per_hour=0)
    db.session.commit()
    db.session.remove()
    assert (get_plan("starter").per_minute, get_plan("starter").per_hour) == (300, 5_000)


def test_set_plan_command_refuses_a_bad_number_and_leaves_the_plan_as_it_was(app, db):
    result = app.test_cli_runner().invoke(args=["set-plan", "starter", "--per-minute", "50", "--per-hour", "0"])
    assert result.exit_code != 0
    assert "per-hour must be at least 1" in result.output
    db.session.remove()
    assert (get_plan("starter").per_minute, get_plan("starter").per_hour) == (300, 5_000)
