"""Budgets, alert rules, alerts, notification channels and their deliveries."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, ForeignKey, Index, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import FineMoney, JSONType, Money, UTCDateTime, utcnow

SEVERITIES = ("warning", "critical")
ALERT_STATUSES = ("active", "acknowledged", "resolved")
CHANNEL_KINDS = ("email", "slack", "webhook")
DELIVERY_STATUSES = ("pending", "sent", "failed")


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
    spend: Mapped[Decimal] = mapped_column(FineMoney)
    amount: Mapped[Decimal] = mapped_column(Money)
    crossed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertRule(db.Model):
    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    # response_time, error_rate, usage_spike, unauthorized_access, quota_usage, budget...
    metric: Mapped[str] = mapped_column(String(32))
    warning_threshold: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    critical_threshold: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    window_minutes: Mapped[int] = mapped_column(Integer, default=60)
    service: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    budget_id: Mapped[int | None] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    cooldown_minutes: Mapped[int] = mapped_column(Integer, default=60)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alert(db.Model):
    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_tenant_status_last", "tenant_id", "status", "last_triggered_at"),
        Index("ix_alerts_tenant_dedup", "tenant_id", "dedup_key"),
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
    value: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    threshold: Mapped[Decimal | None] = mapped_column(Numeric(18, 6))
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    first_triggered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_triggered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meta: Mapped[dict | None] = mapped_column("metadata", JSONType)

    rule: Mapped[AlertRule | None] = relationship()


class NotificationChannel(db.Model):
    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # An email address, a Slack incoming-webhook URL or a webhook URL.
    target: Mapped[str] = mapped_column(String(500))
    # Webhooks are signed with it (HMAC-SHA256) so receivers can check the sender.
    signing_secret: Mapped[str | None] = mapped_column(String(128))
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationDelivery(db.Model):
    __tablename__ = "notification_deliveries"
    __table_args__ = (Index("ix_notification_deliveries_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
