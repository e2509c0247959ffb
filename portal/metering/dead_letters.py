"""Usage the worker cannot store, set aside so that the rest of the stream moves on.

A stream entry that cannot be read, or a record the database refuses (a number past its column,
text it cannot hold), would otherwise fail its whole batch on every redelivery, for ever, and
hold back every other tenant's calls in it. :func:`store_isolating` stores the rest of the
batch and names the records that fail on their own; :func:`set_aside` keeps each with its
reason in ``usage_dead_letters`` (once, however often it is delivered). ``jobs list`` counts
them and ``usage dead-letters`` lists and retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import UsageDeadLetter, utcnow

log = logging.getLogger("tollgate.metering")

# What a record the database refuses, or a field no code path can read, raises. A lost
# connection, a lock or a deadlock is none of these: the batch stays pending and is retried.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.SQLAlchemyError,
    psycopg.Error,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
)
_PASSING = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    sa_exc.ResourceClosedError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
MAX_REASON = 2000


def is_passing(error: BaseException) -> bool:
    """Whether ``error`` says the database is unreachable or busy rather than the data wrong."""
    original = getattr(error, "orig", None)
    return isinstance(error, _PASSING) or isinstance(original, _PASSING)


def reason_of(error: BaseException) -> str:
    """A short, readable reason: the driver's own message, without SQLAlchemy's statement dump."""
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()[0] if str(original).strip() else ""
    return f"{type(original).__name__}: {text}"[:MAX_REASON]


@dataclass(frozen=True)
class DeadLetter:
    """A stream entry's record (or the entry's raw fields, when they could not be read)."""

    stream_entry_id: str
    record: dict[str, Any]
    reason: str

    @property
    def tenant_id(self) -> int | None:
        value = self.record.get("tenant_id")
        return value if isinstance(value, int) and -(2**31) <= value < 2**31 else None

    @property
    def idempotency_key(self) -> str | None:
        value = self.record.get("idempotency_key")
        return value[:64] if isinstance(value, str) else None

    def as_json(self) -> str:
        # ASCII-only JSON keeps any text (a NUL, a lone surrogate) storable in a text column.
        return json.dumps(self.record, default=str, sort_keys=True)


def store_isolating(
    records: Sequence[dict[str, Any]],
    origins: Sequence[str],
    store: Callable[[Sequence[dict[str, Any]]], int],
) -> tuple[int, list[DeadLetter]]:
    """Store ``records`` in committed parts, halving a part the database refuses until the
    records that fail alone are found; returns how many were stored and those that failed.

    Each part is stored and committed on its own: storing is idempotent (a record stored twice
    counts once), so a crash half-way loses nothing when the batch is delivered again.
    """
    try:
        stored = store(records)
        db.session.commit()
        return stored, []
    except STORE_ERRORS as error:
        db.session.rollback()
        if is_passing(error):
            raise
        if len(records) == 1:
            return 0, [DeadLetter(origins[0], dict(records[0]), reason_of(error))]
    middle = len(records) // 2
    first, first_failed = store_isolating(records[:middle], origins[:middle], store)
    second, second_failed = store_isolating(records[middle:], origins[middle:], store)
    return first + second, first_failed + second_failed


def _insert():
    dialect = db.session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(UsageDeadLetter.__table__)


def set_aside(letters: Sequence[DeadLetter], now: datetime | None = None) -> int:
    """Keep ``letters`` in ``usage_dead_letters`` (each once) and log each; commits. Returns how
    many were new."""
    if not letters:
        return 0
    now = now or utcnow()
    rows = []
    for letter in letters:
        text = letter.as_json()
        fingerprint = hashlib.sha256(f"{letter.stream_entry_id}\n{text}".encode()).hexdigest()
        rows.append(
            {
                "tenant_id": letter.tenant_id,
                "stream_entry_id": letter.stream_entry_id[:40],
                "idempotency_key": letter.idempotency_key,
                "record": text,
                "reason": letter.reason[:MAX_REASON],
                "fingerprint": fingerprint,
                "created_at": now,
            }
        )
        log.error(
            "usage record set aside (tenant %s, stream entry %s, id %s): %s",
            letter.tenant_id,
            letter.stream_entry_id,
            letter.idempotency_key,
            letter.reason,
        )
    statement = _insert().on_conflict_do_nothing(index_elements=["fingerprint"])
    new = 0
    for row in rows:
        new += db.session.execute(statement, row).rowcount or 0
    db.session.commit()
    return new


def waiting_count() -> int:
    """Records set aside and not stored since."""
    return db.session.scalar(select(func.count()).where(UsageDeadLetter.stored_at.is_(None))) or 0
