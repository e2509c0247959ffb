"""The monthly quota counter: a cache of the records, rebuilt from them when Redis lost it.

The admission script counts each admitted call in the tenant's counter for the period
(:func:`portal.kernel.redis_keys.quota_key`). That counter is never the only copy: every admitted
call is also a usage record with ``quota_units`` 1 (a refused one has 0), stored by the worker,
and until then it waits in the usage stream or the in-flight hash. When the period's counter is
missing (a new period, a flush, a failover to a replica that lacked it, an eviction), the
admission script admits nothing for the tenant until it is rebuilt:

1. the admitted calls of the period still in Redis: in the in-flight hash, and in the stream
   from the period's start on (an entry's id is the time it was appended);
2. in one statement, the calls the stored records count (the daily rollups, written in the
   same transaction as the records) and which of the calls of 1. are stored already;
3. ``SET … NX``: the first of several processes rebuilding at once sets the counter, the
   others' values (the same, since nothing was admitted meanwhile) are dropped.

The stream and the in-flight hash are read before the database, so a call that moves from one
to the other meanwhile is found in one of them and counted once. Calls spooled to a server's
disk while Redis was down are not seen until they are replayed (they were not counted then
either).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from sqlalchemy import func, select

from ..extensions import db
from ..kernel.periods import period_bounds
from ..kernel.redis_keys import quota_key
from ..models import UsageRecord, UsageRollup
from .admission import QUOTA_KEPT_AFTER_PERIOD
from .stream import INFLIGHT, STREAM, counted_against_quota

READ_PAGE = 5000
SET_IF_MISSING = """
-- KEYS: the quota counter; ARGV: value, ttl. Sets it only if no one has (nor admitted a call).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return tonumber(ARGV[1]) end
return tonumber(redis.call('GET', KEYS[1]))
"""


def _admitted_waiting(redis: Redis, start: float, end: float, tenant_ids: set[int] | None) -> dict[int, dict[str, int]]:
    """The calls of [start, end) admitted and not yet acknowledged by the worker, by tenant (of
    ``tenant_ids``, or every tenant), id to the units each counted: in the in-flight hash, then
    in the stream."""
    waiting: dict[int, dict[str, int]] = {}

    def consider(raw: bytes | str, fields: dict | None) -> None:
        try:
            data = json.loads(raw)
        except (TypeError, ValueError):
            return  # unreadable: the worker sets it aside, it is never stored
        tenant_id = data.get("t") if isinstance(data, dict) else None
        if not isinstance(tenant_id, int) or (tenant_ids is not None and tenant_id not in tenant_ids):
            return
        at = data.get("at")
        if isinstance(at, int | float) and start <= at < end and (fields is None or counted_against_quota(fields)):
            units = data.get("n", 1)
            waiting.setdefault(tenant_id, {})[str(data.get("id"))] = units if isinstance(units, int) else 1

    for raw in redis.hvals(INFLIGHT):
        consider(raw, None)  # in flight means admitted
    cursor = f"{int(start * 1000)}-0"
    while True:
        entries = redis.xrange(STREAM, min=cursor, max="+", count=READ_PAGE)
        for _, fields in entries:
            if b"r" in fields:
                consider(fields[b"r"], fields)
        if len(entries) < READ_PAGE:
            break
        cursor = "(" + (entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0])
    return waiting


def quota_rollups(start: datetime, end: datetime) -> tuple:
    """The daily rollups of API calls in [start, end), whose ``quota_units`` sum to the calls
    counted against the quota: each admitted call carries one unit, a refused one none."""
    return (
        UsageRollup.granularity == "day",
        UsageRollup.source == "api",
        UsageRollup.bucket_start >= start,
        UsageRollup.bucket_start < end,
    )


def stored_quota_calls(
    tenant_id: int, start: datetime, end: datetime, waiting: dict[str, int] | None = None
) -> tuple[int, int]:
    """In one statement: the units of [start, end) the stored records count against the
    quota, and those of the ``waiting`` calls (id to units) that are stored already."""
    waiting = waiting or {}
    counted = (
        select(func.coalesce(func.sum(UsageRollup.quota_units), 0))
        .where(UsageRollup.tenant_id == tenant_id, *quota_rollups(start, end))
        .scalar_subquery()
    )
    ids = list(waiting)
    stored = (
        select(func.coalesce(func.sum(UsageRecord.quota_units), 0))
        .where(UsageRecord.tenant_id == tenant_id, UsageRecord.idempotency_key.in_(ids))
        .scalar_subquery()
        if ids
        else select(0).scalar_subquery()
    )
    row = db.session.execute(select(counted, stored)).one()
    return int(row[0]), int(row[1])


def rebuilt_count(redis: Redis, tenant_id: int, now: float) -> int:
    """The period's admitted calls, from the records and what Redis still holds of them."""
    period = period_bounds(now)
    waiting = _admitted_waiting(redis, period.start, period.end, {tenant_id}).get(tenant_id, {})
    start, end = (datetime.fromtimestamp(t, UTC) for t in (period.start, period.end))
    counted, already_stored = stored_quota_calls(tenant_id, start, end, waiting)
    return counted + sum(waiting.values()) - already_stored


def rebuild_quota_counter(redis: Redis, tenant_id: int, now: float) -> int:
    """Rebuild the period's counter if it is missing; returns the counter's value."""
    period = period_bounds(now)
    value = rebuilt_count(redis, tenant_id, now)
    ttl = int(period.end - now) + QUOTA_KEPT_AFTER_PERIOD
    return int(redis.register_script(SET_IF_MISSING)(keys=[quota_key(tenant_id, now)], args=[value, ttl]))


def quota_used(redis: Redis, tenant_id: int, at: datetime) -> int:
    """Calls admitted in the period containing ``at``: the counter, rebuilt first if missing."""
    value = redis.get(quota_key(tenant_id, at))
    if value is not None:
        return int(value)
    return rebuild_quota_counter(redis, tenant_id, at.timestamp())


@dataclass(frozen=True)
class CounterDrift:
    tenant_id: int
    counter: int | None  # None: missing (it is rebuilt before the tenant's next call)
    records: int  # the admitted calls the records and Redis hold


def counter_drift(redis: Redis, tenant_ids: list[int], now: datetime) -> list[CounterDrift]:
    """The open period's quota counters that differ from the calls admitted (stored, or still
    in the stream or in flight). Each counter is read before and after the count: one that
    was between the two readings (calls admitted meanwhile) agrees."""
    period = period_bounds(now.timestamp())
    names = [quota_key(tenant_id, now) for tenant_id in tenant_ids]
    if not names:
        return []
    before = redis.mget(names)
    waiting = _admitted_waiting(redis, period.start, period.end, set(tenant_ids))
    start, end = (datetime.fromtimestamp(t, UTC) for t in (period.start, period.end))
    after = redis.mget(names)
    drift = []
    for tenant_id, first, last in zip(tenant_ids, before, after, strict=True):
        ids = waiting.get(tenant_id, {})
        counted, already_stored = stored_quota_calls(tenant_id, start, end, ids)
        admitted = counted + sum(ids.values()) - already_stored
        high = None if last is None else int(last)
        low = high if first is None else int(first)
        if high is None:
            if admitted:
                drift.append(CounterDrift(tenant_id, None, admitted))
        elif not low <= admitted <= high:
            drift.append(CounterDrift(tenant_id, high, admitted))
    return drift
