"""Deleting usage data past its plan's retention, without changing any total the API shows.

What is kept:

* raw usage records: the tenant's plan's ``retention_days``, in whole UTC days (a day's records
  go together once the whole day is older than that, so each is kept at least its retention),
  and never those of a billing period without its statement yet (reconciliation reads them);
* hourly rollups: as long as the raw records (only ``account/usage?interval=hourly`` reads them,
  and the API documents hourly data as kept within the plan's retention);
* daily rollups: :data:`DAILY_ROLLUP_RETENTION_DAYS` (730), and never less than any plan keeps
  raw records. Every total the API and the portal show is summed from them, so deleting raw
  records and hourly rollups changes none of those totals; only ``usage/logs`` (raw rows) and
  the hourly interval of ``account/usage`` lose what is past retention.

A raw record is deleted only once it is in the rollups, and this is checked, not assumed:

* The writer (:func:`portal.metering.store.store_usage`) inserts a record and adds it to its hour
  and day rollups in one transaction, so a (tenant, day)'s daily rollups count exactly the
  records ever stored for that day; records leave only through here. Before a day's records are
  deleted its remaining records are counted against its daily rollups' ``calls``: more records
  than calls means some never reached the rollups, and that day is kept (``held_days``) and
  logged at ERROR.
* A record still in the usage stream (unread, pending after a crash, or stored but not yet
  acknowledged) or in this machine's spool may be delivered again. The store skips a repeat only
  while the first copy is in the table (it is unique per tenant and id), so a tenant's records
  are never deleted from the day of the oldest record the stream or the spool still holds for
  it. A stream longer than :data:`STREAM_SCAN_LIMIT` entries (a backlog) holds every raw delete
  until the worker has caught up.

Deletes go in batches of at most ``batch_size`` rows, each one statement naming exactly the ids
it read (a row that arrives meanwhile waits for the next run) and committed on its own, so no
lock is held for long; a run starts no batch once its time budget is spent and the next run goes
on from there. One run at a time (a Redis lock).

With ``RETENTION_EXPORT_DIR`` set, a day's records are first exported to
``<dir>/<tenant slug>/usage-<YYYY-MM-DD>.jsonl.gz``: gzip, one JSON object per line with every
column (costs as strings, times ISO 8601 UTC), written to a temporary file, fsynced and renamed
into place (and the folder fsynced) before any of the day's rows is deleted, and only the rows
exported are deleted. A crash in between leaves rows behind; the next run exports them again
into the same file, merged with what it holds (by record id), so the file always ends up with the
whole day, once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from math import inf
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import delete, func, select, tuple_

from ..extensions import db
from ..kernel.redis_keys import RETENTION_LOCK
from ..models import Plan, Subscription, Tenant, UsageRecord, UsageRollup
from .stream import STREAM, call_tenant_and_time, entry_times

# Daily rollups outlive raw rows: statements and year-over-year charts read them.
DAILY_ROLLUP_RETENTION_DAYS = 730
BATCH_SIZE = 5000
# A run stops starting batches after this long (the job may run 600 s).
TIME_BUDGET_SECONDS = 300.0
# Entries of the usage stream read to find the oldest record it holds; a longer stream is a
# backlog, and raw records then wait for the worker to catch up.
STREAM_SCAN_LIMIT = 50_000
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_SAFE_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")
log = logging.getLogger("tollgate.retention")


@dataclass
class RetentionResult:
    records: int = 0
    hourly_rollups: int = 0
    daily_rollups: int = 0
    exported_files: int = 0
    batches: int = 0
    # Days kept because their records outnumber their rollups' calls (logged at ERROR).
    held_days: int = 0
    # The longest batch, from reading its ids to its commit.
    longest_batch_ms: float = 0.0
    # False when the time budget ran out (or another run held the lock) with work left.
    finished: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _OutOfTime(Exception):
    pass


def _day(at: datetime) -> datetime:
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


# --- what the stream and the spool still hold ------------------------------------------------


def _spool_times(folder: Path) -> Iterator[tuple[int, float]]:
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("usage-*.jsonl*")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:  # replayed meanwhile
            continue
        for line in lines:
            try:
                yield call_tenant_and_time(json.loads(line)["r"])
            except (ValueError, KeyError, TypeError):  # a line being appended right now
                continue


def still_delivering(redis: Redis, spool_folder: Path | None = None) -> dict[int, datetime] | None:
    """Per tenant, the oldest time of a record the usage stream or the spool still holds (it may
    be stored again); None when the stream is a backlog too long to read."""
    if redis.xlen(STREAM) > STREAM_SCAN_LIMIT:
        return None
    oldest: dict[int, float] = {}

    def note(times: Iterator[tuple[int, float]]) -> None:
        for tenant_id, at in times:
            if at < oldest.get(tenant_id, float("inf")):
                oldest[tenant_id] = at

    start = "-"
    while True:
        entries = redis.xrange(STREAM, min=start, max="+", count=1000)
        for _, fields in entries:
            note(entry_times(fields))
        if len(entries) < 1000:
            break
        start = "(" + entries[-1][0].decode()
    if spool_folder is not None:
        note(_spool_times(spool_folder))
    return {tenant_id: datetime.fromtimestamp(at, UTC) for tenant_id, at in oldest.items()}


# --- export ----------------------------------------------------------------------------------

_COLUMNS = tuple(UsageRecord.__table__.c)
_NAMES = tuple(column.name for column in _COLUMNS)
_ID = _NAMES.index("id")
_AT = _NAMES.index("occurred_at")


def _json_default(value: Any) -> Any:
    """What JSON cannot hold as is: costs as strings, times in ISO 8601 UTC."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    raise TypeError(f"cannot export a {type(value).__name__}")


_ENCODE = json.JSONEncoder(default=_json_default, separators=(",", ":")).encode


def _json_lines(rows: list, seen: set[int]) -> bytes:
    return "".join(_ENCODE(dict(zip(_NAMES, row, strict=True))) + "\n" for row in rows if row[_ID] not in seen).encode()


def export_path(export_dir: Path, tenant_id: int, slug: str, day: datetime) -> Path:
    folder = slug if _SAFE_SLUG.match(slug) else f"tenant-{tenant_id}"
    return export_dir / folder / f"usage-{day.date().isoformat()}.jsonl.gz"


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _day_conditions(tenant_id: int, day: datetime) -> list:
    return [
        UsageRecord.tenant_id == tenant_id,
        UsageRecord.occurred_at >= day,
        UsageRecord.occurred_at < day + timedelta(days=1),
    ]


def _export_day(
    path: Path, tenant_id: int, day: datetime, batch_size: int, check_time: Callable[[], None]
) -> list[int]:
    """Write the day's records (with what ``path`` already holds) to ``path`` durably; returns the
    exported records' ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run that crashed
        stale.unlink(missing_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    exported: list[int] = []
    try:
        # No name or time in the gzip header: the same records make the same bytes.
        with (
            open(scratch, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as out,
        ):
            seen: set[int] = set()
            if path.exists():  # an earlier run exported part of this day, then stopped
                with gzip.open(path, "rt", encoding="utf-8") as previous:
                    for line in previous:
                        seen.add(json.loads(line)["id"])
                        out.write(line.encode())
            # In the (tenant, occurred_at) index's order: with "ORDER BY id LIMIT n" PostgreSQL's
            # generic plan walked the primary key from the table's start.
            query = select(*_COLUMNS).order_by(UsageRecord.occurred_at, UsageRecord.id).limit(batch_size)
            after: tuple | None = None
            while True:
                check_time()
                conditions = _day_conditions(tenant_id, day)
                if after is not None:
                    conditions.append(tuple_(UsageRecord.occurred_at, UsageRecord.id) > tuple_(*after))
                rows = db.session.execute(query.where(*conditions)).all()
                if not rows:
                    break
                out.write(_json_lines(rows, seen))
                exported.extend(row[_ID] for row in rows)
                after = (rows[-1][_AT], rows[-1][_ID])
            out.close()
            raw.flush()
            os.fsync(raw.fileno())
        db.session.commit()  # end the read transaction before the file is in place
        os.replace(scratch, path)
        _fsync_folder(path.parent)
    finally:
        scratch.unlink(missing_ok=True)
    return exported


def _id_ranges(ids: list[int], size: int) -> Iterator[tuple[int, int, int]]:
    """Sorted ids in consecutive runs of ``size``: (first, last, how many)."""
    ids = sorted(ids)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk[0], chunk[-1], len(chunk)


# --- one run ---------------------------------------------------------------------------------


class _Run:
    def __init__(
        self,
        result: RetentionResult,
        batch_size: int,
        deadline: float,
        clock: Callable[[], float],
        export_dir: Path | None,
    ) -> None:
        self.result = result
        self.batch_size = batch_size
        self.deadline = deadline
        self.clock = clock
        self.export_dir = export_dir

    def check_time(self) -> None:
        if self.clock() >= self.deadline:
            raise _OutOfTime

    def _delete(self, model, conditions: list, span: tuple[int, int, float]) -> int | None:
        """One batch: delete the rows meeting ``conditions`` between two ids (a range is a tenth
        of the cost of naming 5,000 ids) and commit; None, rolled back, if it met more rows than
        were counted in it."""
        started = time.perf_counter()
        first, last, count = span
        deleted = db.session.execute(delete(model).where(*conditions, model.id >= first, model.id <= last)).rowcount
        if deleted > count:
            db.session.rollback()
            return None
        db.session.commit()
        self.result.batches += 1
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.result.longest_batch_ms = max(self.result.longest_batch_ms, round(elapsed_ms, 1))
        return deleted

    def _ids(self, model, conditions: list) -> list[int]:
        """Every id of the rows that go (the day's or past the cutoff's: a day at a time)."""
        self.check_time()
        ids = db.session.scalars(select(model.id).where(*conditions)).all()
        db.session.commit()
        return ids

    # raw records

    def _rolled_up(self, tenant_id: int, day: datetime) -> bool:
        """Whether the day's remaining records are all in its daily rollups (checked by count)."""
        records = db.session.scalar(
            select(func.count()).select_from(UsageRecord).where(*_day_conditions(tenant_id, day))
        )
        calls = db.session.scalar(
            select(func.coalesce(func.sum(UsageRollup.calls), 0)).where(
                UsageRollup.tenant_id == tenant_id,
                UsageRollup.granularity == "day",
                UsageRollup.bucket_start == day,
            )
        )
        db.session.commit()
        if records > calls:
            log.error(
                "retention keeps tenant %d's usage of %s: %d records but its daily rollups count %d calls",
                tenant_id,
                day.date(),
                records,
                calls,
            )
            return False
        return True

    def delete_day(self, tenant_id: int, slug: str, day: datetime) -> None:
        if not self._rolled_up(tenant_id, day):
            self.result.held_days += 1
            return
        conditions = _day_conditions(tenant_id, day)
        if self.export_dir is None:
            ids = self._ids(UsageRecord, conditions)
        else:
            try:
                path = export_path(self.export_dir, tenant_id, slug, day)
                ids = _export_day(path, tenant_id, day, self.batch_size, self.check_time)
            except (OSError, EOFError, ValueError, KeyError) as error:
                db.session.rollback()
                log.error(
                    "retention keeps tenant %s's usage of %s: exporting it to %s failed: %s",
                    slug,
                    day.date(),
                    self.export_dir,
                    error,
                )
                self.result.held_days += 1
                return
            self.result.exported_files += 1
        for first, last, count in _id_ranges(ids, self.batch_size):
            self.check_time()
            # Exported rows only: one stored into this day after the export read it waits for the
            # next run's export. Without an export any of the day's rows may go (all are rolled up).
            deleted = self._delete(UsageRecord, conditions, (first, last, count if self.export_dir else inf))
            if deleted is None:
                log.warning(
                    "usage of tenant %s on %s grew while it was exported; next run exports it again", slug, day.date()
                )
                return
            self.result.records += deleted

    def delete_records(self, tenant_id: int, slug: str, cutoff: datetime) -> None:
        """Every whole day of the tenant's records before ``cutoff`` (a midnight UTC)."""
        after = None
        while True:
            conditions = [UsageRecord.tenant_id == tenant_id, UsageRecord.occurred_at < cutoff]
            if after is not None:
                conditions.append(UsageRecord.occurred_at >= after)
            oldest = db.session.scalar(select(func.min(UsageRecord.occurred_at)).where(*conditions))
            db.session.commit()
            if oldest is None:
                return
            day = _day(oldest)
            self.delete_day(tenant_id, slug, day)
            after = day + timedelta(days=1)

    # rollups

    def delete_rollups(self, conditions: list) -> int:
        deleted = 0
        for span in _id_ranges(self._ids(UsageRollup, conditions), self.batch_size):
            self.check_time()
            # A rollup created meanwhile in the range is past the cutoff too: it may go with them.
            deleted += self._delete(UsageRollup, conditions, (span[0], span[1], inf)) or 0
        return deleted


def apply_retention(
    now: datetime,
    redis: Redis,
    *,
    export_dir: str | Path | None = None,
    spool_folder: Path | None = None,
    batch_size: int = BATCH_SIZE,
    time_budget_seconds: float = TIME_BUDGET_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> RetentionResult:
    """Delete what each tenant's plan no longer keeps, as the module docstring says; returns the
    counts. Safe to run at any time and again after a crash: what is left goes next run."""
    result = RetentionResult()
    token = secrets.token_hex(8)
    if not redis.set(RETENTION_LOCK, token, nx=True, ex=int(time_budget_seconds) + 300):
        log.info("retention: another run is under way")
        result.finished = False
        return result
    run = _Run(result, batch_size, clock() + time_budget_seconds, clock, Path(export_dir) if export_dir else None)
    try:
        _apply(run, now, redis, spool_folder)
    except _OutOfTime:
        db.session.rollback()
        result.finished = False
    finally:
        redis.register_script(_RELEASE)(keys=[RETENTION_LOCK], args=[token])
    log.info(
        "retention: deleted %d records, %d hourly and %d daily rollups in %d batches (longest %.0f ms); "
        "%d files exported, %d days held%s",
        result.records,
        result.hourly_rollups,
        result.daily_rollups,
        result.batches,
        result.longest_batch_ms,
        result.exported_files,
        result.held_days,
        "" if result.finished else "; out of time, the rest goes next run",
    )
    return result


def _apply(run: _Run, now: datetime, redis: Redis, spool_folder: Path | None) -> None:
    result = run.result
    delivering = still_delivering(redis, spool_folder)
    if delivering is None:
        log.warning(
            "retention keeps raw usage this run: the usage stream holds more than %d entries", STREAM_SCAN_LIMIT
        )
    tenants = db.session.execute(
        select(Tenant.id, Tenant.slug, Plan.retention_days, Subscription.current_period_start)
        .join(Subscription, Subscription.tenant_id == Tenant.id)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(Subscription.ended_at.is_(None))
        .order_by(Tenant.id)
    ).all()
    db.session.commit()
    for tenant_id, slug, retention_days, unbilled_from in tenants:
        # Whole days only: a record goes once its whole day is older than the plan keeps records.
        cutoff = _day(now - timedelta(days=retention_days))
        if delivering is not None:
            held_from = delivering.get(tenant_id)
            # A period without its statement keeps its raw records (closing moves the
            # subscription's period on only once the statement is stored).
            kept_from = min(cutoff, _day(unbilled_from))
            # Hourly rollups are never read to deduplicate a record, so they go at the plan's cutoff.
            run.delete_records(tenant_id, slug, kept_from if held_from is None else min(kept_from, _day(held_from)))
        result.hourly_rollups += run.delete_rollups(
            [UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == "hour", UsageRollup.bucket_start < cutoff]
        )
    longest_kept = db.session.scalar(select(func.max(Plan.retention_days))) or 0
    db.session.commit()
    daily_cutoff = _day(now - timedelta(days=max(DAILY_ROLLUP_RETENTION_DAYS, longest_kept)))
    result.daily_rollups += run.delete_rollups(
        [UsageRollup.granularity == "day", UsageRollup.bucket_start < daily_cutoff]
    )


def delete_expired_usage(now: datetime) -> RetentionResult:
    """Apply retention with the application's settings (``RETENTION_EXPORT_DIR``); returns the
    run's counts (the periodic job's result)."""
    from flask import current_app

    from ..redis_store import get_redis

    result = apply_retention(
        now,
        get_redis(),
        export_dir=current_app.config.get("RETENTION_EXPORT_DIR"),
        spool_folder=Path(current_app.instance_path) / "spool",
    )
    return result
