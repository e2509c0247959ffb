"""The dashboard shows the signed-in tenant's plan, quota, live windows, today and this month,
the API's health, the last 30 days, top endpoints and consumers, and active alerts — read from
the rollups and the live Redis counters, in a fixed number of SQL statements. Every
tenant-owned page is scoped to the tenant.

Times are pinned with the ``clock`` fixture: now is 2026-11-18 12:30:10 UTC.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from portal import create_app
from portal.billing.usage import current_subscription
from portal.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from portal.extensions import db, limiter
from portal.metering.store import store_usage
from portal.models import Alert, Tenant
from portal.tenancy.keys import create_api_key
from tests.api_helpers import T0, add_key, drain, set_limits
from tests.factories import PASSWORD
from tests.portal_helpers import count_statements, page_text, sign_in

NOW = datetime.fromtimestamp(T0, UTC)
TODAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)


def usage(tenant_id, at, status=200, source="api", cost=None, tokens=0, **fields):
    record = {
        "tenant_id": tenant_id,
        "source": source,
        "service": "tollgate" if source == "api" else "openai",
        "endpoint": "/api/v1/ping",
        "category": "system",
        "status_code": status,
        "duration_ms": 12,
        "tokens_in": tokens,
        # An admitted API call uses one unit of the monthly quota (a refused one, 429, none).
        "quota_units": int(source == "api" and status != 429),
        "cost": cost,
        "occurred_at": at,
        "idempotency_key": uuid.uuid4().hex,
    }
    record.update(fields)
    return record


def store(app, records):
    with app.app_context():
        store_usage(records)
        db.session.commit()


def text(html: str) -> str:
    """The page's visible text (a path's line-break hints dropped)."""
    return page_text(html.replace("<wbr>", ""))


def dashboard(client) -> str:
    response = client.get("/dashboard")
    assert response.status_code == 200
    return response.text


def progressbar(html: str) -> dict[str, str]:
    match = re.search(r'<div class="progress[^"]*"\s+role="progressbar"(.*?)>', html, re.S)
    assert match, "no progress bar"
    return dict(re.findall(r'(aria-[a-z]+)="([^"]*)"', match.group(1)))


def gauge_desc(html: str, window: str) -> str:
    match = re.search(rf'<desc id="gauge-{window}-desc">([^<]*)</desc>', html)
    assert match, f"no {window} gauge"
    return match.group(1)


def table(html: str, table_id: str) -> list[list[str]]:
    """A table's body rows as lists of cell texts."""
    match = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert match, f"no table {table_id}"
    return [
        [text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)
    ]


def november_period(app, tenant_id: int) -> None:
    """The subscription's period is the clock's month (tenants are made on the real date)."""
    with app.app_context():
        subscription = current_subscription(tenant_id)
        subscription.current_period_start = datetime(2026, 11, 1, tzinfo=UTC)
        subscription.current_period_end = datetime(2026, 12, 1, tzinfo=UTC)
        db.session.commit()


@pytest.fixture
def signed_in(app, client, portal_tenant, clock):
    november_period(app, portal_tenant.tenant_id)
    sign_in(client, portal_tenant.owner)
    return portal_tenant.tenant_id


# -- plan and period ------------------------------------------------------------------------------
def test_dashboard_shows_plan_limits_and_period(client, signed_in):
    page = text(dashboard(client))
    assert "Starter plan" in page
    assert "$29.00" in page
    for figure in ("100,000", "300", "5,000", "50,000", "$0.50", "90 days"):
        assert figure in page, figure
    assert "quota resets 2026-12-01 00:00 UTC" in page
    assert "Billing period Nov 1 – Nov 30, 2026" in page


def test_enterprise_quota_is_unlimited(client, make_tenant, clock):
    _, email, _ = make_tenant("Big", plan="enterprise")
    sign_in(client, email)
    html = dashboard(client)
    page = text(html)
    assert "Requests a month Unlimited" in page
    assert "0 requests this period · unlimited" in page
    assert 'role="progressbar"' not in html


def test_plan_change_shows_on_the_next_page(app, client, signed_in):
    result = app.test_cli_runner().invoke(args=["set-plan", "starter", "--per-minute", "777"])
    assert result.exit_code == 0, result.output
    assert "Per minute 777" in text(dashboard(client))


def test_a_member_sees_the_dashboard(client, portal_tenant, clock):
    sign_in(client, portal_tenant.member)
    assert "Starter plan" in text(dashboard(client))


def test_signed_out_visitors_go_to_sign_in(client):
    response = client.get("/dashboard")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


# -- the month from the rollups -------------------------------------------------------------------
def test_today_and_month_come_from_the_rollups_to_the_cent(app, client, signed_in, make_tenant):
    recent = NOW - timedelta(minutes=5)
    earlier = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    records = [usage(signed_in, recent) for _ in range(1000)]
    records += [usage(signed_in, earlier) for _ in range(200)]
    records += [usage(signed_in, recent, status=500) for _ in range(30)]
    records += [usage(signed_in, recent, status=429) for _ in range(4)]
    # Not this tenant's month: last month, and another tenant.
    records += [usage(signed_in, datetime(2026, 10, 31, 23, 0, tzinfo=UTC)) for _ in range(50)]
    _, _, other = make_tenant("Other")
    records += [usage(other, recent) for _ in range(70)]
    outside = {"source": "external", "tokens": 1000}
    records += [usage(signed_in, recent, cost=Decimal("0.0125"), **outside) for _ in range(8)]
    records += [usage(signed_in, earlier, cost=Decimal("0.3333"), **outside) for _ in range(3)]
    store(app, records)

    html = dashboard(client)
    page = text(html)
    # 1,234 API calls metered this period; the 4 refused ones used no quota (there is no live
    # counter here: the quota is counted from the rollups).
    assert "1,230 of 100,000 requests used (98,770 left, 1.2%)" in page
    assert "Today Calls 1,042 Tokens 8,000 Cost $0.10" in page
    # $0.10 + 3 × $0.3333: summed exactly, rounded once.
    assert "This month Calls 1,245 Tokens 11,000 Cost $1.10" in page
    assert "Calls 1,234 34 errors · 4 rate-limited" in page
    assert "Success rate 97.2%" in page  # 1,200 of 1,234
    assert "Error rate 2.8%" in page


def test_quota_progress_bar_carries_its_values(app, client, signed_in):
    store(app, [usage(signed_in, NOW - timedelta(hours=1)) for _ in range(90)])
    html = dashboard(client)
    assert progressbar(html) == {
        "aria-label": "Monthly quota used",
        "aria-valuemin": "0",
        "aria-valuemax": "100000",
        "aria-valuenow": "90",
        "aria-valuetext": "90 of 100,000 requests used (0.1%)",
    }


def test_quota_reset_counts_down_and_is_written_out(client, signed_in):
    html = dashboard(client)
    # 2026-11-18 12:30:10 → 2026-12-01 00:00:00 is 12 days 11 hours 29 minutes away.
    assert '<time data-countdown datetime="2026-12-01T00:00:00Z">in 12d 11h</time>' in html
    assert "Resets in 12d 11h (on 2026-12-01 00:00 UTC)" in text(html)


def test_average_and_p95_latency_from_the_histogram(app, client, signed_in):
    at = NOW - timedelta(hours=2)
    records = [usage(signed_in, at, duration_ms=20) for _ in range(90)]
    records += [usage(signed_in, at, duration_ms=300) for _ in range(10)]
    store(app, records)
    page = text(dashboard(client))
    assert "Average latency 48 ms" in page  # (90 × 20 + 10 × 300) / 100
    # The 95th call lies halfway through the 10 calls of the (250, 500] ms bucket.
    assert "p95 latency 375 ms" in page


def test_chart_is_inline_svg_with_a_bar_per_day(app, client, signed_in):
    store(app, [usage(signed_in, TODAY - timedelta(days=d, hours=-3)) for d in range(35) for _ in range(d + 1)])
    html = dashboard(client)
    assert '<svg viewBox="0 0 720' in html
    assert 'role="img"' in html
    assert "API calls per day, last 30 days</title>" in html
    assert html.count('class="bar"') == 30
    # The oldest bar is 29 days ago (30 calls); the day before it is not drawn.
    assert "Tue Oct 20: 30 calls, 0 errors" in html
    assert "Wed Nov 18: 1 calls, 0 errors" in html
    assert "Oct 19: 31 calls" not in html
    assert "peak 30" in text(html)


# -- the forecast --------------------------------------------------------------------------------
def test_a_pace_past_the_quota_says_when_it_runs_out_and_what_to_upgrade_to(app, client, signed_in):
    set_limits(app, "starter", monthly_quota=1000)
    store(app, [usage(signed_in, datetime(2026, 11, 10, 9, 0, tzinfo=UTC)) for _ in range(800)])
    page = text(dashboard(client))
    assert "800 of 1,000 requests used (200 left, 80.0%)" in page
    # 800 calls in 17.52 of 30 days: 1,370 at this pace; the last 200 go in 4.4 more days.
    assert "At this pace the quota runs out on Nov 22, 2026. About 1,370 calls this period." in page
    assert (
        "Recommended: the Professional plan ($99.00/month). At this pace about 1,370 calls are needed "
        "this period; the Professional plan includes 1,000,000 calls."
    ) in page


def test_a_pace_within_the_quota_needs_no_upgrade(app, client, signed_in):
    store(app, [usage(signed_in, datetime(2026, 11, 10, 9, 0, tzinfo=UTC)) for _ in range(35)])
    page = text(dashboard(client))
    assert "At this pace about 60 calls this period: the quota lasts the period." in page
    assert "runs out" not in page and "Recommended" not in page


def test_no_forecast_in_the_first_days_of_the_period(app, client, signed_in, clock):
    clock.advance(-16 * 86400)  # Nov 2, 12:30
    store(app, [usage(signed_in, datetime(2026, 11, 2, 9, 0, tzinfo=UTC)) for _ in range(35)])
    page = text(dashboard(client))
    assert "A forecast is shown once 10% of the billing period has passed." in page


# -- live counters --------------------------------------------------------------------------------
def test_gauges_and_quota_follow_real_api_calls(app, client, signed_in):
    _, secret = add_key(app, signed_in, "backend")
    api = app.test_client()
    for _ in range(7):
        assert api.get("/api/v1/ping", headers={"X-API-Key": secret}).status_code == 200
    html = dashboard(client)
    assert gauge_desc(html, "minute") == "7 of 300 used (2%), resets 12:31 UTC"
    assert gauge_desc(html, "hour") == "7 of 5,000 used (0%), resets 13:00 UTC"
    assert gauge_desc(html, "day") == "7 of 50,000 used (0%), resets Nov 19 00:00 UTC"
    # The quota is the live counter, before the worker has stored a single call.
    assert "7 of 100,000 requests used" in text(html)
    assert progressbar(html)["aria-valuenow"] == "7"

    assert drain(app) == 7
    api.get("/api/v1/ping", headers={"X-API-Key": secret})
    html = dashboard(client)
    # Stored and counted live: each call counts once.
    assert "8 of 100,000 requests used" in text(html)
    assert gauge_desc(html, "minute").startswith("8 of 300 used")


def test_the_minute_gauge_starts_afresh_with_the_next_minute(app, client, signed_in, clock):
    _, secret = add_key(app, signed_in, "backend")
    api = app.test_client()
    for _ in range(3):
        api.get("/api/v1/ping", headers={"X-API-Key": secret})
    clock.advance(60)
    api.get("/api/v1/ping", headers={"X-API-Key": secret})
    html = dashboard(client)
    assert gauge_desc(html, "minute") == "1 of 300 used (0%), resets 12:32 UTC"
    assert gauge_desc(html, "hour").startswith("4 of 5,000 used")
    drain(app)


@pytest.fixture
def redis_we_can_stop(app):
    """An app on the test database with a Redis server of its own, which the test can stop."""
    folder = Path(tempfile.mkdtemp(prefix="tg-dash-"))
    own = create_app(
        {
            "INSTANCE_PATH": str(folder),
            "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": ensure_embedded_redis(folder),
            "SECRET_KEY": "dashboard-redis-down-secret",
            "TESTING": True,
        }
    )
    yield own, folder
    stop_embedded_redis(folder)
    # Flask-Limiter keeps one storage per limiter instance: the last app built took it over.
    limiter.init_app(app)


def test_with_redis_down_the_page_still_answers_from_the_rollups(app, portal_tenant, redis_we_can_stop):
    own, folder = redis_we_can_stop
    store(app, [usage(portal_tenant.tenant_id, datetime.now(UTC)) for _ in range(12)])
    client = own.test_client()
    sign_in(client, portal_tenant.owner)
    stop_embedded_redis(folder)  # a real outage: the server is gone
    html = dashboard(client)
    page = text(html)
    assert "The live window counters cannot be read right now." in page
    assert "12 of 100,000 requests used" in page
    assert "Counted from stored usage: the live counter cannot be read right now." in page
    assert 'id="gauge-minute-desc"' not in html


# -- endpoints, consumers, alerts -----------------------------------------------------------------
def test_top_endpoints_with_category_share_and_error_rate(app, client, signed_in):
    at = NOW - timedelta(hours=1)
    records = [usage(signed_in, at, endpoint="/api/v1/usage/stats", category="analytics") for _ in range(60)]
    records += [
        usage(signed_in, at, endpoint="/api/v1/usage/stats", category="analytics", status=500) for _ in range(15)
    ]
    records += [usage(signed_in, at, endpoint="/api/v1/billing/usage", category="billing") for _ in range(20)]
    records += [usage(signed_in, at, endpoint="/api/v1/ping", category="system", status=429) for _ in range(5)]
    # Outside-service calls are not endpoints of the API.
    records += [usage(signed_in, at, source="external", endpoint="/v1/chat/completions", category="llm")]
    store(app, records)
    assert table(dashboard(client), "top-endpoints") == [
        ["GET /api/v1/usage/stats Analytics", "75", "75.0%", "20.0% 15 errors"],
        ["GET /api/v1/billing/usage Billing", "20", "20.0%", "0.0%"],
        ["GET /api/v1/ping System", "5", "5.0%", "100.0% 5 errors"],
    ]


def test_category_badges_say_the_category_in_words(app, client, signed_in):
    store(app, [usage(signed_in, NOW, category="auth"), usage(signed_in, NOW, category="")])
    html = dashboard(client)
    assert '<span class="badge badge-category-auth">Authentication</span>' in html
    assert '<span class="badge badge-category-none">Uncategorised</span>' in html


def test_top_consumers_keys_and_end_users(app, client, signed_in):
    backend, _ = add_key(app, signed_in, "Backend")
    reports, _ = add_key(app, signed_in, "Reports")
    at = NOW - timedelta(hours=3)
    records = [usage(signed_in, at, api_key_id=backend, end_user="web-app") for _ in range(30)]
    records += [
        usage(
            signed_in,
            at,
            source="external",
            api_key_id=reports,
            end_user="bot",
            tokens=250,
            cost=Decimal("0.0404"),
        )
        for _ in range(10)
    ]
    records += [usage(signed_in, at) for _ in range(50)]  # no key, no end user: in neither table
    store(app, records)
    html = dashboard(client)
    keys = table(html, "top-keys")
    assert [row[0].split(" ")[0] for row in keys] == ["Backend", "Reports"]
    assert [row[1:] for row in keys] == [["30", "0", "$0.00"], ["10", "2,500", "$0.40"]]
    assert f'href="/keys/{backend}"' in html
    assert table(html, "top-end-users") == [["web-app", "30", "0", "$0.00"], ["bot", "10", "2,500", "$0.40"]]


def _alert(tenant_id, title, severity, status="active", minutes_ago=10):
    at = NOW - timedelta(minutes=minutes_ago)
    return Alert(
        tenant_id=tenant_id,
        alert_type="error_rate",
        severity=severity,
        status=status,
        title=title,
        dedup_key=f"{title}:{uuid.uuid4().hex}",
        first_triggered_at=at,
        last_triggered_at=at,
    )


def test_active_alerts_are_shown_with_their_severity(app, client, signed_in, other_tenant):
    with app.app_context():
        db.session.add_all(
            [
                _alert(signed_in, "Error rate above 10%", "critical"),
                _alert(signed_in, "Quota 80% used", "warning", status="acknowledged", minutes_ago=30),
                _alert(signed_in, "Old spike", "warning", status="resolved"),
                _alert(other_tenant.tenant_id, "Globex outage", "critical"),
            ]
        )
        db.session.commit()
    html = dashboard(client)
    page = text(html)
    assert "Active alerts 2 open alerts" in page
    assert "● critical Error rate above 10% last Nov 18 12:20 UTC" in page
    assert "▲ warning Quota 80% used acknowledged" in page
    assert "Old spike" not in page and "Globex outage" not in page
    assert 'href="/alerts"' in html


def test_only_the_latest_five_alerts_are_listed(app, client, signed_in):
    with app.app_context():
        db.session.add_all([_alert(signed_in, f"Alert {n}", "warning", minutes_ago=n) for n in range(1, 8)])
        db.session.commit()
    page = text(dashboard(client))
    assert "7 open alerts, the 5 latest shown" in page
    assert "Alert 5" in page and "Alert 6" not in page


def test_an_empty_account_says_so(client, signed_in):
    page = text(dashboard(client))
    assert "No API calls this period yet." in page
    assert "No active alerts." in page
    assert "No calls with a key this period yet." in page
    assert "0 of 100,000 requests used (100,000 left, 0.0%)" in page


# -- isolation and cost ---------------------------------------------------------------------------
def test_another_tenant_sees_none_of_these_figures(app, client, portal_tenant, other_tenant, clock):
    key, _ = add_key(app, portal_tenant.tenant_id, "Initech secret key")
    at = NOW - timedelta(hours=1)
    store(
        app,
        [
            usage(
                portal_tenant.tenant_id,
                at,
                api_key_id=key,
                end_user="initech-user",
                endpoint="/api/v1/usage/logs",
                category="analytics",
            )
            for _ in range(321)
        ],
    )
    with app.app_context():
        db.session.add(_alert(portal_tenant.tenant_id, "Initech alert", "critical"))
        db.session.commit()
    sign_in(client, portal_tenant.owner)
    assert "321 of 100,000" in text(dashboard(client))

    sign_in(client, other_tenant.owner)
    page = text(dashboard(client))
    assert "Globex" in page
    for leaked in ("321", "Initech secret key", "initech-user", "/api/v1/usage/logs", "Initech alert"):
        assert leaked not in page, leaked
    assert "0 of 100,000 requests used" in page


def _statements_for_one_page(app, client) -> int:
    dashboard(client)  # warm: caches filled on the first request are not the page's cost
    with count_statements(app) as statements:
        dashboard(client)
    return len(statements)


def test_statement_count_does_not_grow_with_keys_end_users_or_days(app, client, clock, make_tenant):
    _, small_email, small = make_tenant("Small")
    key, _ = add_key(app, small, "only key")
    store(app, [usage(small, NOW - timedelta(hours=1), api_key_id=key, end_user="u") for _ in range(5)])

    _, big_email, big = make_tenant("Big")
    keys = [add_key(app, big, f"key {n}")[0] for n in range(20)]
    records = [
        usage(
            big,
            TODAY - timedelta(days=day) + timedelta(hours=1),
            api_key_id=keys[(day + user) % 20],
            end_user=f"user-{user}",
            endpoint=f"/api/v1/endpoint-{user % 9}",
            source="external" if user % 4 == 0 else "api",
            cost=Decimal("0.01") if user % 4 == 0 else None,
        )
        for day in range(30)
        for user in range(20)
    ]
    store(app, records)
    with app.app_context():
        db.session.add_all([_alert(big, f"Alert {n}", "warning") for n in range(8)])
        db.session.commit()

    sign_in(client, small_email)
    small_count = _statements_for_one_page(app, client)
    sign_in(client, big_email)
    big_count = _statements_for_one_page(app, client)
    assert small_count == big_count
    assert big_count <= 12


# -- other tenant-scoped pages --------------------------------------------------------------------
def test_another_tenants_key_is_a_404(app, client, signed_in, make_tenant):
    _, _, other = make_tenant("Rival")
    with app.app_context():
        mine, _ = create_api_key(db.session.get(Tenant, signed_in), "mine")
        theirs, _ = create_api_key(db.session.get(Tenant, other), "theirs")
        db.session.commit()
        mine_id, theirs_id = mine.id, theirs.id
    assert client.get(f"/keys/{mine_id}").status_code == 200
    response = client.get(f"/keys/{theirs_id}")
    assert response.status_code == 404
    listing = client.get("/keys").text
    assert "mine" in listing and "theirs" not in listing


def test_activity_shows_only_this_tenants_events(app, auth, make_tenant):
    from portal.kernel.audit import record_event

    _, email, tenant_id = make_tenant("Watcher")
    _, _, other = make_tenant("Stranger")
    with app.app_context():
        record_event("settings.changed", other, None, "10.0.0.9", what="secret stuff")
        db.session.commit()
    auth.login(email, PASSWORD)
    page = auth.client.get("/activity", follow_redirects=True).text
    assert "login.success" in page
    assert "secret stuff" not in page and "10.0.0.9" not in page


def test_error_pages_are_html_in_the_portal(client, signed_in):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "404 · Not found" in response.text
    assert "<nav" in response.text
