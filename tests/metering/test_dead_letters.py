"""A record the worker cannot store is set aside; the rest of its batch — any tenant's — is stored.

The poisoned entries here are written to the usage stream directly, as an earlier release (or a
bug still unknown) could have written them: the API refuses them today (tests/metering/test_event_bounds.py).
"""

from __future__ import annotations

import json

from sqlalchemy import func, select

from portal.extensions import db
from portal.metering.stream import EVENTS_FIELD, GROUP, STREAM
from portal.models import UsageDeadLetter, UsageRecord, utcnow
from tests.api_helpers import drain
from tests.factories import new_tenant

PING = "/api/v1/ping"


def poison_entries(redis, tenant_id: int, key_id: int, at: float) -> None:
    """Three entries no database can store as they are, in the stream between good ones."""
    base = {"service": "youtube", "endpoint": "/v3/search", "method": "GET", "status_code": 200, "occurred_at": at}
    # 1. quota units past a 64-bit column
    redis.xadd(
        STREAM,
        {
            EVENTS_FIELD: json.dumps([{**base, "quota_units": 10**30, "idempotency_key": "e:too-big"}]),
            "t": tenant_id,
            "k": key_id,
        },
    )
    # 2. an entry that is not JSON at all
    redis.xadd(STREAM, {"r": "{not json", "s": "200", "d": "3", "q": "1"})
    # 3. a good event and a bad one in one entry: the good one is stored
    events = [
        {**base, "quota_units": 2, "idempotency_key": "e:fine"},
        {**base, "tokens_in": 10**25, "idempotency_key": "e:too-many-tokens"},
    ]
    redis.xadd(STREAM, {EVENTS_FIELD: json.dumps(events), "t": tenant_id, "k": key_id})


def stored(app, tenant_id: int) -> list[str]:
    with app.app_context():
        keys = db.session.scalars(
            select(UsageRecord.idempotency_key).where(UsageRecord.tenant_id == tenant_id).order_by(UsageRecord.id)
        ).all()
        db.session.remove()
    return list(keys)


def letters(app) -> list[UsageDeadLetter]:
    with app.app_context():
        rows = db.session.scalars(select(UsageDeadLetter).order_by(UsageDeadLetter.id)).all()
        db.session.expunge_all()
        db.session.remove()
    return list(rows)


def test_a_poisoned_batch_stores_every_other_tenants_calls_and_sets_the_poison_aside(app, client, clock, redis):
    victim = new_tenant(app, "Victim", key=True)
    poisoner = new_tenant(app, "Poisoner", key=True)
    for _ in range(3):
        assert client.get(PING, headers=victim.headers).status_code == 200
    with app.app_context():
        from portal.api.guard import gate

        gate(app).admission.flush_if_idle(0)  # the victim's calls are in the stream now
    poison_entries(redis, poisoner.tenant_id, poisoner.key_id, clock.now)
    for _ in range(2):
        assert client.get(PING, headers=victim.headers).status_code == 200

    drain(app)

    assert len([k for k in stored(app, victim.tenant_id)]) == 5
    assert stored(app, poisoner.tenant_id) == ["e:fine"]
    aside = letters(app)
    by_id = {letter.idempotency_key: letter for letter in aside}
    assert len(aside) == 3
    assert by_id["e:too-big"].tenant_id == by_id["e:too-many-tokens"].tenant_id == poisoner.tenant_id
    # SQLite: "Python int too large to convert…"; PostgreSQL's COPY: "int too big to convert".
    assert by_id["e:too-big"].reason.startswith("OverflowError: ")
    unreadable = by_id[None]
    assert unreadable.reason.startswith("unreadable stream entry")
    assert json.loads(unreadable.record)["r"] == "{not json"
    # Everything was acknowledged: nothing waits to be delivered again.
    assert redis.xlen(STREAM) == 0
    assert redis.xpending(STREAM, GROUP)["pending"] == 0


def test_a_batch_delivered_again_sets_nothing_aside_twice(app, clock, redis):
    """A worker that dies after setting records aside and before acknowledging the batch gets
    the same entries again: they are set aside once."""
    from portal.ingest import _records, _store_batch, ensure_group

    tenant = new_tenant(app, "Poisoner", key=True)
    poison_entries(redis, tenant.tenant_id, tenant.key_id, clock.now)
    ensure_group(redis)
    entries = redis.xrange(STREAM)
    with app.app_context():
        for _ in range(2):
            stored_now, set_aside = _store_batch(redis, _records(redis, entries), utcnow)
        assert (stored_now, set_aside) == (0, 3)  # the second delivery: nothing new is stored
        assert db.session.scalar(select(func.count()).select_from(UsageDeadLetter)) == 3
        db.session.remove()
    assert stored(app, tenant.tenant_id) == ["e:fine"]


def test_jobs_list_and_the_log_count_what_was_set_aside(app, clock, redis, caplog):
    tenant = new_tenant(app, "Poisoner", key=True)
    poison_entries(redis, tenant.tenant_id, tenant.key_id, clock.now)
    with caplog.at_level("ERROR", logger="tollgate.metering"):
        drain(app)
    logged = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(logged) == 3
    assert any("id e:too-big" in line for line in logged)

    listing = app.test_cli_runner().invoke(args=["jobs", "list"])
    assert listing.exit_code == 0, listing.output
    assert listing.output.splitlines()[-1].startswith("# usage set aside: 3 record(s) not stored")


def test_dead_letters_can_be_listed_and_retried_once_their_cause_is_fixed(app, clock, redis):
    tenant = new_tenant(app, "Poisoner", key=True)
    poison_entries(redis, tenant.tenant_id, tenant.key_id, clock.now)
    drain(app)
    cli = app.test_cli_runner()

    listing = cli.invoke(args=["usage", "dead-letters", "list"])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert len(lines) == 4
    [big] = [line for line in lines if "id e:too-big" in line]
    assert f"tenant {tenant.tenant_id}" in big
    assert lines[-1] == "# 3 record(s) set aside and not stored"

    # Nothing has changed: each fails again, keeps waiting, and the command says so.
    again = cli.invoke(args=["usage", "dead-letters", "retry"])
    assert again.exit_code == 1
    assert again.output.strip() == "0 stored, 3 still waiting"

    # The operator corrects one record (the units it should have had) and retries it alone.
    [first] = [letter for letter in letters(app) if letter.idempotency_key == "e:too-big"]
    with app.app_context():
        letter = db.session.get(UsageDeadLetter, first.id)
        record = json.loads(letter.record)
        record["quota_units"] = 3
        letter.record = json.dumps(record)
        db.session.commit()
        db.session.remove()
    fixed = cli.invoke(args=["usage", "dead-letters", "retry", str(first.id)])
    assert fixed.exit_code == 0, fixed.output
    assert fixed.output.strip() == "1 stored, 0 still waiting"
    assert sorted(stored(app, tenant.tenant_id)) == ["e:fine", "e:too-big"]
    with app.app_context():
        units = db.session.scalar(select(UsageRecord.quota_units).where(UsageRecord.idempotency_key == "e:too-big"))
        db.session.remove()
    assert units == 3

    listing = cli.invoke(args=["usage", "dead-letters", "list"])
    assert listing.output.splitlines()[-1] == "# 2 record(s) set aside and not stored"
    everything = cli.invoke(args=["usage", "dead-letters", "list", "--all"])
    [line] = [line for line in everything.output.splitlines() if "id e:too-big" in line]
    assert "[stored " in line
