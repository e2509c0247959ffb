"""A call to a gateway route: admitted like every protected call, forwarded whole and safely,
answered with the upstream's answer and Tollgate's headers, and metered once."""

from __future__ import annotations

import pytest

from tests.factories import new_tenant
from tests.gateway.helpers import add_test_route, stored_calls
from tests.gateway.upstreams import Upstream, refusing_url


@pytest.fixture
def chat(app, upstream: Upstream):
    add_test_route(app, "/api/chat", f"{upstream.url}/base", methods="POST,GET", category="Chat", service="chatbot")
    return upstream


def test_a_call_reaches_the_upstream_with_tollgate_headers_and_never_the_key(app, client, chat, monkeypatch):
    tenant = new_tenant(app, "Forward Co", key=True)
    response = client.post(
        "/api/chat/echo/x?q=1&r=two",
        data=b'{"message": "Hello"}',
        headers={
            **tenant.headers,
            "Content-Type": "application/json",
            "X-End-User": "user-7",
            "Authorization": "Bearer something",
            "Cookie": "session=portal-cookie",
            "X-Tollgate-Tenant": "someone-else",
            "X-Custom": "kept",
        },
    )
    assert response.status_code == 200
    assert response.json["path"] == "/base/echo/x"
    seen = chat.requests[-1]
    assert (seen.method, seen.path, seen.query, seen.body) == (
        "POST",
        "/base/echo/x",
        "q=1&r=two",
        b'{"message": "Hello"}',
    )
    assert seen.header("X-Tollgate-Tenant") == tenant.slug
    assert seen.header("X-Tollgate-Key-Id") == str(tenant.key_id)
    assert seen.header("X-Tollgate-End-User") == "user-7"
    assert seen.header("X-Custom") == "kept"
    assert seen.header("X-Request-Id") == response.headers["X-Request-Id"]
    for never in ("X-API-Key", "Authorization", "Cookie", "X-End-User"):
        assert seen.header(never) is None, never
    assert tenant.secret not in str(seen.headers)
    # Tollgate's rate-limit headers on the upstream's answer.
    assert response.headers["X-RateLimit-Minute-Limit"] == "300"
    assert response.headers["X-RateLimit-Minute-Remaining"] == "299"
    assert response.headers["X-RateLimit-Limit"] == "100000"
    assert response.headers["X-RateLimit-Remaining"] == "99999"
    [record] = stored_calls(app, tenant.tenant_id)
    assert (record.source, record.service, record.endpoint, record.method, record.category) == (
        "api",
        "chatbot",
        "/api/chat/echo/x",
        "POST",
        "Chat",
    )
    assert (record.status_code, record.quota_units, record.end_user) == (200, 1, "user-7")


def test_a_route_credential_comes_from_the_environment(app, client, upstream, monkeypatch):
    monkeypatch.setenv("CHATBOT_TEST_TOKEN", "s3cret-upstream")
    add_test_route(app, "/api/bot", f"{upstream.url}", upstream_headers=["X-Chatbot-Token=CHATBOT_TEST_TOKEN"])
    tenant = new_tenant(app, "Credential Co", key=True)
    assert client.post("/api/bot/echo", headers=tenant.headers, buffered=True).status_code == 200
    assert upstream.requests[-1].header("X-Chatbot-Token") == "s3cret-upstream"
    forged = client.post(
        "/api/bot/echo",
        headers={**tenant.headers, "x-chatbot-token": "forged", "x-request-id": "mine"},
        buffered=True,
    )
    assert forged.status_code == 200
    seen = upstream.requests[-1]
    assert [v for k, v in seen.headers.items() if k.lower() == "x-chatbot-token"] == ["s3cret-upstream"]
    assert [v for k, v in seen.headers.items() if k.lower() == "x-request-id"] == [forged.headers["X-Request-Id"]]
    monkeypatch.delenv("CHATBOT_TEST_TOKEN")
    response = client.post("/api/bot/echo", headers=tenant.headers)
    assert (response.status_code, response.json) == (502, {"detail": "Upstream unavailable"})
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "Missing API key"),
        ({"X-API-Key": "tg_not-a-key"}, 401, "Invalid API key"),
    ],
)
def test_a_call_without_a_good_key_never_reaches_the_upstream(app, client, chat, headers, status, detail):
    response = client.post("/api/chat/echo", headers=headers)
    assert (response.status_code, response.json) == (status, {"detail": detail})
    assert chat.requests == []


def test_a_plan_outside_the_routes_plans_is_refused_and_consumes_nothing(app, client, upstream):
    add_test_route(app, "/api/pro", upstream.url, plans="professional,enterprise")
    tenant = new_tenant(app, "Starter Co", "starter", key=True)
    response = client.post("/api/pro/echo", headers=tenant.headers)
    assert (response.status_code, response.json) == (403, {"detail": "Your plan does not include /api/pro/echo"})
    assert upstream.requests == []
    assert client.get("/api/v1/ping", headers=tenant.headers).headers["X-RateLimit-Remaining"] == "99999"
    records = stored_calls(app, tenant.tenant_id)
    assert [(r.endpoint, r.status_code, r.quota_units) for r in records] == [
        ("/api/pro/echo", 403, 0),
        ("/api/v1/ping", 200, 1),
    ]
    pro = new_tenant(app, "Pro Co", "professional", key=True)
    assert client.post("/api/pro/echo", headers=pro.headers, buffered=True).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/chat/%2e%2e/admin",
        "/api/chat/a%2Fb",
        "/api/chat/a%5cb",
        "/api/chat//evil.example/x",
        "/api/chat/./x",
        "/api/chat/../x",
    ],
)
def test_a_path_that_escapes_the_upstreams_base_is_refused(app, client, chat, acme, path):
    response = client.post(path, headers=acme.headers)
    assert response.status_code in (400, 404)
    assert response.is_json
    assert chat.requests == []


def test_the_upstreams_own_errors_and_redirects_pass_through_unchanged(app, client, chat, acme):
    response = client.get("/api/chat/status/503", headers=acme.headers)
    assert (response.status_code, response.json) == (503, {"error": "upstream says 503"})
    assert response.headers["X-Upstream-Error"] == "yes"
    assert "X-RateLimit-Minute-Remaining" in response.headers
    redirect = client.get("/api/chat/redirect", headers=acme.headers, buffered=True)
    assert (redirect.status_code, redirect.headers["Location"]) == (302, "/base/echo/redirected")
    assert [r.path for r in chat.requests] == ["/base/status/503", "/base/redirect"]
    records = stored_calls(app, acme.tenant_id)
    assert [r.status_code for r in records] == [503, 302]


def test_an_upstream_that_refuses_or_resets_is_502_and_one_too_slow_504(
    app, client, acme, upstream, resetting_upstream
):
    add_test_route(app, "/api/down", refusing_url())
    add_test_route(app, "/api/reset", resetting_upstream.url)
    add_test_route(app, "/api/slow", upstream.url, timeout_seconds=0.3)
    for path in ("/api/down/x", "/api/reset/x"):
        response = client.post(path, headers=acme.headers)
        assert (response.status_code, response.json) == (502, {"detail": "Upstream unavailable"})
    slow = client.post("/api/slow/slow?seconds=2", headers=acme.headers)
    assert (slow.status_code, slow.json) == (504, {"detail": "Upstream timed out after 0.3 seconds"})
    assert "X-RateLimit-Minute-Remaining" in slow.headers
    records = stored_calls(app, acme.tenant_id)
    assert [r.status_code for r in records] == [502, 502, 504]
    assert records[2].duration_ms >= 300


def test_an_upstream_that_breaks_off_its_answer_is_metered_as_failed(app, client, chat, acme):
    response = client.get("/api/chat/close-mid-body", headers=acme.headers)
    with pytest.raises(Exception):  # noqa: B017,PT011 - the body ends short, however the client reports it
        response.get_data()
    [record] = stored_calls(app, acme.tenant_id)
    assert record.status_code == 502
    assert "broke off" in record.error_message or "short" in record.error_message


def test_methods_body_limits_and_unknown_paths(app, client, chat, acme):
    assert client.delete("/api/chat/echo", headers=acme.headers).status_code == 405
    add_test_route(app, "/api/small", chat.url, max_body_bytes=1024)
    too_big = client.post("/api/small/echo", data=b"x" * 1025, headers=acme.headers)
    assert (too_big.status_code, too_big.json) == (
        413,
        {"detail": "Request too large: a body to /api/small may be at most 1,024 bytes"},
    )
    assert client.post("/api/small/echo", data=b"x" * 1024, headers=acme.headers, buffered=True).status_code == 200
    unknown = client.post("/api/nothing-here", headers=acme.headers)
    assert (unknown.status_code, unknown.json) == (404, {"detail": "Not found"})
    assert [r.path for r in chat.requests] == ["/echo"]


def test_the_gateway_and_the_json_api_share_one_bucket(app, client, chat, acme):
    from tests.api_helpers import set_limits

    set_limits(app, "starter", per_minute=4)
    statuses = []
    for i in range(6):
        if i % 2:
            statuses.append(client.get("/api/v1/ping", headers=acme.headers).status_code)
        else:
            statuses.append(client.post("/api/chat/echo", headers=acme.headers, buffered=True).status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]
    refused = client.post("/api/chat/echo", headers=acme.headers)
    assert refused.json["detail"].startswith("Rate limit exceeded for minute. Try again in ")
    assert refused.headers["Retry-After"]
    assert len(chat.requests) == 2


def test_the_end_user_is_recorded_on_json_api_calls_too(app, client, acme):
    assert client.get("/api/v1/ping", headers={**acme.headers, "X-End-User": "alice"}).status_code == 200
    too_long = client.get("/api/v1/ping", headers={**acme.headers, "X-End-User": "x" * 121})
    assert (too_long.status_code, too_long.json) == (400, {"detail": "X-End-User may be at most 120 characters"})
    [record] = stored_calls(app, acme.tenant_id)
    assert record.end_user == "alice"
