"""Metered calls and their hourly and daily rollups."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ColumnElement, ForeignKey, Index, Integer, String, Text, UniqueConstraint, or_, text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ._types import BigIntPK, FineMoney, FineMoneySum, JSONType, UTCDateTime, utcnow

SOURCES = ("api", "external")
# The service of a call to Tollgate's own API. A call to a gateway route carries the route's
# service instead, and is priced like an outside service's call.
OWN_SERVICE = "tollgate"
GRANULARITIES = ("hour", "day")
# Upper bounds (ms) of the latency histogram kept in each rollup; one more bucket is open-ended.
# 1,000 and 2,000 are the default p95 alert thresholds: a percentile compared with a bound is exact.
LATENCY_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2000, 2500, 5000, 10000)


class UsageRecord(db.Model):
    """One metered call: to Tollgate's protected API (``api``) or reported by the tenant
    about a call it made to an outside service (``external``)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_usage_records_tenant_occurred", "tenant_id", "occurred_at"),
        Index("ix_usage_records_tenant_service_occurred", "tenant_id", "service", "occurred_at"),
        Index("ix_usage_records_tenant_key_occurred", "tenant_id", "api_key_id", "occurred_at"),
        # The recompute job's work list: outside calls still without a price.
        Index(
            "ix_usage_records_unpriced",
            "tenant_id",
            "occurred_at",
            postgresql_where=text("cost IS NULL AND source = 'external'"),
            sqlite_where=text("cost IS NULL AND source = 'external'"),
        ),
        # And calls to gateway routes priced under a service, still without a price.
        Index(
            "ix_usage_records_unpriced_routed",
            "tenant_id",
            "occurred_at",
            postgresql_where=text("cost IS NULL AND source = 'api' AND service <> 'tollgate'"),
            sqlite_where=text("cost IS NULL AND source = 'api' AND service <> 'tollgate'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Not foreign keys: checking them costs a fifth of the insert, and the writer already stores
    # only keys that exist (keys go only with their tenant, whose records go too).
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    end_user: Mapped[str] = mapped_column(String(120), default="")
    source: Mapped[str] = mapped_column(String(16), default="api")
    service: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8), default="GET")
    category: Mapped[str] = mapped_column(String(64), default="")
    status_code: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of ``tokens_in``, those read from the provider's prompt cache (priced at the cached price).
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_units: Mapped[int] = mapped_column(BigInteger, default=0)
    model: Mapped[str] = mapped_column(String(120), default="")
    # None until priced (an outside call with no known price); the recompute job prices it
    # once a price exists. A computed cost never changes.
    cost: Mapped[Decimal | None] = mapped_column(FineMoney)
    # The price version the cost was computed with (see api_key_id on foreign keys).
    price_id: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict | None] = mapped_column("metadata", JSONType)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(64))

    @property
    def tokens_used(self) -> int:
        return self.tokens_in + self.tokens_out


class UsageRollup(db.Model):
    """Calls aggregated per hour or day and per dimension the portal groups by.

    Dimensions without a value hold '' (or 0 for the key) so the unique key is total.
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id",
            "granularity",
            "bucket_start",
            "source",
            "service",
            "endpoint",
            "method",
            "category",
            "model",
            "api_key_id",
            "end_user",
            name="uq_usage_rollups_dimensions",
        ),
        Index("ix_usage_rollups_tenant_granularity_bucket", "tenant_id", "granularity", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    granularity: Mapped[str] = mapped_column(String(8))
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16))
    service: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(120))
    # 0 for calls without a key; not a foreign key, so a rollup outlives a deleted key.
    api_key_id: Mapped[int] = mapped_column(Integer)
    end_user: Mapped[str] = mapped_column(String(120))

    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_limited: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    quota_units: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum of the priced calls' costs; ``unpriced`` counts outside calls with no price yet.
    cost: Mapped[Decimal] = mapped_column(FineMoneySum, default=Decimal(0))
    unpriced: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_ms_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_ms_max: Mapped[int] = mapped_column(Integer, default=0)
    # Latency histogram: counts per LATENCY_BUCKETS_MS bound, then the open-ended bucket.
    latency_le_10: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_25: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_50: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_100: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_250: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_500: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_1000: Mapped[int] = mapped_column(BigInteger, default=0)
    # Added after the others: in rollups written before it, (1000, 2500] sits in latency_le_2500.
    latency_le_2000: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_2500: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_5000: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_le_10000: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_over_10000: Mapped[int] = mapped_column(BigInteger, default=0)


LATENCY_COLUMNS = tuple(f"latency_le_{bound}" for bound in LATENCY_BUCKETS_MS) + ("latency_over_10000",)


class UsageDeadLetter(db.Model):
    """A usage record (or a stream entry) the worker could not store, set aside with the reason
    so that the rest of its batch is stored and the stream moves on.

    ``record`` holds it as JSON text, exactly as it was read (NaN included); ``fingerprint``
    (its hash) makes setting it aside again, after a redelivery, do nothing.
    """

    __tablename__ = "usage_dead_letters"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # Not a foreign key: an entry of a tenant deleted since, or one with no readable tenant, is kept too.
    tenant_id: Mapped[int | None] = mapped_column(Integer, index=True)
    stream_entry_id: Mapped[str] = mapped_column(String(40))
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    record: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when ``usage dead-letters retry`` stored it after all.
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def priced_calls(model: type[UsageRecord] | type[UsageRollup]) -> ColumnElement[bool]:
    """The calls that cost money: outside-service calls reported, and calls to gateway routes
    priced under a service (API calls to Tollgate itself cost nothing beyond the plan)."""
    return or_(model.source == "external", model.service != OWN_SERVICE)
