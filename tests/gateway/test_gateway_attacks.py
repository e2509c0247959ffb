"""What an attack round on the gateway and the verify API found, each held shut: usage that
could not be hidden, calls that could not be completed by others, paths and plans that could
not be slipped past, answers without a body still metered."""

from __future__ import annotations

import pytest

from portal.extensions import db
from portal.gateway.tokens import create_service_token
from tests.api_helpers import set_limits
from tests.factories import new_tenant
from tests.gateway.helpers import add_test_route, stored_calls
from tests.gateway.upstreams import Upstream


@pytest.fixture
def routes(app, upstream: Upstream):
    add_test_route(app, "/api/openai", upstream.url, methods="GET,POST,HEAD,DELETE", service="openai")
    return upstream


def _token(app, name: str) -> dict[str, str]:
    with app.app_context():
        _, token = create_service_token(name)
        db.session.commit()
        db.session.remove()
    return {"Authorization": f"Bearer {token}"}


def test_a_caller_asking_for_gzip_is_still_billed_its_tokens(app, client, routes, acme):
    response = client.post(
        "/api/openai/usage/openai", headers={**acme.headers, "Accept-Encoding": "gzip, deflate, br"}, buffered=True
    )
    assert response.status_code == 200
    assert routes.requests[-1].header("Accept-Encoding") == "identity"
    # An upstream that compresses anyway is read through a decompressed copy.
    squeezed = client.post("/api/openai/usage/gzip", headers=acme.headers, buffered=True)
    assert squeezed.headers["Content-Encoding"] == "gzip"
    records = stored_calls(app, acme.tenant_id)
    assert [(r.tokens_in, r.tokens_out, r.model) for r in records] == [(1200, 300, "gpt-4o-mini")] * 2


def test_a_large_answer_is_billed_from_the_usage_at_its_end(app, client, routes, acme):
    response = client.get("/api/openai/usage/large?bytes=6500000", headers=acme.headers, buffered=True)
    assert len(response.get_data()) > 6_000_000
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.tokens_in, record.tokens_out, record.model) == (1200, 300, "gpt-4o-mini")


@pytest.mark.parametrize("kind", ["nested", "nested-stream", "bad-model"])
def test_poisoned_usage_never_loses_the_call_nor_dirties_a_connection(app, client, routes, acme, kind):
    response = client.get(f"/api/openai/usage/{kind}", headers=acme.headers, buffered=True)
    assert response.status_code == 200
    # The next call on the pool gets its own clean answer.
    assert client.get("/api/openai/echo", headers=acme.headers).json["path"] == "/echo"
    records = stored_calls(app, acme.tenant_id)
    assert [r.status_code for r in records] == [200, 200]
    assert "\x00" not in records[0].model and records[0].model in ("", "gptx")


def test_answers_without_a_body_are_metered_at_once(app, client, routes, acme):
    assert client.delete("/api/openai/status/204", headers=acme.headers).status_code == 204
    assert client.head("/api/openai/echo", headers=acme.headers).status_code == 200
    records = stored_calls(app, acme.tenant_id)
    assert sorted((r.method, r.status_code) for r in records) == [("DELETE", 204), ("HEAD", 200)]


@pytest.mark.parametrize("path", ["/api/openai/..;/x", "/api/openai/x;a=b", "/api/openai/x%3Bb"])
def test_semicolons_never_reach_the_upstream(client, routes, acme, path):
    assert client.get(path, headers=acme.headers).status_code == 400
    assert routes.requests == []


def test_a_nested_routes_plans_hold_whatever_the_letter_case(app, client, upstream, acme):
    add_test_route(app, "/api/chat", upstream.url, methods="GET")
    add_test_route(app, "/api/chat/premium", upstream.url, methods="GET", plans="professional")
    for path in ("/api/chat/premium/x", "/api/chat/Premium/x", "/API/CHAT/PREMIUM"):
        response = client.get(path, headers=acme.headers)
        assert response.status_code == 403, path
    assert upstream.requests == []


def test_headers_that_change_the_method_path_or_client_are_dropped(client, routes, acme):
    sent = {
        "X-HTTP-Method-Override": "DELETE",
        "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin",
        "X-Real-IP": "10.0.0.1",
        "True-Client-IP": "10.0.0.1",
    }
    assert client.get("/api/openai/echo", headers={**acme.headers, **sent}, buffered=True).status_code == 200
    seen = routes.requests[-1]
    assert [name for name in sent if seen.header(name) is not None] == []


def test_answers_are_sandboxed_on_the_portals_origin(client, routes, acme):
    response = client.get("/api/openai/echo", headers=acme.headers, buffered=True)
    assert "sandbox" in response.headers.getlist("Content-Security-Policy")


def test_a_service_token_completes_only_the_calls_it_admitted(app, client, routes, acme):
    mine, theirs = _token(app, "mine"), _token(app, "theirs")
    call_id = client.post("/api/v1/verify", json={"key": acme.secret}, headers=mine).json["callId"]
    forged = client.post(f"/api/v1/verify/{call_id}/complete", json={"status_code": 500}, headers=theirs)
    assert forged.status_code == 409
    # Nor a call made to the gateway or the JSON API, whose id the caller sees as X-Request-Id.
    ping = client.get("/api/v1/ping", headers=acme.headers)
    assert client.post(f"/api/v1/verify/{call_id}/complete", json={"status_code": 201}, headers=mine).status_code == 200
    from portal.api.guard import gate

    pending = gate(app).admission._pending[-1].split(",")[0]
    stolen = client.post(f"/api/v1/verify/{pending}/complete", json={"status_code": 500}, headers=mine)
    assert stolen.status_code == 409
    records = stored_calls(app, acme.tenant_id)
    assert sorted(r.status_code for r in records) == [200, 201]
    assert ping.status_code == 200


@pytest.mark.parametrize(
    "endpoint",
    ["//api/pro", "/api//pro", "/api/pro;x", "/api/./pro", "/api/pro%2Fx", "/api/v1/billing/../../api/pro", "/a\r\nb"],
)
def test_verify_takes_only_routed_paths(app, client, upstream, acme, endpoint):
    service = _token(app, "router")
    response = client.post("/api/v1/verify", json={"key": acme.secret, "endpoint": endpoint}, headers=service)
    assert response.status_code == 422


def test_verify_never_applies_the_account_way_out(app, client, acme, clock):
    service = _token(app, "way out")
    set_limits(app, "starter", monthly_quota=1)
    assert client.post("/api/v1/verify", json={"key": acme.secret}, headers=service).json["valid"] is True
    for endpoint in ("/api/v1/billing/anything", "/api/v1/budgetsfoo", "/api/chat"):
        answer = client.post("/api/v1/verify", json={"key": acme.secret, "endpoint": endpoint}, headers=service).json
        assert answer["code"] == "QUOTA_EXCEEDED", endpoint


def test_verify_edge_values_answer_without_a_traceback(app, client, acme):
    service = _token(app, "edges")
    huge = client.post(f"/api/v1/verify/{'f' * 400}-x/complete", json={"status_code": 200}, headers=service)
    assert huge.status_code == 409
    call_id = client.post("/api/v1/verify", json={"key": acme.secret}, headers=service).json["callId"]
    done = client.post(
        f"/api/v1/verify/{call_id}/complete",
        json={"status_code": 200, "tokens_in": 1, "cached_tokens": 1000, "model": "m\u0000"},
        headers=service,
    )
    assert done.status_code == 200
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.tokens_in, record.cached_tokens) == (1, 1)
    assert "\x00" not in record.model


def test_a_blueprint_nested_in_a_product_blueprint_is_protected_too(app, test_settings):
    from flask import Blueprint

    import examples.assistant as example
    from portal import create_app
    from portal.product import ProductBlueprint

    child = Blueprint("child", __name__, url_prefix="/child")
    child.add_url_rule("/secret", "secret", lambda: {"secret": True})
    parent = ProductBlueprint("nested_product", __name__, url_prefix="/api/nested", category="Nested")
    parent.register_blueprint(child)
    example.nested_for_test = parent
    try:
        product_app = create_app({**test_settings, "PRODUCT_BLUEPRINTS": "examples.assistant:nested_for_test"})
    finally:
        del example.nested_for_test
    client = product_app.test_client()
    assert client.get("/api/nested/child/secret").status_code == 401
    tenant = new_tenant(app, "Nested Co", key=True)
    assert client.get("/api/nested/child/secret", headers=tenant.headers).status_code == 200


def test_record_usage_refuses_what_it_cannot_meter(app):
    from flask import g

    from portal.product import record_usage

    with app.test_request_context("/"):
        g.api_call = object()
        for bad in ({"units": "abc"}, {"units": -5}, {"units": 1.5}, {"model": 7}):
            with pytest.raises(ValueError):
                record_usage(**bad)
