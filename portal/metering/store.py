"""Storing metered calls: rows, rollups and key counters, together and exactly once.

:func:`store_usage` is the single write path for usage, whatever its origin (the usage stream,
the demo seed, the benchmark generator). A record whose ``(tenant_id, idempotency_key)`` is
already stored is skipped, and only the records actually inserted reach the rollups and the
keys' counters, so delivering a batch twice counts nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import LATENCY_BUCKETS_MS, LATENCY_COLUMNS, ApiKey, Tenant, UsageRecord, UsageRollup

RECORD_FIELDS = (
    "tenant_id",
    "api_key_id",
    "end_user",
    "source",
    "service",
    "endpoint",
    "method",
    "category",
    "status_code",
    "duration_ms",
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "quota_units",
    "model",
    "cost",
    "price_id",
    "error_message",
    "meta",
    "occurred_at",
    "idempotency_key",
)
DEFAULTS: dict[str, Any] = {
    "api_key_id": None,
    "end_user": "",
    "source": "api",
    "method": "GET",
    "category": "",
    "duration_ms": 0,
    "tokens_in": 0,
    "tokens_out": 0,
    "cached_tokens": 0,
    "quota_units": 0,
    "model": "",
    "cost": None,
    "price_id": None,
    "error_message": None,
    "meta": None,
}
DIMENSIONS = ("source", "service", "endpoint", "method", "category", "model", "api_key_id", "end_user")
SUMS = (
    "calls",
    "errors",
    "rate_limited",
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "quota_units",
    "unpriced",
    "duration_ms_sum",
)
CHUNK = 2000
log = logging.getLogger("tollgate.metering")


@dataclass
class _Totals:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SUMS + LATENCY_COLUMNS, 0))
    cost: Decimal = Decimal(0)
    duration_ms_max: int = 0

    def add(self, record: dict[str, Any]) -> None:
        counts = self.counts
        status = record["status_code"]
        duration = int(record["duration_ms"])
        counts["calls"] += 1
        counts["errors"] += status >= 400
        counts["rate_limited"] += status == 429
        counts["tokens_in"] += record["tokens_in"]
        counts["tokens_out"] += record["tokens_out"]
        counts["cached_tokens"] += record["cached_tokens"]
        counts["quota_units"] += record["quota_units"]
        counts["duration_ms_sum"] += duration
        counts[latency_column(duration)] += 1
        if record["cost"] is not None:
            self.cost += Decimal(record["cost"])
        elif record["source"] == "external":
            counts["unpriced"] += 1
        self.duration_ms_max = max(self.duration_ms_max, duration)


def latency_column(duration_ms: int) -> str:
    for bound, column in zip(LATENCY_BUCKETS_MS, LATENCY_COLUMNS, strict=False):
        if duration_ms <= bound:
            return column
    return LATENCY_COLUMNS[-1]


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    """A complete record: defaults filled in, unknown fields refused."""
    unknown = set(record) - set(RECORD_FIELDS)
    if unknown:
        raise ValueError(f"unknown usage record fields: {', '.join(sorted(unknown))}")
    row = {**DEFAULTS, **record}
    missing = [name for name in RECORD_FIELDS if name not in row]
    if missing:
        raise ValueError(f"usage record lacks: {', '.join(missing)}")
    at = row["occurred_at"]
    if at.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone")
    # Buckets and key counters are in UTC, whatever offset the caller's time had.
    row["occurred_at"] = at.astimezone(UTC)
    return row


def _insert(table):
    dialect = db.session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def _insert_new_records(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert the rows not stored yet; return those that were inserted."""
    inserted: list[dict[str, Any]] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        statement = (
            _insert(UsageRecord.__table__)
            .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
            .returning(UsageRecord.tenant_id, UsageRecord.idempotency_key)
        )
        result = db.session.execute(statement, [_db_row(r) for r in chunk])
        new = {(row.tenant_id, row.idempotency_key) for row in result}
        inserted.extend(r for r in chunk if (r["tenant_id"], r["idempotency_key"]) in new)
    return inserted


def _db_row(record: dict[str, Any]) -> dict[str, Any]:
    row = dict(record)
    row["metadata"] = row.pop("meta")
    return row


def _bucket(at: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _upsert_rollups(records: Iterable[dict[str, Any]]) -> None:
    groups: dict[tuple, _Totals] = {}
    for record in records:
        dims = tuple((record[d] or 0) if d == "api_key_id" else (record[d] or "") for d in DIMENSIONS)
        for granularity in ("hour", "day"):
            key = (record["tenant_id"], granularity, _bucket(record["occurred_at"], granularity), dims)
            totals = groups.get(key)
            if totals is None:
                totals = groups[key] = _Totals()
            totals.add(record)
    if not groups:
        return
    rows = []
    for (tenant_id, granularity, bucket_start, dims), totals in groups.items():
        row = {"tenant_id": tenant_id, "granularity": granularity, "bucket_start": bucket_start}
        row.update(zip(DIMENSIONS, dims, strict=True))
        row.update(totals.counts)
        row["cost"] = totals.cost
        row["duration_ms_max"] = totals.duration_ms_max
        rows.append(row)
    table = UsageRollup.__table__
    statement = _insert(table)
    excluded = statement.excluded
    added = {name: table.c[name] + excluded[name] for name in SUMS + LATENCY_COLUMNS + ("cost",)}
    added["duration_ms_max"] = case(
        (excluded.duration_ms_max > table.c.duration_ms_max, excluded.duration_ms_max),
        else_=table.c.duration_ms_max,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["tenant_id", "granularity", "bucket_start", *DIMENSIONS], set_=added
    )
    for start in range(0, len(rows), CHUNK):
        db.session.execute(statement, rows[start : start + CHUNK])


def _bump_key_counters(records: Iterable[dict[str, Any]]) -> None:
    per_key: dict[int, tuple[int, datetime]] = {}
    for record in records:
        key_id = record["api_key_id"]
        if key_id is None or record["source"] != "api":
            continue
        count, last = per_key.get(key_id, (0, record["occurred_at"]))
        per_key[key_id] = (count + 1, max(last, record["occurred_at"]))
    for key_id, (count, last) in per_key.items():
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(
                usage_count=ApiKey.usage_count + count,
                last_used_at=case(
                    (ApiKey.last_used_at.is_(None), last),
                    (ApiKey.last_used_at < last, last),
                    else_=ApiKey.last_used_at,
                ),
            )
        )


def _drop_orphans(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of tenants deleted meanwhile are dropped; a deleted key's calls keep no key."""
    tenants = set(db.session.scalars(select(Tenant.id).where(Tenant.id.in_({r["tenant_id"] for r in rows}))))
    key_ids = {r["api_key_id"] for r in rows if r["api_key_id"] is not None}
    keys = set(db.session.scalars(select(ApiKey.id).where(ApiKey.id.in_(key_ids)))) if key_ids else set()
    kept = []
    for row in rows:
        if row["tenant_id"] not in tenants:
            continue
        if row["api_key_id"] is not None and row["api_key_id"] not in keys:
            row["api_key_id"] = None
        kept.append(row)
    if len(kept) < len(rows):
        log.warning("dropped %d usage records of deleted tenants", len(rows) - len(kept))
    return kept


def store_usage(records: Iterable[dict[str, Any]]) -> int:
    """Store records not stored before, with their rollups and key counters.

    Runs in the caller's transaction (commit after); returns how many records were new.
    Records of a tenant deleted meanwhile are dropped (so one cannot block a batch).
    """
    rows = [normalise(r) for r in records]
    # A batch may carry the same record twice (a redelivery): keep the first.
    unique = list({(r["tenant_id"], r["idempotency_key"]): r for r in reversed(rows)}.values())
    unique = _drop_orphans(unique) if unique else unique
    if not unique:
        return 0
    inserted = _insert_new_records(unique)
    _upsert_rollups(inserted)
    _bump_key_counters(inserted)
    return len(inserted)
