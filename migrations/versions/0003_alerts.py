"""alerts: rules, settings, alerts, channels, the delivery outbox, in-portal notifications

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:35:06.748488

"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from portal.models import _types as tg_types  # noqa: F401 - column types used below
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


# The default rules every tenant gets (new tenants get portal.alerts.rules.DEFAULT_RULES, the
# same list): kind, name, metric, comparator, unit, warning, critical, window, min volume.
DEFAULT_RULES = [
    ("quota_usage", "Monthly quota", "quota_usage", "gte", "percent", 80, 100, 0, 0),
    ("day_window", "Daily request limit", "day_window", "gte", "percent", 80, 100, 1440, 0),
    ("rate_limited", "Rate-limited calls", "rate_limited", "gte", "absolute", 1, 100, 60, 0),
    ("error_rate", "Error rate", "error_rate", "gt", "percent", 5, 10, 60, 20),
    ("response_time", "p95 response time", "p95_latency", "gt", "absolute", 1000, 2000, 60, 20),
    ("usage_spike", "Usage spike", "usage_spike", "gt", "absolute", 2, 3, 60, 100),
    ("unauthorized_access", "Failed authentications", "failed_auth", "gt", "absolute", None, 5, 60, 0),
    ("daily_cost", "Daily cost", "daily_cost", "gte", "absolute", 50, 100, 1440, 0),
    ("budget", "Budget thresholds", "budget", "gte", "percent", None, None, 0, 0),
]


def insert_default_rules():
    tenants = sa.table("tenants", sa.column("id"))
    rules = sa.table(
        "alert_rules",
        *(sa.column(c) for c in ("tenant_id", "kind", "name", "metric", "comparator", "threshold_unit",
                                 "warning_threshold", "critical_threshold", "window_minutes", "min_volume",
                                 "is_enabled", "cooldown_minutes")),
        sa.column("created_at", tg_types.UTCDateTime()),
        sa.column("updated_at", tg_types.UTCDateTime()),
    )
    bind = op.get_bind()
    now = datetime.now(UTC)
    for kind, name, metric, comparator, unit, warning, critical, window, volume in DEFAULT_RULES:
        have = sa.select(rules.c.tenant_id).where(rules.c.kind == kind)
        chosen = sa.select(
            tenants.c.id, sa.literal(kind), sa.literal(name), sa.literal(metric), sa.literal(comparator),
            sa.literal(unit), sa.literal(warning, sa.Numeric(18, 6)), sa.literal(critical, sa.Numeric(18, 6)),
            sa.literal(window), sa.literal(volume), sa.true(), sa.literal(60),
            sa.literal(now, tg_types.UTCDateTime()), sa.literal(now, tg_types.UTCDateTime()),
        ).where(tenants.c.id.not_in(have))
        bind.execute(rules.insert().from_select(
            ["tenant_id", "kind", "name", "metric", "comparator", "threshold_unit", "warning_threshold",
             "critical_threshold", "window_minutes", "min_volume", "is_enabled", "cooldown_minutes",
             "created_at", "updated_at"], chosen
        ))


def upgrade():
    op.create_table('alert_settings',
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('resolve_after_evaluations', sa.Integer(), nullable=False),
    sa.Column('notify_on_resolve', sa.Boolean(), nullable=False),
    sa.Column('updated_at', tg_types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_alert_settings_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_alert_settings'))
    )
    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=True),
    sa.Column('event_type', sa.String(length=32), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', tg_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('read_at', tg_types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_notifications_alert_id_alerts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_notifications_tenant_id_tenants'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_notifications_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notifications_tenant_id'), ['tenant_id'], unique=False)
        batch_op.create_index('ix_notifications_user_read', ['user_id', 'read_at'], unique=False)

    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=32), nullable=False, server_default='custom'))
        batch_op.add_column(sa.Column('comparator', sa.String(length=4), nullable=False, server_default='gt'))
        batch_op.add_column(sa.Column('threshold_unit', sa.String(length=16), nullable=False, server_default='percent'))
        batch_op.add_column(sa.Column('min_volume', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('endpoint', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('end_user', sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column('updated_at', tg_types.UTCDateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()))

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject', sa.String(length=120), nullable=False, server_default='tenant'))
        batch_op.add_column(sa.Column('period_key', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('clear_evaluations', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('last_notified_at', tg_types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('escalated_at', tg_types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('resolved_by', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('resolved_by_id', sa.Integer(), nullable=True))
        batch_op.create_index('uq_alerts_open_dedup', ['tenant_id', 'dedup_key'], unique=True, postgresql_where=sa.text("status <> 'resolved'"), sqlite_where=sa.text("status <> 'resolved'"))
        batch_op.create_foreign_key(batch_op.f('fk_alerts_resolved_by_id_users'), 'users', ['resolved_by_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('notification_channels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=120), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('disabled_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('disabled_at', tg_types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('updated_at', tg_types.UTCDateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()))

    # Nothing wrote deliveries before this revision; the outbox's rows need a message id and a
    # payload, which an old row could not have.
    op.execute("DELETE FROM notification_deliveries")
    with op.batch_alter_table('notification_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_type', sa.String(length=32), nullable=False, server_default='alert.triggered'))
        batch_op.add_column(sa.Column('message_id', sa.String(length=64), nullable=False))
        batch_op.add_column(sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', tg_types.UTCDateTime(timezone=True), nullable=False))
        batch_op.add_column(sa.Column('locked_until', tg_types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_status_code', sa.Integer(), nullable=True))
        batch_op.alter_column('alert_id',
               existing_type=sa.INTEGER(),
               nullable=True)
        batch_op.create_index('ix_notification_deliveries_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_notification_deliveries_message_id'), ['message_id'])

    with op.batch_alter_table('usage_rollups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('latency_le_2000', sa.BigInteger(), nullable=False, server_default='0'))

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_action_created', ['action', 'created_at'], unique=False)

    insert_default_rules()


def downgrade():
    # The default rules came with this revision (the rules before it have no kind to tell them by).
    op.execute("DELETE FROM alert_rules WHERE kind <> 'custom'")
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_action_created')
    with op.batch_alter_table('usage_rollups', schema=None) as batch_op:
        batch_op.drop_column('latency_le_2000')

    with op.batch_alter_table('notification_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_notification_deliveries_message_id'), type_='unique')
        batch_op.drop_index('ix_notification_deliveries_due')
        batch_op.alter_column('alert_id',
               existing_type=sa.INTEGER(),
               nullable=False)
        batch_op.drop_column('last_status_code')
        batch_op.drop_column('locked_until')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('payload')
        batch_op.drop_column('message_id')
        batch_op.drop_column('event_type')

    with op.batch_alter_table('notification_channels', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('disabled_at')
        batch_op.drop_column('disabled_reason')
        batch_op.drop_column('name')

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_alerts_resolved_by_id_users'), type_='foreignkey')
        batch_op.drop_index('uq_alerts_open_dedup', postgresql_where=sa.text("status <> 'resolved'"), sqlite_where=sa.text("status <> 'resolved'"))
        batch_op.drop_column('resolved_by_id')
        batch_op.drop_column('resolved_by')
        batch_op.drop_column('escalated_at')
        batch_op.drop_column('last_notified_at')
        batch_op.drop_column('clear_evaluations')
        batch_op.drop_column('period_key')
        batch_op.drop_column('subject')

    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('end_user')
        batch_op.drop_column('endpoint')
        batch_op.drop_column('min_volume')
        batch_op.drop_column('threshold_unit')
        batch_op.drop_column('comparator')
        batch_op.drop_column('kind')

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_user_read')
        batch_op.drop_index(batch_op.f('ix_notifications_tenant_id'))

    op.drop_table('notifications')
    op.drop_table('alert_settings')
    # ### end Alembic commands ###
