"""The plan and billing page: the plans side by side; an upgrade applies now and a downgrade at
the period end (said plainly before and after), choosing the current plan cancels a pending
downgrade; the period so far and its forecast; rate-limit refusals of the last 90 days; the
quota forecast with its advice; statements with a printable page (lines and totals to the cent,
adjustments, unpriced lines) and a CSV. Members and admins read, owners change; CSRF; another tenant's
statement is a 404; a fixed number of SQL statements."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from portal.billing.changes import upcoming
from portal.billing.export import statement_csv
from portal.billing.recommend import recommend
from portal.billing.statements import close_periods
from portal.billing.usage import current_subscription
from portal.extensions import db as _db
from portal.kernel.redis_keys import quota_key
from portal.metering.store import store_usage
from portal.models import AuditEvent, Statement, Subscription
from portal.web.filters import money
from tests.conftest import csrf_token
from tests.portal_helpers import count_statements, page_text, post_form, sign_in

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)  # the clock fixture's time
_ids = itertools.count()


# -- helpers -------------------------------------------------------------------------------------


def customer_since(app, tenant_id: int, since: datetime) -> None:
    """The tenant has been on its plan since ``since`` (the first of a month), its period that month."""
    with app.app_context():
        _db.session.execute(
            update(Subscription)
            .where(Subscription.tenant_id == tenant_id)
            .values(
                started_at=since,
                current_period_start=since,
                current_period_end=(since + timedelta(days=32)).replace(day=1),
            )
        )
        _db.session.commit()
        _db.session.remove()


def outside(tenant_id, at, service, model, cost, count=1):
    return [
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
            "idempotency_key": f"b-{next(_ids)}",
        }
        for _ in range(count)
    ]


def api_calls(tenant_id, at, status=200, count=1):
    return [
        {
            "tenant_id": tenant_id,
            "service": "tollgate",
            "endpoint": "/api/v1/ping",
            "status_code": status,
            "occurred_at": at,
            "idempotency_key": uuid.uuid4().hex,
        }
        for _ in range(count)
    ]


def store(app, records) -> None:
    with app.app_context():
        store_usage(records)
        _db.session.commit()
        _db.session.remove()


def close(app, now: datetime) -> None:
    with app.app_context():
        close_periods(now)
        _db.session.remove()


def rows(html: str, table_id: str) -> list[str]:
    table = re.search(rf'<table id="{table_id}".*?</table>', html, re.S)
    assert table, f"no table {table_id}"
    body = table.group(0).split("</thead>")[-1]
    return [page_text(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def subscription_of(tenant_id: int):
    _db.session.expire_all()
    return current_subscription(tenant_id)


def actions(tenant_id: int) -> list[str]:
    _db.session.expire_all()
    query = select(AuditEvent.action).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action.like("plan.%"))
    return list(_db.session.scalars(query.order_by(AuditEvent.id)))


def flashes(client) -> str:
    return page_text(client.get("/dashboard").text)


def choose(client, plan: str):
    return post_form(client, "/billing/plan", {"plan": plan}, page="/billing")


@pytest.fixture
def initech(app, portal_tenant, clock):
    """Initech on the starter plan since November 1st; the clock: November 18, 12:30 UTC."""
    customer_since(app, portal_tenant.tenant_id, NOV)
    return portal_tenant


@pytest.fixture
def owner(client, initech):
    """Signed in as Initech's owner (only owners change the plan)."""
    sign_in(client, initech.owner)
    return initech


@pytest.fixture
def history(app, portal_tenant, clock):
    """Initech since September, September and October closed into statements. October's has
    the plan fee, groq $0.236, openai gpt-4o-mini 5 x $0.0042, 3 unpriced calls and $1.25 of
    September usage reported late (an adjustment)."""
    tid = portal_tenant.tenant_id
    customer_since(app, tid, SEP)
    store(app, outside(tid, SEP + timedelta(days=9), "openai", "gpt-4o", "1.25", count=2))
    close(app, OCT + timedelta(minutes=5))
    store(app, outside(tid, SEP + timedelta(days=19), "openai", "gpt-4o", "1.25"))  # late
    store(app, outside(tid, OCT + timedelta(days=3), "groq", "llama-3.1-70b-versatile", "0.236"))
    store(app, outside(tid, OCT + timedelta(days=4), "mystery", "new-model", None, count=3))
    store(app, outside(tid, OCT + timedelta(days=5), "openai", "gpt-4o-mini", "0.0042", count=5))
    close(app, NOV + timedelta(minutes=5))
    with app.app_context():
        ids = dict(
            _db.session.execute(select(Statement.period_start, Statement.id).where(Statement.tenant_id == tid)).all()
        )
        _db.session.remove()
    portal_tenant.statements = {"2026-09": ids[SEP], "2026-10": ids[OCT]}
    return portal_tenant


# -- plans and changing plan ---------------------------------------------------------------------


def test_the_plans_side_by_side_say_when_each_change_would_apply(client, owner):
    html = client.get("/billing").text
    text = page_text(html)
    assert "You are on the Starter plan ($29.00 a month)" in text
    for name, price in (
        ("Free", "$0.00"),
        ("Starter", "$29.00"),
        ("Professional", "$99.00"),
        ("Enterprise", "$499.00"),
    ):
        assert f"{name} {price} /month" in text
    starter = page_text(re.search(r'id="plan-starter".*?</li>', html, re.S).group(0))
    assert "your plan" in starter and "Upgrade" not in starter
    enterprise = page_text(re.search(r'id="plan-enterprise".*?</li>', html, re.S).group(0))
    assert "Applies now. Its limits and quota start with your next call. Upgrade now" in enterprise
    assert "Unlimited" in enterprise and "5,000" in enterprise
    free = page_text(re.search(r'id="plan-free".*?</li>', html, re.S).group(0))
    assert "Applies on December 1, 2026 , when this period ends. Until then you keep Starter." in free
    assert "Downgrade on December 1, 2026" in free


def test_an_upgrade_applies_now(app, client, owner, db):
    response = choose(client, "professional")
    assert response.status_code == 302 and response.headers["Location"] == "/billing"
    text = flashes(client)
    assert "You are on the Professional plan from now on (2026-11-18 12:30 UTC): its limits and quota apply" in text
    subscription = subscription_of(owner.tenant_id)
    assert subscription.plan.code == "professional" and subscription.started_at == NOW
    assert (subscription.current_period_start, subscription.current_period_end) == (NOV, DEC)
    assert subscription.scheduled_plan_id is None
    page = page_text(client.get("/billing").text)
    assert "You are on the Professional plan ($99.00 a month)" in page
    # This period's fee is split between the two plans.
    assert "Starter plan, Nov 1–Nov 18" in page and "Professional plan, Nov 18–Nov 30" in page
    assert actions(owner.tenant_id) == ["plan.changed"]


def test_a_downgrade_waits_for_the_period_end_with_the_date_written_out(app, client, owner, db):
    response = choose(client, "free")
    assert response.status_code == 302
    assert (
        "Your plan changes to Free on December 1, 2026 at 00:00 UTC, when this billing period ends. "
        "Until then you keep the Starter plan and its limits." in flashes(client)
    )
    subscription = subscription_of(owner.tenant_id)
    assert subscription.plan.code == "starter" and subscription.scheduled_plan.code == "free"
    html = client.get("/billing").text
    pending = page_text(re.search(r'id="pending-change".*?</section>', html, re.S).group(0))
    assert "scheduled Your plan changes to Free on December 1, 2026" in pending
    assert "Until then you keep the Starter plan and its limits." in pending
    assert "Keep the Starter plan (cancel the change)" in pending
    free = page_text(re.search(r'id="plan-free".*?</li>', html, re.S).group(0))
    assert "starts December 1, 2026" in free and "Downgrade" not in free
    assert actions(owner.tenant_id) == ["plan.change_scheduled"]


def test_choosing_the_current_plan_cancels_a_pending_downgrade(app, client, owner, db):
    choose(client, "free")
    response = choose(client, "starter")
    assert response.status_code == 302
    assert "The change to the Free plan is cancelled: you stay on the Starter plan." in flashes(client)
    subscription = subscription_of(owner.tenant_id)
    assert subscription.plan.code == "starter" and subscription.scheduled_plan_id is None
    assert 'id="pending-change"' not in client.get("/billing").text
    assert actions(owner.tenant_id) == ["plan.change_scheduled", "plan.change_cancelled"]


def test_choosing_the_current_plan_with_nothing_pending_changes_nothing(app, client, owner, db):
    response = choose(client, "starter")
    assert response.status_code == 302
    assert "The plan was not changed: the account is on the Starter plan already." in flashes(client)
    assert actions(owner.tenant_id) == []


def test_an_unknown_plan_is_a_400_with_a_message(client, owner, db):
    response = choose(client, "platinum")
    assert response.status_code == 400
    assert "There is no such plan." in page_text(response.text)
    assert subscription_of(owner.tenant_id).plan.code == "starter"


def test_the_owner_may_change_the_plan(client, initech, db):
    sign_in(client, initech.owner)
    assert choose(client, "enterprise").status_code == 302
    assert subscription_of(initech.tenant_id).plan.code == "enterprise"


def test_a_member_reads_the_page_but_cannot_change_the_plan(client, initech, db):
    sign_in(client, initech.member)
    page = client.get("/billing")
    assert page.status_code == 200
    assert "Upgrade now" not in page.text and "Only owners can change the plan." in page.text
    response = client.post("/billing/plan", data={"csrf_token": csrf_token(page.text), "plan": "enterprise"})
    assert response.status_code == 403
    assert subscription_of(initech.tenant_id).plan.code == "starter"


def test_a_plan_change_needs_its_csrf_token(client, owner, db):
    assert client.post("/billing/plan", data={"plan": "enterprise"}).status_code == 400
    assert subscription_of(owner.tenant_id).plan.code == "starter"


# -- the period so far, refusals, the quota forecast ---------------------------------------------


def test_the_period_so_far_is_the_upcoming_statement_to_the_cent(app, client, owner, redis):
    tid = owner.tenant_id
    redis.set(quota_key(tid, NOW), 1234)
    store(app, outside(tid, NOV + timedelta(days=2), "openai", "gpt-4o", "1.25", count=2))
    store(app, outside(tid, NOV + timedelta(days=3), "mystery", "new-model", None, count=3))
    html = client.get("/billing").text
    with app.app_context():
        expected = upcoming(tid, NOW)
        _db.session.remove()
    lines = rows(html, "draft-lines")
    assert lines == [
        "Starter plan 1 $29.00",
        "mystery new-model: 3 calls with no price yet (billed once priced) unpriced: not billed yet 3 —",
        "openai gpt-4o: 2,000 tokens in 2 calls 2 $2.50",
        "Total so far $31.50",
    ]
    assert expected["statement"]["total"] == "31.50"
    forecast = expected["forecast"]
    text = page_text(html)
    assert f"At this pace the period comes to about {money(Decimal(forecast['total']))}" in text
    assert f"({forecast['requests']:,} calls, {money(Decimal(forecast['usageCost']))} of usage charges)" in text
    assert "3 unpriced calls are listed without an amount and billed once priced." in text


def test_rate_limit_refusals_of_the_last_90_days_day_by_day(app, client, owner):
    tid = owner.tenant_id
    store(app, api_calls(tid, NOV + timedelta(days=9, hours=10), status=429, count=5))
    store(app, api_calls(tid, NOV + timedelta(days=9, hours=11), count=15))
    store(app, api_calls(tid, NOV + timedelta(days=11, hours=10), status=429, count=2))
    store(app, api_calls(tid, datetime(2026, 8, 1, 12, tzinfo=UTC), status=429, count=40))  # 109 days ago
    html = client.get("/billing").text
    text = page_text(html)
    assert "7 calls refused on 2 days." in text
    assert rows(html, "violations") == ["Thu Nov 12, 2026 2 2 100.0%", "Tue Nov 10, 2026 20 5 25.0%"]
    assert html.count('class="bar"') == 90
    assert "Calls refused with 429 per day, last 90 days</title>" in html
    assert "Tue Nov 10: 5 refused of 20 calls" in html


def test_no_refusals_is_said_plainly(client, owner):
    assert "No call was refused in the last 90 days." in page_text(client.get("/billing").text)


def test_the_quota_runs_out_at_this_pace_and_an_upgrade_is_recommended(app, client, owner, redis, db):
    redis.set(quota_key(owner.tenant_id, NOW), 70_000)
    with app.app_context():
        advice = recommend(redis, owner.tenant_id, NOW)
        _db.session.remove()
    assert advice.runs_out_on.isoformat() == "2026-11-26" and advice.plan.code == "professional"
    html = client.get("/billing").text
    panel = page_text(re.search(r'id="recommendation".*?</section>', html, re.S).group(0))
    assert "At this pace the quota runs out on November 26, 2026 : 70,000 of 100,000 calls used" in panel
    assert advice.reason in panel
    assert "Upgrade to Professional now" in panel
    assert choose(client, "professional").status_code == 302
    assert subscription_of(owner.tenant_id).plan.code == "professional"


def test_a_pace_within_the_quota_recommends_nothing(app, client, owner, redis):
    redis.set(quota_key(owner.tenant_id, NOW), 20_000)
    panel = page_text(re.search(r'id="recommendation".*?</section>', client.get("/billing").text, re.S).group(0))
    assert "20,000 of 100,000 calls used; about 34,2" in panel
    assert "At this pace the quota lasts the period." in panel and "Upgrade to" not in panel


# -- statements ----------------------------------------------------------------------------------


def test_the_statements_are_listed_newest_first(client, history):
    sign_in(client, history.member)
    html = client.get("/billing").text
    october, september = history.statements["2026-10"], history.statements["2026-09"]
    assert html.index(f"/billing/statements/{october}") < html.index(f"/billing/statements/{september}")
    text = page_text(html)
    assert "October 2026 Starter 0 3 $30.51" in text and "September 2026 Starter 0 — $31.50" in text
    assert f"/billing/statements/{october}.csv" in html


def test_a_statement_page_shows_its_lines_and_totals_to_the_cent(app, client, history, db):
    sign_in(client, history.member)
    statement_id = history.statements["2026-10"]
    response = client.get(f"/billing/statements/{statement_id}")
    assert response.status_code == 200
    html = response.text
    assert rows(html, "statement-lines") == [
        "Starter plan 1 $29.00 $29.00",
        "groq llama-3.1-70b-versatile: 1,000 tokens in 1 calls 1 — $0.24",
        "mystery new-model: 3 calls with no price yet (billed once priced) unpriced: not billed 3 — —",
        "openai gpt-4o-mini: 5,000 tokens in 5 calls 5 — $0.02",
        "Late usage from 2026-09: openai gpt-4o adjustment for 2026-09 1 — $1.25",
    ]
    assert rows(html, "statement-totals") == [
        "Plan fee $29.00",
        "Overage $0.00",
        "Token costs $0.26",
        "Service costs $0.00",
        "Adjustments for earlier periods $1.25",
        "Total $30.51",
    ]
    statement = db.session.get(Statement, statement_id)
    assert statement.total == Decimal("30.51")
    assert sum(line.amount for line in statement.lines if line.amount is not None) == statement.total
    text = page_text(html)
    assert "October 2026 Initech" in text and "October 1, 2026 – October 31, 2026" in text
    assert "3 outside-service calls had no price when the period closed" in text
    # Printable: its own print styles, and no script needed to print.
    assert "/static/pages/billing.css" in html and "use your browser's Print command" in html.replace("&#39;", "'")
    assert f'href="/billing/statements/{statement_id}.csv"' in html


def test_a_statement_as_csv_is_the_exports(app, client, history, db):
    sign_in(client, history.member)
    statement_id = history.statements["2026-10"]
    response = client.get(f"/billing/statements/{statement_id}.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="statement-2026-10.csv"'
    assert response.text == statement_csv(db.session.get(Statement, statement_id))
    assert response.text.splitlines()[-1] == "2026-10,,total,Total,,,,,,30.51"


def test_another_tenants_statement_is_a_404(app, client, history, other_tenant):
    sign_in(client, other_tenant.owner)
    for statement_id in history.statements.values():
        assert client.get(f"/billing/statements/{statement_id}").status_code == 404
        assert client.get(f"/billing/statements/{statement_id}.csv").status_code == 404
    assert client.get(f"/billing/statements/{2**40}").status_code == 404
    assert "/billing/statements/" not in client.get("/billing").text


# -- SQL statements ------------------------------------------------------------------------------


def counted(app, client, url: str) -> int:
    with count_statements(app) as statements:
        assert client.get(url).status_code == 200
    return len(statements)


def test_the_billing_page_runs_a_fixed_number_of_statements(app, client, portal_tenant, clock):
    tid = portal_tenant.tenant_id
    customer_since(app, tid, OCT)
    store(app, outside(tid, OCT + timedelta(days=3), "openai", "gpt-4o", "1.25"))
    close(app, NOV + timedelta(minutes=5))
    sign_in(client, portal_tenant.owner)
    client.get("/billing")  # the period's first look rebuilds its quota counter (one statement more)
    before = counted(app, client, "/billing")
    # More statements, services, models and days with refusals; a pending downgrade.
    with app.app_context():
        _db.session.execute(
            update(Subscription)
            .where(Subscription.tenant_id == tid)
            .values(started_at=datetime(2026, 6, 1, tzinfo=UTC))
        )
        _db.session.commit()
    records = []
    for day in range(17):
        at = NOV + timedelta(days=day, hours=8)
        records += api_calls(tid, at, status=429, count=2) + api_calls(tid, at - timedelta(days=60), status=429)
        records += outside(tid, at, f"svc{day % 5}", f"model-{day}", "0.5" if day % 3 else None)
    store(app, records)
    with app.app_context():
        for month in (7, 8, 9):  # statements of earlier months
            _db.session.add(
                Statement(
                    tenant_id=tid,
                    period_start=datetime(2026, month, 1, tzinfo=UTC),
                    period_end=datetime(2026, month + 1, 1, tzinfo=UTC),
                    plan_code="starter",
                    plan_fee=Decimal("29.00"),
                    total=Decimal("29.00"),
                )
            )
        _db.session.commit()
    post_form(client, "/billing/plan", {"plan": "free"}, page="/billing")
    after = counted(app, client, "/billing")
    assert after == before
    assert before <= 16


def test_a_statement_page_runs_a_fixed_number_of_statements(app, client, history):
    sign_in(client, history.owner)
    small = counted(app, client, f"/billing/statements/{history.statements['2026-09']}")
    large = counted(app, client, f"/billing/statements/{history.statements['2026-10']}")
    assert small == large <= 6
