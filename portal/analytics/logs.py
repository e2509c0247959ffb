"""The logs: a tenant's raw usage records, filtered, newest first, a page at a time.

Pages are keyset pages (never OFFSET): a cursor names the (occurred_at, id) of the record a
page ends or starts at, so a page deep in the history costs what the first one does, and a
record stored meanwhile neither repeats nor hides a record.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import and_, or_, select

from ..extensions import db
from ..kernel.periods import day_bounds
from ..metering.stream import EVENT_ID_PREFIX
from ..models import UsageRecord

PAGE_SIZE = 50
SOURCES = ("api", "external")
STATUS_PATTERN = re.compile(r"^(?:[1-5]xx|[1-5][0-9]{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
MAX_RECORD_ID = 2**63 - 1  # usage records have 64-bit ids


@dataclass(frozen=True)
class LogFilters:
    """Only the records matching every value given (None: any)."""

    start: date | None = None
    end: date | None = None
    status: str | None = None  # a class ("4xx") or a code ("429")
    service: str | None = None
    endpoint: str | None = None
    api_key_id: int | None = None
    end_user: str | None = None
    source: str | None = None

    def conditions(self) -> list:
        conditions = []
        if self.start is not None or self.end is not None:
            begin, finish = day_bounds(self.start or date.min, self.end or date.max)
            if self.start is not None:
                conditions.append(UsageRecord.occurred_at >= begin)
            if self.end is not None:
                conditions.append(UsageRecord.occurred_at < finish)
        if self.status:
            if not STATUS_PATTERN.match(self.status):
                raise ValueError("status must be a class such as 4xx or a code such as 429")
            if self.status.endswith("xx"):
                low = int(self.status[0]) * 100
                conditions += [UsageRecord.status_code >= low, UsageRecord.status_code < low + 100]
            else:
                conditions.append(UsageRecord.status_code == int(self.status))
        for name, column in (
            ("service", UsageRecord.service),
            ("endpoint", UsageRecord.endpoint),
            ("api_key_id", UsageRecord.api_key_id),
            ("end_user", UsageRecord.end_user),
            ("source", UsageRecord.source),
        ):
            value = getattr(self, name)
            if value is not None:
                conditions.append(column == value)
        return conditions

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True)
class Cursor:
    """A record's place in the newest-first order."""

    occurred_at: datetime
    record_id: int

    def encode(self) -> str:
        micros = (self.occurred_at - _EPOCH) // _MICROSECOND
        return base64.urlsafe_b64encode(f"{micros}.{self.record_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``encode`` wrote; ValueError for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
            micros, record_id = raw.split(".")
            if not (micros.lstrip("-").isdigit() and record_id.isdigit()) or int(record_id) > MAX_RECORD_ID:
                raise ValueError(raw)
            return cls(_EPOCH + int(micros) * _MICROSECOND, int(record_id))
        except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError):
            raise ValueError("not a page cursor") from None

    @classmethod
    def of(cls, record: UsageRecord) -> Cursor:
        return cls(record.occurred_at, record.id)


@dataclass(frozen=True)
class LogPage:
    records: list[UsageRecord]
    newer: Cursor | None  # the page before this one starts after this record
    older: Cursor | None  # the page after this one starts before this record
    # True when a page of newer records reached the newest: the first page is the one to show.
    reached_newest: bool = False


def log_page(
    tenant_id: int,
    filters: LogFilters | None = None,
    before: Cursor | None = None,
    after: Cursor | None = None,
    size: int = PAGE_SIZE,
) -> LogPage:
    """``size`` records, newest first: the newest, those just before ``before``, or those just
    after ``after``. One statement (it reads one record more, to know whether more follow)."""
    conditions = [UsageRecord.tenant_id == tenant_id, *(filters or LogFilters()).conditions()]
    at, key = UsageRecord.occurred_at, UsageRecord.id
    if after is not None:
        # The first bound lets the (tenant, occurred_at) index narrow the range.
        conditions += [
            at >= after.occurred_at,
            or_(at > after.occurred_at, and_(at == after.occurred_at, key > after.record_id)),
        ]
        rows = db.session.scalars(select(UsageRecord).where(*conditions).order_by(at, key).limit(size + 1)).all()
        if len(rows) <= size:
            return LogPage([], None, None, reached_newest=True)
        records = list(reversed(rows[:size]))
        return LogPage(records, Cursor.of(records[0]), Cursor.of(records[-1]))
    if before is not None:
        conditions += [
            at <= before.occurred_at,
            or_(at < before.occurred_at, and_(at == before.occurred_at, key < before.record_id)),
        ]
    rows = db.session.scalars(
        select(UsageRecord).where(*conditions).order_by(at.desc(), key.desc()).limit(size + 1)
    ).all()
    records = rows[:size]
    newer = Cursor.of(records[0]) if before is not None and records else None
    older = Cursor.of(records[-1]) if len(rows) > size else None
    return LogPage(records, newer, older)


def event_id(record: UsageRecord) -> str:
    """The id a record is known by: a reported event's own id, or the call's id."""
    if record.source == "external":
        return record.idempotency_key.removeprefix(EVENT_ID_PREFIX)
    return record.idempotency_key


def status_class(code: int) -> str:
    return f"{code // 100}xx"
