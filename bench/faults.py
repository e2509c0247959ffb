"""Faults under load: Redis killed (SIGKILL) and restarted while clients call the API, and what
each AOF fsync setting costs the protected call.

    .venv/bin/python bench/faults.py [--database-url postgresql://…] [--runs everysec-serve,…]

Everything is the invocation's own and on loopback: a temporary folder, a fresh database (a
SQLite file there, or ``--database-url``, dropped and created), Debian's ``/usr/bin/redis-server``
on a free port with AOF on, two gunicorn workers (``wsgi:app``, ``gunicorn.conf.py``'s threads)
and one ``flask --app wsgi worker``. Each fault run (``--runs``, default ``everysec-serve,
everysec-refuse,always-serve``: the ``appendfsync`` setting and ``API_WHEN_REDIS_DOWN``) has a
tenant and key of its own; 4 client threads call ``GET /api/v1/ping`` for ``--seconds`` (10);
Redis is killed with SIGKILL 3 s in and restarted on the same folder and port 3 s later. Then it
waits (at most ``--drain-limit`` seconds) until the stream, the in-flight hash and the spool are
empty, and prints the calls answered (by status), the records stored, lost and doubled. A worker
that exits is started again, as its process supervisor would, and counted.

The throughput part runs one stack with no fault: ``--rounds`` rounds of ``--throughput-seconds``
each setting, interleaved (``CONFIG SET appendfsync`` between runs, ABBA order), and prints the
calls per second of each and the cost of ``always`` against ``everysec``.

Figures and what they mean: docs/reliability.md. About 2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis as redis_lib
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.metering.stream import INFLIGHT, STREAM  # noqa: E402

REDIS_SERVER = "/usr/bin/redis-server"
SECRET_KEY = "faults-bench-secret-key-not-for-production"
KILL_AT, DOWN_FOR = 3.0, 3.0
CLIENTS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of this run: its own folder and port, AOF on, not daemonized (its PID is ours)."""

    def __init__(self, folder: Path, port: int, fsync: str) -> None:
        self.folder, self.port, self.fsync = folder, port, fsync
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f'dir "{self.folder}"',
                    f'logfile "{self.folder / "redis.log"}"',
                    "daemonize no",
                    "appendonly yes",
                    f"appendfsync {self.fsync}",
                    "save 300 1",
                    "",
                ]
            )
        )
        self.process = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        client = redis_lib.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return
            except redis_lib.RedisError:  # not listening yet, or still loading the AOF
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.05)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Stack:
    """gunicorn (2 workers) and one Tollgate worker on a Redis and a database."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.port = free_port()
        self.log = open(folder / "processes.log", "ab")  # noqa: SIM115 - closed in stop()
        venv = Path(sys.executable).parent
        self.gunicorn = subprocess.Popen(  # noqa: S603
            [
                str(venv / "gunicorn"),
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--no-control-socket",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        self.worker_exits: list[int] = []  # the exit status of each worker that stopped by itself
        self.worker = self._start_worker()

    def _start_worker(self) -> subprocess.Popen:
        venv = Path(sys.executable).parent
        return subprocess.Popen(  # noqa: S603
            [str(venv / "flask"), "--app", "wsgi", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,  # its own process group: RQ's scheduler child stops with it
        )

    def supervise(self) -> None:
        """Start the worker again if it exited (what a process supervisor does)."""
        if self.worker.poll() is not None:
            self.worker_exits.append(self.worker.returncode)
            self.worker = self._start_worker()

    def wait_ready(self, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"gunicorn did not answer within {limit:.0f} s; see {self.folder / 'processes.log'}")

    def stop(self) -> None:
        for process, group in ((self.worker, True), (self.gunicorn, False)):
            if process.poll() is None:
                if group:
                    os.killpg(process.pid, signal.SIGTERM)
                else:
                    process.terminate()
        for process, group in ((self.worker, True), (self.gunicorn, False)):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                if group:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
                process.wait(5)
        self.log.close()


class Callers:
    """Client threads calling ``GET /api/v1/ping`` on keep-alive connections, counting answers."""

    def __init__(self, port: int, secret: str, threads: int = CLIENTS) -> None:
        self.port, self.secret = port, secret
        self.stopped = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.unanswered = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._call, daemon=True) for _ in range(threads)]

    def _call(self) -> None:
        statuses: Counter[int] = Counter()
        unanswered = 0
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        headers = {"X-API-Key": self.secret}
        while not self.stopped.is_set():
            try:
                connection.request("GET", "/api/v1/ping", headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                unanswered += 1  # the call may or may not have reached the view
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                time.sleep(0.05)
                continue
            statuses[response.status] += 1
            if response.status == 503:
                time.sleep(0.05)  # a client backing off (the answer says Retry-After: 5)
        connection.close()
        with self._lock:
            self.statuses.update(statuses)
            self.unanswered += unanswered

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> Counter[int]:
        self.stopped.set()
        for thread in self._threads:
            thread.join(30)
        return self.statuses


# --- the database --------------------------------------------------------------------------


def fresh_database(url: str | None, folder: Path) -> str:
    if url is None:
        return f"sqlite:///{folder / 'faults.db'}"
    from bench.ingest_bench import fresh_postgres

    fresh_postgres(url)
    return url


def make_app(database_url: str, redis_url: str, folder: Path):
    from portal import create_app

    return create_app(
        {
            "INSTANCE_PATH": str(folder / "setup"),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": SECRET_KEY,
            "PORTAL_BASE_URL": "http://localhost",
        }
    )


def migrate(app) -> None:
    from flask_migrate import upgrade

    from portal.billing.plans import update_plan_limits
    from portal.extensions import db

    with app.app_context(), contextlib.redirect_stderr(io.StringIO()):  # Alembic's INFO lines
        upgrade()
        # No window binds: every call is admitted while Redis answers.
        update_plan_limits("enterprise", per_minute=10**9, per_hour=10**9, per_day=10**9)
        db.session.commit()


def new_tenant(app, name: str) -> tuple[str, int]:
    from portal.extensions import db
    from portal.onboarding import create_tenant
    from portal.tenancy.keys import create_api_key

    with app.app_context():
        slug = name.lower().replace(" ", "-")
        tenant = create_tenant(name, "enterprise", f"{slug}@faults.example", "faults bench password")
        _, secret = create_api_key(tenant, "faults")
        db.session.commit()
        tenant_id = tenant.id
        db.session.remove()
    return secret, tenant_id


def stored(engine: sa.Engine, tenant_id: int) -> dict:
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(
                sa.text("SELECT status_code, count(*) FROM usage_records WHERE tenant_id = :t GROUP BY status_code"),
                {"t": tenant_id},
            ).all()
        )
        rows, ids = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT idempotency_key) FROM usage_records WHERE tenant_id = :t"),
            {"t": tenant_id},
        ).one()
        calls = conn.execute(
            sa.text("SELECT coalesce(sum(calls), 0) FROM usage_rollups WHERE tenant_id = :t AND granularity = 'day'"),
            {"t": tenant_id},
        ).scalar()
        dead = conn.execute(sa.text("SELECT count(*) FROM usage_dead_letters WHERE tenant_id = :t"), {"t": tenant_id})
    return {"by_status": by_status, "rows": rows, "ids": ids, "rollup_calls": int(calls), "dead": dead.scalar()}


# --- one stack -----------------------------------------------------------------------------


def stack_env(database_url: str, redis: RedisServer, instance: Path, policy: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "SECRET_KEY": SECRET_KEY,
        "PORTAL_BASE_URL": "http://localhost",
        "TOLLGATE_INSTANCE_PATH": str(instance),
        "API_WHEN_REDIS_DOWN": policy,
        # A batch left pending by a worker that lost Redis mid-batch is taken over after 2 s,
        # not 30: the drain below stays short. What is stored does not depend on it.
        "USAGE_CLAIM_IDLE_MS": "2000",
        # A call still in flight this long after the run is stored with status 0 (unknown).
        "USAGE_ABANDON_SECONDS": "10",
        "PYTHONPATH": str(ROOT),
    }


def drained(redis: RedisServer, instance: Path, engine: sa.Engine, tenant_id: int, stack: Stack, limit: float) -> bool:
    """Wait (at most ``limit`` s) until the spool, the stream and the in-flight hash are empty."""
    client = redis_lib.Redis.from_url(redis.url, socket_connect_timeout=1, socket_timeout=5)
    deadline = time.monotonic() + limit
    spool = instance / "spool"
    last_rows, steady_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        stack.supervise()
        try:
            waiting = client.xlen(STREAM) + client.hlen(INFLIGHT)
        except redis_lib.RedisError:
            waiting = -1
        spooled = list(spool.glob("usage-*")) if spool.is_dir() else []
        rows = stored(engine, tenant_id)["rows"]
        if rows != last_rows:
            last_rows, steady_since = rows, time.monotonic()
        if waiting == 0 and not spooled and time.monotonic() - steady_since > 1.0:
            return True
        time.sleep(0.25)
    return False


def fault_run(args, app, database_url: str, folder: Path, fsync: str, policy: str, n: int) -> dict:
    run_dir = folder / f"run-{n}-{fsync}-{policy}"
    instance = run_dir / "instance"
    instance.mkdir(parents=True)
    redis = RedisServer(run_dir / "redis", args.redis_port, fsync)
    redis.start()
    engine = sa.create_engine(_driver_url(database_url))
    stack = None
    try:
        secret, tenant_id = new_tenant(app, f"Faults {n} {fsync} {policy}")
        stack = Stack(run_dir, stack_env(database_url, redis, instance, policy))
        stack.wait_ready()
        callers = Callers(stack.port, secret)
        started = time.monotonic()
        callers.start()
        timeline = []
        time.sleep(KILL_AT)
        redis.kill()
        timeline.append(("killed", time.monotonic() - started))
        time.sleep(DOWN_FOR)
        redis.start()
        timeline.append(("restarted", time.monotonic() - started))
        while time.monotonic() - started < args.seconds:
            stack.supervise()
            time.sleep(0.1)
        statuses = callers.stop()
        calling = time.monotonic() - started
        complete = drained(redis, instance, engine, tenant_id, stack, args.drain_limit)
        found = stored(engine, tenant_id)
    finally:
        if stack is not None:
            stack.stop()
        redis.stop()
        engine.dispose()
    log = (run_dir / "processes.log").read_text(errors="replace")
    return {
        "fsync": fsync,
        "policy": policy,
        "statuses": statuses,
        "unanswered": callers.unanswered,
        "seconds": calling,
        "timeline": timeline,
        "complete": complete,
        "stored": found,
        "worker_exits": stack.worker_exits,
        # Each call admitted without Redis logs this warning (then spooled, or refused with 503).
        "without_redis": log.count("Redis unreachable during admission"),
        "flusher_died": log.count("Exception in thread tollgate-completions"),
    }


def _driver_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


def report_fault(r: dict) -> None:
    statuses = r["statuses"]
    answered = sum(statuses.values())
    # A 503 (refused while Redis is down) is not metered; every other answer is.
    metered = answered - statuses.get(503, 0)
    found = r["stored"]
    rows = found["rows"]
    lost = max(0, metered - rows)
    # Every record carries its call's id, unique per tenant: a call stored twice would show here.
    doubled = rows - found["ids"]
    # Records beyond the metered answers: calls whose answer never came (or came as a 503) after
    # their admission had run in Redis (stored with status 0, unknown).
    extra = max(0, rows - metered)
    shown = ", ".join(f"{status}: {count:,}" for status, count in sorted(statuses.items()))
    kept = ", ".join(f"{status}: {count:,}" for status, count in sorted(found["by_status"].items()))
    events = ", ".join(f"{name} at {at:.1f} s" for name, at in r["timeline"])
    print(
        f"appendfsync {r['fsync']}, API_WHEN_REDIS_DOWN={r['policy']} ({r['seconds']:.1f} s of calls; Redis {events})"
    )
    print(f"  answered {answered:,} ({shown}); no answer {r['unanswered']}")
    print(f"  stored   {rows:,} ({kept}); rollups count {found['rollup_calls']:,}; set aside {found['dead']}")
    print(f"  lost     {lost:,} of {metered:,} metered answers; doubled {doubled}; stored beyond the answers {extra}")
    spooled = "spooled" if r["policy"] == "serve" else "refused"
    notes = [f"calls that found Redis down: {r['without_redis']:,} ({spooled})"]
    if r["flusher_died"]:
        notes.append(f"a web process's completion/replay thread died {r['flusher_died']} time(s)")
    if r["worker_exits"]:
        codes = ", ".join(str(code) for code in r["worker_exits"])
        notes.append(f"the worker exited {len(r['worker_exits'])} time(s) (status {codes}) and was started again")
    if not r["complete"]:
        notes.append("NOT DRAINED within the limit")
    print(f"  {'; '.join(notes)}", flush=True)


# --- throughput ----------------------------------------------------------------------------


def throughput(args, app, database_url: str, folder: Path) -> dict[str, list[float]]:
    run_dir = folder / "throughput"
    instance = run_dir / "instance"
    instance.mkdir(parents=True)
    redis = RedisServer(run_dir / "redis", args.redis_port, "everysec")
    redis.start()
    control = redis_lib.Redis.from_url(redis.url)
    engine = sa.create_engine(_driver_url(database_url))
    stack = None
    rates: dict[str, list[float]] = {"everysec": [], "always": []}
    try:
        secret, tenant_id = new_tenant(app, "Faults throughput")
        stack = Stack(run_dir, stack_env(database_url, redis, instance, "serve"))
        stack.wait_ready()
        warm = Callers(stack.port, secret)
        warm.start()
        time.sleep(2)  # both gunicorn workers loaded, the key cached, connections made
        warm.stop()
        order = []
        for n in range(args.rounds):
            order += ["everysec", "always"] if n % 2 == 0 else ["always", "everysec"]
        total = sum(warm.statuses.values())
        for setting in order:
            control.config_set("appendfsync", setting)
            callers = Callers(stack.port, secret)
            started = time.perf_counter()
            callers.start()
            time.sleep(args.throughput_seconds)
            statuses = callers.stop()
            elapsed = time.perf_counter() - started
            rates[setting].append(sum(statuses.values()) / elapsed)
            total += sum(statuses.values())
            print(f"  {setting:<9} {rates[setting][-1]:>8,.0f} calls/s", flush=True)
        drained(redis, instance, engine, tenant_id, stack, args.drain_limit)
        rows = stored(engine, tenant_id)["rows"]
        print(f"  every call stored: {rows:,} records of {total:,} calls", flush=True)
    finally:
        if stack is not None:
            stack.stop()
        redis.stop()
        engine.dispose()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="postgresql://… (dropped and created); default SQLite")
    parser.add_argument("--runs", default="everysec-serve,everysec-refuse,always-serve")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of calls in a fault run")
    parser.add_argument("--drain-limit", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (each runs both settings)")
    parser.add_argument("--throughput-seconds", type=float, default=6.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, AOF)")
    args = parser.parse_args()
    if not os.access(REDIS_SERVER, os.X_OK):
        raise SystemExit(f"{REDIS_SERVER} is needed (apt-get install redis-server)")
    runs = [name.split("-") for name in args.runs.split(",") if name]
    for fsync, policy in runs:
        if fsync not in ("everysec", "always") or policy not in ("serve", "refuse"):
            raise SystemExit(f"unknown run {fsync}-{policy}: <everysec|always>-<serve|refuse>")
    folder = Path(tempfile.mkdtemp(prefix="tollgate-faults-"))
    args.redis_port = free_port()
    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout.split()[2]
    print(f"{os.cpu_count()} cores; redis-server {version.removeprefix('v=')}; {CLIENTS} client threads; {folder}")
    setup_redis = RedisServer(folder / "setup-redis", args.redis_port, "everysec")
    try:
        database_url = fresh_database(args.database_url, folder)
        setup_redis.start()
        app = make_app(database_url, setup_redis.url, folder)
        migrate(app)
        setup_redis.stop()
        print(f"database: {sa.engine.make_url(database_url).get_backend_name()}", flush=True)
        for n, (fsync, policy) in enumerate(runs):
            report_fault(fault_run(args, app, database_url, folder, fsync, policy, n))
        if args.rounds:
            print(f"throughput of /api/v1/ping, no fault, {args.throughput_seconds:.0f} s a run, interleaved:")
            rates = throughput(args, app, database_url, folder)
            everysec, always = statistics.median(rates["everysec"]), statistics.median(rates["always"])
            # Each round's two runs share one moment of the machine (others use it too).
            costs = [1 - a / e for e, a in zip(rates["everysec"], rates["always"], strict=True)]
            print(
                f"  median: everysec {everysec:,.0f}/s, always {always:,.0f}/s; always costs "
                f"{statistics.median(costs):.0%} of throughput (median of the rounds' "
                f"{', '.join(f'{cost:.0%}' for cost in costs)})"
            )
    finally:
        setup_redis.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
