"""Budgets, alert rules, alerts, notification channels and their deliveries."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, ForeignKey, Index, Integer, Numeric, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import FineMoneySum, JSONType, Money, UTCDateTime, utcnow

if TYPE_CHECKING:
    from .tenancy import Tenant

SEVERITIES = ("warning", "critical")
ALERT_STATUSES = ("active", "acknowledged", "resolved")
CHANNEL_KINDS = ("email", "slack", "webhook")
DELIVERY_STATUSES = ("pending", "sent", "failed")
EVENT_TYPES = ("alert.triggered", "alert.escalated", "alert.resolved", "test")


class Budget(db.Model):
    """A monthly spending limit for a tenant, optionally scoped to a service, key or end user."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    service: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    end_user: Mapped[str | None] = mapped_column(String(120))
    monthly_amount: Mapped[Decimal] = mapped_column(Money)
    # Percentages of the amount at which to warn, e.g. [50, 80, 100].
    warning_percentages: Mapped[list] = mapped_column(JSONType, default=lambda: [50, 80, 100])
    hard_stop: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class BudgetCrossing(db.Model):
    """A budget's warning percentage reached in one period: recorded once per period each."""

    __tablename__ = "budget_crossings"
    __table_args__ = (UniqueConstraint("budget_id", "period_start", "percentage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    percentage: Mapped[int] = mapped_column(Integer)
    # The spend when the crossing was noticed, and the budget's amount then.
    spend: Mapped[Decimal] = mapped_column(FineMoneySum)
    amount: Mapped[Decimal] = mapped_column(Money)
    crossed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertRule(db.Model):
    """A condition the worker evaluates every minute for one tenant.

    Default rules (``kind`` names the default: quota_usage, day_window, rate_limited,
    error_rate, response_time, usage_spike, unauthorized_access, daily_cost, budget) are made for
    every tenant; ``kind = "custom"`` rules are the tenant's own. Thresholds are in the metric's
    unit (percent, milliseconds, calls, dollars, times the normal rate), or with
    ``threshold_unit = "absolute"`` a count for the quota metrics.
    """

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="custom")
    name: Mapped[str] = mapped_column(String(120))
    metric: Mapped[str] = mapped_column(String(32))
    comparator: Mapped[str] = mapped_column(String(4), default="gt")
    threshold_unit: Mapped[str] = mapped_column(String(16), default="percent")
    warning_threshold: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    critical_threshold: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    window_minutes: Mapped[int] = mapped_column(Integer, default=60)
    # Rate rules (error rate, latency, spike) stay quiet below this many calls in the window.
    min_volume: Mapped[int] = mapped_column(Integer, default=0)
    # Filters; None matches everything.
    service: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    end_user: Mapped[str | None] = mapped_column(String(120))
    budget_id: Mapped[int | None] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    cooldown_minutes: Mapped[int] = mapped_column(Integer, default=60)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    tenant: Mapped[Tenant] = relationship()


class AlertSettings(db.Model):
    """A tenant's alerting preferences."""

    __tablename__ = "alert_settings"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    # An alert resolves itself after its condition has been clear for this many evaluations.
    resolve_after_evaluations: Mapped[int] = mapped_column(Integer, default=3)
    notify_on_resolve: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Alert(db.Model):
    """One alert per rule and subject while it is open (its ``dedup_key``); a period's
    threshold carries the period in its key, so it fires once per period."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_tenant_status_last", "tenant_id", "status", "last_triggered_at"),
        Index("ix_alerts_tenant_dedup", "tenant_id", "dedup_key"),
        # At most one open alert per dedup key, even with two evaluators racing.
        Index(
            "uq_alerts_open_dedup",
            "tenant_id",
            "dedup_key",
            unique=True,
            postgresql_where=text("status <> 'resolved'"),
            sqlite_where=text("status <> 'resolved'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alert_rules.id", ondelete="SET NULL"))
    alert_type: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="active")
    title: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text, default="")
    dedup_key: Mapped[str] = mapped_column(String(200))
    # What the alert is about: "tenant", or e.g. "budget:7:80".
    subject: Mapped[str] = mapped_column(String(120), default="tenant")
    # The billing period or day of a period threshold ("2026-11", "2026-11-18"), else None.
    period_key: Mapped[str | None] = mapped_column(String(16))
    value: Mapped[Decimal | None] = mapped_column(Numeric(28, 6))
    threshold: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    # Evaluations in a row that found the condition clear (resolves at the tenant's setting).
    clear_evaluations: Mapped[int] = mapped_column(Integer, default=0)
    first_triggered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_triggered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When a notification last went out for it (repeats wait for the rule's cooldown).
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "auto" when its condition cleared, "user" when someone resolved it.
    resolved_by: Mapped[str | None] = mapped_column(String(8))
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    meta: Mapped[dict | None] = mapped_column("metadata", JSONType)

    rule: Mapped[AlertRule | None] = relationship()


class NotificationChannel(db.Model):
    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(120), default="")
    # An email address, a Slack incoming-webhook URL or a webhook URL.
    target: Mapped[str] = mapped_column(String(500))
    # Webhooks are signed with it (a Standard Webhooks ``whsec_`` secret).
    signing_secret: Mapped[str | None] = mapped_column(String(128))
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Why Tollgate turned the channel off (e.g. Slack answered 404 channel_not_found).
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class NotificationDelivery(db.Model):
    """The outbox: one row per notification and channel, written in the transaction that
    changed the alert, and sent (at least once, always with the same ``message_id``) by the
    deliver-notifications job."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_tenant_created", "tenant_id", "created_at"),
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # None for a test message.
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True)
    # alert.triggered, alert.escalated, alert.resolved or test.
    event_type: Mapped[str] = mapped_column(String(32), default="alert.triggered")
    # The Standard Webhooks ``webhook-id`` (and e-mail Message-ID): the same on every attempt.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    # The event as it was when the alert changed; every attempt sends exactly this.
    payload: Mapped[dict] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A sender holds the row until then; a sender that died lets it go when it passes.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    channel: Mapped[NotificationChannel] = relationship()


class Notification(db.Model):
    """An in-portal notification for one user; unread until ``read_at``."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_read", "user_id", "read_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
