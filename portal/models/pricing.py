"""Limits on outside services and versioned model prices."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import FineMoney, JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from .tenancy import Tenant

WINDOWS = ("minute", "hour", "day", "month")


LIMIT_UNITS = ("requests", "quota_units")
PRICE_SOURCES = ("tollgate", "genai-prices", "operator")


class ServiceLimit(db.Model):
    """A tenant's limit on an outside service, or on one model of it (seed defaults: groq
    30/min and 14,400/day, twitter 1,500/month, youtube 10,000 quota units/day)."""

    __tablename__ = "service_limits"
    __table_args__ = (UniqueConstraint("tenant_id", "service", "model", "window"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    service: Mapped[str] = mapped_column(String(64))
    # '' limits every model of the service together.
    model: Mapped[str] = mapped_column(String(120), default="")
    window: Mapped[str] = mapped_column(String(8))
    limit_value: Mapped[int] = mapped_column(BigInteger)
    # What the limit counts: calls, or quota units (YouTube's 10,000 units a day).
    unit: Mapped[str] = mapped_column(String(16), default="requests")

    tenant: Mapped[Tenant] = relationship()


class ModelPrice(db.Model):
    """One version of a price, in force from ``effective_from`` until ``effective_to``
    (open-ended if None). A row is never changed once records were priced with it: a new
    price is a new version. ``tenant_id`` set means a tenant's negotiated price."""

    __tablename__ = "model_prices"
    __table_args__ = (Index("ix_model_prices_lookup", "service", "model", "effective_from"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    service: Mapped[str] = mapped_column(String(64))
    # '' prices every model of the service (e.g. Twitter per call).
    model: Mapped[str] = mapped_column(String(120), default="")
    # A regular expression a model name must match in full to take this price (e.g. a dated
    # name of the family); None: the name itself or a dated version of it.
    model_pattern: Mapped[str | None] = mapped_column(String(255))
    # tollgate (shipped), genai-prices (imported catalog) or operator (prices set).
    source: Mapped[str] = mapped_column(String(16), default="operator")
    input_per_million: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    output_per_million: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    # None: cached input tokens cost the input price.
    cached_input_per_million: Mapped[Decimal | None] = mapped_column(FineMoney)
    # Prices for large requests: [{"above_input_tokens": N, "input_per_million": "...",
    # "output_per_million": "...", "cached_input_per_million": "..."}], ascending.
    tiers: Mapped[list | None] = mapped_column(JSONType)
    per_request: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    per_quota_unit: Mapped[Decimal] = mapped_column(FineMoney, default=Decimal(0))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime)
    effective_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
