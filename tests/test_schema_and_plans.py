"""The schema comes from the migration chain alone, with named constraints and the portal's
indexes; the default plans and billing periods are as designed."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from portal.extensions import db
from portal.models import Tenant
from portal.plans import billing_period, get_plan, subscribe, update_plan_limits

DESIGN_PLANS = [
    # code, price, quota, per minute, per hour, per day, overage per 1,000, retention days
    ("free", Decimal("0.00"), 10_000, 100, 1_000, 10_000, None, 90),
    ("starter", Decimal("29.00"), 100_000, 300, 5_000, 50_000, Decimal("0.50"), 90),
    ("professional", Decimal("99.00"), 1_000_000, 1_000, 20_000, 200_000, Decimal("0.30"), 180),
    ("enterprise", Decimal("499.00"), None, 5_000, 100_000, 2_000_000, None, 365),
]


def drift(engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), db.metadata)


def test_the_test_database_has_no_drift(app):
    # In CI this is PostgreSQL; locally SQLite.
    with app.app_context():
        assert drift(db.engine) == []


def test_upgrade_from_empty_creates_the_whole_model_without_drift(app):
    from flask_migrate import upgrade

    from portal import create_app

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
        upgrade()
        tables = set(sa.inspect(db.engine).get_table_names())
        assert set(db.metadata.tables) <= tables
        assert drift(db.engine) == []
        result = fresh.test_cli_runner().invoke(args=["db", "check"])
        assert result.exit_code == 0, result.output
        db.engine.dispose()
    # Flask-Limiter keeps one storage per limiter instance: give it back to the test app.
    from portal.extensions import limiter

    limiter.init_app(app)


def test_constraints_are_named_by_convention(app):
    with app.app_context():
        inspector = sa.inspect(db.engine)
        foreign_keys = {fk["name"] for fk in inspector.get_foreign_keys("users")}
        assert "fk_users_tenant_id_tenants" in foreign_keys
        uniques = {u["name"] for u in inspector.get_unique_constraints("usage_records")}
        assert "uq_usage_records_tenant_id_idempotency_key" in uniques


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("usage_records", ["tenant_id", "occurred_at"]),
        ("usage_records", ["tenant_id", "service", "occurred_at"]),
        ("usage_rollups", ["tenant_id", "granularity", "bucket_start"]),
        ("audit_events", ["tenant_id", "created_at"]),
        ("alerts", ["tenant_id", "status", "last_triggered_at"]),
        ("api_keys", ["tenant_id", "created_at"]),
    ],
)
def test_indexes_for_tenant_and_time_queries(app, table, columns):
    with app.app_context():
        indexes = [index["column_names"] for index in sa.inspect(db.engine).get_indexes(table)]
    assert columns in indexes


def test_default_plans_are_the_designed_ones(db):
    for code, price, quota, minute, hour, day, overage, retention in DESIGN_PLANS:
        plan = get_plan(code)
        assert plan.monthly_price == price
        assert plan.monthly_quota == quota
        assert (plan.per_minute, plan.per_hour, plan.per_day) == (minute, hour, day)
        assert plan.overage_price_per_1000 == overage
        assert plan.retention_days == retention


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (
            datetime(2026, 11, 18, 12, 30, tzinfo=UTC),
            datetime(2026, 11, 1, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
        ),
        (
            datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC),
            datetime(2026, 11, 1, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
        ),
        (datetime(2026, 12, 31, 8, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        (datetime(2028, 2, 29, tzinfo=UTC), datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
    ],
)
def test_billing_period_is_the_calendar_month_in_utc(at, start, end):
    assert billing_period(at) == (start, end)


def test_plan_change_keeps_the_subscription_history(db, make_tenant):
    _, _, tenant_id = make_tenant(plan="free")
    tenant = db.session.get(Tenant, tenant_id)
    first = tenant.subscription
    subscribe(tenant, get_plan("starter"))
    db.session.commit()
    assert first.ended_at is not None and first.status == "ended"
    assert tenant.subscription.plan.code == "starter"
    assert len(tenant.subscriptions) == 2


def test_plan_numbers_must_be_positive(db):
    with pytest.raises(ValueError, match="per-minute must be at least 1"):
        update_plan_limits("free", per_minute=0)
    with pytest.raises(ValueError, match="not both"):
        update_plan_limits("free", monthly_quota=5, unlimited_quota=True)
