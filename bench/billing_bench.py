"""Benchmark of closing billing periods: the close-periods job over 10,000 tenants.

Uses the database bench/alerts_bench.py fills (10,000 tenants of ``generate-usage``, 1M records
over 35 days), or fills one the same way. Every tenant's subscription is put on November (plan
changes for a tenth of them mid-month, overage allowed for another tenth), and the job closes
November for all of them: statements with prorated fees, overage and outside costs by service
and model. The baseline in the same run is closing 10 tenants; each run starts again from no
statements. Median of --runs.

    .venv/bin/python bench/alerts_bench.py --passes 1      # once, to fill the database
    .venv/bin/python bench/billing_bench.py                # then this, on the same database
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.alerts_bench import Statements, cpu, table_row  # noqa: E402
from bench.ingest_bench import make_app  # noqa: E402
from portal.billing.reconcile import reconcile  # noqa: E402
from portal.billing.statements import close_periods  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.metering.store import store_usage  # noqa: E402
from portal.models import Plan, Statement, Subscription, Tenant, UsageRollup  # noqa: E402

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


def reset(tenant_ids: list[int], all_ids: list[int]) -> None:
    """No statements; ``tenant_ids`` on November (the others on December: not due)."""
    db.session.execute(sa.delete(Statement))
    db.session.execute(sa.delete(Subscription).where(Subscription.status == "bench-upgrade"))
    db.session.execute(
        sa.update(Subscription).values(
            started_at=NOV,
            ended_at=None,
            status="active",
            current_period_start=DEC,
            current_period_end=datetime(2027, 1, 1, tzinfo=UTC),
            scheduled_plan_id=None,
        )
    )
    db.session.execute(
        sa.update(Subscription)
        .where(Subscription.tenant_id.in_(tenant_ids))
        .values(current_period_start=NOV, current_period_end=DEC)
    )
    # A tenth upgraded to professional on the 16th: two fee lines.
    professional = db.session.scalar(sa.select(Plan.id).where(Plan.code == "professional"))
    upgraded = tenant_ids[::10]
    db.session.execute(
        sa.update(Subscription)
        .where(Subscription.tenant_id.in_(upgraded))
        .values(ended_at=NOV + timedelta(days=15), status="ended")
    )
    db.session.execute(
        sa.insert(Subscription),
        [
            {
                "tenant_id": t,
                "plan_id": professional,
                "status": "bench-upgrade",
                "started_at": NOV + timedelta(days=15),
                "current_period_start": NOV,
                "current_period_end": DEC,
                "allow_overage": True,
            }
            for t in upgraded
        ],
    )
    db.session.commit()


OUTSIDE = (
    ("openai", "gpt-4o", Decimal("0.0125")),
    ("groq", "llama-3.1-70b-versatile", Decimal("0.000590")),
    ("twitter", "", Decimal("0.000116")),
    ("mystery", "unpriced-model", None),
)


def add_outside_calls(ids: list[int]) -> None:
    """Four services' calls in November for every tenant (one of them unpriced)."""
    records = []
    for tenant_id in ids:
        for n, (service, model, cost) in enumerate(OUTSIDE):
            records.append(
                {
                    "tenant_id": tenant_id,
                    "source": "external",
                    "service": service,
                    "model": model,
                    "endpoint": "/v1",
                    "status_code": 200,
                    "tokens_in": 1000 if model else 0,
                    "cost": cost,
                    "occurred_at": NOV + timedelta(days=n + 1, hours=tenant_id % 24),
                    "idempotency_key": f"billing-bench-{tenant_id}-{n}",
                }
            )
    for i in range(0, len(records), 5000):
        store_usage(records[i : i + 5000])
        db.session.commit()


def timed_close(now: datetime, statements: Statements, server) -> dict:
    db.session.remove()
    before_sql, before_cpu = statements.count, cpu(server)
    start = time.perf_counter()
    result = close_periods(now)
    wall = time.perf_counter() - start
    after_cpu = cpu(server)
    return {
        "wall": wall,
        "cpu_here": after_cpu[0] - before_cpu[0],
        "cpu_server": after_cpu[1] - before_cpu[1],
        "statements": statements.count - before_sql,
        "result": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/tollgate_alerts_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    app = make_app(args.database_url, args.redis_url, Path(tempfile.mkdtemp(prefix="tollgate-billing-bench-")))
    with app.app_context():
        ids = list(db.session.scalars(sa.select(Tenant.id).order_by(Tenant.id)))
        if len(ids) < 1000:
            raise SystemExit("fill the database first: .venv/bin/python bench/alerts_bench.py --passes 1")
        external = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(UsageRollup)
            .where(UsageRollup.source == "external", UsageRollup.bucket_start >= NOV, UsageRollup.bucket_start < DEC)
        )
        if not external:
            add_outside_calls(ids)
        rollups = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(UsageRollup)
            .where(UsageRollup.granularity == "day", UsageRollup.bucket_start >= NOV, UsageRollup.bucket_start < DEC)
        )
        print(f"{len(ids):,} tenants; {rollups:,} daily rollup rows in November")
        server = None
        if db.engine.dialect.name == "postgresql":
            server = psutil.Process(db.session.scalar(sa.text("SELECT pg_backend_pid()")))
        statements = Statements(db.engine)
        now = DEC + timedelta(minutes=5)
        baseline, full = [], []
        for _ in range(args.runs):
            reset(ids[:10], ids)
            baseline.append(timed_close(now, statements, server))
            reset(ids, ids)
            full.append(timed_close(now, statements, server))
        lines = db.session.scalar(sa.text("SELECT count(*) FROM statement_lines"))
        closed = full[-1]["result"]
        start = time.perf_counter()
        checked = reconcile(now + timedelta(minutes=1), "2026-11")
        print(
            f"billing reconcile --period 2026-11: {checked.statements:,} statements, "
            f"{len(checked.differences)} differences, {len(checked.pending)} pending, "
            f"{time.perf_counter() - start:.1f} s"
        )

    print(f"\nload average: {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}; last run: {closed}, {lines:,} lines")
    print("| close-periods | wall | CPU, worker | CPU, database | SQL statements |")
    print("| --- | --- | --- | --- | --- |")
    print(table_row(f"10 tenants (baseline, median of {args.runs})", baseline))
    print(table_row(f"{len(ids):,} tenants (median of {args.runs})", full))


if __name__ == "__main__":
    main()
