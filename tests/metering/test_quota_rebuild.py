"""The monthly quota counter is a cache of the records: lost, it is rebuilt from what was stored
and what Redis still holds before the next call is admitted — once, however many processes
notice at the same moment — and it never lets more than the quota through."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from portal.kernel.clock import app_clock
from portal.kernel.redis_keys import quota_key
from portal.metering.quota import rebuild_quota_counter, rebuilt_count
from tests.api_helpers import drain, set_limits

PING = "/api/v1/ping"
NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)  # the clock fixture's time


def ping(client, headers):
    return client.get(PING, headers=headers)


def counter(redis, tenant_id: int) -> int | None:
    value = redis.get(quota_key(tenant_id, NOW))
    return None if value is None else int(value)


@pytest.fixture
def quota_of_20(app):
    set_limits(app, "starter", monthly_quota=20, per_minute=1000, per_hour=1000, per_day=1000)


def test_a_counter_lost_mid_period_is_rebuilt_before_the_next_call(app, client, acme, redis, quota_of_20):
    for _ in range(4):
        assert ping(client, acme.headers).status_code == 200
    drain(app)  # four calls stored
    for _ in range(3):  # three more, still in the usage stream or in flight
        assert ping(client, acme.headers).status_code == 200
    assert counter(redis, acme.tenant_id) == 7

    redis.delete(quota_key(acme.tenant_id, NOW))  # a flush, a failover, an eviction

    response = ping(client, acme.headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "20"
    assert response.headers["X-RateLimit-Remaining"] == "12"  # 20 - 8
    usage = client.get("/api/v1/billing/usage", headers=acme.headers).json["usage"]["apiCalls"]
    assert (usage["used"], usage["remaining"]) == (9, 11)


def test_refused_calls_do_not_count_when_the_counter_is_rebuilt(app, client, acme, redis):
    set_limits(app, "starter", monthly_quota=100, per_minute=3, per_hour=1000, per_day=1000)
    statuses = [ping(client, acme.headers).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    drain(app)
    redis.delete(quota_key(acme.tenant_id, NOW))
    app_clock(app).time.advance(60)  # the next minute
    response = ping(client, acme.headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "96"  # three admitted before, this one


def test_a_lost_counter_never_admits_past_the_quota(app, client, acme, redis):
    set_limits(app, "starter", monthly_quota=5, per_minute=1000, per_hour=1000, per_day=1000)
    assert [ping(client, acme.headers).status_code for _ in range(3)] == [200] * 3
    drain(app)
    assert [ping(client, acme.headers).status_code for _ in range(2)] == [200] * 2
    for _ in range(3):  # lost again and again: every time the same five are found
        redis.delete(quota_key(acme.tenant_id, NOW))
        response = ping(client, acme.headers)
        assert response.status_code == 429
        assert response.json["detail"].startswith("Monthly quota of 5 requests used up.")
    drain(app)
    redis.delete(quota_key(acme.tenant_id, NOW))  # all stored now
    assert ping(client, acme.headers).status_code == 429


def test_calls_racing_a_lost_counter_are_each_counted_once(app, acme, redis, quota_of_20):
    """Eight calls at once find the counter gone: it is rebuilt once and counts each of them."""
    client = app.test_client()
    for _ in range(5):
        assert ping(client, acme.headers).status_code == 200
    drain(app)
    redis.delete(quota_key(acme.tenant_id, NOW))
    start = threading.Barrier(8)

    def call(_):
        start.wait()
        return ping(app.test_client(), acme.headers).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(8)))
    assert statuses == [200] * 8
    assert counter(redis, acme.tenant_id) == 13
    drain(app)
    with app.app_context():
        assert rebuilt_count(redis, acme.tenant_id, NOW.timestamp()) == 13


def test_two_processes_rebuilding_at_once_set_the_counter_once(app, client, acme, redis, quota_of_20):
    for _ in range(6):
        assert ping(client, acme.headers).status_code == 200
    drain(app)
    redis.delete(quota_key(acme.tenant_id, NOW))
    start = threading.Barrier(2)

    def rebuild(_):
        with app.app_context():
            start.wait()
            return rebuild_quota_counter(redis, acme.tenant_id, NOW.timestamp())

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(rebuild, range(2))) == [6, 6]
    assert counter(redis, acme.tenant_id) == 6
    # A rebuild that finds the counter there changes nothing.
    redis.incr(quota_key(acme.tenant_id, NOW))
    with app.app_context():
        assert rebuild_quota_counter(redis, acme.tenant_id, NOW.timestamp()) == 7
    # The rebuilt counter lives as long as a counter made by the admission script would.
    assert redis.ttl(quota_key(acme.tenant_id, NOW)) > (datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds()


def test_the_dashboard_shows_the_rebuilt_count(app, client, acme, redis, quota_of_20, make_tenant):
    from tests.portal_helpers import sign_in

    for _ in range(4):
        assert ping(client, acme.headers).status_code == 200
    drain(app)
    redis.delete(quota_key(acme.tenant_id, NOW))
    portal = app.test_client()
    sign_in(portal, "owner@acme.example")
    page = portal.get("/dashboard").text
    assert "4 of 20" in " ".join(page.split())
    assert counter(redis, acme.tenant_id) == 4


def test_billing_reconcile_reports_counter_drift(app, client, acme, redis, quota_of_20, monkeypatch):
    import portal.cli.billing as billing_cli

    monkeypatch.setattr(billing_cli, "utcnow", lambda: NOW)
    for _ in range(3):
        assert ping(client, acme.headers).status_code == 200
    drain(app)
    cli = app.test_cli_runner()

    agreed = cli.invoke(args=["billing", "reconcile"])
    assert agreed.exit_code == 0, agreed.output
    assert agreed.output.splitlines()[-1].endswith("quota counters: 0 drift(s)")

    redis.set(quota_key(acme.tenant_id, NOW), 1)
    drifted = cli.invoke(args=["billing", "reconcile"])
    assert drifted.exit_code == 1
    assert f"DRIFT      {acme.slug} 2026-11: the quota counter says 1 calls, the records and the usage stream 3" in (
        drifted.output
    )

    redis.delete(quota_key(acme.tenant_id, NOW))
    lost = cli.invoke(args=["billing", "reconcile"])
    assert lost.exit_code == 0, lost.output
    assert f"pending    {acme.slug} 2026-11: no quota counter in Redis (3 calls admitted)" in lost.output

    closed_month = cli.invoke(args=["billing", "reconcile", "--period", "2026-10"])
    assert "quota counters" not in closed_month.output
