"""Outside-service costs through the API: reported events, service limits and acquires, budgets,
key scopes and cost reports — against the real Redis and database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.costs.prices import bump_prices_version
from portal.extensions import db
from portal.models import BudgetCrossing, ModelPrice, UsageRollup
from portal.redis_store import get_redis
from tests.api_helpers import add_key, drain, external_records
from tests.factories import PASSWORD, new_tenant

GROQ_70B = {"service": "groq", "endpoint": "/v1/chat/completions", "model": "llama-3.1-70b-versatile"}


@pytest.fixture
def admin(app, tenant):
    _, secret = add_key(app, tenant.tenant_id, "admin", scope="admin")
    return {"X-API-Key": secret}


def post_events(client, headers, *events, **extra):
    body = {"events": list(events)} if len(events) != 1 or extra.get("batch") else events[0]
    return client.post("/api/v1/usage/events", json=body, headers=headers)


def add_tenant_price(app, tenant_id, service, model, **prices):
    """A tenant's own price from 2026 on, which workers pick up at once (as `prices set` does)."""
    with app.app_context():
        db.session.add(
            ModelPrice(
                tenant_id=tenant_id,
                service=service,
                model=model,
                effective_from=datetime(2026, 1, 1, tzinfo=UTC),
                **{name: Decimal(value) for name, value in prices.items()},
            )
        )
        db.session.commit()
        bump_prices_version(get_redis(app))
        db.session.remove()


def rollup_sums(app, tenant_id, granularity="day"):
    with app.app_context():
        return db.session.execute(
            select(
                func.coalesce(func.sum(UsageRollup.calls), 0),
                func.coalesce(func.sum(UsageRollup.cost), 0),
                func.coalesce(func.sum(UsageRollup.unpriced), 0),
            ).where(
                UsageRollup.tenant_id == tenant_id,
                UsageRollup.granularity == granularity,
                UsageRollup.source == "external",
            )
        ).one()


# -- reporting events -----------------------------------------------------------------------------
def test_seed_002_groq_call_costs_0_236(clock, app, client, tenant):
    response = post_events(client, tenant.headers, {**GROQ_70B, "tokens_used": 400_000, "user_id": "u-7"})
    assert response.status_code == 202
    assert response.json["success"] is True and response.json["accepted"] == 1
    assert drain(app) >= 1
    [record] = external_records(app, tenant.tenant_id)
    assert record.cost == Decimal("0.23600000")
    assert (record.tokens_in, record.tokens_out, record.end_user) == (400_000, 0, "u-7")
    assert record.price_id is not None
    assert rollup_sums(app, tenant.tenant_id) == (1, Decimal("0.236"), 0)
    stats = client.get("/api/v1/usage/stats?service=groq", headers=tenant.headers).json["stats"]
    assert stats["by_service"]["groq"] == {"calls": 1, "tokens": 400_000, "cost": 0.236}


def test_seed_002_fields_are_accepted(clock, app, client, tenant):
    # The seed's log_api_call shape: service_name, model and quota cost in metadata.
    youtube = {"service_name": "youtube", "endpoint": "/youtube/v3/search", "metadata": {"quota_cost": 100}}
    twitter = {"service_name": "twitter", "endpoint": "/2/users/:id/tweets", "metadata": {"count": 20}}
    groq = {"service_name": "groq", "tokens_used": 450, "metadata": {"model": "llama-3.1-70b-versatile"}}
    assert post_events(client, tenant.headers, youtube, twitter, groq).status_code == 202
    drain(app)
    rows = {r.service: r for r in external_records(app, tenant.tenant_id)}
    assert rows["youtube"].quota_units == 100
    assert rows["twitter"].cost == Decimal("0.000116")
    assert rows["groq"].model == "llama-3.1-70b-versatile"
    assert rows["groq"].cost == Decimal("0.00026550")


def test_a_bad_event_stores_none_of_the_batch_and_names_each_position(clock, app, client, tenant):
    events = [
        {**GROQ_70B, "tokens_used": 10},
        {**GROQ_70B, "tokens_in": -1},
        {"endpoint": "/x"},
        {**GROQ_70B, "tokens_in": 10, "cached_tokens": 11},
    ]
    response = post_events(client, tenant.headers, *events)
    assert response.status_code == 422
    detail = response.json["detail"]
    assert "events[1].tokens_in" in detail
    assert "events[2].service" in detail
    assert "events[3]: cached_tokens cannot exceed" in detail
    assert "events[0]" not in detail
    drain(app)
    assert external_records(app, tenant.tenant_id) == []
    limits = client.get("/api/v1/usage/rate-limits/groq", headers=tenant.headers).json
    assert limits["current_count"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body"),
        ({"events": []}, "events: List should have at least 1 item"),
        ({"events": [GROQ_70B] * 1001}, "events: List should have at most 1000 items"),
        ({**GROQ_70B, "tokens_used": 5, "tokens_in": 5}, "not both"),
        ({**GROQ_70B, "tokenz": 5}, "tokenz: Extra inputs are not permitted"),
        ({**GROQ_70B, "occurred_at": "2026-11-18T12:30:10"}, "occurred_at: Input should have timezone info"),
        ({**GROQ_70B, "occurred_at": "2026-11-18T13:30:10Z"}, "occurred_at: lies in the future"),
    ],
)
def test_invalid_events_are_refused_with_what_is_wrong(clock, client, tenant, body, message):
    response = client.post("/api/v1/usage/events", json=body, headers=tenant.headers)
    assert response.status_code == 422
    assert message in response.json["detail"]


def test_a_body_that_is_not_json_is_refused(clock, client, tenant):
    response = client.post("/api/v1/usage/events", data="tokens=5", headers=tenant.headers)
    assert response.status_code == 422
    assert "JSON" in response.json["detail"]


def test_the_same_event_id_counts_once_under_concurrent_retries(clock, app, tenant):
    batch = {"events": [{**GROQ_70B, "id": f"call-{n}", "tokens_used": 1000} for n in range(50)]}

    def send(_):
        with app.test_client() as client:
            return client.post("/api/v1/usage/events", json=batch, headers=tenant.headers).json

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(8)))
    assert all(a["accepted"] == 50 for a in answers)
    assert sum(50 - a["duplicates"] for a in answers) == 50  # each id new in exactly one answer
    drain(app)
    assert len(external_records(app, tenant.tenant_id)) == 50
    assert rollup_sums(app, tenant.tenant_id)[0] == 50
    with app.test_client() as client:
        groq = client.get("/api/v1/usage/rate-limits?service=groq", headers=tenant.headers).json["rate_limits"]
    # The minute window counted each call once (the 14,400/day too).
    assert [(w["limit_type"], w["current_count"]) for w in groq] == [("minute", 50), ("day", 50)]


def test_a_model_without_a_price_is_unpriced_until_a_price_exists(clock, app, client, tenant):
    event = {"service": "acme-llm", "model": "acme-1", "tokens_in": 2_000_000, "tokens_out": 1_000_000}
    reported = post_events(client, tenant.headers, event)
    assert reported.status_code == 202
    response_ids = reported.json["ids"]
    drain(app)
    [record] = external_records(app, tenant.tenant_id)
    assert record.cost is None
    assert rollup_sums(app, tenant.tenant_id) == (1, 0, 1)
    log = client.get("/api/v1/usage/logs?service=acme-llm", headers=tenant.headers).json["logs"][0]
    assert log["cost_usd"] is None  # unpriced, never $0
    assert log["id"] == response_ids[0]  # the id the event was reported with
    report = client.get("/api/v1/costs/report?group_by=service", headers=tenant.headers).json
    assert report["unpriced_calls"] == 1 and report["groups"][0]["unpriced_calls"] == 1

    from portal.costs.recompute import recompute_costs

    add_tenant_price(app, tenant.tenant_id, "acme-llm", "acme-1", input_per_million="1.00", output_per_million="3.00")
    with app.app_context():
        recompute_costs()
        db.session.remove()
    [record] = external_records(app, tenant.tenant_id)
    assert record.cost == Decimal("5.00000000")
    assert rollup_sums(app, tenant.tenant_id) == (1, Decimal("5"), 0)


def test_cached_tokens_are_priced_at_the_cached_price_and_not_as_input(clock, app, client, tenant):
    prices = {"input_per_million": "2.50", "cached_input_per_million": "1.25", "output_per_million": "10.00"}
    add_tenant_price(app, tenant.tenant_id, "openai", "gpt-4o", **prices)
    event = {"service": "openai", "model": "gpt-4o-2024-08-06", "tokens_in": 1000, "cached_tokens": 400}
    assert post_events(client, tenant.headers, {**event, "tokens_out": 100}).status_code == 202
    drain(app)
    [record] = external_records(app, tenant.tenant_id)
    # 600 × 2.50 + 400 × 1.25 + 100 × 10.00, per million
    assert record.cost == Decimal("0.00300000")
    assert record.cached_tokens == 400


# -- service limits and acquires ------------------------------------------------------------------
def acquire(client, headers, service, **body):
    return client.post(f"/api/v1/usage/rate-limits/{service}/acquire", json=body, headers=headers)


def test_acquire_grants_up_to_the_limit_then_429_with_retry_after(client, tenant, clock):
    for n in range(30):  # groq: 30 a minute
        response = acquire(client, tenant.headers, "groq")
        assert response.status_code == 200, n
        assert response.json["can_call"] is True and response.json["permit_id"]
    minute = response.json["limits"][0]
    assert (minute["limit_type"], minute["current_count"], minute["remaining"]) == ("minute", 30, 0)
    refused = acquire(client, tenant.headers, "groq")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "50"  # the clock is at second 10 of its minute
    assert refused.json["can_call"] is False and refused.json["permit_id"] is None
    assert "groq" in refused.json["detail"] and "minute" in refused.json["detail"]
    day = client.get("/api/v1/usage/rate-limits/groq?limit_type=day", headers=tenant.headers).json
    assert day["current_count"] == 30  # the refused acquire consumed nothing
    clock.advance(50)
    assert acquire(client, tenant.headers, "groq").status_code == 200


def test_a_refused_acquire_of_units_consumes_nothing(clock, client, tenant):
    assert acquire(client, tenant.headers, "youtube", units=9_000).status_code == 200
    assert acquire(client, tenant.headers, "youtube", units=2_000).status_code == 429
    assert acquire(client, tenant.headers, "youtube", units=1_000).status_code == 200
    assert acquire(client, tenant.headers, "youtube", units=1).status_code == 429
    status = client.get("/api/v1/usage/rate-limits/youtube?limit_type=day", headers=tenant.headers).json
    assert (status["current_count"], status["remaining"], status["unit"]) == (10_000, 0, "quota_units")
    too_many = acquire(client, tenant.headers, "youtube", units=10_001)
    assert too_many.status_code == 422 and "exceed" in too_many.json["detail"]


def test_nul_characters_and_whole_floats_are_read_alike_in_a_batch_and_alone(clock, app, client, tenant):
    # A batch valid as sent is validated straight from its bytes; one with a NUL or a 3.0 in it
    # goes the general way. Both store the same records.
    plain = {**GROQ_70B, "id": "as-sent", "tokens_in": 3, "endpoint": "/v1/a\ufffdb", "metadata": {"k\ufffd": "v"}}
    odd = {**GROQ_70B, "id": "odd", "tokens_in": 3.0, "endpoint": "/v1/a\x00b", "metadata": {"k\x00": "v"}}
    for event in (plain, odd):
        response = client.post("/api/v1/usage/events", json={"events": [event]}, headers=tenant.headers)
        assert response.status_code == 202, response.json
    assert post_events(client, tenant.headers, {**odd, "id": "alone"}).status_code == 202
    drain(app)
    rows = {r.idempotency_key: r for r in external_records(app, tenant.tenant_id)}
    assert sorted(rows) == ["e:alone", "e:as-sent", "e:odd"]
    for row in rows.values():
        assert (row.tokens_in, row.endpoint, row.meta) == (3, "/v1/a\ufffdb", {"k\ufffd": "v"})
    bad = client.post(
        "/api/v1/usage/events", json={"events": [plain, {**GROQ_70B, "tokens_in": 2.5}]}, headers=tenant.headers
    )
    assert bad.status_code == 422 and bad.json["detail"].startswith("events[1].tokens_in:")


def test_a_batch_counts_each_new_event_once_in_each_window(clock, app, client, tenant):
    permit = acquire(client, tenant.headers, "youtube", units=100).json["permit_id"]
    events = [
        {**GROQ_70B, "id": "g-1"},
        {**GROQ_70B, "id": "g-2"},
        {**GROQ_70B, "id": "g-1"},  # the same event again in the batch
        {"service": "youtube", "id": "y-1", "units": 150, "permit_id": permit},  # 100 counted at the acquire
        {"service": "youtube", "id": "y-2", "units": 7},
        {"service": "openai", "id": "o-1", "model": "gpt-4o-mini"},  # no limits
    ]
    answer = post_events(client, tenant.headers, *events).json
    assert (answer["accepted"], answer["duplicates"]) == (6, 1)
    again = post_events(client, tenant.headers, *events[:2]).json  # a retry counts nothing
    assert again["duplicates"] == 2
    groq = client.get("/api/v1/usage/rate-limits?service=groq", headers=tenant.headers).json["rate_limits"]
    assert [(w["limit_type"], w["current_count"]) for w in groq] == [("minute", 2), ("day", 2)]
    youtube = client.get("/api/v1/usage/rate-limits/youtube?limit_type=day", headers=tenant.headers).json
    assert youtube["current_count"] == 157
    redis = get_redis(app)
    assert all(0 < redis.ttl(key) <= 86400 + 3600 for key in redis.keys(f"tollgate:*:svc:{tenant.tenant_id}:*"))
    drain(app)
    assert len(external_records(app, tenant.tenant_id)) == 5


def test_a_service_without_limits_is_always_granted(clock, client, tenant):
    response = acquire(client, tenant.headers, "openai", units=5)
    assert response.status_code == 200
    assert response.json["can_call"] is True and response.json["limits"] == []


def test_an_event_with_its_permit_is_not_counted_twice(clock, app, client, tenant):
    permit = acquire(client, tenant.headers, "groq").json["permit_id"]
    assert post_events(client, tenant.headers, {**GROQ_70B, "tokens_used": 10, "permit_id": permit}).status_code == 202
    minute = client.get("/api/v1/usage/rate-limits/groq", headers=tenant.headers).json
    assert minute["current_count"] == 1
    # A permit serves one event: reporting a second call with it counts that call.
    post_events(client, tenant.headers, {**GROQ_70B, "tokens_used": 10, "permit_id": permit})
    post_events(client, tenant.headers, {**GROQ_70B, "tokens_used": 10})
    assert client.get("/api/v1/usage/rate-limits/groq", headers=tenant.headers).json["current_count"] == 3
    drain(app)
    assert len(external_records(app, tenant.tenant_id)) == 3


def test_units_beyond_a_permit_count_when_reported(clock, client, tenant):
    permit = acquire(client, tenant.headers, "youtube", units=100).json["permit_id"]
    post_events(client, tenant.headers, {"service": "youtube", "units": 150, "permit_id": permit})
    day = client.get("/api/v1/usage/rate-limits/youtube?limit_type=day", headers=tenant.headers).json
    assert day["current_count"] == 150


def test_limits_are_the_seed_defaults_and_an_admin_key_changes_them(clock, client, tenant, admin):
    limits = client.get("/api/v1/usage/rate-limits", headers=tenant.headers).json["rate_limits"]
    assert [(w["service_name"], w["limit_type"], w["limit_value"], w["unit"]) for w in limits] == [
        ("groq", "minute", 30, "requests"),
        ("groq", "day", 14_400, "requests"),
        ("twitter", "month", 1_500, "requests"),
        ("youtube", "day", 10_000, "quota_units"),
    ]
    change = {"limit_type": "minute", "limit_value": 2, "model": "gpt-4o"}
    refused = client.put("/api/v1/usage/rate-limits/openai", json=change, headers=tenant.headers)
    assert refused.status_code == 403 and "admin" in refused.json["detail"]
    saved = client.put("/api/v1/usage/rate-limits/openai", json=change, headers=admin)
    assert saved.status_code == 200 and saved.json["rate_limit"]["limit_value"] == 2
    # A limit on one model holds that model only.
    assert acquire(client, tenant.headers, "openai", model="gpt-4o").status_code == 200
    assert acquire(client, tenant.headers, "openai", model="gpt-4o").status_code == 200
    assert acquire(client, tenant.headers, "openai", model="gpt-4o").status_code == 429
    assert acquire(client, tenant.headers, "openai", model="gpt-4o-mini").status_code == 200
    gone = client.delete("/api/v1/usage/rate-limits/openai?limit_type=minute&model=gpt-4o", headers=admin)
    assert gone.status_code == 200
    assert acquire(client, tenant.headers, "openai", model="gpt-4o").status_code == 200
    again = client.delete("/api/v1/usage/rate-limits/openai?limit_type=minute&model=gpt-4o", headers=admin)
    assert again.status_code == 404


# -- budgets ------------------------------------------------------------------------------------------
def crossings(app, tenant_id):
    with app.app_context():
        return sorted(
            (c.period_start.strftime("%Y-%m"), c.percentage)
            for c in db.session.scalars(select(BudgetCrossing).where(BudgetCrossing.tenant_id == tenant_id))
        )


def spend(client, headers, n):
    """Report ``n`` groq calls of $0.236 each."""
    events = [{**GROQ_70B, "tokens_used": 400_000} for _ in range(n)]
    response = client.post("/api/v1/usage/events", json={"events": events}, headers=headers)
    assert response.status_code == 202


def test_budget_thresholds_are_recorded_once_each_and_the_hard_stop_answers_402(app, client, tenant, admin, clock):
    body = {"name": "LLM cap", "amount": "1.00", "hard_stop": True}
    assert client.post("/api/v1/budgets", json=body, headers=tenant.headers).status_code == 403
    created = client.post("/api/v1/budgets", json=body, headers=admin)
    assert created.status_code == 201
    budget = created.json["budget"]
    assert budget["warning_percentages"] == [50, 80, 100] and budget["spend"] == 0
    spend(client, tenant.headers, 3)  # $0.708
    drain(app)
    assert crossings(app, tenant.tenant_id) == [("2026-11", 50)]
    spend(client, tenant.headers, 1)  # $0.944
    drain(app)
    assert crossings(app, tenant.tenant_id) == [("2026-11", 50), ("2026-11", 80)]
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200
    spend(client, tenant.headers, 1)  # $1.18: past the cap
    drain(app)
    stopped = client.get("/api/v1/ping", headers=tenant.headers)
    assert stopped.status_code == 402
    assert "LLM cap" in stopped.json["detail"] and "$1.00" in stopped.json["detail"]
    assert "2026-12-01T00:00:00Z" in stopped.json["detail"]
    assert acquire(client, tenant.headers, "groq").status_code == 402
    spend(client, tenant.headers, 2)  # reporting is never refused
    drain(app)
    assert crossings(app, tenant.tenant_id) == [("2026-11", 50), ("2026-11", 80), ("2026-11", 100)]
    [status] = client.get("/api/v1/budgets", headers=tenant.headers).json["budgets"]
    assert status["stopped"] is True and status["crossed"] == [50, 80, 100]
    assert status["spend"] == pytest.approx(1.652)
    # Raising the budget lifts the stop at once.
    raised = client.put(f"/api/v1/budgets/{budget['id']}", json={"amount": "10.00"}, headers=admin)
    assert raised.status_code == 200 and raised.json["budget"]["stopped"] is False
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200
    # The next month starts afresh: its thresholds fire again, once.
    clock.now = datetime(2026, 12, 2, 9, 0, 10, tzinfo=UTC).timestamp()
    assert client.put(f"/api/v1/budgets/{budget['id']}", json={"amount": "1.00"}, headers=admin).status_code == 200
    spend(client, tenant.headers, 3)
    drain(app)
    assert crossings(app, tenant.tenant_id)[-1] == ("2026-12", 50)
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200


def test_a_budget_on_one_service_stops_acquires_of_that_service_only(clock, app, client, tenant, admin):
    body = {"name": "Groq", "amount": "0.30", "service": "groq", "hard_stop": True}
    assert client.post("/api/v1/budgets", json=body, headers=admin).status_code == 201
    spend(client, tenant.headers, 2)
    drain(app)
    assert acquire(client, tenant.headers, "groq").status_code == 402
    assert acquire(client, tenant.headers, "openai").status_code == 200
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "amount": "0"}, "amount"),
        ({"name": "x", "amount": "1.234"}, "amount"),
        ({"name": "x", "amount": "\u0665"}, 'amount: expected a number written like "12.50"'),
        ({"name": "x", "amount": "\uff15"}, 'amount: expected a number written like "12.50"'),
        ({"name": "x", "amount": " 5"}, 'amount: expected a number written like "12.50"'),
        ({"name": "x", "amount": "1_0"}, 'amount: expected a number written like "12.50"'),
        ({"name": "x", "amount": 10**10}, "amount: Input should be less than or equal to 9999999999.99"),
        ({"name": "x", "amount": "5", "service": "groq", "user_id": "u"}, "not several"),
        ({"name": "x", "amount": "5", "api_key_id": 999_999}, "api_key_id: no API key"),
        ({"name": "x", "amount": "5", "warning_percentages": [0]}, "warning_percentages"),
    ],
)
def test_invalid_budgets_are_refused(clock, client, admin, body, message):
    response = client.post("/api/v1/budgets", json=body, headers=admin)
    assert response.status_code == 422
    assert message in response.json["detail"]


def test_another_tenants_budget_is_a_404(clock, app, client, tenant, admin):
    other = new_tenant(app, "Other Co", key=True)
    _, other_admin = add_key(app, other.tenant_id, "admin", scope="admin")
    theirs = client.post("/api/v1/budgets", json={"name": "b", "amount": "5"}, headers={"X-API-Key": other_admin})
    budget_id = theirs.json["budget"]["id"]
    assert client.put(f"/api/v1/budgets/{budget_id}", json={"amount": "9"}, headers=admin).status_code == 404
    assert client.delete(f"/api/v1/budgets/{budget_id}", headers=admin).status_code == 404
    assert client.get("/api/v1/budgets", headers=tenant.headers).json["budgets"] == []
    drain(app)


# -- cost reports -----------------------------------------------------------------------------------
def test_cost_report_groups_and_agrees_with_stats_and_summary(clock, app, client, tenant):
    _, second = add_key(app, tenant.tenant_id, "second")
    post_events(
        client,
        tenant.headers,
        {**GROQ_70B, "tokens_used": 400_000, "user_id": "ann"},
        {**GROQ_70B, "tokens_used": 100_000, "user_id": "bob"},
        {"service": "twitter", "endpoint": "/2/tweets", "user_id": "ann"},
        {"service": "acme-llm", "model": "acme-1", "tokens_in": 5},
    )
    post_events(client, {"X-API-Key": second}, {**GROQ_70B, "tokens_used": 1_000_000, "user_id": "bob"})
    drain(app)
    report = client.get("/api/v1/costs/report?group_by=service&days=30", headers=tenant.headers).json
    assert report["total_cost"] == pytest.approx(0.885116)  # 0.236 + 0.059 + 0.59 + 0.000116
    assert [(g["key"], g["calls"]) for g in report["groups"]] == [("groq", 3), ("twitter", 1), ("acme-llm", 1)]
    assert report["unpriced_calls"] == 1
    users = client.get("/api/v1/costs/report?group_by=end_user", headers=tenant.headers).json["groups"]
    assert {g["key"]: g["cost"] for g in users} == pytest.approx({"bob": 0.649, "ann": 0.236116, "(none)": 0.0})
    keys = client.get("/api/v1/costs/report?group_by=key", headers=tenant.headers).json["groups"]
    assert {g["key"] for g in keys} == {"default", "second"}
    days = client.get("/api/v1/costs/report?group_by=day", headers=tenant.headers).json["groups"]
    assert [g["key"] for g in days] == ["2026-11-18"]
    stats = client.get("/api/v1/usage/stats?days=30", headers=tenant.headers).json["stats"]
    summary = client.get("/api/v1/usage/summary", headers=tenant.headers).json["summary"]
    assert stats["total_cost"] == report["total_cost"] == summary["this_month"]["cost"]
    csv = client.get("/api/v1/costs/report?group_by=model&format=csv", headers=tenant.headers)
    assert csv.mimetype == "text/csv" and "attachment" in csv.headers["Content-Disposition"]
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("model,calls") and lines[-1].startswith("total,5,")
    assert lines[-1].endswith(",0.885116")


def test_cost_report_dates_are_checked(clock, client, tenant):
    response = client.get("/api/v1/costs/report?startDate=2026-11-20&endDate=2026-11-01", headers=tenant.headers)
    assert response.status_code == 422 and "startDate" in response.json["detail"]
    old = client.get("/api/v1/costs/report?startDate=2000-01-01", headers=tenant.headers)
    assert old.status_code == 200 and old.json["total_cost"] == 0


# -- scopes ----------------------------------------------------------------------------------------
def test_a_usage_key_reads_reports_and_acquires_but_changes_nothing(clock, client, tenant):
    assert client.get("/api/v1/budgets", headers=tenant.headers).status_code == 200
    assert acquire(client, tenant.headers, "groq").status_code == 200
    assert post_events(client, tenant.headers, {**GROQ_70B, "tokens_used": 1}).status_code == 202
    for method, path, body in (
        ("post", "/api/v1/budgets", {"name": "b", "amount": "5"}),
        ("put", "/api/v1/budgets/1", {"amount": "5"}),
        ("delete", "/api/v1/budgets/1", None),
        ("put", "/api/v1/usage/rate-limits/groq", {"limit_type": "minute", "limit_value": 5}),
        ("delete", "/api/v1/usage/rate-limits/groq?limit_type=minute", None),
        ("put", "/api/v1/account/settings", {"limits_when_redis_down": "closed"}),
    ):
        response = getattr(client, method)(path, json=body, headers=tenant.headers)
        assert response.status_code == 403, path
        assert response.json["detail"].startswith("This API key's scope is usage")


def test_create_api_key_with_the_admin_scope(clock, app, tenant):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-api-key", tenant.slug, "--name", "ops", "--scope", "admin"])
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    with app.test_client() as client:
        change = {"limits_when_redis_down": "closed"}
        response = client.put("/api/v1/account/settings", json=change, headers={"X-API-Key": secret})
        assert response.status_code == 200 and response.json["settings"] == change
    bad = runner.invoke(args=["create-api-key", tenant.slug, "--name", "x", "--scope", "root"])
    assert bad.exit_code != 0 and "root" in bad.output


def test_the_portal_report_stats_and_summary_agree_to_the_cent(app, auth, client):
    # No test clock: the portal's month is the real one, and so is the API's.
    from portal.kernel.periods import billing_period
    from portal.metering.store import store_usage
    from portal.models import utcnow

    tenant = new_tenant(app, "Agree Co", key=True)
    now = utcnow()
    start, _ = billing_period(now)
    costs = [Decimal("0.12345678"), Decimal("1.00000001"), Decimal("0.00500000"), None]
    with app.app_context():
        store_usage(
            {
                "tenant_id": tenant.tenant_id,
                "source": "external",
                "service": "openai" if cost is not None else "acme-llm",
                "endpoint": "/v1/chat/completions",
                "status_code": 200,
                "cost": cost,
                "occurred_at": start + (now - start) / (n + 2),
                "idempotency_key": f"agree-{n}",
            }
            for n, cost in enumerate(costs)
        )
        db.session.commit()
    exact = sum(c for c in costs if c is not None)  # $1.12845679
    query = f"startDate={start:%Y-%m-%d}&endDate={now:%Y-%m-%d}"
    report = client.get(f"/api/v1/costs/report?{query}", headers=tenant.headers).json
    summary = client.get("/api/v1/usage/summary", headers=tenant.headers).json["summary"]
    assert report["total_cost"] == summary["this_month"]["cost"] == float(exact.quantize(Decimal("0.000001")))
    assert report["unpriced_calls"] == 1
    auth.login("owner@agree-co.example", PASSWORD)
    page = client.get("/dashboard").text
    assert f"${exact:.2f}" in page  # $1.13, the same to the cent


def test_budget_changes_through_the_api_are_audited_once_with_the_key(app, acme, clock):
    from sqlalchemy import select

    from portal.extensions import db
    from portal.models import AuditEvent
    from tests.api_helpers import add_key

    key_id, secret = add_key(app, acme.tenant_id, "ops", scope="admin")
    client = app.test_client()
    headers = {"X-API-Key": secret}
    made = client.post("/api/v1/budgets", json={"name": "All", "amount": 50}, headers=headers)
    assert made.status_code == 201
    budget_id = made.get_json()["budget"]["id"]
    assert client.put(f"/api/v1/budgets/{budget_id}", json={"amount": 75}, headers=headers).status_code == 200
    assert client.delete(f"/api/v1/budgets/{budget_id}", headers=headers).status_code == 200
    refused = client.post("/api/v1/budgets", json={"name": "", "amount": 50}, headers=headers)
    assert refused.status_code == 422
    with app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == acme.tenant_id).order_by(AuditEvent.id)
        ).all()
        shown = [(e.action, e.user_id, e.details["amount"], e.details["api_key_id"]) for e in events]
        db.session.remove()
    assert shown == [
        ("budget.created", None, "50.00", key_id),
        ("budget.updated", None, "75.00", key_id),
        ("budget.deleted", None, "75.00", key_id),
    ]
