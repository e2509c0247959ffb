"""Limits on outside services and versioned model prices."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ._types import FineMoney, UTCDateTime

WINDOWS = ("minute", "hour", "day", "month")


class ServiceLimit(db.Model):
    """A tenant's limit on an outside service (seed defaults: groq 30/min, 14,400/day...)."""

    __tablename__ = "service_limits"
    __table_args__ = (UniqueConstraint("tenant_id", "service", "window"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    service: Mapped[str] = mapped_column(String(64))
    window: Mapped[str] = mapped_column(String(8))
    limit_value: Mapped[int] = mapped_column(BigInteger)
    # What the limit counts: calls, or quota units (YouTube's 10,000 units a day).
    unit: Mapped[str] = mapped_column(String(16), default="requests")


class ModelPrice(db.Model):
    """A price in force from ``effective_from`` until ``effective_to`` (open-ended if None)."""

    __tablename__ = "model_prices"
    __table_args__ = (Index("ix_model_prices_lookup", "service", "model", "effective_from"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    service: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(120), default="")
    input_per_million: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    output_per_million: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    per_request: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    per_quota_unit: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    effective_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
