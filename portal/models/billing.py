"""Closed billing periods."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import FineMoney, FineMoneySum, MoneySum, UTCDateTime, utcnow


class Statement(db.Model):
    """What a tenant owes for one billing period."""

    __tablename__ = "statements"
    __table_args__ = (UniqueConstraint("tenant_id", "period_start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    plan_code: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    included_requests: Mapped[int | None] = mapped_column(BigInteger)
    overage_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    plan_fee: Mapped[Decimal] = mapped_column(MoneySum)
    overage_amount: Mapped[Decimal] = mapped_column(MoneySum, default=Decimal("0.00"))
    token_cost: Mapped[Decimal] = mapped_column(MoneySum, default=Decimal("0.00"))
    service_cost: Mapped[Decimal] = mapped_column(MoneySum, default=Decimal("0.00"))
    # Late usage of earlier periods billed on this statement (lines of kind "adjustment").
    adjustments: Mapped[Decimal] = mapped_column(MoneySum, default=Decimal("0.00"))
    # Outside calls of the period with no price yet: listed, never billed as $0.
    unpriced_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[Decimal] = mapped_column(MoneySum)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    lines: Mapped[list[StatementLine]] = relationship(
        back_populates="statement", cascade="all, delete-orphan", order_by="StatementLine.position"
    )


class StatementLine(db.Model):
    __tablename__ = "statement_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    # plan, overage, tokens (priced by tokens), service (per call or unit), unpriced, adjustment
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(BigInteger, default=1)
    unit_price: Mapped[Decimal | None] = mapped_column(FineMoney)
    # Rounded once, half up, to the cent; None for unpriced calls (listed, not billed).
    amount: Mapped[Decimal | None] = mapped_column(MoneySum)
    # The amount before rounding: what later adjustments and reconciliation compare with.
    exact_amount: Mapped[Decimal | None] = mapped_column(FineMoneySum)
    service: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(120))
    # For an adjustment, the closed period ("2026-10") whose late usage it bills.
    reference_period: Mapped[str | None] = mapped_column(String(7))

    statement: Mapped[Statement] = relationship(back_populates="lines")
