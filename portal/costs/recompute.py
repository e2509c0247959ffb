"""Pricing calls stored without a price, once a price for them exists: outside-service calls
reported, and calls to gateway routes priced under a service."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from sqlalchemy import bindparam, literal_column, select, tuple_

from ..extensions import db
from ..models import UsageRecord, UsageRollup, utcnow
from .prices import PriceBook, Quote

log = logging.getLogger("tollgate.costs")
# Attempts at one batch that another run priced in part meanwhile (its rows are then left out).
MAX_ATTEMPTS = 5


def _rollup_dimensions() -> tuple[str, ...]:
    """The rollup key's dimension columns, read from its unique constraint."""
    for constraint in UsageRollup.__table__.constraints:
        if constraint.name == "uq_usage_rollups_dimensions":
            names = tuple(column.name for column in constraint.columns)
            return tuple(n for n in names if n not in ("tenant_id", "granularity", "bucket_start"))
    raise LookupError("usage_rollups has no uq_usage_rollups_dimensions key")


DIMENSIONS = _rollup_dimensions()
_PRICING_FIELDS = (
    "id",
    "tenant_id",
    "occurred_at",
    "service",
    "model",
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "quota_units",
    "metadata",
)
_RECORD_COLUMNS = tuple(
    UsageRecord.__table__.c[name] for name in (*_PRICING_FIELDS, *(d for d in DIMENSIONS if d not in _PRICING_FIELDS))
)
# The two work lists, as literal predicates so PostgreSQL uses their partial indexes
# (ix_usage_records_unpriced and ix_usage_records_unpriced_routed).
_WORK_LISTS = {
    "external": (UsageRecord.__table__.c.source == literal_column("'external'"),),
    "routed": (
        UsageRecord.__table__.c.source == literal_column("'api'"),
        UsageRecord.__table__.c.service != literal_column("'tollgate'"),
    ),
}


def _priced_units(row) -> int:
    """What a call's per-unit price applies to: an outside call's quota units; a routed call's
    service units (its quota unit is Tollgate's own)."""
    if row.source == "external":
        return row.quota_units
    meta = row._mapping["metadata"]
    return int(meta.get("units", 0)) if isinstance(meta, dict) else 0


def _bucket(at: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _unpriced_batch(now: datetime, after: tuple | None, size: int, work_list: str) -> list:
    records = UsageRecord.__table__.c
    query = (
        select(*_RECORD_COLUMNS)
        .where(*_WORK_LISTS[work_list], records.cost.is_(None), records.occurred_at <= now)
        .order_by(records.tenant_id, records.occurred_at, records.id)
        .limit(size)
        # A concurrent run skips the rows this one holds (PostgreSQL; SQLite has one writer).
        .with_for_update(skip_locked=True)
    )
    if after is not None:
        query = query.where(tuple_(records.tenant_id, records.occurred_at, records.id) > tuple_(*after))
    return db.session.execute(query).all()


def _price_records(priced: list[tuple[object, Quote]]) -> int:
    table = UsageRecord.__table__
    statement = (
        table.update()
        .where(table.c.id == bindparam("record_id"), table.c.cost.is_(None))
        .values(cost=bindparam("new_cost"), price_id=bindparam("new_price_id"))
    )
    rows = [{"record_id": r.id, "new_cost": q.cost, "new_price_id": q.price_id} for r, q in priced]
    return db.session.execute(statement, rows).rowcount


def _move_rollups(priced: list[tuple[object, Quote]]) -> None:
    """Add each newly priced call's cost to its hour and day rollups and take it off ``unpriced``."""
    deltas: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for record, quote in priced:
        dims = tuple((getattr(record, d) or 0) if d == "api_key_id" else (getattr(record, d) or "") for d in DIMENSIONS)
        for granularity in ("hour", "day"):
            delta = deltas[(record.tenant_id, granularity, _bucket(record.occurred_at, granularity), dims)]
            delta[0] += quote.cost
            delta[1] += 1
    table = UsageRollup.__table__
    key = ("tenant_id", "granularity", "bucket_start", *DIMENSIONS)
    # An UPDATE, not an upsert: a call's rollups were written with it; if retention has removed
    # them since, there is nothing to move (an upsert would invent a rollup without calls).
    statement = (
        table.update()
        .where(*(table.c[name] == bindparam(f"k_{name}") for name in key))
        .values(cost=table.c.cost + bindparam("d_cost"), unpriced=table.c.unpriced - bindparam("d_unpriced"))
    )
    rows = []
    for (tenant_id, granularity, bucket_start, dims), (cost, count) in deltas.items():
        row = {"k_tenant_id": tenant_id, "k_granularity": granularity, "k_bucket_start": bucket_start}
        row.update({f"k_{name}": value for name, value in zip(DIMENSIONS, dims, strict=True)})
        row.update(d_cost=cost, d_unpriced=count)
        rows.append(row)
    db.session.execute(statement, rows)


def _recompute(book: PriceBook, now: datetime, batch: int, work_list: str) -> tuple[int, int]:
    priced = still_unpriced = 0
    after: tuple | None = None
    attempts = 0
    while True:
        rows = _unpriced_batch(now, after, batch, work_list)
        if not rows:
            db.session.commit()
            break
        quoted = []
        missing = 0
        for row in rows:
            quote = book.quote(
                row.tenant_id,
                row.service,
                row.model,
                row.occurred_at,
                tokens_in=row.tokens_in,
                tokens_out=row.tokens_out,
                cached_tokens=row.cached_tokens,
                quota_units=_priced_units(row),
            )
            if quote is None:
                missing += 1
            else:
                quoted.append((row, quote))
        if quoted and _price_records(quoted) != len(quoted):
            # Another run priced some of these meanwhile: start the batch again without them.
            db.session.rollback()
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                raise RuntimeError("usage records keep being priced by another run; giving up this one")
            continue
        if quoted:
            _move_rollups(quoted)
        db.session.commit()
        attempts = 0
        priced += len(quoted)
        still_unpriced += missing
        last = rows[-1]
        after = (last.tenant_id, last.occurred_at, last.id)
        if len(rows) < batch:
            break
    return priced, still_unpriced


def recompute_costs(now: datetime | None = None, batch: int = 5000) -> dict[str, int]:
    """Price the outside calls up to ``now`` stored without a cost whose price now exists, at the
    price in force when each happened, and move their rollups; one transaction per batch. A call
    that has a cost is never touched."""
    now = now or utcnow()
    book = PriceBook.load()
    db.session.commit()
    priced = still_unpriced = 0
    for work_list in _WORK_LISTS:
        done, missing = _recompute(book, now, batch, work_list)
        priced += done
        still_unpriced += missing
    if priced:
        log.info("priced %d calls; %d still have no price", priced, still_unpriced)
    return {"priced": priced, "still_unpriced": still_unpriced}
