"""usage dead letters; API calls carry the quota units they used; wider sums of money

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 23:40:00

A stored API call now says in ``quota_units`` whether it counted against the monthly quota (1)
or was refused (0), so that the quota counter can be rebuilt from the records. Calls stored
before carry 0; they are set here as the statements counted them until now: every API call
but those refused with 429.

Columns that hold sums of costs (a rollup's cost, a statement's amounts, a budget crossing's
spend, an alert's value) widen so that no sum of calls a tenant can make overflows them. On
PostgreSQL a wider NUMERIC of the same scale needs no table rewrite.
"""

import sqlalchemy as sa
from alembic import op

from portal.models import _types as tg_types  # noqa: F401 - column types used below

# (table, column, type before, type after, nullable)
WIDER = [
    ("usage_rollups", "cost", sa.Numeric(18, 8), sa.Numeric(28, 8), False),
    *(
        ("statements", column, sa.Numeric(12, 2), sa.Numeric(20, 2), False)
        for column in ("plan_fee", "overage_amount", "token_cost", "service_cost", "adjustments", "total")
    ),
    ("statement_lines", "amount", sa.Numeric(12, 2), sa.Numeric(20, 2), True),
    ("statement_lines", "exact_amount", sa.Numeric(18, 8), sa.Numeric(28, 8), True),
    ("budget_crossings", "spend", sa.Numeric(18, 8), sa.Numeric(28, 8), False),
    ("alerts", "value", sa.Numeric(18, 6), sa.Numeric(28, 6), True),
]


def _retype(backwards: bool) -> None:
    tables: dict[str, list] = {}
    for table, column, before, after, nullable in WIDER:
        tables.setdefault(table, []).append(
            (column, after if backwards else before, before if backwards else after, nullable)
        )
    for table, columns in tables.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, old, new, nullable in columns:
                batch_op.alter_column(column, existing_type=old, type_=new, existing_nullable=nullable)


# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "usage_dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("stream_entry_id", sa.String(length=40), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", tg_types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("stored_at", tg_types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_dead_letters")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_usage_dead_letters_fingerprint")),
    )
    with op.batch_alter_table("usage_dead_letters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_dead_letters_tenant_id"), ["tenant_id"], unique=False)

    op.execute(
        "UPDATE usage_records SET quota_units = 1 WHERE source = 'api' AND status_code <> 429 AND quota_units = 0"
    )
    op.execute("UPDATE usage_rollups SET quota_units = calls - rate_limited WHERE source = 'api'")
    _retype(backwards=False)


def downgrade():
    _retype(backwards=True)
    op.execute("UPDATE usage_rollups SET quota_units = 0 WHERE source = 'api'")
    op.execute("UPDATE usage_records SET quota_units = 0 WHERE source = 'api'")
    with op.batch_alter_table("usage_dead_letters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_dead_letters_tenant_id"))

    op.drop_table("usage_dead_letters")
