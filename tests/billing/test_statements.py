"""Closing billing periods into statements: once, also concurrently; the plan fee prorated over
plan changes; overage with and without a cap; outside costs by service and model; unpriced
calls listed without an amount; late events as adjustments naming their period; rounding;
reconciliation; and the statements API, tenant by tenant."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from portal.billing.changes import change_plan
from portal.billing.plans import set_overage
from portal.billing.reconcile import reconcile
from portal.billing.statements import close_periods, to_cent
from portal.billing.usage import current_subscription
from portal.extensions import db as _db
from portal.metering.store import store_usage
from portal.models import Statement, Subscription, Tenant, UsageRecord, UsageRollup
from tests.api_helpers import add_key
from tests.factories import new_tenant

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
_ids = itertools.count()


def since_november(app, name: str, plan: str = "starter"):
    """A tenant on ``plan`` since November 1st, its period November."""
    tenant = new_tenant(app, name, plan, key=True)
    with app.app_context():
        _db.session.execute(
            update(Subscription)
            .where(Subscription.tenant_id == tenant.tenant_id)
            .values(started_at=NOV, current_period_start=NOV, current_period_end=DEC)
        )
        _db.session.commit()
        _db.session.remove()
    return tenant


def outside(tenant_id: int, at: datetime, service: str, model: str, cost: str | None, count: int = 1) -> None:
    store_usage(
        [
            {
                "tenant_id": tenant_id,
                "source": "external",
                "service": service,
                "model": model,
                "endpoint": "/v1/chat/completions",
                "status_code": 200,
                "tokens_in": 1000,
                "cost": None if cost is None else Decimal(cost),
                "occurred_at": at,
                "idempotency_key": f"s-{next(_ids)}",
            }
            for _ in range(count)
        ]
    )
    _db.session.commit()


def admitted(tenant_id: int, day: datetime, count: int) -> None:
    """``count`` admitted API calls stored on ``day``, as the daily rollup of their records holds
    them (statements count calls from the records; storing 130,000 rows one by one is slow)."""
    _db.session.add(
        UsageRollup(
            tenant_id=tenant_id,
            granularity="day",
            bucket_start=day,
            source="api",
            service="tollgate",
            endpoint="/api/v1/ping",
            method="GET",
            category="health",
            model="",
            api_key_id=0,
            end_user="",
            calls=count,
            quota_units=count,
        )
    )
    _db.session.commit()


def close(app, now: datetime) -> dict:
    with app.app_context():
        result = close_periods(now)
        _db.session.remove()
    return result


def statements_of(tenant_id: int) -> list[Statement]:
    _db.session.expire_all()
    return list(
        _db.session.scalars(select(Statement).where(Statement.tenant_id == tenant_id).order_by(Statement.period_start))
    )


def lines(statement: Statement) -> list[tuple[str, str | None]]:
    return [(line.kind, None if line.amount is None else str(line.amount)) for line in statement.lines]


def test_a_period_closes_into_one_statement_with_its_lines(app, db):
    tenant = since_november(app, "Closing Co")
    admitted(tenant.tenant_id, NOV, 1234)
    outside(tenant.tenant_id, NOV + timedelta(days=3), "openai", "gpt-4o", "1.25", count=2)
    outside(tenant.tenant_id, NOV + timedelta(days=4), "groq", "llama-3.1-70b-versatile", "0.236")
    outside(tenant.tenant_id, NOV + timedelta(days=5), "mystery", "new-model", None, count=3)
    assert close(app, DEC - timedelta(seconds=1)) == {"statements": 0, "skipped": 0, "tenants": 0}
    assert close(app, DEC + timedelta(minutes=5))["statements"] == 1
    [statement] = statements_of(tenant.tenant_id)
    assert (statement.period_start, statement.period_end, statement.plan_code) == (NOV, DEC, "starter")
    assert statement.requests == 1234
    assert lines(statement) == [
        ("plan", "29.00"),
        ("tokens", "0.24"),  # groq
        ("unpriced", None),  # mystery: listed, no amount
        ("tokens", "2.50"),  # openai
    ]
    assert statement.lines[2].quantity == 3 and "no price yet" in statement.lines[2].description
    assert (statement.plan_fee, statement.token_cost, statement.unpriced_calls) == (29, Decimal("2.74"), 3)
    assert statement.total == Decimal("31.74")
    # The subscription moved on to December; the December counter starts from nothing.
    subscription = current_subscription(tenant.tenant_id)
    assert (subscription.current_period_start, subscription.current_period_end) == (DEC, JAN)


def test_closing_twice_or_on_two_workers_at_once_makes_one_statement(app, db):
    tenants = [since_november(app, f"Twice Co {n}") for n in range(3)]
    results = []

    def closer():
        results.append(close(app, DEC + timedelta(hours=1)))

    threads = [threading.Thread(target=closer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    close(app, DEC + timedelta(hours=2))
    counts = _db.session.execute(select(Statement.tenant_id, func.count()).group_by(Statement.tenant_id)).all()
    assert sorted(counts) == sorted((t.tenant_id, 1) for t in tenants)
    assert sum(r["statements"] for r in results) == 3


def test_an_upgrade_prorates_the_fee_at_once_and_a_downgrade_waits_for_the_period_end(app, db):
    tenant = since_november(app, "Changing Co", "starter")
    row = _db.session.get(Tenant, tenant.tenant_id)
    # On the 11th (10 days of 30 on starter) the tenant upgrades to professional.
    assert change_plan(row, "professional", NOV + timedelta(days=10))["applies"] == "now"
    _db.session.commit()
    assert current_subscription(tenant.tenant_id).plan.code == "professional"
    # On the 21st it asks for free: pending until the period ends.
    change = change_plan(row, "free", NOV + timedelta(days=20))
    _db.session.commit()
    assert change == {"applies": "period_end", "plan": "free", "effective_at": "2026-12-01T00:00:00Z"}
    assert current_subscription(tenant.tenant_id).plan.code == "professional"
    close(app, DEC + timedelta(minutes=1))
    [statement] = statements_of(tenant.tenant_id)
    # $29 × 10/30 = 9.666… → 9.67; $99 × 20/30 = 66.00.
    assert lines(statement) == [("plan", "9.67"), ("plan", "66.00")]
    assert statement.lines[0].description == "Starter plan, Nov 1–Nov 10 (10.0 of 30 days)"
    assert statement.plan_fee == Decimal("75.67")
    assert current_subscription(tenant.tenant_id).plan.code == "free"
    # December is all on free.
    close(app, JAN + timedelta(minutes=1))
    assert lines(statements_of(tenant.tenant_id)[1]) == [("plan", "0.00")]


@pytest.mark.parametrize(("cap", "expected"), [(None, "15.00"), (Decimal("10"), "10.00")])
def test_overage_beyond_the_quota_at_the_plans_price_up_to_its_cap(app, db, cap, expected):
    tenant = since_november(app, f"Overage Co {cap}", "starter")
    set_overage(current_subscription(tenant.tenant_id), True, cap)
    _db.session.commit()
    admitted(tenant.tenant_id, NOV, 130_000)  # 30,000 beyond 100,000, $0.50 per 1,000
    close(app, DEC + timedelta(minutes=1))
    [statement] = statements_of(tenant.tenant_id)
    assert (statement.overage_requests, str(statement.overage_amount)) == (30_000, expected)
    assert statement.total == Decimal("29.00") + Decimal(expected)


def test_no_overage_without_the_tenants_consent(app, db):
    tenant = since_november(app, "Strict Co", "starter")
    admitted(tenant.tenant_id, NOV, 100_000)
    close(app, DEC + timedelta(minutes=1))
    [statement] = statements_of(tenant.tenant_id)
    assert (statement.overage_requests, statement.overage_amount) == (0, 0)


def test_a_late_event_is_billed_next_time_as_an_adjustment_naming_its_period(app, db):
    tenant = since_november(app, "Late Co")
    outside(tenant.tenant_id, NOV + timedelta(days=2), "openai", "gpt-4o", "3.00")
    close(app, DEC + timedelta(minutes=1))
    [november] = statements_of(tenant.tenant_id)
    # An event dated November 29th arrives in December, after November closed.
    outside(tenant.tenant_id, NOV + timedelta(days=28), "openai", "gpt-4o", "1.10")
    close(app, JAN + timedelta(minutes=1))
    november_again, december = statements_of(tenant.tenant_id)
    assert november_again.total == november.total == Decimal("32.00")  # a closed statement never changes
    adjustment = [line for line in december.lines if line.kind == "adjustment"]
    assert [(a.description, str(a.amount), a.reference_period) for a in adjustment] == [
        ("Late usage from 2026-11: openai gpt-4o", "1.10", "2026-11")
    ]
    assert december.total == Decimal("30.10")
    # Billed once: a third close adds nothing for November.
    feb = datetime(2027, 2, 1, tzinfo=UTC)
    close(app, feb + timedelta(minutes=1))
    january = statements_of(tenant.tenant_id)[2]
    assert [line.kind for line in january.lines] == ["plan"]


def test_many_sub_cent_lines_each_round_once_half_up(app, db):
    tenant = since_november(app, "Cents Co")
    for n in range(5):
        outside(tenant.tenant_id, NOV + timedelta(days=1), f"svc{n}", "m", "0.005")  # each $0.005
    outside(tenant.tenant_id, NOV + timedelta(days=1), "svc9", "m", "0.004999")
    close(app, DEC + timedelta(minutes=1))
    [statement] = statements_of(tenant.tenant_id)
    amounts = [str(line.amount) for line in statement.lines if line.kind == "tokens"]
    assert amounts == ["0.01"] * 5 + ["0.00"]
    assert statement.total == Decimal("29.05")  # the sum of the lines, not a rounding of the sum


def test_reconcile_finds_nothing_on_a_fresh_close_and_an_altered_row_when_there_is_one(app, db):
    tenant = since_november(app, "Audit Co")
    outside(tenant.tenant_id, NOV + timedelta(days=2), "openai", "gpt-4o", "2.00", count=3)
    close(app, DEC + timedelta(minutes=1))
    clean = reconcile(DEC + timedelta(days=1))
    assert (clean.statements, clean.differences, clean.pending) == (1, [], [])
    record = _db.session.scalar(select(UsageRecord).where(UsageRecord.tenant_id == tenant.tenant_id).limit(1))
    record.cost = Decimal("2.50")
    _db.session.commit()
    found = reconcile(DEC + timedelta(days=1), "2026-11")
    assert len(found.differences) == 1
    assert "openai gpt-4o" in found.differences[0] and "$6.50000000" in found.differences[0]
    result = app.test_cli_runner().invoke(args=["billing", "reconcile", "--period", "2026-11"])
    assert result.exit_code == 1
    assert "DIFFERENCE audit-co 2026-11 openai gpt-4o" in result.output


def test_reconcile_reports_late_usage_as_pending_not_as_a_difference(app, db):
    tenant = since_november(app, "Pending Co")
    close(app, DEC + timedelta(minutes=1))
    outside(tenant.tenant_id, NOV + timedelta(days=20), "openai", "gpt-4o", "1.00")
    found = reconcile(DEC + timedelta(days=1))
    assert found.differences == []
    assert found.pending == ["pending-co 2026-11 openai gpt-4o: $+1.00 of late usage, billed on the next statement"]


# -- the API ------------------------------------------------------------------------------------------
@pytest.fixture
def billed(app):
    tenant = since_november(app, "Api Billing Co")
    with app.app_context():
        outside(tenant.tenant_id, NOV + timedelta(days=2), "openai", "gpt-4o", "4.20")
        _db.session.remove()
    close(app, DEC + timedelta(minutes=1))
    return tenant


def test_statements_api_lists_and_shows_them_as_json_and_csv(client, billed):
    body = client.get("/api/v1/billing/statements", headers=billed.headers).get_json()
    [summary] = body["statements"]
    assert (summary["period"], summary["total"], summary["planFee"], summary["tokenCost"]) == (
        "2026-11",
        "33.20",
        "29.00",
        "4.20",
    )
    detail = client.get(f"/api/v1/billing/statements/{summary['id']}", headers=billed.headers).get_json()
    assert [(line["kind"], line["amount"]) for line in detail["statement"]["lines"]] == [
        ("plan", "29.00"),
        ("tokens", "4.20"),
    ]
    csv_text = client.get(f"/api/v1/billing/statements/{summary['id']}?format=csv", headers=billed.headers)
    assert csv_text.mimetype == "text/csv"
    rows = csv_text.get_data(as_text=True).splitlines()
    assert rows[0].startswith("period,position,kind")
    assert rows[-1].endswith(",33.20")
    listing = client.get("/api/v1/billing/statements?format=csv", headers=billed.headers).get_data(as_text=True)
    assert "2026-11,starter" in listing


def test_another_tenants_statement_is_a_404(app, client, billed):
    other = new_tenant(app, "Nosy Co", key=True)
    with app.app_context():
        theirs = _db.session.scalar(select(Statement.id).where(Statement.tenant_id == billed.tenant_id))
        _db.session.remove()
    response = client.get(f"/api/v1/billing/statements/{theirs}", headers=other.headers)
    assert response.status_code == 404
    assert client.get("/api/v1/billing/statements", headers=other.headers).get_json()["statements"] == []


def test_upcoming_shows_the_period_so_far_and_a_forecast_after_a_tenth_of_it(app, client, clock):
    tenant = since_november(app, "Upcoming Co")
    with app.app_context():
        outside(tenant.tenant_id, datetime(2026, 11, 5, tzinfo=UTC), "openai", "gpt-4o", "6.00")
        admitted(tenant.tenant_id, NOV + timedelta(days=3), 30_000)
        _db.session.remove()
    # The clock: November 18th, 12:30 — 57% of the period.
    body = client.get("/api/v1/billing/upcoming", headers=tenant.headers).get_json()["upcoming"]
    assert body["statement"]["total"] == "35.00"
    # Counted from the stored records: this call is still on its way to the database.
    assert body["statement"]["requests"] == 30_000
    share = body["elapsedShare"]
    assert share == pytest.approx((17 * 86400 + 12.5 * 3600) / (30 * 86400), abs=0.001)
    forecast = body["forecast"]
    assert forecast["requests"] == pytest.approx(30_000 / share, rel=1e-3)
    assert float(forecast["usageCost"]) == pytest.approx(6 / share, abs=0.02)
    # 30,000 calls in 17.5 days: the 100,000 quota lasts past the period end.
    assert forecast["quotaRunsOutAt"] is None
    clock.now = datetime(2026, 11, 2, tzinfo=UTC).timestamp()
    early = client.get("/api/v1/billing/upcoming", headers=tenant.headers).get_json()["upcoming"]
    assert early["forecast"] is None and "10%" in early["forecastNote"]


def test_plan_changes_through_the_api_need_an_admin_key_and_say_when_they_apply(app, client, clock):
    tenant = new_tenant(app, "Plan Api Co", "starter", key=True)
    _, secret = add_key(app, tenant.tenant_id, "admin", scope="admin")
    admin = {"X-API-Key": secret}
    refused = client.put("/api/v1/billing/subscription", json={"plan": "professional"}, headers=tenant.headers)
    assert refused.status_code == 403
    assert client.get("/api/v1/ping", headers=tenant.headers).headers["X-RateLimit-Minute-Limit"] == "300"
    up = client.put("/api/v1/billing/subscription", json={"plan": "professional"}, headers=admin)
    assert up.status_code == 200 and up.get_json()["change"]["applies"] == "now"
    # The next call already has the professional plan's windows and quota.
    ping = client.get("/api/v1/ping", headers=tenant.headers)
    assert (ping.headers["X-RateLimit-Minute-Limit"], ping.headers["X-RateLimit-Limit"]) == ("1000", "1000000")
    assert client.get("/api/v1/billing/subscription", headers=admin).get_json()["subscription"]["plan"]["code"] == (
        "professional"
    )
    down = client.put("/api/v1/billing/subscription", json={"plan": "starter"}, headers=admin).get_json()
    assert down["change"]["applies"] == "period_end"
    pending = client.get("/api/v1/billing/subscription", headers=admin).get_json()["subscription"]
    assert pending["plan"]["code"] == "professional"
    assert pending["pendingPlanChange"]["plan"] == "starter"
    # Until the period ends the professional windows stay.
    assert client.get("/api/v1/ping", headers=tenant.headers).headers["X-RateLimit-Minute-Limit"] == "1000"
    again = client.put("/api/v1/billing/subscription", json={"plan": "professional"}, headers=admin).get_json()
    assert again["change"] == {"applies": "now", "plan": "professional", "cancelled": True}
    same = client.put("/api/v1/billing/subscription", json={"plan": "professional"}, headers=admin)
    assert same.status_code == 409
    with app.app_context():
        from portal.models import AuditEvent

        actions = _db.session.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant.tenant_id)).all()
        _db.session.remove()
    assert {"plan.changed", "plan.change_scheduled", "plan.change_cancelled"} <= set(actions)


def test_retention_keeps_the_raw_records_of_a_period_without_its_statement(app, db):
    from portal.metering.retention import delete_expired_usage

    tenant = new_tenant(app, "Unbilled Co", "free", key=True)  # keeps raw records 90 days
    june, july = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)
    _db.session.execute(
        update(Subscription)
        .where(Subscription.tenant_id == tenant.tenant_id)
        .values(started_at=june, current_period_start=june, current_period_end=july)
    )
    _db.session.commit()
    outside(tenant.tenant_id, june + timedelta(days=3), "openai", "gpt-4o", "1.00", count=4)
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)

    def kept() -> int:
        return _db.session.scalar(
            select(func.count()).select_from(UsageRecord).where(UsageRecord.tenant_id == tenant.tenant_id)
        )

    delete_expired_usage(now)
    assert kept() == 4  # June has no statement yet: its records stay, however old
    close(app, now)  # June to November close, one statement each
    assert len(statements_of(tenant.tenant_id)) == 6
    delete_expired_usage(now)
    assert kept() == 0


def test_a_closed_months_statement_agrees_with_costs_report_and_usage_stats(app, client, clock):
    tenant = since_november(app, "Agreeing Co")
    with app.app_context():
        outside(tenant.tenant_id, NOV + timedelta(days=1), "openai", "gpt-4o", "0.0125", count=37)
        outside(tenant.tenant_id, NOV + timedelta(days=9), "groq", "llama-3.1-70b-versatile", "0.000590", count=400)
        outside(tenant.tenant_id, NOV + timedelta(days=20), "twitter", "", "0.000116", count=55)
        _db.session.remove()
    close(app, DEC + timedelta(minutes=1))
    clock.now = (DEC + timedelta(minutes=10)).timestamp()
    [summary] = client.get("/api/v1/billing/statements", headers=tenant.headers).get_json()["statements"]
    statement = client.get(f"/api/v1/billing/statements/{summary['id']}", headers=tenant.headers).get_json()
    billed = {
        (line["service"], line["model"] or ""): Decimal(line["amount"])
        for line in statement["statement"]["lines"]
        if line["kind"] in ("tokens", "service")
    }
    report = client.get(
        "/api/v1/costs/report?group_by=model&startDate=2026-11-01&endDate=2026-11-30", headers=tenant.headers
    ).get_json()
    stats = client.get("/api/v1/usage/stats?days=31", headers=tenant.headers).get_json()["stats"]
    # Each line is its service and model's cost for the month, rounded once to the cent.
    assert billed == {
        ("openai", "gpt-4o"): Decimal("0.46"),  # 37 × $0.0125 = $0.4625
        ("groq", "llama-3.1-70b-versatile"): Decimal("0.24"),  # 400 × $0.00059 = $0.236
        ("twitter", ""): Decimal("0.01"),  # 55 × $0.000116 = $0.00638
    }
    by_model = {group["key"]: Decimal(str(group["cost"])) for group in report["groups"]}
    assert sorted(to_cent(v) for v in by_model.values()) == sorted(billed.values())
    for service, figures in stats["by_service"].items():
        if service in ("openai", "groq", "twitter"):
            assert to_cent(Decimal(str(figures["cost"]))) == sum(v for (s, _), v in billed.items() if s == service)
    assert Decimal(summary["tokenCost"]) + Decimal(summary["serviceCost"]) == sum(billed.values())
    assert to_cent(Decimal(str(report["total_cost"]))) == Decimal("0.70")  # $0.70488 for the month
    assert sum(billed.values()) == Decimal("0.71")  # lines rounded one by one, then added


def test_seed_demo_closes_its_past_months_and_reconcile_finds_no_difference(app, db):
    from portal.demo import seed_demo

    now = datetime(2026, 11, 18, 12, tzinfo=UTC)
    demo = seed_demo(days=40, password="a long demo password", now=now)
    [october] = statements_of(demo.tenant.id)
    assert october.period_start == datetime(2026, 10, 1, tzinfo=UTC)
    assert october.plan_fee < 99  # on the plan since October 9th: the fee is prorated
    assert october.token_cost + october.service_cost > 0
    assert october.requests > 0
    result = reconcile(now)
    assert (result.statements, result.differences, result.pending) == (1, [], [])
    assert current_subscription(demo.tenant.id).current_period_start == NOV
