"""The operator's own Flask views behind the plan: a ProductBlueprint loaded from
PRODUCT_BLUEPRINTS is admitted, limited, metered and answered with headers like every
protected call, and record_usage() meters what a view used."""

from __future__ import annotations

import pytest

from portal import create_app
from portal.config import ConfigError
from tests.api_helpers import drain, set_limits
from tests.factories import new_tenant
from tests.gateway.helpers import stored_calls


@pytest.fixture(scope="module")
def product_app(app, test_settings):
    # A second application on the same database and Redis, with the example product loaded.
    return create_app({**test_settings, "PRODUCT_BLUEPRINTS": "examples.assistant:bp"})


def test_a_product_view_is_protected_metered_and_reports_its_usage(app, product_app, clock):
    from tests.api_helpers import install_clock

    install_clock(product_app, clock)
    tenant = new_tenant(app, "Product Co", key=True)
    client = product_app.test_client()
    assert client.post("/api/assistant/ask", json={"message": "Hello"}).status_code == 401
    response = client.post(
        "/api/assistant/ask", json={"message": "Hello"}, headers={**tenant.headers, "X-End-User": "bob"}
    )
    assert response.status_code == 200
    assert response.json == {
        "reply": "Assistant heard: Hello",
        "model": "chatbot-mini",
        "tenant": tenant.slug,
        "endUser": "bob",
    }
    assert response.headers["X-RateLimit-Minute-Remaining"] == "299"
    assert client.get("/api/assistant/status", headers=tenant.headers).status_code == 200
    drain(product_app)
    records = stored_calls(app, tenant.tenant_id)
    assert [(r.endpoint, r.status_code, r.category, r.service) for r in records] == [
        ("/api/assistant/ask", 200, "Chat", "chatbot"),
        ("/api/assistant/status", 200, "Chat", "chatbot"),
    ]
    ask = records[0]
    assert (ask.tokens_in, ask.tokens_out, ask.model, ask.end_user, ask.quota_units) == (
        10,
        6,
        "chatbot-mini",
        "bob",
        1,
    )


def test_a_product_view_shares_the_tenants_windows(app, product_app, client, clock):
    from tests.api_helpers import install_clock

    install_clock(product_app, clock)
    set_limits(app, "starter", per_minute=2)
    tenant = new_tenant(app, "Windowed Product Co", key=True)
    product = product_app.test_client()
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200
    assert product.get("/api/assistant/status", headers=tenant.headers).status_code == 200
    refused = product.get("/api/assistant/status", headers=tenant.headers)
    assert refused.status_code == 429
    assert refused.json["detail"].startswith("Rate limit exceeded for minute")
    assert refused.headers["Retry-After"]
    drain(product_app)


def test_a_bad_setting_names_the_variable(test_settings):
    for value, message in (
        ("not a spec", "expected package.module:blueprint"),
        ("examples.nowhere:bp", "cannot load examples.nowhere:bp"),
        ("examples.assistant:MODEL", "is not a portal.product.ProductBlueprint"),
    ):
        with pytest.raises(ConfigError) as raised:
            create_app({**test_settings, "PRODUCT_BLUEPRINTS": value})
        assert "PRODUCT_BLUEPRINTS" in str(raised.value) and message in str(raised.value)


def test_record_usage_outside_a_protected_call_says_so(app):
    from portal.product import record_usage

    with app.test_request_context("/"), pytest.raises(RuntimeError, match="ProductBlueprint"):
        record_usage(tokens_in=1)
