"""``backup`` and ``restore`` on the embedded default: a SQLite file and the embedded Redis in an
instance folder of their own (so these run whatever database the suite is on). A backup taken
while calls and database writes go on restores into a new instance folder with every tenant,
key and record, the calls still in the usage stream stored from its copy, and each quota counter
rebuilt from the records; and the command refuses what it cannot do, saying why."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis as redis_py
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import select, text

from portal import create_app
from portal.api.guard import gate
from portal.embedded_redis import stop_embedded_redis
from portal.extensions import db, limiter
from portal.ingest import ingest_usage
from portal.kernel.redis_keys import quota_key
from portal.metering.stream import INFLIGHT, STREAM, is_events, unpack_call, unpack_events
from portal.models import ApiKey, Tenant, UsageRecord, User
from portal.redis_store import get_redis
from portal.tenancy.keys import find_tenant_key, revoke_api_key
from tests.api_helpers import T0, Clock, add_key, drain, install_clock
from tests.conftest import Auth
from tests.factories import PASSWORD, new_tenant

ROOT = Path(__file__).resolve().parents[2]
GROQ_70B = {"service": "groq", "endpoint": "/v1/chat/completions", "model": "llama-3.1-70b-versatile"}
PLANS = {"Globex": ("starter", 100_000), "Initech": ("professional", 1_000_000), "Umbrella": ("free", 10_000)}
UNSET = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "TOLLGATE_INSTANCE_PATH")


def _kill_leftover_server(folder: Path) -> None:
    pid_file = folder / "redis" / "redis.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


@pytest.fixture
def instances(app: Flask, monkeypatch) -> Iterator:
    """``instances(folder=None, migrate=True, **settings)``: an app on the embedded default in a
    new short instance folder (or ``folder``), nothing configured but what ``settings`` say."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    folders: list[Path] = []
    made: list[Flask] = []

    def make(folder: Path | None = None, migrate: bool = True, **settings) -> Flask:
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="tg-bk-")).resolve()
            folders.append(folder)
        instance = create_app(
            {
                "INSTANCE_PATH": str(folder),
                "PORTAL_BASE_URL": "http://localhost",
                "ALLOW_PRIVATE_WEBHOOKS": "1",
                "TESTING": True,
                **settings,
            }
        )
        made.append(instance)
        if migrate:
            with instance.app_context():
                upgrade()
                db.session.remove()
        return instance

    yield make
    for instance in made:
        with contextlib.suppress(redis_py.RedisError):  # the last call's completion, before Redis stops
            gate(instance).admission.flush_if_idle(0)
        with instance.app_context():
            db.session.remove()
            db.engine.dispose()
    for folder in folders:
        stop_embedded_redis(folder)
        _kill_leftover_server(folder)
        shutil.rmtree(folder, ignore_errors=True)
    # Flask-Limiter keeps one storage per limiter: the last app made took it, give it back.
    limiter.init_app(app)


def serving(instance: Flask) -> Flask:
    """Point the limiter at ``instance`` before it serves requests (there is one limiter)."""
    limiter.init_app(instance)
    return instance


def folder_of(instance: Flask) -> Path:
    return Path(instance.instance_path)


def run(instance: Flask, *args: str):
    return instance.test_cli_runner().invoke(args=list(args))


def succeeded(result):
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def refused(result, *phrases: str):
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output
    return result


def stored(instance: Flask) -> dict[tuple[int, str], tuple]:
    """Every stored record by tenant and id: its source, status, quota units and cost."""
    with instance.app_context():
        rows = db.session.execute(
            select(
                UsageRecord.tenant_id,
                UsageRecord.idempotency_key,
                UsageRecord.source,
                UsageRecord.status_code,
                UsageRecord.quota_units,
                UsageRecord.cost,
            )
        ).all()
        db.session.remove()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def waiting(instance: Flask) -> set[tuple[int, str]]:
    """The records still in the usage stream (and in flight), by tenant and id."""
    client = get_redis(instance)
    found = set()
    for _, fields in client.xrange(STREAM):
        records = unpack_events(fields) if is_events(fields) else [unpack_call(fields)]
        found |= {(record["tenant_id"], record["idempotency_key"]) for record in records}
    for raw in client.hvals(INFLIGHT):
        call = json.loads(raw)
        found.add((call["t"], call["id"]))
    return found


def keys_of(instance: Flask) -> dict[str, tuple[int, str, bool]]:
    with instance.app_context():
        rows = db.session.execute(select(ApiKey.key_hash, ApiKey.tenant_id, ApiKey.scope, ApiKey.is_active)).all()
        db.session.remove()
    return {row[0]: tuple(row[1:]) for row in rows}


def store_everything(instance: Flask) -> None:
    """What the worker does: store the stream, calls whose server stopped answering included."""
    gate(instance).admission.flush_if_idle(0)
    with instance.app_context():
        ingest_usage(get_redis(instance), claim_idle_ms=0, abandon_after_seconds=0)
        db.session.remove()


def fill(source: Flask, clock: Clock):
    """Three tenants on three plans, with a team and keys (one revoked); calls and outside-service
    events stored, more waiting in the stream; and a signed-in portal user."""
    tenants = [new_tenant(source, name, plan, team=True, key=True) for name, (plan, _) in PLANS.items()]
    secrets = {made.slug: [made.secret] for made in tenants}
    _, admin_secret = add_key(source, tenants[0].tenant_id, "ops", scope="admin")
    secrets[tenants[0].slug].append(admin_secret)
    _, revoked_secret = add_key(source, tenants[1].tenant_id, "old")
    with source.app_context():
        revoke_api_key(find_tenant_key(db.session.get(Tenant, tenants[1].tenant_id), "old"))
        db.session.commit()
        db.session.remove()
    client = serving(source).test_client()
    for round_, then in enumerate(("stored", "waiting")):
        for n, made in enumerate(tenants):
            for _ in range(3 + n):
                assert client.get("/api/v1/ping", headers=made.headers).status_code == 200
            event = {**GROQ_70B, "tokens_used": 400_000, "id": f"{made.slug}-{round_}"}
            assert client.post("/api/v1/usage/events", json=event, headers=made.headers).status_code == 202
            clock.advance(1)
        if then == "stored":
            drain(source)
    gate(source).admission.flush_if_idle(0)  # the last call's completion, into the stream
    browser = source.test_client()
    assert Auth(browser).login(tenants[0].owner, PASSWORD).status_code == 302
    return tenants, secrets, revoked_secret, browser


def test_a_backup_taken_while_tollgate_runs_restores_every_tenant_key_and_record(instances, tmp_path):
    clock = Clock()
    source = instances()
    install_clock(source, clock)
    tenants, secrets, revoked_secret, browser = fill(source, clock)
    stored_before, waiting_before, keys_before = stored(source), waiting(source), keys_of(source)
    # Each half: 12 pings, 3 calls reporting events, and the 3 events they reported.
    assert len(stored_before) == len(waiting_before) == 12 + 3 + 3
    with source.app_context():
        revision = db.session.scalar(text("SELECT version_num FROM alembic_version"))
        db.session.remove()

    # The backup runs as its own process while calls come in and the database is written.
    target = tmp_path / "nightly"
    env = {**os.environ, "TOLLGATE_INSTANCE_PATH": str(folder_of(source)), "PYTHONPATH": str(ROOT)}
    backup = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "backup", str(target)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = source.test_client()
    initech = tenants[1]
    calls = 0
    while backup.poll() is None:
        assert client.get("/api/v1/ping", headers=initech.headers).status_code == 200
        calls += 1
        clock.advance(0.1)  # well inside the plan's per-minute window
        if calls % 20 == 0:  # a database write while the copy is made
            add_key(source, initech.tenant_id, f"during-{calls}")
    out, err = backup.communicate()
    assert backup.returncode == 0, err
    assert calls > 0
    assert out.strip().splitlines()[-1] == f"Backed up schema revision {revision} to {target}"

    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["schema_revision"] == revision
    assert (manifest["database"], manifest["redis"]) == ("sqlite", "embedded")
    assert sorted(manifest["files"]) == ["redis.rdb", "secret_key", "tollgate.db"]
    for name, entry in manifest["files"].items():
        assert (target / name).stat().st_size == entry["size"]
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["files"]["redis.rdb"]["taken_at"] <= manifest["files"]["tollgate.db"]["taken_at"]
    assert (target.stat().st_mode & 0o777) == 0o700

    # Everything the source ends with: what the restore may hold, and no more.
    store_everything(source)
    stored_after, keys_after = stored(source), keys_of(source)
    with source.app_context():
        users_before = set(db.session.scalars(select(User.email)))
        db.session.remove()

    # Restore into a new instance folder, then start Tollgate on it.
    fresh = instances(migrate=False)
    restored_text = succeeded(run(fresh, "restore", str(target))).output
    assert "Restored the SQLite database" in restored_text
    assert "usage entries waiting for the worker" in restored_text
    restored = serving(instances(folder_of(fresh), migrate=False))
    install_clock(restored, clock)

    keys = keys_of(restored)
    assert keys_before.items() <= keys.items() <= keys_after.items()
    with restored.app_context():
        assert set(db.session.scalars(select(User.email))) == users_before
        assert {t.slug for t in db.session.scalars(select(Tenant))} == {made.slug for made in tenants}
        db.session.remove()

    # The records stored before are there as they were; those waiting are still in the stream.
    assert stored_before.items() <= stored(restored).items()
    assert waiting_before <= waiting(restored)
    redis = get_redis(restored)
    for made in tenants:  # left out, so that each is rebuilt from the records
        assert redis.get(quota_key(made.tenant_id, T0)) is None

    store_everything(restored)
    records = stored(restored)
    assert stored_before.keys() | waiting_before <= records.keys() <= stored_after.keys()
    for record, (kind, status, units, cost) in records.items():
        # A call in flight at the snapshot is stored as one whose server stopped (status 0).
        assert (kind, status if status else stored_after[record][1], units, cost) == stored_after[record]
    costs = {made.tenant_id: Decimal("0") for made in tenants}
    for (tenant_id, _), (source_kind, _, _, cost) in records.items():
        if source_kind == "external":
            costs[tenant_id] += cost
    assert set(costs.values()) == {Decimal("0.47200000")}  # two groq events at $0.236 each

    # Every key still authenticates (the revoked one stays revoked) and each tenant's quota
    # counts exactly the calls its records hold.
    client = restored.test_client()
    for (_, quota), made in zip(PLANS.values(), tenants, strict=True):
        counted = sum(
            units
            for (tenant_id, _), (kind, _, units, _) in records.items()
            if (tenant_id, kind) == (made.tenant_id, "api")
        )
        response = client.get("/api/v1/ping", headers=made.headers)
        assert response.status_code == 200
        assert int(response.headers["X-RateLimit-Remaining"]) == quota - counted - 1
        for secret in secrets[made.slug]:
            assert client.get("/api/v1/ping", headers={"X-API-Key": secret}).status_code == 200
    response = client.get("/api/v1/ping", headers={"X-API-Key": revoked_secret})
    assert (response.status_code, response.json) == (403, {"detail": "API key is inactive"})

    # The secret key came back too: a browser signed in before the backup is still signed in.
    other = restored.test_client()
    other.set_cookie("session", browser.get_cookie("session").value)
    assert other.get("/dashboard").status_code == 200


# -- refusals ------------------------------------------------------------------------------------


def test_backup_refuses_a_path_that_is_not_empty_and_touches_nothing(instances, tmp_path):
    source = instances()
    (tmp_path / "notes.txt").write_text("keep me")
    refused(run(source, "backup", str(tmp_path)), f"{tmp_path} exists and is not empty")
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    refused(run(source, "backup", str(tmp_path / "notes.txt")), "exists and is not a directory")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    # An empty directory is fine.
    (tmp_path / "empty").mkdir()
    succeeded(run(source, "backup", str(tmp_path / "empty")))
    assert (tmp_path / "empty" / "manifest.json").is_file()


def test_backup_refuses_when_nothing_is_embedded_and_names_the_tools(instances, tmp_path):
    # Neither server is contacted: the command knows from the configuration alone.
    outside = instances(
        migrate=False,
        DATABASE_URL="postgresql://tollgate@127.0.0.1:1/tollgate",
        REDIS_URL="redis://127.0.0.1:1/0",
        SECRET_KEY="backup-test-secret-key",
    )
    result = refused(run(outside, "backup", str(tmp_path / "copy")), "nothing here is embedded")
    assert "pg_dump" in result.output and "pg_basebackup" in result.output
    assert "BGSAVE" in result.output and "dump.rdb" in result.output
    assert not (tmp_path / "copy").exists()


def test_with_a_redis_server_the_backup_holds_the_database_and_says_how_to_snapshot_redis(instances, tmp_path):
    # The Redis server is never contacted by the command: an address nobody listens on will do.
    source = instances(REDIS_URL="redis://127.0.0.1:1/0")
    result = succeeded(run(source, "backup", str(tmp_path / "copy")))
    assert "Not included: REDIS_URL is a Redis server" in result.output
    assert 'redis-cli -u "$REDIS_URL" BGSAVE' in result.output
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["secret_key", "tollgate.db"]
    assert manifest["redis"].startswith("server (not included")


@pytest.mark.skipif(
    not (os.environ.get("TEST_DATABASE_URL") or "").startswith("postgres"),
    reason="needs the suite's PostgreSQL (TEST_DATABASE_URL)",
)
def test_on_postgresql_the_backup_holds_the_embedded_redis_and_names_pg_dump(instances, tmp_path):
    source = instances(migrate=False, DATABASE_URL=os.environ["TEST_DATABASE_URL"])
    get_redis(source).set("tollgate:example", "kept")
    result = succeeded(run(source, "backup", str(tmp_path / "copy")))
    assert "Not included: DATABASE_URL is PostgreSQL: back it up with pg_dump" in result.output
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["redis.rdb", "secret_key"]
    assert manifest["schema_revision"] == "0010"
    assert manifest["database"].startswith("postgresql (not included")


def test_restore_refuses_an_instance_that_holds_data_or_runs(instances, tmp_path):
    source = instances()
    new_tenant(source, "Globex", key=True)
    succeeded(run(source, "backup", str(tmp_path / "copy")))

    # Into the instance it came from: that database has tables.
    refused(run(source, "restore", str(tmp_path / "copy")), "already holds a database")

    # Into a new instance whose embedded Redis holds data already.
    fresh = instances(migrate=False)
    get_redis(fresh).set("tollgate:something", "1")
    refused(run(fresh, "restore", str(tmp_path / "copy")), "already holds 1 key(s)")

    # Into a new instance whose embedded Redis a running process is connected to.
    get_redis(fresh).delete("tollgate:something")
    portal_process = redis_py.Redis.from_url(fresh.config["REDIS_URL_RESOLVED"])
    portal_process.ping()
    refused(run(fresh, "restore", str(tmp_path / "copy")), "other connection(s): Tollgate is running")
    portal_process.close()
    database = folder_of(fresh) / "tollgate.db"
    assert not database.exists() or database.stat().st_size == 0  # nothing was restored


def test_restore_refuses_a_damaged_backup_or_a_folder_that_is_not_one(instances, tmp_path):
    source = instances()
    succeeded(run(source, "backup", str(tmp_path / "copy")))
    fresh = instances(migrate=False)
    (tmp_path / "other").mkdir()
    refused(run(fresh, "restore", str(tmp_path / "other")), "holds no manifest.json: not a Tollgate backup")
    with open(tmp_path / "copy" / "tollgate.db", "r+b") as copy:
        copy.seek(200)
        copy.write(b"\xff")
    refused(run(fresh, "restore", str(tmp_path / "copy")), "tollgate.db is not the file the backup wrote")
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    manifest["schema_revision"] = "9999"
    (tmp_path / "copy" / "tollgate.db").unlink()
    del manifest["files"]["tollgate.db"]
    (tmp_path / "copy" / "manifest.json").write_text(json.dumps(manifest))
    refused(
        run(fresh, "restore", str(tmp_path / "copy")), "schema revision 9999 is not among this Tollgate's migrations"
    )
