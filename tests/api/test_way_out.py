"""A tenant past its monthly quota can still read its bill, mend its alerts, channels and
budgets and upgrade: those endpoints count toward the quota but are never refused by it. The
product's routes, ping, usage/* and costs/report are."""

from __future__ import annotations

import pytest

from tests.api_helpers import add_key, set_limits
from tests.factories import new_tenant
from tests.gateway.helpers import add_test_route

ACCOUNT_READS = [
    "/api/v1/billing/usage",
    "/api/v1/billing/subscription",
    "/api/v1/billing/statements",
    "/api/v1/billing/upcoming",
    "/api/v1/alerts",
    "/api/v1/alerts/stats",
    "/api/v1/notification-channels",
    "/api/v1/notification-deliveries",
    "/api/v1/budgets",
    "/api/v1/account/settings",
]
REFUSED = ["/api/v1/ping", "/api/v1/usage/stats", "/api/v1/costs/report?group_by=service&days=7"]


@pytest.fixture
def used_up(app, client, clock, upstream):
    add_test_route(app, "/api/chat", upstream.url, methods="POST")
    set_limits(app, "starter", monthly_quota=20)
    tenant = new_tenant(app, "Way Out Co", "starter", key=True)
    _, secret = add_key(app, tenant.tenant_id, "owner's admin", scope="admin", created_by_id=tenant.user_ids["owner"])
    for _ in range(20):
        assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200
    return tenant, {"X-API-Key": secret}


def test_past_the_quota_the_account_endpoints_answer_and_the_product_is_refused(app, client, used_up):
    tenant, admin = used_up
    for path in REFUSED:
        response = client.get(path, headers=admin)
        assert response.status_code == 429, path
        assert response.json["detail"].startswith("Monthly quota of 20 requests used up"), path
    assert client.post("/api/chat/echo", headers=tenant.headers).status_code == 429
    for path in ACCOUNT_READS:
        response = client.get(path, headers=admin)
        assert response.status_code == 200, (path, response.json)
        # Counted: the quota header goes on saying it is used up.
        assert response.headers["X-RateLimit-Remaining"] == "0", path


def test_past_the_quota_an_owner_upgrades_and_the_product_answers_again(app, client, used_up):
    tenant, admin = used_up
    up = client.put("/api/v1/billing/subscription", json={"plan": "professional"}, headers=admin)
    assert up.status_code == 200, up.json
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200


def test_the_account_endpoints_keep_the_windows(app, client, clock):
    set_limits(app, "starter", per_minute=3)
    tenant = new_tenant(app, "Windowed Co", "starter", key=True)
    statuses = [client.get("/api/v1/billing/usage", headers=tenant.headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_the_openapi_document_says_which_endpoints_the_quota_refuses(client):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert paths["/api/v1/ping"]["get"]["x-quota"] == "refuses"
    assert paths["/api/v1/billing/usage"]["get"]["x-quota"] == "counted"
    assert "never refuses it" in paths["/api/v1/budgets"]["get"]["description"]
    assert "quota refuses it" in paths["/api/v1/usage/stats"]["get"]["description"]
