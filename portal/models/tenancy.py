"""Plans, tenants, their users and their subscriptions."""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal

from flask_login import UserMixin
from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, false, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import Money, UTCDateTime, utcnow

ROLES = ("owner", "admin", "member")
SUBSCRIPTION_STATUSES = ("active", "past_due", "canceled", "ended")


class Plan(db.Model):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(80))
    monthly_price: Mapped[Decimal] = mapped_column(Money)
    # None means unlimited.
    monthly_quota: Mapped[int | None] = mapped_column(BigInteger)
    per_minute: Mapped[int] = mapped_column(Integer)
    per_hour: Mapped[int] = mapped_column(Integer)
    per_day: Mapped[int] = mapped_column(Integer)
    monthly_token_allowance: Mapped[int | None] = mapped_column(BigInteger)
    # Price per 1,000 requests over the quota; None means the plan has no overage.
    overage_price_per_1000: Mapped[Decimal | None] = mapped_column(Money)
    retention_days: Mapped[int] = mapped_column(Integer)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def limit_string(self) -> str:
        """The plan's windows in Flask-Limiter's notation."""
        return f"{self.per_minute}/minute;{self.per_hour}/hour;{self.per_day}/day"

    @property
    def is_unlimited(self) -> bool:
        return self.monthly_quota is None

    @property
    def allows_overage(self) -> bool:
        return self.overage_price_per_1000 is not None

    def __repr__(self) -> str:
        return f"<Plan {self.code}>"


class Tenant(db.Model):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Service-limit acquires with Redis unreachable: "open" (allowed, best effort) or "closed".
    limits_when_redis_down: Mapped[str] = mapped_column(String(8), default="open")
    # Owners and admins must sign in with a second factor: one without it is sent to set it up.
    require_two_factor: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Deleting a tenant deletes what it owns (ON DELETE CASCADE in the database).
    users: Mapped[list[User]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", passive_deletes=True
    )
    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="tenant", order_by="Subscription.started_at", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def subscription(self) -> Subscription | None:
        """The subscription in force (the one not yet ended)."""
        return db.session.scalar(
            select(Subscription)
            .where(Subscription.tenant_id == self.id, Subscription.ended_at.is_(None))
            .order_by(Subscription.started_at.desc())
            .limit(1)
        )

    def __repr__(self) -> str:
        return f"<Tenant {self.slug}>"


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="member")
    is_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Two-factor sign-in (TOTP, RFC 6238): the shared secret (base32) once it is confirmed with a
    # code, when that was, and the time step of the last code accepted (each code works once).
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)

    tenant: Mapped[Tenant] = relationship(back_populates="users")

    @property
    def is_active(self) -> bool:  # Flask-Login refuses sessions of disabled users
        return self.is_enabled and self.tenant.is_active

    # The key of the portal session this object was signed in or loaded for (not a column).
    session_key = None

    @property
    def has_two_factor(self) -> bool:
        return self.totp_enabled_at is not None

    def get_id(self) -> str:
        # A password change alters the fingerprint and so ends every older session; the session
        # key ties the id (and the remember cookie made from it) to one server-side session.
        fingerprint = hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]
        user_id = f"{self.id}-{fingerprint}"
        return f"{user_id}-{self.session_key}" if self.session_key else user_id

    def __repr__(self) -> str:
        return f"<User {self.email}>"


class Subscription(db.Model):
    """A tenant on a plan for a stretch of time; a plan change ends one and starts another."""

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_tenant_started", "tenant_id", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    # On a paid plan the admin may let calls go on past the quota, billed as overage.
    allow_overage: Mapped[bool] = mapped_column(Boolean, default=False)
    overage_cap: Mapped[Decimal | None] = mapped_column(Money)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A downgrade waits for the end of the period: the plan the next period starts on.
    scheduled_plan_id: Mapped[int | None] = mapped_column(ForeignKey("plans.id"))

    tenant: Mapped[Tenant] = relationship(back_populates="subscriptions")
    plan: Mapped[Plan] = relationship(foreign_keys=[plan_id])
    scheduled_plan: Mapped[Plan | None] = relationship(foreign_keys=[scheduled_plan_id])
