"""The verify API: a service token admits one call for a customer key on the one admission
path (windows, quota, budgets, a route's plans), and the call is completed once."""

from __future__ import annotations

import pytest

from portal.extensions import db
from portal.gateway.tokens import create_service_token, revoke_service_token
from tests.api_helpers import set_limits
from tests.factories import new_tenant
from tests.gateway.helpers import add_test_route, stored_calls


@pytest.fixture
def service(app):
    with app.app_context():
        _, token = create_service_token("chat backend")
        db.session.commit()
        db.session.remove()
    return {"Authorization": f"Bearer {token}"}


def verify(client, service, key, **body):
    return client.post("/api/v1/verify", json={"key": key, **body}, headers=service)


def test_a_verified_call_is_admitted_answered_with_its_headers_and_completed_once(app, client, service, acme):
    response = verify(client, service, acme.secret, endpoint="/api/chat", method="POST", endUser="u-9")
    assert response.status_code == 200
    answer = response.json
    assert answer["valid"] is True
    assert (answer["tenant"], answer["keyId"], answer["plan"], answer["remaining"]) == (
        acme.slug,
        acme.key_id,
        "starter",
        99_999,
    )
    assert answer["headers"]["X-RateLimit-Minute-Remaining"] == "299"
    assert answer["headers"]["X-RateLimit-Limit"] == "100000"
    assert "X-RateLimit-Minute-Limit" not in response.headers  # the verify call itself is not limited
    done = client.post(
        f"/api/v1/verify/{answer['callId']}/complete",
        json={"status_code": 201, "duration_ms": 42, "tokens_in": 12, "tokens_out": 30, "model": "m-1"},
        headers=service,
    )
    assert (done.status_code, done.json) == (200, {"completed": True})
    again = client.post(f"/api/v1/verify/{answer['callId']}/complete", json={"status_code": 200}, headers=service)
    assert again.status_code == 409
    assert "completed already" in again.json["detail"]
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.endpoint, record.method, record.status_code, record.duration_ms) == ("/api/chat", "POST", 201, 42)
    assert (record.tokens_in, record.tokens_out, record.model, record.end_user, record.quota_units) == (
        12,
        30,
        "m-1",
        "u-9",
        1,
    )


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Missing service token: send Authorization: Bearer <service token>"),
        ({"Authorization": "Bearer tgs_not-a-token"}, "Invalid service token"),
    ],
)
def test_verify_needs_a_service_token(client, acme, headers, detail):
    response = client.post("/api/v1/verify", json={"key": acme.secret}, headers=headers)
    assert (response.status_code, response.json) == (401, {"detail": detail})


def test_a_customer_key_is_never_a_service_token_nor_the_other_way_round(client, service, acme):
    as_token = client.post(
        "/api/v1/verify", json={"key": acme.secret}, headers={"Authorization": f"Bearer {acme.secret}"}
    )
    assert as_token.status_code == 401
    token = service["Authorization"].removeprefix("Bearer ")
    as_key = verify(client, service, token).json
    assert (as_key["valid"], as_key["code"], as_key["status"], as_key["detail"]) == (
        False,
        "INVALID_KEY",
        401,
        "Invalid API key",
    )
    assert client.get("/api/v1/ping", headers={"X-API-Key": token}).status_code == 401


def test_a_revoked_service_token_is_refused(app, client, service, acme):
    with app.app_context():
        revoke_service_token("chat backend")
        db.session.commit()
        db.session.remove()
    from portal.api import verify as verify_module

    verify_module._tokens._verdicts.clear()
    assert verify(client, service, acme.secret).status_code == 401


def test_refusals_say_why_with_the_status_to_answer(app, client, service, acme, clock):
    set_limits(app, "starter", per_minute=2)
    assert verify(client, service, acme.secret, units=2).json["valid"] is True
    limited = verify(client, service, acme.secret).json
    assert (limited["valid"], limited["code"], limited["status"]) == (False, "RATE_LIMITED", 429)
    assert limited["detail"].startswith("Rate limit exceeded for minute. Try again in ")
    assert limited["retryAfter"] == int(limited["detail"].split(" in ")[1].split()[0])
    assert limited["headers"]["X-RateLimit-Minute-Remaining"] == "0"
    # Two units counted against the minute: the ping that follows is refused as well.
    assert client.get("/api/v1/ping", headers=acme.headers).status_code == 429


def test_inactive_quota_and_plan_refusals(app, client, service, upstream, clock):
    from portal.models import ApiKey
    from portal.tenancy.keys import set_key_active

    add_test_route(app, "/api/pro", upstream.url, plans="professional")
    tenant = new_tenant(app, "Verify Co", "starter", key=True)
    plan = verify(client, service, tenant.secret, endpoint="/api/pro/x", method="POST").json
    assert (plan["code"], plan["status"], plan["detail"]) == (
        "PLAN_EXCLUDES",
        403,
        "Your plan does not include /api/pro/x",
    )
    set_limits(app, "starter", monthly_quota=1)
    assert verify(client, service, tenant.secret).json["valid"] is True
    quota = verify(client, service, tenant.secret).json
    assert (quota["code"], quota["status"]) == ("QUOTA_EXCEEDED", 429)
    assert quota["detail"].startswith("Monthly quota of 1 requests used up")
    with app.app_context():
        set_key_active(db.session.get(ApiKey, tenant.key_id), False)
        db.session.commit()
        db.session.remove()
    inactive = verify(client, service, tenant.secret).json
    assert (inactive["code"], inactive["status"], inactive["detail"]) == ("INACTIVE_KEY", 403, "API key is inactive")
    assert upstream.requests == []


def test_bad_bodies_and_unknown_calls(client, service, acme):
    assert verify(client, service, acme.secret, units=0).status_code == 422
    assert verify(client, service, acme.secret, endpoint="no-slash").status_code == 422
    unknown = client.post("/api/v1/verify/nothing-like-an-id/complete", json={"status_code": 200}, headers=service)
    assert unknown.status_code == 409
    bad = client.post("/api/v1/verify/x/complete", json={"status_code": 99}, headers=service)
    assert bad.status_code == 422


def test_create_service_token_prints_the_token_last(app):
    result = app.test_cli_runner().invoke(args=["create-service-token", "billing worker"])
    assert result.exit_code == 0
    token = result.output.strip().splitlines()[-1]
    assert token.startswith("tgs_") and len(token) > 40
    again = app.test_cli_runner().invoke(args=["create-service-token", "billing worker"])
    assert again.exit_code == 1
    assert "exists already" in again.output


def test_verify_is_in_the_openapi_document(client):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert "post" in paths["/api/v1/verify"]
    assert "post" in paths["/api/v1/verify/{call_id}/complete"]


def test_the_largest_completion_is_stored_whole(app, client, service, acme):
    # The most units a starter's minute window takes in one call.
    answer = verify(client, service, acme.secret, endpoint="/" + "e" * 254, units=300, endUser="u" * 120).json
    assert answer["valid"], answer
    call_id = answer["callId"]
    done = client.post(
        f"/api/v1/verify/{call_id}/complete",
        json={
            "status_code": 599,
            "duration_ms": 86_400_000,
            "tokens_in": 10**9,
            "tokens_out": 10**9,
            "cached_tokens": 10**9,
            "model": "m" * 120,
            "units": 10**9,
            "error_message": "é" * 2000,
        },
        headers=service,
    )
    assert done.status_code == 200
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.endpoint, record.end_user, record.quota_units) == ("/" + "e" * 254, "u" * 120, 300)
    assert (record.tokens_in, record.tokens_out, record.cached_tokens) == (10**9, 10**9, 10**9)
    assert (record.model, record.meta, record.error_message) == ("m" * 120, {"units": 10**9}, "é" * 2000)
    assert (record.status_code, record.duration_ms) == (599, 86_400_000)
