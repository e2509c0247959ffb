"""Shared helpers for the API tests: tenants with keys, a controllable clock, draining the stream."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from flask import Flask

from portal.api.guard import gate
from portal.billing.plans import update_plan_limits
from portal.extensions import db
from portal.ingest import ingest_usage
from portal.kernel.clock import app_clock, set_clock
from portal.redis_store import get_redis
from portal.tenancy.keys import create_api_key

from .factories import new_tenant

ROOT = Path(__file__).resolve().parent.parent

# Mid-month, mid-day, second 10 of a minute: far from every window's edge.
T0 = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC).timestamp()


class Clock:
    """A clock the test moves by hand, installed as the API's clock."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def add_key(app: Flask, tenant_id: int, name: str, **kwargs) -> tuple[int, str]:
    from portal.models import Tenant

    with app.app_context():
        key, secret = create_api_key(db.session.get(Tenant, tenant_id), name, **kwargs)
        db.session.commit()
        result = (key.id, secret)
        db.session.remove()
    return result


def set_limits(app: Flask, plan: str, **limits) -> None:
    with app.app_context():
        update_plan_limits(plan, **limits)
        db.session.commit()
        db.session.remove()


def install_clock(app: Flask, clock: Clock) -> None:
    set_clock(app, clock)


def drain(app: Flask) -> int:
    """Flush this process's pending completions and store everything the stream holds."""
    with app.app_context():
        gate(app).admission.flush_if_idle(0)
        clock = app_clock(app).time
        result = ingest_usage(get_redis(app), claim_idle_ms=0, clock=lambda: datetime.fromtimestamp(clock(), UTC))
        db.session.remove()
    return result.stored


def external_records(app: Flask, tenant_id: int) -> list:
    """The tenant's stored outside-service records, oldest first (detached from the session)."""
    from sqlalchemy import select

    from portal.models import UsageRecord

    with app.app_context():
        rows = db.session.scalars(
            select(UsageRecord)
            .where(UsageRecord.tenant_id == tenant_id, UsageRecord.source == "external")
            .order_by(UsageRecord.id)
        ).all()
        db.session.expunge_all()
        db.session.remove()
    return list(rows)


@pytest.fixture
def clock(app):
    """The API's clock, under the test's control (restored afterwards)."""
    clock = Clock()
    install_clock(app, clock)
    yield clock
    set_clock(app, time.time)


@pytest.fixture
def acme(app, clock):
    """A starter-plan tenant with one key; what its calls left in the stream is stored after."""
    tenant = new_tenant(app, "Acme", key=True)
    yield tenant
    drain(app)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server_env(app, tmp_path):
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=app.config["REDIS_URL_RESOLVED"],
        SECRET_KEY="live-server-secret-key",
        TOLLGATE_INSTANCE_PATH=str(tmp_path),
        USAGE_CLAIM_IDLE_MS="0",
        PYTHONPATH=str(ROOT),
    )
    return env


class Servers:
    def __init__(self, env: dict, count: int, extra_args: tuple[str, ...] = ()) -> None:
        self.processes = []
        self.urls = []
        for _ in range(count):
            port = free_port()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "--workers",
                    "1",
                    "--threads",
                    "8",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--log-level",
                    "warning",
                    "--no-control-socket",
                    *extra_args,
                    "wsgi:app",
                ],
                cwd=ROOT,
                env=env,
            )
            self.processes.append(process)
            self.urls.append(f"http://127.0.0.1:{port}")
        try:
            for url in self.urls:
                self._wait(url)
        except RuntimeError:
            for process in self.processes:
                process.kill()
            raise

    @staticmethod
    def _wait(url: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.1)
        raise RuntimeError(f"server at {url} did not start")

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=30)
