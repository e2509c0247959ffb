"""The costs page: spend by service, model, key and end user agreeing with the cost report to the
cent, unpriced calls flagged (never shown as $0), the month's forecast, the prices in force and
the tenant's own; budgets with their progress, created, changed and deleted by owners and
admins (members read), with messages for bad input, CSRF, and another tenant's budget a 404."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select, update

from portal.billing.changes import upcoming
from portal.costs.budgets import create_budget
from portal.costs.catalog import set_price
from portal.costs.prices import bump_prices_version, forget_price_book
from portal.costs.report import cost_report
from portal.extensions import db as _db
from portal.kernel.redis_keys import budget_stops_key
from portal.metering.store import store_usage
from portal.models import AuditEvent, Budget, ModelPrice, Subscription
from portal.redis_store import get_redis
from portal.web.filters import fine_money, money
from tests.api_helpers import add_key
from tests.conftest import csrf_token
from tests.portal_helpers import count_statements, page_text, post_form, sign_in

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
_ids = itertools.count()


# -- helpers -------------------------------------------------------------------------------------


def in_november(app, tenant_id: int) -> None:
    """The tenant has been on its plan since November 1st (the clock's month)."""
    with app.app_context():
        _db.session.execute(
            update(Subscription)
            .where(Subscription.tenant_id == tenant_id)
            .values(started_at=NOV, current_period_start=NOV, current_period_end=DEC)
        )
        _db.session.commit()
        _db.session.remove()


def call(tenant_id, day, service, model, cost, key_id=None, end_user="", tokens_in=1000, tokens_out=500, count=1):
    """``count`` outside-service calls on November ``day`` (cost None: no price yet)."""
    return [
        {
            "tenant_id": tenant_id,
            "api_key_id": key_id,
            "end_user": end_user,
            "source": "external",
            "service": service,
            "model": model,
            "endpoint": "/v1/chat/completions",
            "status_code": 200,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost": None if cost is None else Decimal(cost),
            "occurred_at": NOV + timedelta(days=day - 1, hours=9),
            "idempotency_key": f"c-{next(_ids)}",
        }
        for _ in range(count)
    ]


def store(app, records) -> None:
    with app.app_context():
        store_usage(records)
        _db.session.commit()
        _db.session.remove()


def rows(html: str, table_id: str) -> list[str]:
    """The text of each body and footer row of a table."""
    table = re.search(rf'<table id="{table_id}".*?</table>', html, re.S)
    assert table, f"no table {table_id}"
    body = table.group(0).split("</thead>")[-1]
    return [page_text(row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def row_for(html: str, table_id: str, label: str) -> str:
    found = [row for row in rows(html, table_id) if row.startswith(label + " ")]
    assert found, f"no row {label!r} in {rows(html, table_id)}"
    return found[0]


def flashes(client) -> str:
    return page_text(client.get("/dashboard").text)


@pytest.fixture
def initech(app, portal_tenant, clock):
    """Initech in November (the clock: Nov 18, 12:30 UTC) with two keys and known spend:
    openai gpt-4o $2.50 (2 calls), groq $0.236, mystery new-model 3 calls with no price."""
    in_november(app, portal_tenant.tenant_id)
    backend, _ = add_key(app, portal_tenant.tenant_id, "backend")
    reports, _ = add_key(app, portal_tenant.tenant_id, "reports")
    tid = portal_tenant.tenant_id
    store(
        app,
        call(tid, 3, "openai", "gpt-4o", "1.25", backend, "web-app", count=2)
        + call(tid, 4, "groq", "llama-3.1-70b-versatile", "0.236", reports, "support-bot")
        + call(tid, 5, "mystery", "new-model", None, backend, "web-app", count=3),
    )
    portal_tenant.keys = {"backend": backend, "reports": reports}
    return portal_tenant


@pytest.fixture
def admin(client, initech):
    sign_in(client, initech.admin)
    return initech


# -- spend ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["service", "model", "key", "end_user", "endpoint"])
def test_spend_by_each_group_agrees_with_the_cost_report_to_the_cent(app, client, admin, group):
    html = client.get(f"/costs?month=2026-11&group={group}").text
    with app.app_context():
        report = cost_report(admin.tenant_id, group, date(2026, 11, 1), date(2026, 11, 30))
    assert report.groups
    for g in report.groups:
        row = row_for(html, "cost-groups", g.key)
        assert f" {g.calls:,} " in f" {row} "
        if g.unpriced_calls < g.calls:
            assert fine_money(g.cost) in row
    assert re.search(r'id="cost-total">([^<]+)<', html).group(1) == fine_money(report.total_cost) == "$2.74"


def test_spend_shows_the_known_figures_by_service_key_and_end_user(client, admin):
    by_service = client.get("/costs?month=2026-11&group=service").text
    assert "$2.50" in row_for(by_service, "cost-groups", "openai")
    assert "$0.24" in row_for(by_service, "cost-groups", "groq")  # $0.236 to the cent
    by_key = client.get("/costs?month=2026-11&group=key").text
    assert "$2.50" in row_for(by_key, "cost-groups", "backend")
    assert "$0.24" in row_for(by_key, "cost-groups", "reports")
    assert f'href="/keys/{admin.keys["backend"]}"' in by_key
    by_user = client.get("/costs?month=2026-11&group=end_user").text
    assert "$2.50" in row_for(by_user, "cost-groups", "web-app")
    assert "$0.24" in row_for(by_user, "cost-groups", "support-bot")


def test_unpriced_calls_are_flagged_never_shown_as_zero(client, admin):
    html = client.get("/costs?month=2026-11&group=service").text
    mystery = row_for(html, "cost-groups", "mystery")
    assert "3 calls unpriced" in mystery and "no price yet" in mystery
    assert "$0" not in mystery
    # A key with priced and unpriced calls shows its cost and the flag.
    backend = row_for(client.get("/costs?month=2026-11&group=key").text, "cost-groups", "backend")
    assert "$2.50" in backend and "3 calls unpriced" in backend
    text = page_text(html)
    assert "Unpriced calls 3 no price known yet" in text
    assert "Total 3 calls unpriced" in row_for(html, "cost-groups", "Total")
    prices = row_for(html, "prices", "mystery")
    assert "no price" in prices and "3 calls unpriced" in prices and "$0" not in prices


def test_the_range_defaults_to_this_month_and_takes_dates_or_a_month(client, admin):
    html = client.get("/costs").text
    assert '<option selected value="2026-11">November 2026</option>' in html
    assert "Nov 1, 2026 – Nov 30, 2026" in page_text(html)
    # Only November 4th: the groq call.
    html = client.get("/costs?month=&start=2026-11-04&end=2026-11-04").text
    assert re.search(r'id="cost-total">([^<]+)<', html).group(1) == "$0.24"
    assert 'value="2026-11-04"' in html
    # October: nothing.
    assert "No outside-service calls in these days." in client.get("/costs?month=2026-10").text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("month=&start=2026-11-20&end=2026-11-01", "The end date is before the start date."),
        ("month=&start=2025-01-01&end=2026-11-01", "Choose at most 366 days."),
        ("month=&start=yesterday", "Not a valid date value."),
        ("month=2026-13", "Choose a month from the list (YYYY-MM)."),
    ],
)
def test_a_bad_filter_is_a_400_with_its_message(client, admin, query, message):
    response = client.get(f"/costs?{query}")
    assert response.status_code == 400
    assert message in page_text(response.text)


def test_the_daily_chart_has_a_bar_per_day(client, admin):
    html = client.get("/costs?month=2026-11").text
    assert html.count('class="bar"') == 30
    assert "Tue Nov 3: $2.50, 2 calls" in html
    assert "Thu Nov 5: $0.00, 3 calls, 3 unpriced" in html


def test_the_months_forecast_is_billing_upcomings(app, client, admin):
    html = client.get("/costs").text
    with app.app_context():
        forecast = upcoming(admin.tenant_id, datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC))
        _db.session.remove()
    text = page_text(html)
    usage = Decimal(forecast["forecast"]["usageCost"])
    total = Decimal(forecast["forecast"]["total"])
    assert usage == Decimal("4.69")  # $2.74 over 58.4% of November
    assert (
        f"Usage charges so far $2.74 in 58% of the month; at this pace the month comes to about {money(usage)}" in text
    )
    assert f"or {money(total)} with the $29.00 plan fee" in text
    assert "Forecast for November $4.69" in text


def test_a_forecast_waits_for_a_tenth_of_the_month(app, client, admin, clock):
    clock.now = datetime(2026, 11, 2, 6, tzinfo=UTC).timestamp()
    text = page_text(client.get("/costs").text)
    assert "Forecast for November —" in text
    assert "A forecast is shown once 10% of the period has passed" in text


def test_prices_in_force_and_the_tenants_own_prices(app, client, admin):
    with app.app_context():
        newest = _db.session.scalar(select(func.max(ModelPrice.id))) or 0
        set_price("openai", "gpt-4o", {"input": "1.5", "output": "6"}, NOV, tenant_id=admin.tenant_id)
        _db.session.commit()
        bump_prices_version(get_redis(app))
        _db.session.remove()
    try:
        html = client.get("/costs?month=2026-11").text
        gpt4o = row_for(html, "prices", "openai gpt-4o")
        assert "$1.50 $6.00" in gpt4o and "your price" in gpt4o and "since 2026-11-01" in gpt4o
        groq = row_for(html, "prices", "groq llama-3.1-70b-versatile")
        assert "your price" not in groq and "$0.59" in groq  # the catalog's price
        own = rows(html, "own-prices")
        assert own == ["openai gpt-4o $1.50 $6.00 $0.00 $0.00 since 2026-11-01"]
    finally:
        with app.app_context():
            _db.session.execute(delete(ModelPrice).where(ModelPrice.id > newest))
            _db.session.commit()
            _db.session.remove()
        forget_price_book()


def test_without_own_prices_the_page_says_so(client, admin):
    assert "You have no negotiated prices" in page_text(client.get("/costs").text)


# -- budgets -------------------------------------------------------------------------------------


def make_budget(app, tenant_id, name="OpenAI", amount="10.00", **kwargs) -> int:
    with app.app_context():
        budget = create_budget(tenant_id, name, Decimal(amount), **kwargs)
        _db.session.commit()
        budget_id = budget.id
        _db.session.remove()
    return budget_id


def test_a_budgets_progress_is_its_spend_this_month(app, client, admin):
    openai = make_budget(app, admin.tenant_id, "OpenAI", "10.00", service="openai")
    everything = make_budget(app, admin.tenant_id, "Everything", "4.00")
    html = client.get("/costs").text
    text = page_text(html)
    assert "$2.50 of $10.00 (25.0%) · $7.50 left" in text
    assert "$2.74 of $4.00 (68.4%) · $1.26 left" in text  # $2.736
    assert f'id="budget-{openai}-progress"' in html and 'aria-valuetext="$2.50 of $10.00 (25.0%)"' in html
    assert f'id="budget-{everything}-progress"' in html
    assert "Service openai" in text and "The whole account" in text


@pytest.mark.parametrize("typed", ["²", "9" * 5000, "50, ٣"])
def test_a_warning_percentage_that_is_not_a_plain_number_is_refused_with_a_message(client, admin, db, typed):
    fields = {"name": "Backend", "amount": "10", "warning_percentages": typed, "scope": "account"}
    response = post_form(client, "/costs/budgets?month=2026-11", fields, page="/costs")
    assert response.status_code == 400
    assert "is not a whole number: give percentages like 50, 80, 100." in response.text
    assert db.session.scalars(select(Budget).where(Budget.tenant_id == admin.tenant_id)).all() == []


def test_an_admin_creates_a_budget(app, client, admin, db):
    response = post_form(
        client,
        "/costs/budgets?month=2026-11&group=key",
        {
            "name": "Backend",
            "amount": "$1,250.50",
            "warning_percentages": "80, 50",
            "scope": "key",
            "api_key_id": str(admin.keys["backend"]),
            "hard_stop": "y",
        },
        page="/costs",
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/costs?month=2026-11&group=key#budgets"
    [budget] = db.session.scalars(select(Budget).where(Budget.tenant_id == admin.tenant_id)).all()
    assert (budget.name, budget.monthly_amount, budget.warning_percentages) == ("Backend", Decimal("1250.50"), [50, 80])
    assert (budget.api_key_id, budget.service, budget.end_user, budget.hard_stop) == (
        admin.keys["backend"],
        None,
        None,
        True,
    )
    assert "Budget “Backend” created: $1,250.50 a month." in flashes(client)
    [event] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "budget.created")).all()
    assert event.tenant_id == admin.tenant_id and event.details["amount"] == "1250.50"
    assert "API key backend" in page_text(client.get("/costs").text)


def test_a_hard_stop_budget_already_spent_stops_at_once(app, client, admin, redis):
    response = post_form(
        client,
        "/costs/budgets",
        {
            "name": "Tiny",
            "amount": "1",
            "warning_percentages": "100",
            "scope": "service",
            "service": "OpenAI",
            "hard_stop": "y",
        },
        page="/costs",
    )
    assert response.status_code == 302
    assert redis.hexists(budget_stops_key(admin.tenant_id), "svc:openai")
    assert "stopped: calls refused" in page_text(client.get("/costs").text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"amount": "abc"}, "Enter an amount in dollars, like 250 or 99.50."),
        ({"amount": ""}, "Enter the monthly amount in dollars."),
        ({"amount": "0"}, "The amount must be more than $0."),
        ({"amount": "-5"}, "The amount must be more than $0."),
        ({"amount": "12.345"}, "Use dollars and cents: at most two decimal places."),
        ({"amount": "99999999999"}, "The amount must be at most $9,999,999,999.99."),
        ({"warning_percentages": "50, 1500"}, "Each warning percentage must be from 1 to 1000 (got 1500)."),
        ({"warning_percentages": "0"}, "Each warning percentage must be from 1 to 1000 (got 0)."),
        ({"warning_percentages": "fifty"}, "“fifty” is not a whole number: give percentages like 50, 80, 100."),
        ({"warning_percentages": ""}, "Give at least one warning percentage, like 50, 80, 100."),
        ({"name": ""}, "Give the budget a name."),
        ({"scope": "service", "service": ""}, "Name the service, e.g. openai."),
        ({"scope": "service", "service": "open ai!"}, "A service name is letters, digits, dots, dashes or underscores"),
        ({"scope": "key", "api_key_id": ""}, "Choose the API key the budget covers."),
        ({"scope": "key", "api_key_id": "999999"}, "Choose one of your API keys."),
        ({"scope": "end_user", "end_user": ""}, "Give the end user id, as your calls report it."),
    ],
)
def test_a_bad_budget_is_refused_with_a_message_beside_the_field(client, admin, db, fields, message):
    data = {"name": "Budget", "amount": "100", "warning_percentages": "50, 80, 100", "scope": "account", **fields}
    response = post_form(client, "/costs/budgets", data, page="/costs")
    assert response.status_code == 400
    assert message in page_text(response.text)
    assert 'class="field-error"' in response.text and 'aria-invalid="true"' in response.text
    assert db.session.scalar(select(func.count()).select_from(Budget)) == 0


def test_another_tenants_key_cannot_scope_a_budget(app, client, admin, other_tenant, db):
    theirs, _ = add_key(app, other_tenant.tenant_id, "theirs")
    response = post_form(
        client,
        "/costs/budgets",
        {"name": "B", "amount": "5", "warning_percentages": "50", "scope": "key", "api_key_id": str(theirs)},
        page="/costs",
    )
    assert response.status_code == 400 and "Choose one of your API keys." in response.text
    assert db.session.scalar(select(func.count()).select_from(Budget)) == 0


def test_an_admin_changes_a_budget(app, client, admin, db):
    budget_id = make_budget(app, admin.tenant_id, "OpenAI", "10.00", service="openai")
    page = client.get(f"/costs/budgets/{budget_id}")
    assert page.status_code == 200
    assert 'value="10.00"' in page.text and 'value="openai"' in page.text
    assert "$2.50 of $10.00 (25.0%)" in page_text(page.text)
    response = post_form(
        client,
        f"/costs/budgets/{budget_id}",
        {
            "name": "Support bot",
            "amount": "20",
            "warning_percentages": "90",
            "scope": "end_user",
            "end_user": "support-bot",
        },
    )
    assert response.status_code == 302 and response.headers["Location"] == f"/costs/budgets/{budget_id}"
    budget = db.session.get(Budget, budget_id)
    assert (budget.name, budget.monthly_amount, budget.warning_percentages) == ("Support bot", Decimal("20.00"), [90])
    assert (budget.service, budget.end_user) == (None, "support-bot")
    text = page_text(client.get(f"/costs/budgets/{budget_id}").text)
    assert "Budget “Support bot” saved: $20.00 a month." in text
    assert "$0.24 of $20.00 (1.2%)" in text  # the groq call of support-bot: $0.236
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "budget.updated"))


def test_a_bad_change_is_refused_and_changes_nothing(app, client, admin, db):
    budget_id = make_budget(app, admin.tenant_id)
    response = post_form(
        client,
        f"/costs/budgets/{budget_id}",
        {"name": "X", "amount": "10", "warning_percentages": "2000", "scope": "account"},
    )
    assert response.status_code == 400
    assert "Each warning percentage must be from 1 to 1000 (got 2000)." in page_text(response.text)
    budget = db.session.get(Budget, budget_id)
    assert (budget.name, budget.warning_percentages) == ("OpenAI", [50, 80, 100])


def test_an_admin_deletes_a_budget(app, client, admin, db):
    budget_id = make_budget(app, admin.tenant_id, "Doomed")
    response = post_form(client, f"/costs/budgets/{budget_id}/delete", page=f"/costs/budgets/{budget_id}")
    assert response.status_code == 302 and response.headers["Location"] == "/costs#budgets"
    assert db.session.get(Budget, budget_id) is None
    assert "Budget “Doomed” deleted." in flashes(client)
    assert db.session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "budget.deleted"))


def test_the_owner_may_change_budgets_too(app, client, initech, db):
    sign_in(client, initech.owner)
    response = post_form(
        client,
        "/costs/budgets",
        {"name": "Owner's", "amount": "3", "warning_percentages": "50", "scope": "account"},
        page="/costs",
    )
    assert response.status_code == 302


def test_a_member_reads_budgets_but_every_change_is_403(app, client, initech, db):
    budget_id = make_budget(app, initech.tenant_id, "Kept")
    sign_in(client, initech.member)
    page = client.get("/costs")
    assert page.status_code == 200 and "Kept" in page.text
    assert "Create budget" not in page.text and "Only owners and admins can create or change budgets." in page.text
    detail = client.get(f"/costs/budgets/{budget_id}")
    assert detail.status_code == 200 and "Save budget" not in detail.text and "Delete this budget" not in detail.text
    token = csrf_token(page.text)
    data = {"csrf_token": token, "name": "M", "amount": "1", "warning_percentages": "50", "scope": "account"}
    assert client.post("/costs/budgets", data=data).status_code == 403
    assert client.post(f"/costs/budgets/{budget_id}", data=data).status_code == 403
    assert client.post(f"/costs/budgets/{budget_id}/delete", data={"csrf_token": token}).status_code == 403
    budget = db.session.get(Budget, budget_id)
    assert budget is not None and budget.name == "Kept"
    assert db.session.scalar(select(func.count()).select_from(Budget)) == 1


def test_every_budget_form_needs_its_csrf_token(app, client, admin, db):
    budget_id = make_budget(app, admin.tenant_id, "Kept")
    data = {"name": "M", "amount": "1", "warning_percentages": "50", "scope": "account"}
    assert client.post("/costs/budgets", data=data).status_code == 400
    assert client.post(f"/costs/budgets/{budget_id}", data=data).status_code == 400
    assert client.post(f"/costs/budgets/{budget_id}/delete").status_code == 400
    assert db.session.get(Budget, budget_id).name == "Kept"
    assert db.session.scalar(select(func.count()).select_from(Budget)) == 1


def test_another_tenants_budget_is_a_404(app, client, admin, other_tenant, db):
    theirs = make_budget(app, other_tenant.tenant_id, "Secret budget")
    token = csrf_token(client.get("/costs").text)
    data = {"csrf_token": token, "name": "Mine now", "amount": "1", "warning_percentages": "50", "scope": "account"}
    assert client.get(f"/costs/budgets/{theirs}").status_code == 404
    assert client.post(f"/costs/budgets/{theirs}", data=data).status_code == 404
    assert client.post(f"/costs/budgets/{theirs}/delete", data={"csrf_token": token}).status_code == 404
    assert client.get(f"/costs/budgets/{2**40}").status_code == 404
    assert "Secret budget" not in client.get("/costs").text
    assert db.session.get(Budget, theirs).name == "Secret budget"


# -- statements ----------------------------------------------------------------------------------


def test_the_page_runs_a_fixed_number_of_statements(app, client, admin):
    make_budget(app, admin.tenant_id, "One", service="openai")
    tid = admin.tenant_id
    client.get("/costs?month=2026-11&group=key")  # the price book is loaded once per process

    def counted(group: str) -> int:
        with count_statements(app) as statements:
            assert client.get(f"/costs?month=2026-11&group={group}").status_code == 200
        return len(statements)

    before = {group: counted(group) for group in ("service", "key", "end_user")}
    # More keys, end users, models, days and budgets.
    keys = [add_key(app, tid, f"key {n}")[0] for n in range(6)]
    records = []
    for day in range(1, 18):
        for n, key in enumerate(keys):
            records += call(tid, day, f"svc{n}", f"model-{n}-{day % 4}", "0.01", key, f"user-{day}-{n}")
    store(app, records)
    for n, key in enumerate(keys):
        make_budget(app, tid, f"Key {n}", api_key_id=key)
    after = {group: counted(group) for group in ("service", "key", "end_user")}
    assert after == before
    assert before["service"] <= 20
