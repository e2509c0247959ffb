"""Metering: every call with a known key becomes exactly one usage record, with its real
status and duration, through the Redis stream and the worker's batches."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from portal.api.guard import gate
from portal.extensions import db
from portal.ingest import ingest_usage
from portal.metering.admission import flush_abandoned
from portal.metering.stream import GROUP, INFLIGHT, STREAM
from portal.models import ApiKey, UsageRecord, UsageRollup
from portal.tenancy.keys import set_key_active
from tests.api_helpers import drain, set_limits
from tests.factories import new_tenant


def records(app, tenant_id):
    with app.app_context():
        rows = db.session.scalars(
            select(UsageRecord).where(UsageRecord.tenant_id == tenant_id).order_by(UsageRecord.id)
        ).all()
        db.session.expunge_all()
        return rows


def test_each_call_becomes_one_record_with_its_real_outcome(app, client, acme, clock):
    set_limits(app, "starter", per_minute=3)
    for _ in range(4):
        client.get("/api/v1/ping", headers=acme.headers)  # 3 admitted, 1 refused
    client.get("/api/v1/usage/logs?limit=0", headers=acme.headers)  # refused (429) too
    clock.advance(60)
    client.get("/api/v1/usage/logs?limit=0", headers=acme.headers)  # admitted, then 422
    client.get("/api/v1/no-such-endpoint", headers=acme.headers)  # not an API route: not metered
    client.get("/api/v1/ping", headers={"X-API-Key": "tg_unknown"})  # unknown key: no tenant
    assert drain(app) == 6
    rows = records(app, acme.tenant_id)
    # Stream order is arrival order (a completion arrives after later refusals): compare as sets.
    assert sorted((r.endpoint, r.status_code, r.category) for r in rows) == [
        ("/api/v1/ping", 200, "system"),
        ("/api/v1/ping", 200, "system"),
        ("/api/v1/ping", 200, "system"),
        ("/api/v1/ping", 429, "system"),
        ("/api/v1/usage/logs", 422, "analytics"),
        ("/api/v1/usage/logs", 429, "analytics"),
    ]
    assert {r.method for r in rows} == {"GET"}
    assert {r.api_key_id for r in rows} == {acme.key_id}
    assert all(r.source == "api" and r.service == "tollgate" for r in rows)
    assert all(r.duration_ms >= 0 for r in rows)
    with app.app_context():
        key = db.session.get(ApiKey, acme.key_id)
        assert key.usage_count == 6
        assert key.last_used_at.timestamp() == pytest.approx(clock.now, abs=1)
        day = db.session.execute(
            select(func.sum(UsageRollup.calls), func.sum(UsageRollup.errors), func.sum(UsageRollup.rate_limited)).where(
                UsageRollup.tenant_id == acme.tenant_id, UsageRollup.granularity == "day"
            )
        ).one()
        assert tuple(day) == (6, 3, 2)


def test_no_database_write_on_the_request_path(app, client, acme):
    client.get("/api/v1/ping", headers=acme.headers)
    assert records(app, acme.tenant_id) == []
    with app.app_context():
        assert db.session.get(ApiKey, acme.key_id).usage_count == 0
    assert drain(app) == 1
    with app.app_context():
        assert db.session.get(ApiKey, acme.key_id).usage_count == 1


def test_inactive_key_calls_are_metered_as_403(app, client, acme):
    with app.app_context():
        set_key_active(db.session.get(ApiKey, acme.key_id), False)
        db.session.commit()
    assert client.get("/api/v1/ping", headers=acme.headers).status_code == 403
    drain(app)
    assert [r.status_code for r in records(app, acme.tenant_id)] == [403]


def test_completion_waits_for_the_next_call_or_the_idle_flush(app, client, redis, acme):
    client.get("/api/v1/ping", headers=acme.headers)
    # Admitted: parked in flight until its completion arrives.
    assert redis.hlen(INFLIGHT) == 1
    assert redis.xlen(STREAM) == 0
    client.get("/api/v1/ping", headers=acme.headers)  # carries the first call's completion
    assert redis.xlen(STREAM) == 1
    assert redis.hlen(INFLIGHT) == 1
    assert gate(app).admission.flush_if_idle(0)  # what the idle timer does
    assert redis.xlen(STREAM) == 2
    assert redis.hlen(INFLIGHT) == 0


def test_a_call_whose_server_died_is_kept_with_unknown_status(app, client, redis, acme):
    client.get("/api/v1/ping", headers=acme.headers)
    # The process dies: its pending completion is lost with it.
    gate(app).admission._take_pending()
    assert redis.hlen(INFLIGHT) == 1
    assert flush_abandoned(redis, older_than_seconds=3600) == 0  # too young to be abandoned
    assert flush_abandoned(redis, older_than_seconds=0) == 1
    with app.app_context():
        ingest_usage(redis, claim_idle_ms=0)
    [row] = records(app, acme.tenant_id)
    assert row.status_code == 0
    assert "final status unknown" in row.error_message


def test_redelivered_batch_counts_nothing_twice(app, client, redis, acme):
    for _ in range(5):
        client.get("/api/v1/ping", headers=acme.headers)
    gate(app).admission.flush_if_idle(0)
    with app.app_context():
        from portal.ingest import ensure_group

        ensure_group(redis)
        # A reader takes the batch and dies before acknowledging it...
        taken = redis.xreadgroup(GROUP, "dead-reader", {STREAM: ">"}, count=100)
        assert len(taken[0][1]) == 5
        result = ingest_usage(redis, claim_idle_ms=0)  # ...the next one claims it
        assert (result.entries, result.stored) == (5, 5)
        # The same entries delivered again (a lost acknowledgement) change nothing.
        from portal.metering.store import store_usage
        from portal.metering.stream import unpack_call

        assert store_usage([unpack_call(fields) for _, fields in taken[0][1]]) == 0
        db.session.commit()
    assert len(records(app, acme.tenant_id)) == 5
    assert redis.xlen(STREAM) == 0
    assert redis.xpending(STREAM, GROUP)["pending"] == 0


def test_usage_reaches_the_api_queries(app, client, acme):
    for _ in range(3):
        client.get("/api/v1/ping", headers=acme.headers)
    drain(app)
    logs = client.get("/api/v1/usage/logs?limit=2", headers=acme.headers).json
    assert logs["total"] == 3
    assert len(logs["logs"]) == 2
    assert logs["logs"][0]["endpoint"] == "/api/v1/ping"
    assert logs["logs"][0]["status_code"] == 200
    assert set(logs["logs"][0]) == {
        "id",
        "service_name",
        "endpoint",
        "method",
        "status_code",
        "tokens_used",
        "cost_usd",
        "duration_ms",
        "metadata",
        "created_at",
    }
    assert (logs["limit"], logs["offset"], logs["success"]) == (2, 0, True)
    drain(app)
    stats = client.get("/api/v1/usage/stats?days=1", headers=acme.headers).json["stats"]
    assert stats["total_calls"] == 4  # three pings and the logs call
    assert stats["by_service"]["tollgate"]["calls"] == 4


def test_records_of_a_deleted_tenant_do_not_block_the_batch(app, client, redis, acme):
    other = new_tenant(app, "Gone Co", key=True)
    client.get("/api/v1/ping", headers=acme.headers)
    client.get("/api/v1/ping", headers=other.headers)
    gate(app).admission.flush_if_idle(0)
    with app.app_context():
        from portal.models import Tenant

        db.session.delete(db.session.get(Tenant, other.tenant_id))
        db.session.commit()
        result = ingest_usage(redis, claim_idle_ms=0)
    assert (result.entries, result.stored) == (2, 1)
    assert redis.xlen(STREAM) == 0
    assert len(records(app, acme.tenant_id)) == 1
