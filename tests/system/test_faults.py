"""Faults survived, with real parts: Redis killed under load and restarted, PostgreSQL stopped
and restarted under the worker mid-batch, a full disk under the spool and the retention export.

The figures (calls answered, stored, lost, and what each AOF fsync setting costs) come from
``bench/faults.py``; docs/reliability.md lists every fault and its test, those tested elsewhere
too (the worker killed: tests/metering/test_api_live.py; notification receivers that hang, fail
or are down: tests/notify/test_notify.py).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy import func, select

from portal import create_app
from portal.api.guard import gate
from portal.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from portal.extensions import db, limiter
from portal.ingest import ingest_usage
from portal.metering.spool import Spool
from portal.metering.store import store_usage
from portal.metering.stream import INFLIGHT, STREAM, pack_call
from portal.models import ApiKey, UsageDeadLetter, UsageRecord, UsageRollup
from portal.redis_store import get_redis
from tests.api_helpers import Servers, set_limits
from tests.factories import new_tenant

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "faults-test-secret-key"
T = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC).timestamp()


def until(condition: Callable[[], bool], limit: float, what: str, step: float = 0.05) -> None:
    """Poll ``condition`` until it holds, for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit:.0f} s")
        time.sleep(step)


def stored(app, tenant_id: int) -> dict:
    """The tenant's records by status, distinct ids, daily rollups' calls, key use, dead letters."""
    with app.app_context():
        by_status = Counter(
            dict(
                db.session.execute(
                    select(UsageRecord.status_code, func.count())
                    .where(UsageRecord.tenant_id == tenant_id)
                    .group_by(UsageRecord.status_code)
                ).all()
            )
        )
        ids = db.session.scalar(
            select(func.count(func.distinct(UsageRecord.idempotency_key))).where(UsageRecord.tenant_id == tenant_id)
        )
        calls = db.session.scalar(
            select(func.coalesce(func.sum(UsageRollup.calls), 0)).where(
                UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == "day"
            )
        )
        uses = db.session.scalar(
            select(func.coalesce(func.sum(ApiKey.usage_count), 0)).where(ApiKey.tenant_id == tenant_id)
        )
        dead = db.session.scalar(select(func.count()).where(UsageDeadLetter.tenant_id == tenant_id))
        db.session.remove()
    return {"by_status": by_status, "ids": ids, "calls": int(calls), "uses": int(uses), "dead": dead}


@pytest.fixture
def home() -> Iterator[Path]:
    """A short folder (the embedded Redis's unix socket lives in it); its Redis stopped after."""
    folder = Path(tempfile.mkdtemp(prefix="tg-fault-")).resolve()
    yield folder
    stop_embedded_redis(folder)
    pid_file = folder / "redis" / "redis.pid"
    if pid_file.exists():  # a server killed and not started again leaves its pid file
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def second_app(app):
    """Build apps beside the session's (another Redis, another database); the limiter goes back after."""
    yield
    # Flask-Limiter keeps one storage per limiter instance: the last app built took it over.
    limiter.init_app(app)


def spool_lines(folder: Path) -> list[str]:
    while True:
        try:
            return [line for path in sorted(folder.glob("usage-*")) for line in path.read_text().splitlines()]
        except FileNotFoundError:  # renamed meanwhile by the process's flush thread: read again
            continue


# --- Redis killed and restarted ---------------------------------------------------------------


def test_a_replay_redis_cut_short_is_finished_not_overwritten(home):
    """The spool renames its file before replaying it; a replay Redis cut short leaves that file,
    and the next replay must finish it rather than rename the newer calls onto it."""
    url = ensure_embedded_redis(home)
    client = redis_lib.Redis.from_url(url)
    spool = Spool(home / "spool")
    for n in range(3):
        spool.append(pack_call(f"before-{n}", 1, 1, "/api/v1/ping", "GET", "", T), 200, 3)
    stop_embedded_redis(home)
    with pytest.raises(redis_lib.RedisError):
        spool.replay(client)
    pid = os.getpid()
    assert [path.name for path in spool.pending_files()] == [f"usage-{pid}.jsonl.replay-{pid}"]
    for n in range(2):
        spool.append(pack_call(f"after-{n}", 1, 1, "/api/v1/ping", "GET", "", T), 200, 3)

    ensure_embedded_redis(home)
    assert spool.replay(client) == 5
    assert spool.pending_files() == []
    replayed = sorted(json.loads(fields[b"r"])["id"] for _, fields in client.xrange(STREAM))
    assert replayed == ["after-0", "after-1", "before-0", "before-1", "before-2"]


class Callers:
    """Threads calling ``GET /api/v1/ping`` on keep-alive connections, counting the answers."""

    def __init__(self, port: int, secret: str, threads: int = 4) -> None:
        self.port, self.secret = port, secret
        self.stopped = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.unanswered = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._call, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _call(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stopped.is_set():
            try:
                connection.request("GET", "/api/v1/ping", headers={"X-API-Key": self.secret})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.unanswered += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            with self._lock:
                self.statuses[response.status] += 1
        connection.close()

    @property
    def answered(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def stop(self) -> Counter[int]:
        self.stopped.set()
        for thread in self._threads:
            thread.join(60)
        return self.statuses


def kill_embedded_redis(folder: Path) -> None:
    pid = int((folder / "redis" / "redis.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    probe = redis_lib.Redis(unix_socket_path=str(folder / "redis" / "redis.sock"), socket_connect_timeout=1)

    def gone() -> bool:
        try:
            probe.ping()
        except redis_lib.RedisError:
            return True
        return False

    until(gone, 10, "the killed Redis still answers")


@pytest.mark.slow
def test_redis_killed_under_load_loses_no_answered_call(app, home, second_app):
    tenant = new_tenant(app, "Redis Killed Co", "enterprise", key=True)
    # Windows wide enough for a minute of calls at full speed: this test counts records, not limits.
    set_limits(app, "enterprise", per_minute=1_000_000, per_hour=10_000_000, per_day=100_000_000)
    url = ensure_embedded_redis(home)
    env = {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": url,
        "SECRET_KEY": SECRET_KEY,
        "TOLLGATE_INSTANCE_PATH": str(home),
        "API_WHEN_REDIS_DOWN": "serve",
        "PYTHONPATH": str(ROOT),
    }
    servers = Servers(env, 1, ("--workers", "2"))
    spool = home / "spool"
    worker_log = open(home / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--log-level", "INFO"],
        cwd=ROOT,
        env={**env, "USAGE_CLAIM_IDLE_MS": "0"},
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        callers = Callers(int(servers.urls[0].rsplit(":", 1)[1]), tenant.secret)
        until(lambda: callers.answered >= 200, 60, "200 calls answered")
        until(lambda: stored(app, tenant.tenant_id)["ids"] > 0, 60, "the worker storing calls")
        kill_embedded_redis(home)
        killed_at = callers.answered

        def replay_failed_then_more_spooled() -> bool:
            # A replay tried while Redis was gone left its file, and calls were spooled after it.
            names = [path.name for path in spool.glob("usage-*")] if spool.is_dir() else []
            return any(".replay-" in name for name in names) and any(name.endswith(".jsonl") for name in names)

        until(lambda: callers.answered >= killed_at + 40 and replay_failed_then_more_spooled(), 60, "calls spooled")
        ensure_embedded_redis(home)  # the same folder: its AOF is read back
        restarted_at = callers.answered
        until(lambda: callers.answered >= restarted_at + 200, 60, "200 calls answered after the restart")
        # The worker, which met Redis gone, works on: it stores calls made after the restart.
        try:
            until(lambda: stored(app, tenant.tenant_id)["ids"] > restarted_at, 60, "the worker storing calls again")
        except AssertionError:
            worker_log.flush()
            raise AssertionError((home / "worker.log").read_text(errors="replace")[-3000:]) from None
        assert worker.poll() is None, "the worker exited when Redis went away"
        statuses = callers.stop()
        until(lambda: not list(spool.glob("usage-*")), 30, "the web processes replay their spool")
    finally:
        with contextlib.suppress(NameError):
            callers.stop()
        servers.stop()  # gracefully: each process sends its last completions
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        worker_log.close()
    database_url = app.config["SQLALCHEMY_DATABASE_URI"]
    restarted = create_app(
        {"INSTANCE_PATH": str(home), "DATABASE_URL": database_url, "REDIS_URL": url, "SECRET_KEY": SECRET_KEY}
    )
    client = redis_lib.Redis.from_url(url)
    with restarted.app_context():
        # A call whose admission ran as Redis died is in flight there and spooled: stored once.
        ingest_usage(client, claim_idle_ms=0, abandon_after_seconds=0)
        db.session.remove()
    assert callers.unanswered == 0
    assert set(statuses) == {200}
    found = stored(app, tenant.tenant_id)
    assert found["by_status"] == statuses  # every answered call, with its status, once
    assert found["ids"] == found["calls"] == found["uses"] == statuses.total()
    assert found["dead"] == 0
    assert client.xlen(STREAM) == 0 and client.hlen(INFLIGHT) == 0


# --- PostgreSQL restarted under the worker ----------------------------------------------------


def _postgres_bin() -> Path | None:
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        initdb = shutil.which("initdb")
        return Path(initdb).parent if initdb else None
    return Path(found) if (Path(found) / "initdb").exists() else None


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class OwnPostgres:
    """A PostgreSQL server of this test: its own data folder and loopback port."""

    bin: Path
    data: Path
    port: int
    owner: str | None  # the user it runs as when the tests run as root

    def run(self, *command: str) -> subprocess.CompletedProcess:
        argv = [str(self.bin / command[0]), *command[1:]]
        if self.owner:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data}"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """``initdb`` and a server on a loopback port (55432 when free), never the machine's own."""
    binaries = _postgres_bin()
    if binaries is None or not (binaries / "pg_ctl").exists():
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    owner = None
    if os.geteuid() == 0:  # initdb refuses root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user for initdb")
        owner = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="tg-pg-"))
    data = folder / "data"
    data.mkdir()
    if owner:
        shutil.chown(folder, owner)
        shutil.chown(data, owner)
    server = OwnPostgres(binaries, data, _free_port(55432), owner)
    server.run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
    server.start()
    yield server
    with contextlib.suppress(subprocess.CalledProcessError):
        server.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True)


@pytest.mark.slow
def test_postgres_restarted_under_the_worker_mid_batch_stores_every_record_once(
    app, redis, own_postgres, second_app, tmp_path
):
    from flask_migrate import upgrade

    with _engine(own_postgres.url()).execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text("CREATE DATABASE tollgate_faults"))
    url = own_postgres.url("tollgate_faults")
    redis_url = app.config["REDIS_URL_RESOLVED"]
    pg_app = create_app(
        {"INSTANCE_PATH": str(tmp_path), "DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY}
    )
    with pg_app.app_context():
        upgrade()
    tenant = new_tenant(pg_app, "Postgres Restart Co", key=True)
    records = 3000
    pipe = redis.pipeline(transaction=False)
    for n in range(records):
        record = pack_call(f"pg-{n}", tenant.tenant_id, tenant.key_id, "/api/v1/ping", "GET", "", time.time())
        pipe.xadd(STREAM, {"r": record, "s": 200, "d": 3, "q": 1})
    pipe.execute()

    engine = _engine(url)
    # The test holds the key's row: the worker's batch, one statement from its commit, waits on
    # it with its rows written and nothing committed.
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("SELECT id FROM api_keys WHERE id = :k FOR UPDATE"), {"k": tenant.key_id})
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": SECRET_KEY,
        "TOLLGATE_INSTANCE_PATH": str(tmp_path),
        "USAGE_CLAIM_IDLE_MS": "0",
        "PYTHONPATH": str(ROOT),
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own process group: a stop reaches RQ's scheduler child too
    )
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%tollgate_usage_staging%'"
    )

    def batch_waits() -> bool:
        with engine.connect() as conn:
            return conn.execute(waiting).scalar() == 1

    def rows() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM usage_records WHERE tenant_id = :t"), {"t": tenant.tenant_id}
            ).scalar()

    try:
        until(batch_waits, 90, "the worker's batch waiting on the key's row", step=0.1)
        assert rows() == 0
        own_postgres.stop("immediate")  # mid-batch: the server goes without a shutdown checkpoint
        holder.invalidate()
        own_postgres.start()
        until(lambda: rows() == records, 90, "every record stored after the restart", step=0.2)
        assert worker.poll() is None, "the worker exited when the database went away"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        log.close()
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            holder.close()
    found = stored(pg_app, tenant.tenant_id)
    engine.dispose()
    with pg_app.app_context():
        db.engine.dispose()
    assert found["by_status"] == {200: records}
    assert found["ids"] == found["calls"] == found["uses"] == records
    assert found["dead"] == 0  # a lost connection is no reason to set a record aside
    assert redis.xlen(STREAM) == 0
    assert "periodic job ingest-usage failed" in (tmp_path / "worker.log").read_text(errors="replace")


# --- a full disk ------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_filesystem(folder: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted on ``folder`` (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem to fill it needs root")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True, capture_output=True)
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem under ``folder``: pages, then single bytes, until it is full."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_under_the_spool_answers_500_and_loses_no_call_it_served(app, home, second_app, caplog):
    tenant = new_tenant(app, "Full Spool Co", key=True)
    url = ensure_embedded_redis(home)
    spool = home / "spool"
    with tiny_filesystem(spool):
        degraded = create_app(
            {
                "INSTANCE_PATH": str(home),
                "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                "REDIS_URL": url,
                "SECRET_KEY": SECRET_KEY,
                "API_WHEN_REDIS_DOWN": "serve",  # not TESTING: an error is answered, as in production
            }
        )
        client = degraded.test_client()
        assert client.get("/api/v1/ping", headers=tenant.headers).status_code == 200
        stop_embedded_redis(home)
        spooled = [client.get("/api/v1/ping", headers=tenant.headers).status_code for _ in range(5)]
        assert spooled == [200] * 5
        filler = fill(spool)
        caplog.set_level(logging.ERROR, logger="tollgate.spool")
        # The spool file's last page still has room for a few lines; then the disk refuses one.
        answers = [client.get("/api/v1/ping", headers=tenant.headers)]
        while answers[-1].status_code == 200 and len(answers) < 100:
            answers.append(client.get("/api/v1/ping", headers=tenant.headers))
        refused = answers.pop()
        assert refused.status_code == 500 and refused.json == {"detail": "Internal server error"}
        assert {r.status_code for r in answers} <= {200}
        served = len(spooled) + len(answers)
        reasons = [r.getMessage() for r in caplog.records if r.name == "tollgate.spool"]
        assert reasons and all(
            f"cannot spool a call served without Redis under {spool}: [Errno 28] No space left on device" == reason
            for reason in reasons
        )
        # Whole lines only, one per call served: nothing of a refused call is left half written.
        lines = spool_lines(spool)
        assert len(lines) == served and all(json.loads(line)["s"] == 200 for line in lines)

        filler.unlink()
        ensure_embedded_redis(home)
        state = gate(degraded)
        state.spool.replay(state.redis)  # (the process's flush thread may be replaying it too)
        until(lambda: not list(spool.glob("usage-*")), 10, "the spool replayed")
        assert not list(spool.glob("unreadable-*"))
    state.admission.flush_if_idle(0)  # the first call's completion
    with degraded.app_context():
        ingest_usage(get_redis(degraded), claim_idle_ms=0)
        db.session.remove()
    found = stored(app, tenant.tenant_id)
    # The calls answered 200 are stored, each once; those answered 500 were not served.
    assert found["by_status"] == {200: 1 + served}
    assert found["ids"] == found["calls"] == 1 + served


def test_a_torn_spool_line_is_kept_aside_and_the_rest_replayed(home, caplog):
    url = ensure_embedded_redis(home)
    client = redis_lib.Redis.from_url(url)
    spool = home / "spool"
    spool.mkdir()
    good = [
        json.dumps({"r": pack_call(f"whole-{n}", 1, 1, "/api/v1/ping", "GET", "", T), "s": 200, "d": 3, "q": 1})
        for n in range(2)
    ]
    torn = good[0][:57]
    # A process that died (a machine crash) in the middle of its last line.
    (spool / "usage-999999999.jsonl").write_text("\n".join([*good, torn]))
    caplog.set_level(logging.ERROR, logger="tollgate.spool")
    assert Spool(spool).replay(client) == 2
    assert [json.loads(fields[b"r"])["id"] for _, fields in client.xrange(STREAM)] == ["whole-0", "whole-1"]
    assert not list(spool.glob("usage-*"))
    assert (spool / "unreadable-usage-999999999.jsonl").read_text() == torn + "\n"
    assert [r.getMessage() for r in caplog.records if r.name == "tollgate.spool"] == [
        f"spool file {spool / 'usage-999999999.jsonl'}: 1 unreadable lines kept in "
        f"{spool / 'unreadable-usage-999999999.jsonl'}"
    ]


def test_a_full_disk_under_the_retention_export_deletes_nothing_and_logs_why(app, make_tenant, caplog):
    slug, _, tenant_id = make_tenant(plan="free")  # raw records kept 90 days
    now = datetime.now(UTC)
    days = [now - timedelta(days=120), now - timedelta(days=121)]
    with app.app_context():
        store_usage(
            {
                "tenant_id": tenant_id,
                "service": "tollgate",
                "endpoint": "/api/v1/ping",
                "status_code": 200,
                "duration_ms": 5,
                "occurred_at": day.replace(hour=10) + timedelta(seconds=n),
                "idempotency_key": f"old-{i}-{n}",
            }
            for i, day in enumerate(days)
            for n in range(20)
        )
        db.session.commit()
        db.session.remove()
    export = Path(tempfile.mkdtemp(prefix="tg-export-"))
    runner = app.test_cli_runner()
    configured = app.config["RETENTION_EXPORT_DIR"]
    caplog.set_level(logging.ERROR, logger="tollgate.retention")
    try:
        with tiny_filesystem(export):
            filler = fill(export)
            app.config["RETENTION_EXPORT_DIR"] = str(export)
            result = runner.invoke(args=["jobs", "run", "cleanup"])
            assert result.exit_code == 0, result.output
            assert "'records': 0," in result.output and "'held_days': 2," in result.output
            assert stored(app, tenant_id)["by_status"] == {200: 40}
            assert sorted(path.name for path in export.rglob("*") if path.is_file()) == ["filler"]
            reasons = [r.getMessage() for r in caplog.records if r.name == "tollgate.retention"]
            assert reasons == [
                f"retention keeps tenant {slug}'s usage of {day.date()}: exporting it to {export} failed: "
                "[Errno 28] No space left on device"
                for day in sorted(days)
            ]

            filler.unlink()  # space again: the next run exports and deletes
            result = runner.invoke(args=["jobs", "run", "cleanup"])
            assert "'records': 40," in result.output and "'exported_files': 2," in result.output
            assert stored(app, tenant_id)["by_status"] == {}
            assert len(list((export / slug).glob("usage-*.jsonl.gz"))) == 2
    finally:
        app.config["RETENTION_EXPORT_DIR"] = configured
        shutil.rmtree(export, ignore_errors=True)
