"""Reading the usage stream into the database: in batches, exactly once.

The stream is read through a consumer group. A batch's records, rollups and key counters are
written in one transaction (:func:`portal.metering.store.store_usage`), and the batch is acknowledged
(and deleted from the stream) only after the commit. A worker killed mid-batch leaves its
entries pending; the next reader claims them once they have been idle ``claim_idle_ms``, and a
batch delivered twice counts nothing twice (records are unique per tenant and id).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from redis import Redis, ResponseError

from ..costs.budgets import evaluate_budgets
from ..costs.events import EVENTS_FIELD, unpack_events
from ..costs.prices import current_price_book
from ..extensions import db
from ..models import utcnow
from .admission import STREAM, flush_abandoned, unpack_record
from .store import store_usage

GROUP = "tollgate-ingest"
log = logging.getLogger("tollgate.ingest")


@dataclass
class IngestResult:
    batches: int = 0
    entries: int = 0
    stored: int = 0
    abandoned: int = 0


def ensure_group(redis: Redis) -> None:
    try:
        redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _records(redis: Redis, entries: list[tuple[bytes, dict]]) -> list[dict]:
    """The entries' usage records: API calls, and outside-service events priced at the price in
    force when each happened (unpriced when none is known yet)."""
    records = []
    events = []
    for _, fields in entries:
        if EVENTS_FIELD in fields:
            events.extend(unpack_events(fields[EVENTS_FIELD]))
        else:
            records.append(unpack_record(fields))
    if events:
        book = current_price_book(redis)
        for event in events:
            quote = book.quote(
                event["tenant_id"],
                event["service"],
                event["model"],
                event["occurred_at"],
                tokens_in=event["tokens_in"],
                tokens_out=event["tokens_out"],
                cached_tokens=event["cached_tokens"],
                quota_units=event["quota_units"],
            )
            event["cost"], event["price_id"] = (quote.cost, quote.price_id) if quote else (None, None)
        records.extend(events)
    return records


def _store_batch(redis: Redis, entries: list[tuple[bytes, dict]], clock: Callable[[], datetime]) -> int:
    records = _records(redis, entries)
    stored = store_usage(records)
    spenders = {r["tenant_id"] for r in records if r.get("cost")}
    if spenders:  # budgets see the new spend before the batch is acknowledged
        evaluate_budgets(redis, spenders, clock())
    db.session.commit()
    ids = [entry_id for entry_id, _ in entries]
    pipe = redis.pipeline()
    pipe.xack(STREAM, GROUP, *ids)
    pipe.xdel(STREAM, *ids)
    pipe.execute()
    return stored


def ingest_usage(
    redis: Redis,
    batch_size: int = 1000,
    claim_idle_ms: int = 30_000,
    abandon_after_seconds: float = 120.0,
    time_budget_seconds: float = 20.0,
    consumer: str | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> IngestResult:
    """Store what the stream holds, batch by batch, until it is empty or the time budget is spent."""
    consumer = consumer or consumer_name()
    ensure_group(redis)
    result = IngestResult()
    result.abandoned = flush_abandoned(redis, abandon_after_seconds)
    deadline = time.monotonic() + time_budget_seconds
    # Entries another reader took but never acknowledged (it died mid-batch).
    cursor = "0-0"
    while time.monotonic() < deadline:
        # Redis 6.2 answers [cursor, entries]; Redis 7 adds the ids of deleted entries.
        reply = redis.xautoclaim(STREAM, GROUP, consumer, claim_idle_ms, cursor, count=batch_size)
        cursor, claimed = reply[0], reply[1]
        gone = [entry_id for entry_id, fields in claimed if not fields]
        if gone:  # deleted after a commit whose acknowledgement was lost (Redis 6 lists them)
            redis.xack(STREAM, GROUP, *gone)
        claimed = [(entry_id, fields) for entry_id, fields in claimed if fields]
        if claimed:
            result.batches += 1
            result.entries += len(claimed)
            result.stored += _store_batch(redis, claimed, clock)
        if cursor in (b"0-0", "0-0"):
            break
    while time.monotonic() < deadline:
        reply = redis.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=batch_size)
        if not reply:
            break
        entries = reply[0][1]
        result.batches += 1
        result.entries += len(entries)
        result.stored += _store_batch(redis, entries, clock)
    if result.entries:
        log.info(
            "ingested %d stream entries (%d new records) in %d batches", result.entries, result.stored, result.batches
        )
    return result
