"""Benchmark of ``GET /api/v1/costs/report`` over 90 days of seed-demo data.

Server time of each grouping, in process (the Flask test client: the whole request, admission
and metering included, no HTTP), median of 7, against the smallest protected call
(``/api/v1/ping``) measured alternately in the same run as the baseline.

    .venv/bin/python bench/costs_bench.py                       # SQLite and the embedded Redis
    .venv/bin/python bench/costs_bench.py --database-url postgresql://postgres@127.0.0.1/tollgate_costs_bench

A PostgreSQL database named there is dropped and created again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import fresh_postgres  # noqa: E402
from portal import create_app  # noqa: E402
from portal.demo import seed_demo  # noqa: E402
from portal.embedded_redis import stop_embedded_redis  # noqa: E402
from portal.extensions import db  # noqa: E402
from portal.redis_store import get_redis  # noqa: E402
from portal.tenancy.keys import create_api_key  # noqa: E402

GROUPS = ("service", "model", "endpoint", "key", "end_user", "day")
ROUNDS = 7


def timed(client, path: str, headers: dict) -> float:
    start = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, (path, response.status_code, response.text[:200])
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--redis-url", default=None, help="default: an embedded Redis in a temporary folder")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tg-costs-"))
    database = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    if database.startswith("postgres"):
        fresh_postgres(database)
    settings = {"INSTANCE_PATH": str(folder), "DATABASE_URL": database, "SECRET_KEY": "costs-bench-secret-key"}
    if args.redis_url:
        settings["REDIS_URL"] = args.redis_url
    app = create_app(settings)
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()
        get_redis(app).flushdb()
        started = time.perf_counter()
        demo = seed_demo(days=90)
        seeded = time.perf_counter() - started
        _, secret = create_api_key(demo.tenant, "bench")
        db.session.commit()
        records = demo.records
    headers = {"X-API-Key": secret}
    client = app.test_client()
    print(f"database: {database.split('@')[-1]}; seed-demo: {records:,} records in {seeded:.1f} s")
    for _ in range(3):  # warm caches, parse once
        timed(client, "/api/v1/ping", headers)
        timed(client, "/api/v1/costs/report?days=90", headers)
    print(f"{'request':<48} {'median ms':>10} {'min ms':>8} {'ping ms':>8}")
    for group in GROUPS:
        path = f"/api/v1/costs/report?group_by={group}&days=90"
        report, ping = [], []
        for _ in range(ROUNDS):
            ping.append(timed(client, "/api/v1/ping", headers))
            report.append(timed(client, path, headers))
        print(f"{path:<48} {statistics.median(report):>10.2f} {min(report):>8.2f} {statistics.median(ping):>8.2f}")
    csv_path = "/api/v1/costs/report?group_by=day&days=90&format=csv"
    csv = [timed(client, csv_path, headers) for _ in range(ROUNDS)]
    print(f"{csv_path:<48} {statistics.median(csv):>10.2f} {min(csv):>8.2f}")
    if not args.redis_url:
        stop_embedded_redis(folder)


if __name__ == "__main__":
    main()
