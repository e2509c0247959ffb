"""Column types and helpers shared by the models."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import JSON, BigInteger, DateTime, Integer, Numeric, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB

# A 64-bit key that still auto-increments on SQLite (which only does so for INTEGER).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

# Amounts of money: exact decimals (PostgreSQL NUMERIC), returned as Decimal.
Money = Numeric(12, 2, asdecimal=True)
# Per-call costs and unit prices are fractions of a cent.
FineMoney = Numeric(18, 8, asdecimal=True)
# Sums of them (a rollup's cost, a statement's lines and totals): wide enough for every call a
# tenant's windows can admit, each at the most a call may cost (portal.costs.prices.MAX_CALL_COST).
MoneySum = Numeric(20, 2, asdecimal=True)
FineMoneySum = Numeric(28, 8, asdecimal=True)

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Tollgate stores UTC-aware times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def as_money(value: Decimal | int | float | str | None) -> Decimal:
    """A Decimal rounded to the cent (None reads as zero)."""
    if value is None:
        return Decimal("0.00")
    return Decimal(str(value)).quantize(Decimal("0.01"))
