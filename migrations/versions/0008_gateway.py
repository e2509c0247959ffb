"""gateway routes and service tokens

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 11:45:25

The operator's own API routes that Tollgate admits, forwards and meters (``flask gateway add``),
an index of their calls still waiting for a price (the recompute job's second work list), and
the service tokens with which services in other processes verify customer keys
(``flask create-service-token``; only a hash is kept).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from portal.models import _types as tg_types  # noqa: F401 - column types used below

# revision identifiers, used by Alembic.
revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "gateway_routes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("upstream_url", sa.String(length=2048), nullable=False),
        sa.Column("methods", sa.String(length=120), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("plans", sa.String(length=255), nullable=False),
        sa.Column(
            "upstream_headers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("max_body_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", tg_types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_routes")),
        sa.UniqueConstraint("path", name=op.f("uq_gateway_routes_path")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_records_unpriced_routed",
            ["tenant_id", "occurred_at"],
            unique=False,
            postgresql_where=sa.text("cost IS NULL AND source = 'api' AND service <> 'tollgate'"),
            sqlite_where=sa.text("cost IS NULL AND source = 'api' AND service <> 'tollgate'"),
        )
    op.create_table(
        "service_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", tg_types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", tg_types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_service_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_service_tokens_token_hash")),
    )


def downgrade():
    op.drop_table("service_tokens")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_unpriced_routed")
    op.drop_table("gateway_routes")
