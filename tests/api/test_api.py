"""The protected API: authentication, plan windows, monthly quota, headers, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from portal.extensions import db
from portal.kernel.clock import set_clock
from portal.models import ApiKey, Subscription, Tenant, utcnow
from tests.api_helpers import add_key, drain, set_limits
from tests.factories import PASSWORD, new_tenant

WINDOW_HEADERS = [f"X-RateLimit-{w}-{f}" for w in ("Minute", "Hour", "Day") for f in ("Limit", "Remaining", "Reset")]
QUOTA_HEADERS = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]


def ping(client, headers):
    return client.get("/api/v1/ping", headers=headers)


# -- authentication ------------------------------------------------------------------------------


def test_ping_with_a_key_answers_ok(client, acme):
    response = ping(client, acme.headers)
    assert response.status_code == 200
    assert response.json == {"ok": True}


def test_bearer_token_is_accepted(client, acme):
    response = ping(client, {"Authorization": f"Bearer {acme.secret}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "Missing API key"),
        ({"X-API-Key": ""}, 401, "Missing API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "Missing API key"),
        ({"X-API-Key": "tg_not-a-real-key"}, 401, "Invalid API key"),
        ({"Authorization": "Bearer tg_not-a-real-key"}, 401, "Invalid API key"),
    ],
)
def test_missing_or_unknown_key_is_refused(client, acme, headers, status, detail):
    response = ping(client, headers)
    assert response.status_code == status
    assert response.json == {"detail": detail}


def test_session_cookie_does_not_authenticate_the_api(client, auth, make_tenant, acme):
    _, email, _ = make_tenant()
    auth.login(email, PASSWORD)
    assert client.get("/dashboard").status_code == 200
    response = ping(client, {})
    assert response.status_code == 401
    assert response.json == {"detail": "Missing API key"}


def test_api_needs_no_csrf_token(client, acme):
    # POST to a GET-only route: 405 (not a 400 CSRF failure), as JSON.
    response = client.post("/api/v1/ping", headers=acme.headers)
    assert response.status_code == 405
    assert response.json == {"detail": "Method not allowed"}
    assert "GET" in response.headers["Allow"]


def test_unknown_api_path_is_a_json_404(client, acme):
    response = client.get("/api/v1/no-such-thing", headers=acme.headers)
    assert response.status_code == 404
    assert response.json == {"detail": "Not found"}


def test_deactivated_revoked_and_expired_keys_are_inactive(app, client, acme, clock):
    from portal.tenancy.keys import revoke_api_key, set_key_active

    assert ping(client, acme.headers).status_code == 200
    with app.app_context():
        set_key_active(db.session.get(ApiKey, acme.key_id), False)
        db.session.commit()
    response = ping(client, acme.headers)
    assert (response.status_code, response.json) == (403, {"detail": "API key is inactive"})
    with app.app_context():
        set_key_active(db.session.get(ApiKey, acme.key_id), True)
        db.session.commit()
    assert ping(client, acme.headers).status_code == 200
    with app.app_context():
        revoke_api_key(db.session.get(ApiKey, acme.key_id))
        db.session.commit()
    assert ping(client, acme.headers).status_code == 403

    expires = datetime.fromtimestamp(clock.now + 30, UTC)
    _, secret = add_key(app, acme.tenant_id, "short-lived", expires_at=expires)
    assert ping(client, {"X-API-Key": secret}).status_code == 200
    clock.advance(31)
    assert ping(client, {"X-API-Key": secret}).json == {"detail": "API key is inactive"}


def test_rotation_stops_the_old_secret(app, client, acme):
    from portal.tenancy.keys import rotate_api_key

    with app.app_context():
        new_secret = rotate_api_key(db.session.get(ApiKey, acme.key_id), None)
        db.session.commit()
    assert ping(client, acme.headers).json == {"detail": "Invalid API key"}
    assert ping(client, {"X-API-Key": new_secret}).status_code == 200


def test_failed_authentications_are_counted(app, client, redis, acme, clock):
    from portal.tenancy.keys import set_key_active

    for _ in range(3):
        ping(client, {"X-API-Key": "tg_wrong"})
    with app.app_context():
        set_key_active(db.session.get(ApiKey, acme.key_id), False)
        db.session.commit()
    ping(client, acme.headers)
    hour = int(clock.now) // 3600
    assert int(redis.get(f"tollgate:authfail:ip:127.0.0.1:{hour}")) == 4
    assert int(redis.get(f"tollgate:authfail:tenant:{acme.tenant_id}:{hour}")) == 1
    assert int(redis.get(f"tollgate:authfail:key:{acme.key_id}:{hour}")) == 1


# -- windows and quota ---------------------------------------------------------------------------


def test_minute_window_admits_exactly_the_limit(app, client, acme, clock):
    set_limits(app, "starter", per_minute=3)
    statuses = [ping(client, acme.headers).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = ping(client, acme.headers)
    assert refused.json == {"detail": "Rate limit exceeded for minute. Try again in 50 seconds"}
    assert refused.headers["Retry-After"] == "50"
    clock.advance(50)  # the next minute
    assert ping(client, acme.headers).status_code == 200


def test_refused_calls_consume_no_window_and_no_quota(app, client, acme, clock):
    set_limits(app, "starter", per_minute=3, per_hour=5, monthly_quota=100)
    assert [ping(client, acme.headers).status_code for _ in range(3)] == [200] * 3
    assert all(ping(client, acme.headers).status_code == 429 for _ in range(10))
    clock.advance(60)
    # Had the ten refusals counted, the hour window (5) would already be used up.
    assert [ping(client, acme.headers).status_code for _ in range(3)] == [200, 200, 429]
    last = ping(client, acme.headers)
    assert last.json["detail"].startswith("Rate limit exceeded for hour.")
    assert last.headers["X-RateLimit-Remaining"] == "95"  # 5 admitted of 100


def test_headers_on_every_protected_response(app, client, acme, clock):
    set_limits(app, "starter", per_minute=2)
    for expected_status, minute_left in ((200, "1"), (200, "0"), (429, "0")):
        response = ping(client, acme.headers)
        assert response.status_code == expected_status
        for name in WINDOW_HEADERS + QUOTA_HEADERS:
            assert name in response.headers, name
        assert response.headers["X-RateLimit-Minute-Limit"] == "2"
        assert response.headers["X-RateLimit-Minute-Remaining"] == minute_left
        assert response.headers["X-RateLimit-Minute-Reset"] == "50"
        assert response.headers["X-RateLimit-Hour-Limit"] == "5000"
        assert response.headers["X-RateLimit-Hour-Reset"] == str(3600 - (30 * 60 + 10))
        assert response.headers["X-RateLimit-Day-Limit"] == "50000"
        assert response.headers["X-RateLimit-Day-Reset"] == str(86400 - (12 * 3600 + 30 * 60 + 10))
        assert response.headers["X-RateLimit-Limit"] == "100000"
        assert response.headers["X-RateLimit-Reset"] == "2026-12-01T00:00:00Z"
        assert ("Retry-After" in response.headers) == (expected_status == 429)
    assert response.headers["X-RateLimit-Remaining"] == "99998"


def test_monthly_quota_refuses_with_when_it_resets(app, client, acme, clock):
    set_limits(app, "starter", monthly_quota=3)
    assert [ping(client, acme.headers).status_code for _ in range(3)] == [200] * 3
    response = ping(client, acme.headers)
    assert response.status_code == 429
    assert response.json == {"detail": "Monthly quota of 3 requests used up. It resets at 2026-12-01T00:00:00Z"}
    period_end = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert int(response.headers["Retry-After"]) == int(period_end - clock.now)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    # The quota resets at the start of the next billing period.
    clock.now = period_end + 5
    assert ping(client, acme.headers).status_code == 200


def test_enterprise_quota_is_unlimited(app, client, clock):
    big = new_tenant(app, "Big Co", plan="enterprise", key=True)
    response = ping(client, big.headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "unlimited"
    assert response.headers["X-RateLimit-Remaining"] == "unlimited"
    assert response.headers["X-RateLimit-Minute-Limit"] == "5000"
    drain(app)


def test_overage_lets_calls_go_on_up_to_the_cap(app, client, acme, clock):
    from decimal import Decimal

    from portal.billing.plans import set_overage

    set_limits(app, "starter", monthly_quota=2)
    with app.app_context():
        # $0.50 per 1,000 calls over the quota: a $0.01 cap buys 20 more calls.
        set_overage(db.session.get(Tenant, acme.tenant_id).subscription, True, Decimal("0.01"))
        db.session.commit()
    statuses = [ping(client, acme.headers).status_code for _ in range(23)]
    assert statuses == [200] * 22 + [429]
    assert ping(client, acme.headers).json["detail"].startswith("Monthly quota of 2 requests used up.")


def test_overage_needs_a_paid_plan(app, make_tenant):
    from portal.billing.plans import set_overage

    _, _, tenant_id = make_tenant(plan="free")
    with app.app_context(), pytest.raises(ValueError, match="Free plan has no overage"):
        set_overage(db.session.get(Tenant, tenant_id).subscription, True)


def test_plan_change_applies_to_the_next_call(app, client, acme, clock):
    assert ping(client, acme.headers).headers["X-RateLimit-Minute-Limit"] == "300"
    set_limits(app, "starter", per_minute=2)
    response = ping(client, acme.headers)
    assert response.headers["X-RateLimit-Minute-Limit"] == "2"
    assert response.headers["X-RateLimit-Minute-Remaining"] == "0"
    assert ping(client, acme.headers).status_code == 429

    from portal.billing.plans import get_plan, subscribe

    with app.app_context():
        subscribe(db.session.get(Tenant, acme.tenant_id), get_plan("professional"))
        db.session.commit()
    response = ping(client, acme.headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Minute-Limit"] == "1000"
    with app.app_context():
        history = db.session.scalars(db.select(Subscription).where(Subscription.tenant_id == acme.tenant_id)).all()
        assert len(history) == 2


def test_one_bucket_per_tenant_shared_by_keys_and_endpoints(app, client, acme, clock):
    set_limits(app, "starter", per_minute=4)
    _, second_secret = add_key(app, acme.tenant_id, "second")
    other = new_tenant(app, "Other Co", key=True)
    assert ping(client, acme.headers).status_code == 200
    assert client.get("/api/v1/billing/usage", headers={"X-API-Key": second_secret}).status_code == 200
    assert client.get("/api/v1/usage/summary", headers=acme.headers).status_code == 200
    assert ping(client, {"X-API-Key": second_secret}).status_code == 200
    assert ping(client, acme.headers).status_code == 429
    assert ping(client, {"X-API-Key": second_secret}).status_code == 429
    # Another tenant on the same plan has its own bucket.
    assert ping(client, other.headers).status_code == 200


def test_bad_query_parameters_get_422_naming_them(client, acme):
    response = client.get("/api/v1/usage/logs?limit=abc&offset=-1", headers=acme.headers)
    assert response.status_code == 422
    assert "limit" in response.json["detail"]
    assert "offset" in response.json["detail"]
    response = client.get("/api/v1/account/usage?interval=yearly", headers=acme.headers)
    assert response.status_code == 422
    assert "interval" in response.json["detail"]
    response = client.get("/api/v1/account/usage?startDate=2026-11-10&endDate=2026-11-01", headers=acme.headers)
    assert response.json == {"detail": "query: startDate must not be after endDate"}


def test_unexpected_error_is_a_plain_500_and_metered(app, client, acme, monkeypatch):
    from portal.analytics import reports

    def broken(*args, **kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(reports, "usage_summary", broken)
    response = client.get("/api/v1/usage/summary", headers=acme.headers)
    assert response.status_code == 500
    assert response.json == {"detail": "Internal server error"}
    assert "Traceback" not in response.text and "fire" not in response.text
    assert drain(app) == 1
    with app.app_context():
        from portal.models import UsageRecord

        record = db.session.scalars(db.select(UsageRecord)).one()
        assert (record.endpoint, record.status_code) == ("/api/v1/usage/summary", 500)


def test_usage_time_is_utc_now(app, client, acme):
    # Without a test clock the API stamps calls with the real time.
    set_clock(app, __import__("time").time)
    before = utcnow()
    assert ping(client, acme.headers).status_code == 200
    drain(app)
    with app.app_context():
        from portal.models import UsageRecord

        record = db.session.scalars(db.select(UsageRecord)).one()
        assert before.timestamp() - 1 <= record.occurred_at.timestamp() <= utcnow().timestamp() + 1
