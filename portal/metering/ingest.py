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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
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
            events.extend(unpack_events(fields))
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


# A stream entry holds one API call, or a batch of up to this many outside-service events.
MAX_RECORDS_PER_ENTRY = 1000
# The most entries one read asks for (1,000 was the read batch before it counted records).
MAX_ENTRIES_PER_READ = 1000


@dataclass
class _Batch:
    entries: list[tuple[bytes, dict]]
    records: list[dict]


def _entries_to_ask(wanted_records: int, per_entry: int) -> int:
    """How many entries to read for ``wanted_records``, entries of the last read having held up
    to ``per_entry`` records each (an events entry up to 1,000)."""
    return max(1, min(MAX_ENTRIES_PER_READ, wanted_records // max(per_entry, 1)))


def _size(fields: dict) -> int:
    """An entry's records, estimated without decoding it (for sizing reads only)."""
    raw = fields.get(EVENTS_FIELD)
    return 1 if raw is None else raw.count(b'"idempotency_key"')


class _Reader:
    """Reads the stream's next batch: entries until ``batch_size`` records (or the stream has no
    more), first those other readers left pending (claimed once idle), then new ones."""

    def __init__(self, redis: Redis, consumer: str, batch_size: int, claim_idle_ms: int) -> None:
        self.redis = redis
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.cursor: str | bytes | None = "0-0"  # None once the claim pass is over
        self.per_entry = MAX_RECORDS_PER_ENTRY

    def _claim(self, count: int) -> list[tuple[bytes, dict]]:
        # Redis 6.2 answers [cursor, entries]; Redis 7 adds the ids of deleted entries.
        reply = self.redis.xautoclaim(STREAM, GROUP, self.consumer, self.claim_idle_ms, self.cursor, count=count)
        self.cursor, claimed = reply[0], reply[1]
        if self.cursor in (b"0-0", "0-0"):
            self.cursor = None
        gone = [entry_id for entry_id, fields in claimed if not fields]
        if gone:  # deleted after a commit whose acknowledgement was lost (Redis 6 lists them)
            self.redis.xack(STREAM, GROUP, *gone)
        return [(entry_id, fields) for entry_id, fields in claimed if fields]

    def _new(self, count: int) -> tuple[list[tuple[bytes, dict]], bool]:
        reply = self.redis.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=count)
        entries = reply[0][1] if reply else []
        return entries, len(entries) < count

    def read(self) -> list[tuple[bytes, dict]]:
        """The next batch's entries ([] when the stream has nothing left for this reader)."""
        entries: list[tuple[bytes, dict]] = []
        records = 0
        while records < self.batch_size:
            count = _entries_to_ask(self.batch_size - records, self.per_entry)
            claiming = self.cursor is not None
            if claiming:
                got, drained = self._claim(count), False
            else:
                got, drained = self._new(count)
            if got:
                sizes = [_size(fields) for _, fields in got]
                self.per_entry = max(sizes)
                records += sum(sizes)
                entries.extend(got)
            if claiming and got:
                break  # claimed entries make a batch of their own (claims first, as before)
            if drained:
                break
        return entries


def _fetch(app, reader: _Reader) -> _Batch | None:
    """Read and unpack (and price) the next batch; run in the read-ahead thread."""
    with app.app_context():
        entries = reader.read()
        return _Batch(entries, _records(reader.redis, entries)) if entries else None


def _store_batch(redis: Redis, batch: _Batch, clock: Callable[[], datetime]) -> int:
    records = batch.records
    stored = store_usage(records)
    spenders = {r["tenant_id"] for r in records if r.get("cost")}
    if spenders:  # budgets see the new spend before the batch is acknowledged
        evaluate_budgets(redis, spenders, clock())
    db.session.commit()
    ids = [entry_id for entry_id, _ in batch.entries]
    pipe = redis.pipeline()
    pipe.xack(STREAM, GROUP, *ids)
    pipe.xdel(STREAM, *ids)
    pipe.execute()
    return stored


def ingest_usage(
    redis: Redis,
    batch_size: int = 20_000,
    claim_idle_ms: int = 30_000,
    abandon_after_seconds: float = 120.0,
    time_budget_seconds: float = 20.0,
    consumer: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    read_ahead: bool | None = None,
) -> IngestResult:
    """Store what the stream holds, batch by batch, until it is empty or the time budget is spent.

    A batch is entries until ``batch_size`` records (an events entry holds up to 1,000). With
    ``read_ahead`` (the default on PostgreSQL) the next batch is read, unpacked and priced in a
    thread while the current one is stored; batches are still stored, committed and acknowledged
    one at a time and in order, each only after its commit.
    """
    consumer = consumer or consumer_name()
    ensure_group(redis)
    result = IngestResult()
    result.abandoned = flush_abandoned(redis, abandon_after_seconds)
    deadline = time.monotonic() + time_budget_seconds
    reader = _Reader(redis, consumer, batch_size, claim_idle_ms)
    app = current_app._get_current_object()
    if read_ahead is None:
        read_ahead = db.session.get_bind().dialect.name == "postgresql"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollgate-ingest-read") as pool:
        upcoming: Future | None = None
        while time.monotonic() < deadline:
            if upcoming is not None:
                batch = upcoming.result()
            else:
                entries = reader.read()
                batch = _Batch(entries, _records(redis, entries)) if entries else None
            upcoming = None
            if batch is None:
                break
            if read_ahead and time.monotonic() < deadline:
                upcoming = pool.submit(_fetch, app, reader)
            result.batches += 1
            result.entries += len(batch.entries)
            result.stored += _store_batch(redis, batch, clock)
        if upcoming is not None:  # read past the deadline: store it rather than leave it pending
            batch = upcoming.result()
            if batch is not None:
                result.batches += 1
                result.entries += len(batch.entries)
                result.stored += _store_batch(redis, batch, clock)
    if result.entries:
        log.info(
            "ingested %d stream entries (%d new records) in %d batches", result.entries, result.stored, result.batches
        )
    return result
