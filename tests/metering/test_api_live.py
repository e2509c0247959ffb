"""The API against live servers in separate processes: exact counting under concurrency,
revocation seen everywhere, the worker killed mid-batch, records reaching the queries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from portal.extensions import db
from portal.metering.stream import STREAM, pack_call
from portal.models import ApiKey, UsageRecord, UsageRollup
from tests.api_helpers import Servers, drain, set_limits
from tests.factories import new_tenant

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def two_servers(server_env):
    servers = Servers(server_env, 2)
    yield servers
    servers.stop()


def start_worker(env: dict) -> subprocess.Popen:
    """A long-running ``flask worker`` process (the usage stream is read every 2 seconds)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a kill reaches RQ's scheduler child too
    )


def seconds_to_next_hour() -> float:
    now = time.time()
    return 3600 - now % 3600


def test_exactly_the_limit_is_admitted_across_two_processes(app, two_servers):
    limit = 25
    acme = new_tenant(app, "Concurrent Co", key=True)
    # The hour window binds (minute and day are far above it); keep clear of the hour's end.
    set_limits(app, "starter", per_minute=10_000, per_hour=limit, per_day=1_000_000)
    if seconds_to_next_hour() < 20:
        time.sleep(seconds_to_next_hour() + 1)
    urls = [f"{two_servers.urls[i % 2]}/api/v1/ping" for i in range(4 * limit)]
    with ThreadPoolExecutor(max_workers=32) as pool, requests.Session() as session:
        statuses = list(pool.map(lambda url: session.get(url, headers=acme.headers, timeout=30).status_code, urls))
    assert Counter(statuses) == {200: limit, 429: 3 * limit}


def test_revocation_reaches_every_process_at_once(app, two_servers):
    from portal.tenancy.keys import revoke_api_key

    acme = new_tenant(app, "Revoked Co", key=True)
    for url in two_servers.urls:
        assert requests.get(f"{url}/api/v1/ping", headers=acme.headers, timeout=10).status_code == 200
    with app.app_context():
        revoke_api_key(db.session.get(ApiKey, acme.key_id))
        db.session.commit()
    for url in two_servers.urls:
        response = requests.get(f"{url}/api/v1/ping", headers=acme.headers, timeout=10)
        assert (response.status_code, response.json()) == (403, {"detail": "API key is inactive"})


def test_records_reach_the_api_queries_within_seconds(app, server_env):
    acme = new_tenant(app, "Prompt Co", key=True)
    servers = Servers(server_env, 1)
    worker = start_worker(server_env)
    try:
        url = servers.urls[0]
        for _ in range(5):
            assert requests.get(f"{url}/api/v1/ping", headers=acme.headers, timeout=10).status_code == 200
        started = time.monotonic()
        total = 0
        while time.monotonic() - started < 15:
            logs = requests.get(f"{url}/api/v1/usage/logs", headers=acme.headers, timeout=10).json()
            # Every ping, and every earlier logs call, with its final status.
            total = sum(1 for log in logs["logs"] if log["endpoint"] == "/api/v1/ping" and log["status_code"] == 200)
            if total == 5:
                break
            time.sleep(0.25)
        assert total == 5, "the five calls did not reach /usage/logs within 15 seconds"
        with app.app_context():
            assert db.session.get(ApiKey, acme.key_id).usage_count >= 5
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        servers.stop()
    drain(app)


def fill_stream(redis, tenant_id: int, key_id: int, count: int) -> None:
    at = datetime.now(UTC).timestamp()
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        record = pack_call(f"fill-{n}", tenant_id, key_id, "/api/v1/ping", "GET", "system", at)
        pipe.xadd(STREAM, {"r": record, "s": 200, "d": 3})
    pipe.execute()


VICTIM = """
import os, signal, sys
from portal import create_app
from portal.metering.stream import GROUP, STREAM, unpack_call
from portal.extensions import db
from portal.ingest import ensure_group
from portal.metering.store import store_usage
from portal.redis_store import get_redis

app = create_app()
with app.app_context():
    redis = get_redis()
    ensure_group(redis)
    entries = redis.xreadgroup(GROUP, "victim", {STREAM: ">"}, count=int(sys.argv[1]))[0][1]
    store_usage([unpack_call(fields) for _, fields in entries])  # the worker's batch step
    if sys.argv[2] == "after-commit":
        db.session.commit()
    print(len(entries), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # dies before acknowledging
"""


def run_burst_worker(env: dict) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def stored_counts(app, tenant_id: int) -> tuple[int, int, int]:
    with app.app_context():
        rows = db.session.scalar(
            select(func.count()).select_from(UsageRecord).where(UsageRecord.tenant_id == tenant_id)
        )
        calls = db.session.scalar(
            select(func.sum(UsageRollup.calls)).where(
                UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == "day"
            )
        )
        uses = db.session.scalar(select(ApiKey.usage_count).where(ApiKey.tenant_id == tenant_id))
    return rows, int(calls or 0), uses


@pytest.mark.parametrize("dies", ["before-commit", "after-commit"])
def test_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(app, redis, server_env, dies):
    acme = new_tenant(app, f"Crash {dies}", key=True)
    fill_stream(redis, acme.tenant_id, acme.key_id, 700)
    victim = subprocess.run(
        [sys.executable, "-c", VICTIM, "400", dies],
        cwd=ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stderr[-2000:]
    assert victim.stdout.strip() == "400"
    expected_before = 400 if dies == "after-commit" else 0
    assert stored_counts(app, acme.tenant_id) == (expected_before, expected_before, expected_before)
    run_burst_worker(server_env)
    assert stored_counts(app, acme.tenant_id) == (700, 700, 700)
    assert redis.xlen(STREAM) == 0


def test_worker_killed_at_any_moment_loses_nothing(app, redis, server_env):
    acme = new_tenant(app, "Crash Anytime", key=True)
    fill_stream(redis, acme.tenant_id, acme.key_id, 6000)
    worker = start_worker(server_env)
    # Kill it once it has started storing, wherever in a batch it is.
    deadline = time.monotonic() + 60
    while stored_counts(app, acme.tenant_id)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    run_burst_worker(server_env)
    assert stored_counts(app, acme.tenant_id) == (6000, 6000, 6000)


def test_burst_worker_drains_the_stream_and_exits(app, client, server_env):
    acme = new_tenant(app, "Burst Co", key=True)
    for _ in range(3):
        client.get("/api/v1/ping", headers=acme.headers)
    from portal.api.guard import gate

    gate(app).admission.flush_if_idle(0)
    run_burst_worker(server_env)
    assert stored_counts(app, acme.tenant_id) == (3, 3, 3)
