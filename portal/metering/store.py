"""Storing metered calls: rows, rollups and key counters, together and exactly once.

:func:`store_usage` is the single write path for usage, whatever its origin (the usage stream,
the demo seed, the benchmark generator). A record whose ``(tenant_id, idempotency_key)`` is
already stored is skipped, and only the records actually inserted reach the rollups and the
keys' counters, so delivering a batch twice counts nothing twice.

On PostgreSQL a batch is copied (``COPY``) into a temporary staging table and one statement
inserts the new rows and folds exactly those into the rollups and key counters. Elsewhere
(SQLite) the rows go in through ``executemany`` and the rollups are summed in Python.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import LATENCY_BUCKETS_MS, LATENCY_COLUMNS, ApiKey, Tenant, UsageRecord, UsageRollup
from ..models.usage import OWN_SERVICE

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
_FIELDS = frozenset(RECORD_FIELDS)
_REQUIRED = tuple(name for name in RECORD_FIELDS if name not in DEFAULTS)
_META = RECORD_FIELDS.index("meta")
_AT = RECORD_FIELDS.index("occurred_at")
_COST = RECORD_FIELDS.index("cost")
_IDEM = RECORD_FIELDS.index("idempotency_key")
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
        elif record["source"] == "external" or record.get("service", OWN_SERVICE) != OWN_SERVICE:
            counts["unpriced"] += 1
        self.duration_ms_max = max(self.duration_ms_max, duration)


def latency_column(duration_ms: int) -> str:
    for bound, column in zip(LATENCY_BUCKETS_MS, LATENCY_COLUMNS, strict=False):
        if duration_ms <= bound:
            return column
    return LATENCY_COLUMNS[-1]


def _check_fields(record: dict[str, Any]) -> None:
    if not record.keys() <= _FIELDS:
        raise ValueError(f"unknown usage record fields: {', '.join(sorted(set(record) - _FIELDS))}")
    missing = [name for name in _REQUIRED if name not in record]
    if missing:
        raise ValueError(f"usage record lacks: {', '.join(missing)}")


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone")
    # Buckets and key counters are in UTC, whatever offset the caller's time had.
    return at if at.tzinfo is UTC else at.astimezone(UTC)


def normalise(record: dict[str, Any]) -> dict[str, Any]:
    """A complete record: defaults filled in, unknown fields refused."""
    _check_fields(record)
    row = {**DEFAULTS, **record}
    row["occurred_at"] = _utc(row["occurred_at"])
    return row


def _first_of_each(rows: Iterable[Any], key) -> list[Any]:
    """A batch may carry the same record twice (a redelivery): keep the first."""
    unique: dict[tuple, Any] = {}
    for row in rows:
        unique.setdefault(key(row), row)
    return list(unique.values())


def store_usage(records: Iterable[dict[str, Any]]) -> int:
    """Store records not stored before, with their rollups and key counters.

    Runs in the caller's transaction (commit after); returns how many records were new.
    Records of a tenant deleted meanwhile are dropped (so one cannot block a batch), and a
    deleted key's calls are stored without a key.
    """
    if db.session.get_bind().dialect.name == "postgresql":
        return _store_by_copy(records)
    return store_usage_portable(records)


# --- PostgreSQL: COPY into a staging table, then one statement -------------------------------

STAGING = "tollgate_usage_staging"
# Created once per connection, emptied at every commit; emptied too before each batch, for
# callers that store several batches in one transaction. A rollback takes it away with the
# transaction that created it, hence IF NOT EXISTS every time.
_PREPARE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING} (
    tenant_id integer NOT NULL,
    api_key_id integer,
    end_user varchar(120),
    source varchar(16),
    service varchar(64),
    endpoint varchar(255),
    method varchar(8),
    category varchar(64),
    status_code integer,
    duration_ms double precision,
    tokens_in bigint,
    tokens_out bigint,
    cached_tokens bigint,
    quota_units bigint,
    model varchar(120),
    cost numeric(18, 8),
    price_id integer,
    error_message text,
    metadata text,
    occurred_at timestamptz,
    idempotency_key varchar(64) NOT NULL
) ON COMMIT DELETE ROWS;
DELETE FROM {STAGING};
"""  # noqa: S608 - built from constants only
_COLUMNS = ", ".join("metadata" if name == "meta" else name for name in RECORD_FIELDS)
_COPY = f"COPY {STAGING} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
# Binary COPY: each field in the staging column's wire form (half the cost of text here).
_COPY_TYPES = (
    ["int4", "int4"]
    + ["text"] * 6
    + ["int4", "float8"]
    + ["int8"] * 4
    + ["text", "numeric", "int4", "text", "text", "timestamptz", "text"]
)
_ROLLUP_DIMENSIONS = ", ".join(DIMENSIONS)
_LATENCY_COUNTS = (
    ",\n        ".join(
        f"count(*) FILTER (WHERE duration_ms > {low} AND duration_ms <= {high})"
        for low, high in zip((-(2**31), *LATENCY_BUCKETS_MS), LATENCY_BUCKETS_MS, strict=False)
    )
    + f",\n        count(*) FILTER (WHERE duration_ms > {LATENCY_BUCKETS_MS[-1]})"
)
_ADDED = ",\n    ".join(
    f"{name} = usage_rollups.{name} + EXCLUDED.{name}" for name in (*SUMS, *LATENCY_COLUMNS, "cost")
)
# Deleted tenants' records are dropped and deleted keys forgotten by the joins; only the rows
# the INSERT returns (the new ones) reach the rollups and the key counters. Rollup rows are
# written in key order so that two writers never wait on each other in a cycle.
_MERGE = f"""
WITH staged AS (
    SELECT s.tenant_id, k.id AS api_key_id, s.end_user, s.source, s.service, s.endpoint, s.method,
        s.category, s.status_code, s.duration_ms::integer, s.tokens_in, s.tokens_out, s.cached_tokens,
        s.quota_units, s.model, s.cost, s.price_id, s.error_message, s.metadata::jsonb, s.occurred_at,
        s.idempotency_key
    FROM {STAGING} s
    JOIN tenants t ON t.id = s.tenant_id
    LEFT JOIN api_keys k ON k.id = s.api_key_id
), inserted AS (
    INSERT INTO usage_records ({_COLUMNS})
    SELECT * FROM staged
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING tenant_id, source, service, endpoint, method, category, model,
        coalesce(api_key_id, 0) AS api_key_id, end_user, status_code, duration_ms, tokens_in,
        tokens_out, cached_tokens, quota_units, cost, occurred_at
), bucketed AS (
    SELECT i.*, g.granularity, date_trunc(g.granularity, i.occurred_at, 'UTC') AS bucket_start
    FROM inserted i CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
), rolled_up AS (
    INSERT INTO usage_rollups (tenant_id, granularity, bucket_start, {_ROLLUP_DIMENSIONS},
        {", ".join(SUMS)}, cost, duration_ms_max, {", ".join(LATENCY_COLUMNS)})
    SELECT tenant_id, granularity, bucket_start, {_ROLLUP_DIMENSIONS},
        count(*),
        count(*) FILTER (WHERE status_code >= 400),
        count(*) FILTER (WHERE status_code = 429),
        sum(tokens_in), sum(tokens_out), sum(cached_tokens), sum(quota_units),
        count(*) FILTER (WHERE cost IS NULL AND (source = 'external' OR service <> 'tollgate')),
        sum(duration_ms),
        coalesce(sum(cost), 0),
        max(duration_ms),
        {_LATENCY_COUNTS}
    FROM bucketed
    GROUP BY tenant_id, granularity, bucket_start, {_ROLLUP_DIMENSIONS}
    ORDER BY tenant_id, granularity, bucket_start, {_ROLLUP_DIMENSIONS}
    ON CONFLICT ON CONSTRAINT uq_usage_rollups_dimensions DO UPDATE SET
    {_ADDED},
    duration_ms_max = greatest(usage_rollups.duration_ms_max, EXCLUDED.duration_ms_max)
), used_keys AS (
    UPDATE api_keys SET usage_count = api_keys.usage_count + used.calls,
        last_used_at = greatest(api_keys.last_used_at, used.last_at)
    FROM (
        SELECT api_key_id, count(*) AS calls, max(occurred_at) AS last_at
        FROM inserted WHERE source = 'api' AND api_key_id <> 0 GROUP BY api_key_id
    ) used
    WHERE api_keys.id = used.api_key_id
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM {STAGING}) - (SELECT count(*) FROM staged)
"""  # noqa: S608 - built from constants only


_ROW = itemgetter(*RECORD_FIELDS)


def _copy_row(record: dict[str, Any]) -> tuple:
    """A record as a staging row, in ``RECORD_FIELDS`` order."""
    if not record.keys() <= _FIELDS:
        _check_fields(record)
    try:
        row = _ROW(record)
    except KeyError:  # fields left at their defaults
        try:
            row = _ROW({**DEFAULTS, **record})
        except KeyError:
            _check_fields(record)
            raise
    at, cost, meta = row[_AT], row[_COST], row[_META]
    if at.tzinfo is UTC and (cost is None or cost.__class__ is Decimal) and meta is None:
        return row  # as most records come: nothing to convert
    row = list(row)
    row[_AT] = _utc(at)
    if cost is not None and cost.__class__ is not Decimal:
        row[_COST] = Decimal(str(cost))
    if meta is not None:
        row[_META] = json.dumps(meta, separators=(",", ":"))
    return tuple(row)


def _store_by_copy(records: Iterable[dict[str, Any]]) -> int:
    rows = [_copy_row(r) for r in records]
    if not rows:
        return 0
    rows = _first_of_each(rows, key=lambda row: (row[0], row[_IDEM]))
    db.session.flush()  # what the caller added (a tenant, a key) must be visible to the joins
    # The session's own connection, so the rows join the caller's transaction.
    connection = db.session.connection().connection.driver_connection
    with connection.cursor() as cursor:
        cursor.execute(_PREPARE_STAGING)
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        cursor.execute(_MERGE)
        inserted, dropped = cursor.fetchone()
    if dropped:
        log.warning("dropped %d usage records of deleted tenants", dropped)
    return inserted


# --- any database: executemany, rollups summed in Python -------------------------------------


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


def store_usage_portable(records: Iterable[dict[str, Any]]) -> int:
    """:func:`store_usage` through ``executemany`` on any database (SQLite's path, and
    PostgreSQL's before COPY: the benchmark's baseline)."""
    rows = [normalise(r) for r in records]
    unique = _first_of_each(rows, key=lambda r: (r["tenant_id"], r["idempotency_key"]))
    unique = _drop_orphans(unique) if unique else unique
    if not unique:
        return 0
    inserted = _insert_new_records(unique)
    _upsert_rollups(inserted)
    _bump_key_counters(inserted)
    return len(inserted)
