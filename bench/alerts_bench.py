"""Benchmark of one alert evaluation pass over many tenants.

Fills a fresh database with ``generate-usage --tenants N`` (every tenant gets the default
rules), sets live counters so that some tenants are near their quota or their daily limit, and
times the evaluate-alerts pass: the first one (which opens alerts and writes their
notifications) and then steady passes, median of the rest. The baseline in the same run is a
pass over 10 of those tenants: with set-based queries the number of SQL statements is the same
for 10 tenants and for all of them.

    .venv/bin/python bench/alerts_bench.py                      # 10,000 tenants on PostgreSQL
    .venv/bin/python bench/alerts_bench.py --tenants 1000 --records 200000

The PostgreSQL database named by --database-url is dropped and created again; --redis-url
names a Redis db that is emptied.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import fresh_postgres, make_app  # noqa: E402
from portal.alerts.evaluate import evaluate_alerts  # noqa: E402
from portal.alerts.metrics import plan_limits  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.kernel.redis_keys import quota_key  # noqa: E402
from portal.models import Alert, AlertRule, NotificationChannel, Tenant, UsageRollup, utcnow  # noqa: E402
from portal.redis_store import get_redis  # noqa: E402


class Statements:
    """Counts the SQL statements the session's engine runs."""

    def __init__(self, engine) -> None:
        self.count = 0
        sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args) -> None:
        self.count += 1


def cpu(server: psutil.Process | None) -> tuple[float, float]:
    own = psutil.Process().cpu_times()
    other = server.cpu_times() if server else None
    return own.user + own.system, (other.user + other.system) if other else 0.0


def timed_pass(redis, now, statements: Statements, server, tenant_ids=None) -> dict:
    db.session.remove()
    before_statements = statements.count
    before_cpu = cpu(server)
    start = time.perf_counter()
    result = evaluate_alerts(redis, now, tenant_ids)
    wall = time.perf_counter() - start
    after_cpu = cpu(server)
    return {
        "wall": wall,
        "cpu_here": after_cpu[0] - before_cpu[0],
        "cpu_server": after_cpu[1] - before_cpu[1],
        "statements": statements.count - before_statements,
        "result": result.as_dict(),
    }


def table_row(name: str, runs: list[dict]) -> str:
    """A markdown row: the medians of wall time, CPU here and in the database, SQL statements."""
    wall = statistics.median(r["wall"] for r in runs)
    here = statistics.median(r["cpu_here"] for r in runs)
    there = statistics.median(r["cpu_server"] for r in runs)
    sql = statistics.median(r["statements"] for r in runs)
    return f"| {name} | {wall:.2f} s | {here:.2f} s | {there:.2f} s | {sql:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/tollgate_alerts_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--reuse", action="store_true", help="keep the database a previous run filled")
    args = parser.parse_args()

    if args.database_url.startswith("postgresql") and not args.reuse:
        fresh_postgres(args.database_url)
    instance = Path(tempfile.mkdtemp(prefix="tollgate-alerts-bench-"))
    app = make_app(args.database_url, args.redis_url, instance)
    with app.app_context():
        redis = get_redis()
        redis.flushdb()
        start = time.perf_counter()
        if args.reuse:
            db.session.execute(sa.delete(Alert))
            db.session.execute(sa.delete(NotificationChannel))
            db.session.commit()
        result = (
            None
            if args.reuse
            else app.test_cli_runner().invoke(
                args=[
                    "generate-usage",
                    "--tenants",
                    str(args.tenants),
                    "--records",
                    str(args.records),
                    "--days",
                    str(args.days),
                    "--seed",
                    "7",
                ]
            )
        )
        if result is not None and result.exit_code != 0:
            raise SystemExit(result.output)
        took = time.perf_counter() - start
        print(f"generate-usage: {args.tenants:,} tenants, {args.records:,} records in {took:.0f} s")
        now = utcnow()
        ids = list(db.session.scalars(sa.select(Tenant.id).order_by(Tenant.id)))
        # Live counters: a tenth of the tenants near their quota, a tenth near the daily limit,
        # a few with failed sign-ins; a channel for a tenth, so the first pass writes deliveries.
        rng = random.Random(7)
        limits = plan_limits()
        pipe = redis.pipeline(transaction=False)
        for tenant_id in ids:
            roll = rng.random()
            plan = limits[tenant_id]
            if roll < 0.1 and plan.monthly_quota:
                pipe.set(quota_key(tenant_id, now), int(plan.monthly_quota * 0.85))
            elif roll < 0.2:
                pipe.set(f"tollgate:w:{tenant_id}:d:{int(now.timestamp()) // 86400}", int(plan.per_day * 0.9))
            elif roll < 0.22:
                pipe.set(f"tollgate:authfail:tenant:{tenant_id}:{int(now.timestamp()) // 3600}", 9)
            if roll < 0.1:
                db.session.add(NotificationChannel(tenant_id=tenant_id, kind="email", target="ops@bench.example"))
        pipe.execute()
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE"))
        rules = db.session.scalar(sa.select(sa.func.count()).select_from(AlertRule))
        rollups = db.session.scalar(sa.select(sa.func.count()).select_from(UsageRollup))
        print(f"{len(ids):,} tenants, {rules:,} rules, {rollups:,} rollup rows")

        server = None
        if db.engine.dialect.name == "postgresql":
            server = psutil.Process(db.session.scalar(sa.text("SELECT pg_backend_pid()")))
        statements = Statements(db.engine)
        db.session.remove()
        # One connection for the whole run (the pool keeps it), so the server process measured
        # is the one that answers.
        server_pid = db.session.scalar(sa.text("SELECT pg_backend_pid()")) if server else None
        server = psutil.Process(server_pid) if server_pid else None

        baseline = [timed_pass(redis, now + timedelta(seconds=i), statements, server, ids[:10]) for i in range(3)]
        first = timed_pass(redis, now + timedelta(minutes=1), statements, server)
        steady = [timed_pass(redis, now + timedelta(minutes=2 + i), statements, server) for i in range(args.passes)]
        opened = db.session.scalar(sa.select(sa.func.count()).select_from(Alert))

    print(f"\nload average: {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}; alerts opened: {opened:,}")
    print(f"first pass: {first['result']}")
    print("| pass | wall | CPU, worker | CPU, database | SQL statements |")
    print("| --- | --- | --- | --- | --- |")
    print(table_row("10 tenants (baseline, median of 3)", baseline))
    print(table_row(f"{len(ids):,} tenants, first pass (opens alerts, writes notifications)", [first]))
    print(table_row(f"{len(ids):,} tenants, steady (median of {args.passes})", steady))


if __name__ == "__main__":
    main()
