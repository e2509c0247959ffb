"""With Redis unreachable the API keeps serving (spooling usage locally) or refuses, as
configured, and loses no record."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from sqlalchemy import select

from portal import create_app
from portal.api.guard import gate
from portal.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from portal.extensions import db, limiter
from portal.ingest import ingest_usage
from portal.models import ApiKey, UsageRecord
from portal.redis_store import get_redis
from tests.factories import new_tenant


@pytest.fixture
def own_redis_app(app):
    """An app on the test database with a Redis server of its own, which the test can stop."""
    folder = Path(tempfile.mkdtemp(prefix="tg-down-"))

    def build(policy: str):
        url = ensure_embedded_redis(folder)
        return create_app(
            {
                "INSTANCE_PATH": str(folder),
                "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                "REDIS_URL": url,
                "SECRET_KEY": "redis-down-test-secret",
                "API_WHEN_REDIS_DOWN": policy,
                "TESTING": True,
            }
        )

    yield build, folder
    stop_embedded_redis(folder)
    # Flask-Limiter keeps one storage per limiter instance: the last app built took it over.
    limiter.init_app(app)


def test_keeps_serving_and_spools_while_redis_is_down(app, own_redis_app):
    build, folder = own_redis_app
    tenant = new_tenant(app, "Resilient Co", key=True)
    degraded = build("serve")
    client = degraded.test_client()
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200

    stop_embedded_redis(folder)  # a real outage: the server is gone
    responses = [client.get("/api/v1/ping", headers=tenant.headers) for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json == {"ok": True} for r in responses)
    # Nothing to report about windows it could not count.
    assert "X-RateLimit-Minute-Remaining" not in responses[0].headers
    spooled = list((folder / "spool").glob("usage-*.jsonl"))
    assert len(spooled) == 1
    assert len(spooled[0].read_text().splitlines()) == 4

    ensure_embedded_redis(folder)  # Redis is back
    state = gate(degraded)
    assert state.spool.replay(state.redis) == 4
    assert not list((folder / "spool").glob("usage-*"))
    state.admission.flush_if_idle(0)  # the first call's completion, held while Redis was away
    with degraded.app_context():
        ingest_usage(get_redis(degraded), claim_idle_ms=0)
        rows = db.session.scalars(select(UsageRecord).where(UsageRecord.tenant_id == tenant.tenant_id)).all()
        assert sorted(r.status_code for r in rows) == [200] * 5
        assert len({r.idempotency_key for r in rows}) == 5
        assert db.session.get(ApiKey, tenant.key_id).usage_count == 5
        db.session.remove()
    # The calls served without Redis count against the quota from the next call on.
    response = client.get("/api/v1/ping", headers=tenant.headers)
    assert response.headers["X-RateLimit-Remaining"] == str(100_000 - 6)


def test_replaying_twice_stores_each_call_once(app, own_redis_app):
    build, folder = own_redis_app
    tenant = new_tenant(app, "Twice Co", key=True)
    degraded = build("serve")
    client = degraded.test_client()
    stop_embedded_redis(folder)
    for _ in range(3):
        client.get("/api/v1/ping", headers=tenant.headers)
    [spool_file] = (folder / "spool").glob("usage-*.jsonl")
    copy = spool_file.read_text()
    ensure_embedded_redis(folder)
    state = gate(degraded)
    state.spool.replay(state.redis)
    # A crash between the replay and the delete leaves the file to be replayed again.
    (folder / "spool" / "usage-999999999.jsonl").write_text(copy)
    assert state.spool.replay(state.redis) == 3
    with degraded.app_context():
        result = ingest_usage(get_redis(degraded), claim_idle_ms=0)
        assert (result.entries, result.stored) == (6, 3)
        db.session.remove()


def test_refuses_while_redis_is_down_when_so_configured(app, own_redis_app):
    build, folder = own_redis_app
    tenant = new_tenant(app, "Strict Co", key=True)
    strict = build("refuse")
    client = strict.test_client()
    assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200
    stop_embedded_redis(folder)
    response = client.get("/api/v1/ping", headers=tenant.headers)
    assert response.status_code == 503
    assert response.json == {"detail": "Service temporarily unavailable"}
    assert response.headers["Retry-After"] == "5"


def test_unknown_policy_names_the_variable(tmp_path):
    from portal.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="API_WHEN_REDIS_DOWN"):
        load_config(tmp_path, {"API_WHEN_REDIS_DOWN": "panic", "SECRET_KEY": "x" * 20})
