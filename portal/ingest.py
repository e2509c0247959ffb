"""Reading the usage stream into the database: in batches, exactly once.

The stream is read through a consumer group. A batch's records, rollups and key counters are
written in one transaction (:func:`portal.metering.store.store_usage`), and the batch is acknowledged
(and deleted from the stream) only after the commit. A worker killed mid-batch leaves its
entries pending; the next reader claims them once they have been idle ``claim_idle_ms``, and a
batch delivered twice counts nothing twice (records are unique per tenant and id).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import current_app
from redis import Redis, ResponseError
from sqlalchemy import select

from .costs.budgets import evaluate_budgets
from .costs.prices import current_price_book
from .extensions import db
from .metering.admission import flush_abandoned
from .metering.dead_letters import STORE_ERRORS, DeadLetter, is_passing, reason_of, set_aside, store_isolating
from .metering.store import store_usage
from .metering.stream import EVENTS_FIELD, GROUP, STREAM, call_units, is_events, unpack_call, unpack_events
from .models import UsageDeadLetter, utcnow
from .models.usage import OWN_SERVICE

log = logging.getLogger("tollgate.ingest")


@dataclass
class IngestResult:
    batches: int = 0
    entries: int = 0
    stored: int = 0
    abandoned: int = 0
    # Records (or unreadable entries) set aside in usage_dead_letters.
    set_aside: int = 0

    def add(self, stored: int, set_aside: int) -> None:
        self.stored += stored
        self.set_aside += set_aside


def ensure_group(redis: Redis) -> None:
    try:
        redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _raw_fields(fields: dict) -> dict[str, str]:
    """An entry's fields as text, for the dead-letter table."""

    def text(value: Any) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    return {text(name): text(value) for name, value in fields.items()}


def _records(redis: Redis, entries: list[tuple[bytes, dict]]) -> _Batch:
    """The entries' usage records: API calls, and outside-service events priced at the price in
    force when each happened (unpriced when none is known yet). An entry that cannot be read is
    set aside, whole, with the reason; the others go on."""
    batch = _Batch(entries, [], [], [])
    events: list[dict] = []
    event_origins: list[str] = []
    for entry_id, fields in entries:
        origin = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            if is_events(fields):
                unpacked = unpack_events(fields)
                events.extend(unpacked)
                event_origins.extend([origin] * len(unpacked))
            else:
                batch.records.append(unpack_call(fields))
                batch.origins.append(origin)
        except STORE_ERRORS as error:
            reason = f"unreadable stream entry: {reason_of(error)}"
            batch.unreadable.append(DeadLetter(origin, _raw_fields(fields), reason))
    # Calls to gateway routes are priced under their route's service, as events are.
    routed = [record for record in batch.records if record["service"] != OWN_SERVICE]
    if events or routed:
        book = current_price_book(redis)
        for event in [*events, *routed]:
            units = event["quota_units"] if event["source"] == "external" else call_units(event)
            try:
                quote = book.quote(
                    event["tenant_id"],
                    event["service"],
                    event["model"],
                    event["occurred_at"],
                    tokens_in=event["tokens_in"],
                    tokens_out=event["tokens_out"],
                    cached_tokens=event["cached_tokens"],
                    quota_units=units,
                )
            except (ArithmeticError, TypeError, ValueError):
                # Stored unpriced, as a model without a price is; recompute-costs tries again.
                log.warning("could not price %s's event %s", event["service"], event["idempotency_key"], exc_info=True)
                quote = None
            event["cost"], event["price_id"] = (quote.cost, quote.price_id) if quote else (None, None)
        batch.records.extend(events)
        batch.origins.extend(event_origins)
    return batch


# A stream entry holds one API call, or a batch of up to this many outside-service events.
MAX_RECORDS_PER_ENTRY = 1000
# The most entries one read asks for (1,000 was the read batch before it counted records).
MAX_ENTRIES_PER_READ = 1000


@dataclass
class _Batch:
    entries: list[tuple[bytes, dict]]
    records: list[dict]
    # The stream entry each record came from (the same order as ``records``).
    origins: list[str]
    unreadable: list[DeadLetter]


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
        return _records(reader.redis, entries) if entries else None


def _store_batch(redis: Redis, batch: _Batch, clock: Callable[[], datetime]) -> tuple[int, int]:
    """Store a batch, set aside what cannot be stored, then acknowledge it all; returns the
    records stored and those set aside."""
    records = batch.records
    stored, failed = store_isolating(records, batch.origins, store_usage) if records else (0, [])
    set_aside([*batch.unreadable, *failed])
    refused = {id(letter.record) for letter in failed}
    spenders = {r["tenant_id"] for r in records if r.get("cost") and id(r) not in refused}
    if spenders:  # budgets see the new spend before the batch is acknowledged
        evaluate_budgets(redis, spenders, clock())
        db.session.commit()
    ids = [entry_id for entry_id, _ in batch.entries]
    pipe = redis.pipeline()
    pipe.xack(STREAM, GROUP, *ids)
    pipe.xdel(STREAM, *ids)
    pipe.execute()
    return stored, len(batch.unreadable) + len(failed)


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
                batch = _records(redis, entries) if entries else None
            upcoming = None
            if batch is None:
                break
            if read_ahead and time.monotonic() < deadline:
                upcoming = pool.submit(_fetch, app, reader)
            result.batches += 1
            result.entries += len(batch.entries)
            result.add(*_store_batch(redis, batch, clock))
        if upcoming is not None:  # read past the deadline: store it rather than leave it pending
            batch = upcoming.result()
            if batch is not None:
                result.batches += 1
                result.entries += len(batch.entries)
                result.add(*_store_batch(redis, batch, clock))
    if result.entries:
        log.info(
            "ingested %d stream entries (%d new records, %d set aside) in %d batches",
            result.entries,
            result.stored,
            result.set_aside,
            result.batches,
        )
    return result


@dataclass
class RetryResult:
    stored: int = 0  # dead letters stored now
    waiting: int = 0  # dead letters that failed again (their reason updated)


def _revived(letter: UsageDeadLetter) -> tuple[list[tuple[str, dict]], list[dict]]:
    """A dead letter as stream entries to read again (an entry that could not be read) or as
    the record it was (one the database refused)."""
    data = json.loads(letter.record)
    if "tenant_id" not in data:
        fields = {name.encode(): str(value).encode() for name, value in data.items()}
        return [(letter.stream_entry_id, fields)], []
    data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
    if data.get("cost") is not None:
        data["cost"] = Decimal(data["cost"])
    return [], [data]


def retry_dead_letters(redis: Redis, ids: list[int] | None, clock: Callable[[], datetime] = utcnow) -> RetryResult:
    """Try to store dead letters again (those waiting, or only ``ids``), one at a time: one that
    is stored now is marked stored, one that fails again keeps waiting with the new reason."""
    query = select(UsageDeadLetter).where(UsageDeadLetter.stored_at.is_(None)).order_by(UsageDeadLetter.id)
    if ids is not None:
        query = query.where(UsageDeadLetter.id.in_(ids))
    result = RetryResult()
    for letter_id in db.session.scalars(query.with_only_columns(UsageDeadLetter.id)).all():
        letter = db.session.get(UsageDeadLetter, letter_id)
        try:
            entries, records = _revived(letter)
            batch = _records(redis, entries)
            if batch.unreadable:
                raise ValueError(batch.unreadable[0].reason)
            records += batch.records
            store_usage(records)
            spenders = {r["tenant_id"] for r in records if r.get("cost")}
            if spenders:
                evaluate_budgets(redis, spenders, clock())
            letter.stored_at = clock()
            db.session.commit()
            result.stored += 1
        except STORE_ERRORS as error:
            db.session.rollback()
            if is_passing(error):
                raise
            letter = db.session.get(UsageDeadLetter, letter_id)
            letter.reason = reason_of(error)
            db.session.commit()
            result.waiting += 1
    return result
