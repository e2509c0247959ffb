"""Benchmark of every portal page on seed-demo data: server time and SQL statements per page.

Each page is requested in process through the Flask test client as the demo tenant's owner
(the whole request: session, the page's queries, rendering; no HTTP), 7 times, alternating with
``/health`` as the baseline (the smallest request through the same app), after two warm-up
rounds. Printed: median and minimum milliseconds, the baseline's median, and the number of SQL
statements the page ran. Targets: ≤ 100 ms every page, ≤ 50 ms the dashboard.

    .venv/bin/python bench/portal_bench.py                      # SQLite and the embedded Redis
    .venv/bin/python bench/portal_bench.py --database-url postgresql://postgres@127.0.0.1/tollgate_portal_bench

A PostgreSQL database named there is dropped and created again.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, select  # noqa: E402

from bench.ingest_bench import fresh_postgres  # noqa: E402
from portal import create_app  # noqa: E402
from portal.demo import seed_demo  # noqa: E402
from portal.embedded_redis import stop_embedded_redis  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.models import ApiKey, Budget, Statement, UsageRecord  # noqa: E402
from portal.redis_store import get_redis  # noqa: E402

ROUNDS = 7
PASSWORD = "portal-bench-password"


def pages(tenant_id: int) -> list[tuple[str, str, str | None]]:
    """(label, endpoint, url) of every page; the url is None when the page's object is missing."""

    def first(model):
        return db.session.scalar(select(model.id).where(model.tenant_id == tenant_id).order_by(model.id).limit(1))

    today = datetime.now(UTC).date()
    dates = {"today": today, "d7": today - timedelta(days=6), "d90": today - timedelta(days=89)}
    key, record, statement = first(ApiKey), first(UsageRecord), first(Statement)
    budget = first(Budget)
    listed = [
        ("dashboard", "web.dashboard", "/dashboard"),
        ("usage explorer, 30 days daily", "web.explorer", "/usage"),
        ("usage explorer, 90 days weekly", "web.explorer", "/usage?interval=weekly&start={d90}"),
        ("usage explorer, 7 days hourly", "web.explorer", "/usage?interval=hourly&start={d7}"),
        ("usage export CSV", "web.explorer_export_csv", "/usage/export.csv"),
        ("logs", "web.logs", "/logs"),
        ("log record", "web.log_detail", f"/logs/{record}" if record else None),
        ("costs", "web.costs", "/costs"),
        ("costs, grouped by key", "web.costs", "/costs?group=key"),
        ("costs, 90 days", "web.costs", "/costs?month=&start={d90}&end={today}"),
        ("budget", "web.costs_budget", f"/costs/budgets/{budget}" if budget else None),
        ("API keys", "web.keys", "/keys"),
        ("API key", "web.key_detail", f"/keys/{key}" if key else None),
        ("alerts", "web.alerts", "/alerts"),
        ("alert history", "web.alerts_history", "/alerts/history"),
        ("alert rules", "web.alerts_rules", "/alerts/rules"),
        ("alert channels", "web.alerts_channels", "/alerts/channels"),
        ("notifications", "web.notifications", "/notifications"),
        ("plan & billing", "web.billing", "/billing"),
        ("statement", "web.billing_statement", f"/billing/statements/{statement}" if statement else None),
        ("team", "web.team", "/team"),
        ("audit", "web.team_audit", "/team/audit"),
    ]
    return [(label, endpoint, url.format(**dates) if url else None) for label, endpoint, url in listed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--redis-url", default=None, help="default: an embedded Redis in a temporary folder")
    parser.add_argument("--days", type=int, default=90, help="days of demo history (default 90)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tg-portal-"))
    database = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    if database.startswith("postgres"):
        fresh_postgres(database)
    settings = {"INSTANCE_PATH": str(folder), "DATABASE_URL": database, "SECRET_KEY": "portal-bench-secret-key"}
    if args.redis_url:
        settings["REDIS_URL"] = args.redis_url
    settings["LOGIN_RATE_LIMIT"] = "1000/minute"
    app = create_app(settings)
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()
        get_redis(app).flushdb()
        started = time.perf_counter()
        demo = seed_demo(days=args.days, password=PASSWORD)
        seeded = time.perf_counter() - started
        if db.engine.dialect.name == "postgresql":
            # Fresh tables have no statistics until autovacuum comes by; a running database has them.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        listed = pages(demo.tenant.id)
        email, records = demo.email, demo.records
        engine = db.engine
    where = database.split("@")[-1]
    print(f"database: {where}; seed-demo: {records:,} records over {args.days} days in {seeded:.1f} s")

    client = app.test_client()
    login = client.get("/login").text
    token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', login).group(1)
    signed = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert signed.status_code == 302, signed.status_code

    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    def timed(url: str) -> float:
        start = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - start) * 1000
        assert response.status_code == 200, (url, response.status_code)
        response.close()
        return elapsed

    print(f"{'page':<34} {'url':<44} {'median ms':>9} {'min ms':>7} {'/health':>8} {'SQL':>4}")
    worst = 0.0
    for label, endpoint, url in listed:
        if endpoint not in app.view_functions or url is None:
            print(f"{label:<34} {'(not available)':<44}")
            continue
        for _ in range(2):
            timed(url)
        statements.clear()
        timed(url)
        count = len(statements)
        page, baseline = [], []
        for _ in range(ROUNDS):
            baseline.append(timed("/health"))
            page.append(timed(url))
        median = statistics.median(page)
        worst = max(worst, median)
        print(f"{label:<34} {url:<44} {median:>9.2f} {min(page):>7.2f} {statistics.median(baseline):>8.2f} {count:>4}")
    print(f"slowest page median: {worst:.1f} ms")
    if not args.redis_url:
        stop_embedded_redis(folder)


if __name__ == "__main__":
    main()
