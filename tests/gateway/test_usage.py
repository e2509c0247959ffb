"""What the upstream used, metered: tokens and model from OpenAI- and Anthropic-style usage
(a JSON body or a stream's events) or the X-Tollgate-Usage header, priced under the route's
service — a tenant's own price first — and seen where costs are reported."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from portal.costs.catalog import set_price
from portal.costs.prices import bump_prices_version, current_price_book
from portal.extensions import db
from portal.redis_store import get_redis
from tests.gateway.helpers import add_test_route, stored_calls
from tests.gateway.upstreams import Upstream

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def routes(app, upstream: Upstream):
    add_test_route(app, "/api/chat", f"{upstream.url}/base", methods="POST,GET", category="Chat", service="chatbot")
    add_test_route(app, "/api/openai", upstream.url, methods="POST,GET", service="openai")
    add_test_route(app, "/api/anthropic", upstream.url, methods="POST,GET", service="anthropic")
    return upstream


def _own_price(app, tenant_id: int | None, prices: dict, service: str = "chatbot") -> None:
    with app.app_context():
        set_price(service, "chatbot-mini", prices, LONG_AGO, tenant_id=tenant_id)
        db.session.commit()
        bump_prices_version(get_redis(app))
        db.session.remove()


def test_the_usage_header_is_priced_at_the_tenants_own_price_first(app, client, routes, acme):
    _own_price(app, None, {"input": "1", "output": "1", "per_unit": "0.5"})
    _own_price(app, acme.tenant_id, {"input": "2", "output": "4", "per_unit": "0.01"})
    response = client.post("/api/chat/usage/header", headers=acme.headers)
    assert (response.status_code, response.get_data()) == (200, b"ok")
    assert "X-Tollgate-Usage" not in response.headers
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.tokens_in, record.tokens_out, record.model, record.meta) == (40, 60, "chatbot-mini", {"units": 2})
    # 40 × $2/1M + 60 × $4/1M + 2 × $0.01
    assert record.cost == Decimal("0.02032")
    assert record.quota_units == 1


def _catalog_cost(app, service: str, model: str, at: datetime, **counts) -> Decimal:
    with app.app_context():
        quote = current_price_book(get_redis(app)).quote(None, service, model, at, **counts)
        db.session.remove()
    assert quote is not None
    return quote.cost


def test_an_openai_body_is_metered_with_its_tokens_and_priced_from_the_catalog(app, client, routes, acme):
    response = client.post("/api/openai/usage/openai", headers=acme.headers)
    assert response.json["usage"]["total_tokens"] == 1500
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.service, record.model) == ("openai", "gpt-4o-mini")
    assert (record.tokens_in, record.tokens_out, record.cached_tokens) == (1200, 300, 200)
    expected = _catalog_cost(
        app, "openai", "gpt-4o-mini", record.occurred_at, tokens_in=1200, tokens_out=300, cached_tokens=200
    )
    assert record.cost == expected
    assert record.cost > 0


def test_an_anthropic_body_counts_cache_reads_as_input(app, client, routes, acme):
    assert client.post("/api/anthropic/usage/anthropic", headers=acme.headers).json["type"] == "message"
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.tokens_in, record.tokens_out, record.cached_tokens) == (1100, 250, 100)
    assert record.model == "claude-3-5-haiku-20241022"


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/api/openai/stream?events=4&interval=0.01&usage=openai", "gpt-4o-mini"),
        ("/api/anthropic/stream?events=4&interval=0.01&usage=anthropic", "claude-3-5-haiku-20241022"),
    ],
)
def test_a_streams_last_events_carry_its_usage(app, client, routes, acme, path, model):
    response = client.get(path, headers=acme.headers)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    body = response.get_data(as_text=True)
    assert body.count("data:") >= 5
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.tokens_in, record.tokens_out, record.model) == (11, 7, model)
    assert record.status_code == 200


def test_a_call_without_usage_keeps_no_tokens_and_stays_unpriced(app, client, routes, acme):
    assert client.post("/api/chat/echo", headers=acme.headers, buffered=True).status_code == 200
    [record] = stored_calls(app, acme.tenant_id)
    assert (record.tokens_in, record.tokens_out, record.model, record.cost) == (0, 0, "", None)


def test_gateway_costs_show_in_the_cost_report_and_count_toward_budgets(app, client, routes, acme):
    from tests.api_helpers import T0, add_key

    _own_price(app, acme.tenant_id, {"input": "2", "output": "4", "per_unit": "0.01"})
    for _ in range(3):
        assert client.post("/api/chat/usage/header", headers=acme.headers, buffered=True).status_code == 200
    stored_calls(app, acme.tenant_id)
    _, admin = add_key(app, acme.tenant_id, "admin", scope="admin")
    day = datetime.fromtimestamp(T0, UTC).date().isoformat()  # the test clock's day
    report = client.get(
        f"/api/v1/costs/report?group_by=service&startDate={day}&endDate={day}", headers={"X-API-Key": admin}
    ).json
    chatbot = next(group for group in report["groups"] if group["key"] == "chatbot")
    assert Decimal(str(chatbot["cost"])) == Decimal("0.06096")
    assert chatbot["calls"] == 3
    budget = client.post(
        "/api/v1/budgets",
        json={"name": "Chat spend", "amount": "0.05", "service": "chatbot", "hard_stop": True},
        headers={"X-API-Key": admin},
    )
    assert budget.status_code == 201, budget.json
    saved = budget.json["budget"]
    assert (Decimal(str(saved["spend"])), saved["stopped"]) == (Decimal("0.06096"), True)
    stopped = client.post("/api/chat/usage/header", headers=acme.headers)
    assert stopped.status_code == 402


def test_a_routed_call_priced_later_gets_its_cost_and_moves_off_unpriced(app, client, routes, acme):
    from sqlalchemy import func, select

    from portal.costs.recompute import recompute_costs
    from portal.models import UsageRollup

    # A service no other test prices (model prices outlive each test).
    add_test_route(app, "/api/fresh", routes.url, methods="POST", service="freshbot")
    assert client.post("/api/fresh/usage/header", headers=acme.headers, buffered=True).status_code == 200
    [record] = stored_calls(app, acme.tenant_id)
    assert record.cost is None
    with app.app_context():
        unpriced = select(func.sum(UsageRollup.unpriced)).where(
            UsageRollup.tenant_id == acme.tenant_id, UsageRollup.granularity == "day"
        )
        assert db.session.scalar(unpriced) == 1
        db.session.remove()
    _own_price(app, acme.tenant_id, {"input": "2", "output": "4", "per_unit": "0.01"}, service="freshbot")
    with app.app_context():
        assert recompute_costs()["priced"] == 1
        assert db.session.scalar(unpriced) == 0
        db.session.remove()
    [record] = stored_calls(app, acme.tenant_id)
    assert record.cost == Decimal("0.02032")
