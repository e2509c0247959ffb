"""The schema comes only from the Flask-Migrate chain: it creates every model table, matches the
models exactly, names its constraints by the convention and has the portal's indexes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from flask_migrate import downgrade, upgrade

from portal import create_app
from portal.extensions import db, limiter


def drift(engine: sa.Engine) -> list:
    """What Alembic's autogenerate would add to a new revision (nothing when in step)."""
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), db.metadata)


def db_check(app: Flask):
    return app.test_cli_runner().invoke(args=["db", "check"])


@pytest.fixture
def empty_sqlite_app(app: Flask) -> Iterator[Flask]:
    """An app on a new, empty SQLite file (and the test session's Redis)."""
    folder = Path(tempfile.mkdtemp(prefix="tg-schema-"))
    fresh = create_app(
        {
            "INSTANCE_PATH": str(folder),
            "DATABASE_URL": f"sqlite:///{folder / 'fresh.db'}",
            "REDIS_URL": app.config["REDIS_URL_RESOLVED"],
            "SECRET_KEY": "schema-test-secret-key",
        }
    )
    with fresh.app_context():
        yield fresh
        db.session.remove()
        db.engine.dispose()
    shutil.rmtree(folder, ignore_errors=True)
    # Flask-Limiter keeps one storage per limiter: the new app took it, give it back.
    limiter.init_app(app)


def test_creating_the_app_creates_no_table(empty_sqlite_app):
    # The schema changes only through `flask db upgrade`, never as a side effect of start-up.
    assert sa.inspect(db.engine).get_table_names() == []


def test_upgrade_from_nothing_creates_every_model_table_without_drift(empty_sqlite_app):
    upgrade()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert tables == set(db.metadata.tables) | {"alembic_version"}
    assert drift(db.engine) == []
    result = db_check(empty_sqlite_app)
    assert result.exit_code == 0, result.output


def test_db_check_notices_a_schema_that_differs_from_the_models(empty_sqlite_app):
    # The check above is only worth something if it fails on drift.
    upgrade()
    with db.engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_usage_records_tenant_occurred")
    differences = drift(db.engine)
    assert [(op[0], op[1].name) for op in differences] == [("add_index", "ix_usage_records_tenant_occurred")]
    assert db_check(empty_sqlite_app).exit_code != 0


def test_the_chain_goes_down_to_nothing_and_up_again(empty_sqlite_app):
    upgrade()
    downgrade(revision="base")
    assert sa.inspect(db.engine).get_table_names() == ["alembic_version"]
    upgrade()
    assert drift(db.engine) == []
    assert db.session.scalar(sa.text("SELECT count(*) FROM plans")) == 4


def test_tenants_made_before_the_alerts_revision_get_the_default_rules_from_it(empty_sqlite_app):
    from portal.alerts.rules import DEFAULT_RULES

    upgrade(revision="0002")
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO tenants (name, slug, is_active, limits_when_redis_down, created_at)"
            " VALUES ('Early Co', 'early-co', 1, 'open', '2026-11-01 00:00:00')"
        )
    upgrade()
    rows = db.session.execute(
        sa.text("SELECT kind, warning_threshold, critical_threshold, min_volume FROM alert_rules ORDER BY id")
    ).all()
    assert [row.kind for row in rows] == [rule.kind for rule in DEFAULT_RULES]
    assert {row.kind: (row.warning_threshold, row.critical_threshold) for row in rows}["error_rate"] == (5, 10)
    downgrade(revision="0002")
    upgrade()  # and again: no rule twice
    assert db.session.scalar(sa.text("SELECT count(*) FROM alert_rules")) == len(DEFAULT_RULES)


def test_the_test_database_has_no_drift(app):
    # PostgreSQL when TEST_DATABASE_URL is set (CI), SQLite otherwise.
    with app.app_context():
        assert drift(db.engine) == []
        result = db_check(app)
        assert result.exit_code == 0, result.output


def test_constraints_are_named_by_the_convention(db):
    inspector = sa.inspect(db.engine)
    assert "fk_users_tenant_id_tenants" in {fk["name"] for fk in inspector.get_foreign_keys("users")}
    assert "uq_tenants_slug" in {uq["name"] for uq in inspector.get_unique_constraints("tenants")}
    assert inspector.get_pk_constraint("tenants")["name"] == "pk_tenants"


def test_every_constraint_has_a_conventional_name(db):
    # Alembic can only alter (and SQLite batch mode only rebuild) constraints it can name.
    inspector = sa.inspect(db.engine)
    wrong = []
    for table in db.metadata.tables:
        if inspector.get_pk_constraint(table)["name"] != f"pk_{table}":
            wrong.append((table, "primary key", inspector.get_pk_constraint(table)["name"]))
        for fk in inspector.get_foreign_keys(table):
            expected = f"fk_{table}_{fk['constrained_columns'][0]}_{fk['referred_table']}"
            if fk["name"] != expected:
                wrong.append((table, expected, fk["name"]))
        for unique in inspector.get_unique_constraints(table):
            if not (unique["name"] or "").startswith(f"uq_{table}_"):
                wrong.append((table, "unique", unique["name"]))
    assert wrong == []


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("usage_records", ["tenant_id", "occurred_at"]),
        ("usage_rollups", ["tenant_id", "granularity", "bucket_start"]),
        ("audit_events", ["tenant_id", "created_at"]),
        ("alerts", ["tenant_id", "status", "last_triggered_at"]),
    ],
)
def test_the_portal_queries_have_their_index(db, table, columns):
    indexes = [index["column_names"] for index in sa.inspect(db.engine).get_indexes(table)]
    assert columns in indexes
