"""The audit trail: who did what, when, from where."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ._types import BigIntPK, JSONType, UTCDateTime, utcnow

ACTIONS = (
    "login.success",
    "login.failure",
    "logout",
    "logout.everywhere",
    "password.changed",
    "password.reset_requested",
    "password.reset",
    "email.change_requested",
    "email.changed",
    "profile.changed",
    "two_factor.enabled",
    "two_factor.disabled",
    "two_factor.reset",
    "two_factor.recovery_used",
    "two_factor.codes_renewed",
    "two_factor.devices_forgotten",
    "api_key.created",
    "api_key.deactivated",
    "api_key.reactivated",
    "api_key.revoked",
    "api_key.rotated",
    "plan.changed",
    "plan.change_scheduled",
    "plan.change_cancelled",
    "settings.changed",
    "service_limit.set",
    "service_limit.removed",
    "budget.created",
    "budget.updated",
    "budget.deleted",
    "alert.acknowledged",
    "alert.resolved",
    "alerts.settings_changed",
    "alert_rule.created",
    "alert_rule.changed",
    "alert_rule.enabled",
    "alert_rule.disabled",
    "alert_rule.deleted",
    "notification_channel.created",
    "notification_channel.tested",
    "invite.created",
    "invite.revoked",
    "invite.accepted",
    "user.role_changed",
    "user.removed",
    # Operator commands (``flask --app wsgi …``), recorded with ``via: command line``.
    "tenant.created",
    "plan.limits_changed",
    "service_token.created",
    "service_token.revoked",
    "gateway_route.added",
    "gateway_route.removed",
    "price.set",
    "prices.imported",
    "usage.dead_letters_retried",
)


class AuditEvent(db.Model):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_created", "tenant_id", "created_at"),
        # The failed-authentication alert counts recent failed sign-ins of every tenant.
        Index("ix_audit_events_action_created", "action", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # None for events that belong to no tenant (a sign-in attempt for an unknown address).
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(32))
    ip_address: Mapped[str | None] = mapped_column(String(45))
    details: Mapped[dict | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
