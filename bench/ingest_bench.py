"""Benchmark of storing usage: store_usage, the usage stream drained into the database, and
``flask --app wsgi generate-usage``.

Measures, in one run and against a baseline where there is one:

* ``store_usage`` of N synthetic records in batches of 1,000 (a commit each), the old path
  (SQLAlchemy ``executemany`` + rollups summed in Python, still SQLite's path) against the
  COPY path, on PostgreSQL, and on SQLite;
* the usage stream drained into PostgreSQL by ``ingest_usage`` (records pushed the way the
  API does), with the old path and the COPY path, and at a bigger read batch;
* ``generate-usage`` as a real command, records/s extrapolated to 10 million
  (``--generate-full`` also runs 10 million for real).

Every measurement starts from empty usage tables and stops at its time limit.

    .venv/bin/python bench/ingest_bench.py --database-url postgresql://postgres@127.0.0.1/tollgate_bench

The PostgreSQL database named there is dropped and created again; the Redis database
(``--redis-url``, default ``redis://127.0.0.1:6379/11``) is flushed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal import create_app, ingest  # noqa: E402
from portal.demo import bench_tenants, synthetic_records  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.metering.store import store_usage, store_usage_portable  # noqa: E402
from portal.metering.stream import STREAM, pack_call  # noqa: E402
from portal.models import ApiKey  # noqa: E402
from portal.redis_store import get_redis  # noqa: E402

NOW = datetime(2026, 12, 1, tzinfo=UTC)
USAGE_TABLES = ("usage_records", "usage_rollups")


def fresh_postgres(url: str) -> None:
    parsed = sa.engine.make_url(url)
    admin = sa.create_engine(
        parsed.set(database="postgres", drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def make_app(database_url: str, redis_url: str, instance: Path):
    from flask_migrate import upgrade

    app = create_app(
        {
            "INSTANCE_PATH": str(instance),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SECRET_KEY": "bench-secret-key-not-for-production",
            "PORTAL_BASE_URL": "http://localhost",
        }
    )
    with app.app_context():
        upgrade()
    return app


def empty_usage() -> None:
    """Start a measurement from empty usage tables and unused keys."""
    for table in USAGE_TABLES:
        db.session.execute(sa.text(f"DELETE FROM {table}"))
    db.session.execute(sa.update(ApiKey).values(usage_count=0, last_used_at=None))
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {', '.join(USAGE_TABLES)}, api_keys"))


def tenants_and_keys(tenants: int) -> tuple[list[int], dict[int, list[int]]]:
    made = bench_tenants(tenants)
    ids = [t.id for t in made]
    keys: dict[int, list[int]] = {}
    for tenant_id, key_id in db.session.execute(
        sa.select(ApiKey.tenant_id, ApiKey.id).where(ApiKey.tenant_id.in_(ids))
    ):
        keys.setdefault(tenant_id, []).append(key_id)
    return ids, keys


def records(ids: list[int], keys: dict[int, list[int]], count: int, seed: int) -> list[dict]:
    return list(synthetic_records(ids, keys, count, 30, NOW, random.Random(seed)))


class CPU:
    """CPU seconds of this process and of the session's database server process (PostgreSQL),
    so a figure can be told apart from what other work on the machine took."""

    def __init__(self) -> None:
        self.server = None
        if db.engine.dialect.name == "postgresql":
            self.server = psutil.Process(db.session.scalar(sa.text("SELECT pg_backend_pid()")))
        self.start = self.now()

    def now(self) -> tuple[float, float]:
        own = psutil.Process().cpu_times()
        server = self.server.cpu_times() if self.server else None
        return own.user + own.system, (server.user + server.system) if server else 0.0

    def per_record(self, count: int) -> str:
        own, server = (b - a for a, b in zip(self.start, self.now(), strict=True))
        return f"CPU/record: {own / max(count, 1) * 1e6:.0f} µs here + {server / max(count, 1) * 1e6:.0f} µs server"


def live(rows: list[dict], per_second: int = 20_000) -> list[dict]:
    """The rows as live traffic: happening now, in order, ``per_second`` of them a second."""
    now = time.time()
    for n, row in enumerate(rows):
        row["occurred_at"] = datetime.fromtimestamp(now - (len(rows) - n) / per_second, UTC)
    return rows


def time_store(store: Callable[[list[dict]], int], rows: list[dict], batch: int, limit_s: float) -> tuple[float, int]:
    """records/s of ``store`` over ``rows`` in batches (a commit each), stopping at ``limit_s``."""
    empty_usage()
    stored = 0
    cpu = CPU()
    start = time.perf_counter()
    for offset in range(0, len(rows), batch):
        stored += store(rows[offset : offset + batch])
        db.session.commit()
        if time.perf_counter() - start > limit_s:
            break
    elapsed = time.perf_counter() - start
    print(f"    {cpu.per_record(stored)}, load average {os.getloadavg()[0]:.1f}", flush=True)
    return stored / elapsed, stored


def compare_store(label: str, rows: list[dict], rounds: int, limit_s: float, new: Callable = store_usage) -> dict:
    rates: dict[str, list[float]] = {"old (executemany)": [], "new": []}
    for _ in range(rounds):  # alternated, so a drift of the machine's speed hits both
        for name, store in (("old (executemany)", store_usage_portable), ("new", new)):
            rate, stored = time_store(store, rows, 1000, limit_s)
            rates[name].append(rate)
            print(f"  {label} {name:<18} {rate:>9,.0f} records/s  ({stored:,} stored)", flush=True)
    return {name: statistics.median(values) for name, values in rates.items()}


def push_stream(redis, rows: list[dict]) -> None:
    redis.flushdb()
    pipe = redis.pipeline(transaction=False)
    for n, row in enumerate(rows, 1):
        packed = pack_call(
            row["idempotency_key"],
            row["tenant_id"],
            row["api_key_id"],
            row["endpoint"],
            row["method"],
            row["category"],
            row["occurred_at"].timestamp(),
        )
        pipe.xadd(STREAM, {"r": packed, "s": row["status_code"], "d": row["duration_ms"]})
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()


def drain_stream(app, rows: list[dict], batch_size: int, limit_s: float, store: Callable) -> tuple[float, int]:
    redis = get_redis(app)
    empty_usage()
    push_stream(redis, rows)
    ingest.store_usage = store  # the old path, for the baseline
    stored = 0
    cpu = CPU()
    start = time.perf_counter()
    try:
        while redis.xlen(STREAM) and time.perf_counter() - start < limit_s:
            budget = max(1.0, limit_s - (time.perf_counter() - start))
            stored += ingest.ingest_usage(redis, batch_size=batch_size, time_budget_seconds=budget).stored
    finally:
        ingest.store_usage = store_usage
    elapsed = time.perf_counter() - start
    print(f"    {cpu.per_record(stored)}, load average {os.getloadavg()[0]:.1f}", flush=True)
    return stored / elapsed, stored


def generate_usage(database_url: str, redis_url: str, instance: Path, count: int, limit_s: float) -> tuple[float, int]:
    """The real command, in its own process; records/s from the rows it stored in time."""
    with db.engine.connect() as conn:
        before = conn.scalar(sa.text("SELECT count(*) FROM usage_records"))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench-secret-key-not-for-production",
        "TOLLGATE_INSTANCE_PATH": str(instance),
    }
    command = [str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "generate-usage"]
    command += ["--tenants", "10", "--records", str(count), "--days", "90", "--seed", "7"]
    start = time.perf_counter()
    try:
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=limit_s, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"  generate-usage stopped at the {limit_s:.0f} s limit", flush=True)
    elapsed = time.perf_counter() - start
    with db.engine.connect() as conn:
        stored = conn.scalar(sa.text("SELECT count(*) FROM usage_records")) - before
    return stored / elapsed, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/tollgate_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--records", type=int, default=100_000, help="records per store_usage measurement")
    parser.add_argument("--stream-records", type=int, default=200_000)
    parser.add_argument("--generate-records", type=int, default=1_000_000)
    parser.add_argument("--generate-full", action="store_true", help="also run generate-usage for 10 million")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds at most per measurement")
    args = parser.parse_args()

    instance = Path(tempfile.mkdtemp(prefix="tg-ingest-bench-"))
    fresh_postgres(args.database_url)
    summary: list[str] = []

    print(f"PostgreSQL: {args.database_url}", flush=True)
    pg = make_app(args.database_url, args.redis_url, instance)
    with pg.app_context():
        ids, keys = tenants_and_keys(10)
        rows = records(ids, keys, args.records, seed=1)
        pg_rates = compare_store("PostgreSQL", rows, args.rounds, args.limit)

        stream_rows = live(records(ids, keys, args.stream_records, seed=2))
        drains = {}
        for name, batch, store in (
            ("old path, batch 1,000", 1000, store_usage_portable),
            ("COPY path, batch 1,000", 1000, store_usage),
            ("COPY path, batch 5,000", 5000, store_usage),
        ):
            rate, stored = drain_stream(pg, stream_rows, batch, args.limit, store)
            drains[name] = rate
            print(f"  stream drain, {name:<24} {rate:>9,.0f} records/s  ({stored:,} stored)", flush=True)
        get_redis(pg).flushdb()

        empty_usage()
        gen_rate, gen_stored = generate_usage(
            args.database_url, args.redis_url, instance, args.generate_records, max(args.limit, 600.0)
        )
        print(f"  generate-usage {gen_stored:,} records: {gen_rate:,.0f} records/s", flush=True)
        full = None
        if args.generate_full:
            empty_usage()
            full = generate_usage(args.database_url, args.redis_url, instance, 10_000_000, 900.0)
            print(f"  generate-usage {full[1]:,} records: {full[0]:,.0f} records/s", flush=True)
        db.session.remove()
        db.engine.dispose()

    sqlite_url = f"sqlite:///{instance / 'bench.db'}"
    print(f"SQLite: {sqlite_url}", flush=True)
    lite = make_app(sqlite_url, args.redis_url, instance)
    with lite.app_context():
        ids, keys = tenants_and_keys(10)
        lite_rates = compare_store("SQLite", records(ids, keys, args.records, seed=1), args.rounds, args.limit)
        db.session.remove()

    for label, rates in (("PostgreSQL", pg_rates), ("SQLite", lite_rates)):
        old, new = rates["old (executemany)"], rates["new"]
        summary.append(f"store_usage, {label}: old {old:,.0f}/s, new {new:,.0f}/s ({new / old:.2f}x)")
    summary += [f"stream drain into PostgreSQL, {name}: {rate:,.0f}/s" for name, rate in drains.items()]
    summary.append(
        f"generate-usage {gen_stored:,} records: {gen_rate:,.0f}/s; 10 million at this rate: "
        f"{10_000_000 / gen_rate / 60:.1f} min"
    )
    if full:
        summary.append(f"generate-usage 10 million (real run): {full[0]:,.0f}/s, {full[1] / full[0] / 60:.1f} min")
    print("\n".join(["", *summary]))


if __name__ == "__main__":
    main()
