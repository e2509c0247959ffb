"""The dashboard shows the signed-in tenant's plan, limits and month, read from the database;
every tenant-owned page is scoped to the tenant."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from portal.billing.plans import billing_period
from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import Tenant, utcnow
from portal.tenancy.keys import create_api_key

from .conftest import PASSWORD


def usage(tenant_id, at, status=200, source="api", cost=None, tokens=0):
    return {
        "tenant_id": tenant_id,
        "source": source,
        "service": "tollgate" if source == "api" else "openai",
        "endpoint": "/api/v1/ping",
        "status_code": status,
        "duration_ms": 12,
        "tokens_in": tokens,
        "cost": cost,
        "occurred_at": at,
        "idempotency_key": uuid.uuid4().hex,
    }


def store(app, records):
    with app.app_context():
        store_usage(records)
        db.session.commit()


def text(html: str) -> str:
    """The page's visible text, tags dropped and spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def signed_in(client, auth, make_tenant):
    slug, email, tenant_id = make_tenant("Initech", plan="starter")
    auth.login(email, PASSWORD)
    return tenant_id


def test_dashboard_shows_plan_limits_and_period(client, signed_in):
    page = text(client.get("/dashboard").text)
    start, end = billing_period(utcnow())
    assert "Starter plan" in page
    assert "$29.00" in page
    for figure in ("100,000", "300", "5,000", "50,000", "$0.50", "90 days"):
        assert figure in page, figure
    assert f"quota resets {end:%Y-%m-%d} 00:00 UTC" in page
    assert f"Billing period {start:%b} 1" in page


def test_month_usage_comes_from_the_database(app, client, signed_in, make_tenant):
    now = utcnow()
    start, _ = billing_period(now)
    at = max(start, now - timedelta(minutes=5))
    records = [usage(signed_in, at) for _ in range(1200)]
    records += [usage(signed_in, at, status=500) for _ in range(30)]
    records += [usage(signed_in, at, status=429) for _ in range(4)]
    # Not this tenant's month: last month, and another tenant.
    records += [usage(signed_in, start - timedelta(hours=1)) for _ in range(50)]
    _, _, other = make_tenant("Other")
    records += [usage(other, at) for _ in range(70)]
    records += [usage(signed_in, at, source="external", cost=Decimal("0.0125"), tokens=1000) for _ in range(8)]
    store(app, records)
    page = text(client.get("/dashboard").text)
    # 1,234 calls metered; the 4 refused ones used no quota.
    assert "1,230 of 100,000 requests used" in page
    assert "98,770 left, 1.2%" in page
    assert "API calls this period 1,234" in page
    assert "34 errors · 4 rate-limited" in page
    assert "Tokens this period 8,000" in page
    assert "Cost this period $0.10" in page


def test_enterprise_quota_is_unlimited(client, auth, make_tenant):
    _, email, _ = make_tenant("Big", plan="enterprise")
    auth.login(email, PASSWORD)
    page = text(client.get("/dashboard").text)
    assert "Unlimited" in page
    assert "unlimited" in page


def test_chart_is_inline_svg_with_a_bar_per_day(client, signed_in):
    html = client.get("/dashboard").text
    assert '<svg viewBox="0 0 720' in html
    assert 'role="img"' in html
    assert "API calls per day, last 30 days</title>" in html
    assert html.count('class="bar"') == 30


def test_plan_change_shows_on_the_next_page(app, client, signed_in):
    result = app.test_cli_runner().invoke(args=["set-plan", "starter", "--per-minute", "777"])
    assert result.exit_code == 0, result.output
    assert "777" in text(client.get("/dashboard").text)


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
    from portal.tenancy.audit import record_event

    _, email, tenant_id = make_tenant("Watcher")
    _, _, other = make_tenant("Stranger")
    with app.app_context():
        record_event("settings.changed", other, None, "10.0.0.9", what="secret stuff")
        db.session.commit()
    auth.login(email, PASSWORD)
    page = auth.client.get("/activity").text
    assert "login.success" in page
    assert "secret stuff" not in page and "10.0.0.9" not in page


def test_error_pages_are_html_in_the_portal(client, signed_in):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert "404 · Not found" in response.text
    assert "<nav" in response.text
