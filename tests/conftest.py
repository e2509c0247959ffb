"""Fixtures: one application per test session on a real database and a real Redis.

The suite never touches ``DATABASE_URL`` / ``REDIS_URL``. It uses ``TEST_DATABASE_URL``
(default: a SQLite file in a temporary folder) and ``TEST_REDIS_URL`` (default: its own embedded
Redis in that folder). The database is emptied and migrated from nothing at the start, the
Redis database flushed; after each test every table but the plans and model prices is emptied
and the plans are restored.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.embedded_redis import stop_embedded_redis
from portal.extensions import db as _db
from portal.redis_store import get_redis

# Shared fixtures: tenants (factories), the API's (clock, acme), the portal's, the gateway's upstreams.
pytest_plugins = [
    "tests.factories",
    "tests.api_helpers",
    "tests.portal_helpers",
    "tests.gateway.upstreams",
    "tests.gateway.scripted",
]

# Tables whose rows come from migrations and stay between tests.
REFERENCE_TABLES = {"plans", "model_prices", "alembic_version"}
TEST_SECRET_KEY = "test-secret-key-not-for-production"


def _reset_postgres_database(url: str) -> None:
    parsed = sa.engine.make_url(url)
    name = parsed.database
    admin = sa.create_engine(
        parsed.set(database="postgres", drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def instance_dir() -> Iterator[Path]:
    # Short path: the embedded Redis's unix socket lives here.
    folder = Path(tempfile.mkdtemp(prefix="tg-test-"))
    yield folder
    stop_embedded_redis(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def test_settings(instance_dir: Path) -> dict:
    database_url = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{instance_dir / 'test.db'}"
    if database_url.startswith(("postgresql", "postgres")):
        _reset_postgres_database(database_url)
    settings = {
        "INSTANCE_PATH": str(instance_dir),
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET_KEY,
        "PORTAL_BASE_URL": "http://localhost",
        "ALLOW_PRIVATE_WEBHOOKS": "1",
        "TESTING": True,
    }
    if os.environ.get("TEST_REDIS_URL"):
        settings["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
    return settings


@pytest.fixture(scope="session")
def app(test_settings: dict) -> Iterator[Flask]:
    from flask_migrate import upgrade

    app = create_app(dict(test_settings))
    with app.app_context():
        upgrade()
        get_redis(app).flushdb()
        plans = [dict(row._mapping) for row in _db.session.execute(_db.metadata.tables["plans"].select())]
    app.config["_PLAN_SNAPSHOT"] = plans
    yield app
    with app.app_context():
        _db.session.remove()
        _db.engine.dispose()


def _empty_tables(app: Flask) -> None:
    with app.app_context():
        _db.session.remove()
        tables = [t for t in reversed(_db.metadata.sorted_tables) if t.name not in REFERENCE_TABLES]
        with _db.engine.begin() as conn:
            for table in tables:
                conn.execute(table.delete())
            conn.execute(sa.text("DELETE FROM plans"))
            plans_table = _db.metadata.tables["plans"]
            conn.execute(plans_table.insert(), app.config["_PLAN_SNAPSHOT"])
        get_redis(app).flushdb()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    if "app" not in request.fixturenames:
        yield
        return
    app = request.getfixturevalue("app")
    yield
    _empty_tables(app)


@pytest.fixture
def ctx(app: Flask) -> Iterator[None]:
    """An application context for tests that call domain modules directly."""
    with app.app_context():
        yield
        _db.session.remove()


@pytest.fixture
def db(ctx):
    return _db


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def redis(app: Flask):
    return get_redis(app)


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, "page has no CSRF token"
    return match.group(1)


class Auth:
    """Signs a test client in and out through the real form."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, email: str, password: str, next_url: str | None = None, follow: bool = False):
        page = self.client.get("/login" + (f"?next={next_url}" if next_url else ""))
        data = {"email": email, "password": password, "csrf_token": csrf_token(page.text)}
        if next_url is not None:
            data["next"] = next_url
        return self.client.post("/login", data=data, follow_redirects=follow)

    def logout(self):
        page = self.client.get("/dashboard")
        return self.client.post("/logout", data={"csrf_token": csrf_token(page.text)})


@pytest.fixture
def auth(client: FlaskClient) -> Auth:
    return Auth(client)


@pytest.fixture
def make_tenant(app: Flask):
    """Make tenants with their owner (password ``PASSWORD``), each (slug, owner e-mail, tenant id)."""
    from .factories import new_tenant

    counter = iter(range(1, 10_000))

    def make(name: str | None = None, plan: str = "starter", email: str | None = None):
        n = next(counter)
        made = new_tenant(app, name or f"Tenant {n}", plan, email=email or f"owner{n}@tenant{n}.example")
        return made.slug, made.owner, made.tenant_id

    return make
