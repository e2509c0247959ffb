"""Benchmark of reporting outside-service events end to end: ``POST /api/v1/usage/events`` in
batches of 1,000 through gunicorn, the usage stream, and one worker storing rows and rollups in
PostgreSQL.

    .venv/bin/python bench/events_bench.py --database-url postgresql://postgres@127.0.0.1/tollgate_events_bench

For each run (``--runs``: by default the worker at read batch 1,000 records one batch after
another, the baseline, then the worker as it ships), from a fresh database (dropped, created,
migrated), a flushed Redis database and a new enterprise tenant with a usage key: gunicorn
(``--workers 2``) and one worker process are started, client threads POST the N events
(keep-alive sessions, bodies built beforehand) and the clock runs from the first POST until all N
rows are in ``usage_records``. It prints events/s end to end, the POST rate alone, the drain rate,
the CPU each event cost in each process (gunicorn, worker, PostgreSQL, Redis, the client), the
load average, and checks that the rollups count N calls and no record is stored twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import redis as redis_lib
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import fresh_postgres, make_app  # noqa: E402

SECRET = "bench-secret-key-not-for-production"
SERVICES = (
    ("groq", "llama-3.1-70b-versatile", "/openai/v1/chat/completions"),
    ("openai", "gpt-4o-mini", "/v1/chat/completions"),
)

# The worker of a run: ``shipped`` is ``flask --app wsgi worker`` as it is; the baseline reads
# 1,000 records a batch and stores each batch before reading the next (the old behaviour).
WORKER_BASELINE = """
import sys
from portal import ingest
from wsgi import app
from worker import jobs
from worker.runner import run_worker
original = ingest.ingest_usage
def baseline(redis, **kwargs):
    kwargs.update(batch_size=1000, read_ahead=False)
    return original(redis, **kwargs)
jobs.ingest_usage = baseline
run_worker(app)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(database_url: str, redis_url: str, instance: Path) -> str:
    """A fresh database, a flushed Redis db, an enterprise tenant; returns its usage key."""
    fresh_postgres(database_url)
    redis_lib.Redis.from_url(redis_url).flushdb()
    app = make_app(database_url, redis_url, instance)
    with app.app_context():
        from portal.extensions import db
        from portal.onboarding import create_tenant
        from portal.tenancy.keys import create_api_key

        tenant = create_tenant("Events Bench", "enterprise", "events-bench@bench.example", "bench-password-123")
        _, secret = create_api_key(tenant, "events", scope="usage")
        db.session.commit()
        db.engine.dispose()
    return secret


def bodies(count: int, batch: int, seed: int) -> list[bytes]:
    """``count`` events in ``{"events": [...]}`` bodies of ``batch``, happening in the last hour."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for start in range(0, count, batch):
        events = []
        for n in range(start, min(count, start + batch)):
            service, model, endpoint = SERVICES[n % 2]
            at = now - timedelta(seconds=rng.uniform(0, 3600))
            events.append(
                {
                    "id": f"bench-{seed}-{n:09d}",
                    "service": service,
                    "model": model,
                    "endpoint": endpoint,
                    "tokens_in": rng.randint(50, 4000),
                    "tokens_out": rng.randint(10, 1000),
                    "duration_ms": rng.randint(80, 4000),
                    "user_id": f"user-{rng.randint(1, 500)}",
                    "occurred_at": at.isoformat(),
                }
            )
        out.append(json.dumps({"events": events}, separators=(",", ":")).encode())
    return out


class Processes:
    """CPU seconds (user + system) of groups of processes, summed over their lifetimes seen."""

    def __init__(self, groups: dict[str, list[psutil.Process]]) -> None:
        self.groups = groups
        self.start = {name: self._cpu(procs) for name, procs in groups.items()}
        self.single = {p.pid: self._cpu([p]) for procs in groups.values() for p in procs}

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def used(self, keep: dict[str, set[int]] | None = None) -> dict[str, float]:
        """CPU seconds since the start; ``keep`` narrows a group to the processes of those pids."""
        used = {}
        for name, procs in self.groups.items():
            if keep and name in keep:
                procs = [p for p in procs if p.pid in keep[name]]
                used[name] = sum(self._cpu([p]) - self.single.get(p.pid, 0.0) for p in procs)
            else:
                used[name] = self._cpu(procs) - self.start[name]
        return used


def postgres_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postmaster")]


def redis_processes(port: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] and p.info["name"].startswith("redis-server"):
            found.append(p)
    return found


def wait_http(url: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise SystemExit(f"gunicorn did not answer at {url} within {limit_s} s")


def run(args, label: str, worker_code: str | None, seed: int, separate: bool = False) -> dict:
    """One measurement; ``separate`` holds the worker (SIGSTOP) until every POST is answered."""
    instance = Path(tempfile.mkdtemp(prefix="tollgate-evb-"))
    secret = setup(args.database_url, args.redis_url, instance)
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "SECRET_KEY": SECRET,
        "TOLLGATE_INSTANCE_PATH": str(instance),
        "PORTAL_BASE_URL": "http://localhost",
    }
    venv = Path(sys.executable).parent
    port = free_port()
    log = open(instance / "processes.log", "wb")  # noqa: SIM115 - closed below
    gunicorn = subprocess.Popen(  # noqa: S603
        [str(venv / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    command = [sys.executable, "-c", worker_code] if worker_code else [str(venv / "flask"), "--app", "wsgi", "worker"]
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: S603
    engine = sa.create_engine(args.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 30)
        payloads = bodies(args.events, 1000, seed)
        time.sleep(3)  # the worker's start-up (app, RQ) out of the measurement
        groups = {
            "gunicorn": [psutil.Process(gunicorn.pid), *psutil.Process(gunicorn.pid).children()],
            "worker": [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)],
            "postgres": postgres_processes(),
            "redis": redis_processes(6379),
            "client": [psutil.Process()],
        }
        cpu = Processes(groups)
        load_before = os.getloadavg()[0]
        queue = list(enumerate(payloads))
        lock = threading.Lock()
        failures: list[str] = []
        posted_at: list[float] = []

        def client() -> None:
            session = requests.Session()
            headers = {"X-API-Key": secret, "Content-Type": "application/json"}
            while True:
                with lock:
                    if not queue or failures:
                        return
                    _, body = queue.pop()
                for attempt in range(20):
                    response = session.post(f"{base}/api/v1/usage/events", data=body, headers=headers, timeout=60)
                    if response.status_code == 202:
                        break
                    if response.status_code in (429, 503) and attempt < 19:
                        time.sleep(float(response.headers.get("Retry-After", "0.5")))
                        continue
                    with lock:
                        failures.append(f"{response.status_code} {response.text[:300]}")
                    return

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        count = sa.text("SELECT count(*) FROM usage_records WHERE source = 'external'")
        if separate:
            os.kill(worker.pid, signal.SIGSTOP)
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.limit)
        posted_at.append(time.perf_counter() - start)
        if failures:
            raise SystemExit(f"{label}: a POST failed: {failures[0]}")
        with engine.connect() as conn:
            at_post_end = conn.execute(count).scalar()
        if separate:
            os.kill(worker.pid, signal.SIGCONT)
        stored = 0
        loads = [load_before]
        with engine.connect() as conn:
            while time.perf_counter() - start < args.limit:
                stored = conn.execute(count).scalar()
                conn.rollback()
                if stored >= args.events:
                    break
                loads.append(os.getloadavg()[0])
                time.sleep(0.2)
        elapsed = time.perf_counter() - start
        # Only this database's backends and the server's own processes: the machine is shared.
        with engine.connect() as conn:
            ours = set(
                conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " OR backend_type <> 'client backend'"
                    )
                ).scalars()
            )
        used = cpu.used({"postgres": ours})
        with engine.connect() as conn:
            calls, records, distinct = conn.execute(
                sa.text(
                    "SELECT (SELECT coalesce(sum(calls), 0) FROM usage_rollups WHERE source = 'external'"
                    " AND granularity = 'day'), count(*), count(DISTINCT idempotency_key)"
                    " FROM usage_records WHERE source = 'external'"
                )
            ).one()
    finally:
        for proc in (worker, gunicorn):
            proc.send_signal(signal.SIGTERM)
        for proc in (worker, gunicorn):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        engine.dispose()
    complete = stored >= args.events
    post_s = posted_at[0]
    result = {
        "label": label,
        "end_to_end": stored / elapsed,
        "post_rate": args.events / post_s,
        "tail": (at_post_end, (stored - at_post_end) / max(elapsed - post_s, 1e-9)),
        "elapsed": elapsed,
        "post_s": post_s,
        "complete": complete,
        "cpu_us": {name: seconds / max(stored, 1) * 1e6 for name, seconds in used.items()},
        "load": (min(loads), max(loads)),
        "checks": (int(calls), int(records), int(distinct)),
    }
    report(result, args.events)
    return result


def report(r: dict, events: int) -> None:
    calls, records, distinct = r["checks"]
    ok = calls == events and records == events and distinct == events
    print(f"{r['label']}:", flush=True)
    print(
        f"  end to end {r['end_to_end']:>8,.0f} events/s ({r['elapsed']:.1f} s"
        f"{'' if r['complete'] else ', INCOMPLETE'})  POSTs alone {r['post_rate']:>8,.0f}/s ({r['post_s']:.1f} s)"
        ""
    )
    print(f"  stored when the last POST was answered {r['tail'][0]:,}; the rest drained at {r['tail'][1]:,.0f}/s")
    cpu = "  ".join(f"{name} {us:.0f}" for name, us in r["cpu_us"].items())
    print(f"  CPU per event, µs: {cpu}  (total {sum(r['cpu_us'].values()):.0f})")
    print(f"  load average {r['load'][0]:.1f}–{r['load'][1]:.1f}")
    print(
        f"  rollups' calls {calls:,}, rows {records:,}, distinct ids {distinct:,}: {'OK' if ok else 'MISMATCH'}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/tollgate_events_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4, help="client threads, each with a keep-alive session")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds a run may take at most")
    parser.add_argument(
        "--runs",
        default="baseline,shipped",
        help="comma-separated: baseline, shipped; a '-separate' suffix holds the worker until the POSTs end",
    )
    args = parser.parse_args()
    print(
        f"{args.events:,} events in batches of 1,000, {args.clients} client threads, {os.cpu_count()} cores", flush=True
    )
    for n, name in enumerate(args.runs.split(",")):
        kind, _, mode = name.partition("-")
        if kind not in ("baseline", "shipped") or mode not in ("", "separate"):
            raise SystemExit(f"unknown run {name!r}")
        label = (
            "baseline: worker reads 1,000 records a batch, one batch after another"
            if kind == "baseline"
            else "shipped: flask --app wsgi worker"
        )
        if mode:
            label += " (held until the POSTs end)"
        run(args, label, WORKER_BASELINE if kind == "baseline" else None, n, separate=bool(mode))


if __name__ == "__main__":
    main()
