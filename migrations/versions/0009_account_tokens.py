"""one-time links about a user's own account: password resets and e-mail changes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 16:40:00

Only a hash of each link's token is stored; a link works once, until it expires, and a newer
link of the same purpose or a change of password voids it.
"""

import sqlalchemy as sa
from alembic import op

from portal.models import _types as tg_types  # noqa: F401 - column types used below

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "account_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("new_email", sa.String(length=254), nullable=True),
        sa.Column("created_at", tg_types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", tg_types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", tg_types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("requested_from", sa.String(length=45), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_account_tokens_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_account_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_account_tokens_token_hash")),
    )
    with op.batch_alter_table("account_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_account_tokens_user_purpose", ["user_id", "purpose"], unique=False)


def downgrade():
    with op.batch_alter_table("account_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_account_tokens_user_purpose")

    op.drop_table("account_tokens")
