"""The deliver-notifications job: send the outbox's due rows, at least once each, never lost.

A row is claimed first — its lease (``locked_until``) set in an UPDATE that is committed before
anything is sent, so two workers never send the same row at once (PostgreSQL skips rows another
worker is claiming; on SQLite the conditional UPDATE is atomic). Then one attempt is made and
recorded, only while the lease is still ours, and committed row by row. A worker that dies between
the claim and the record lets the lease run out: the row is due again and is sent again with the
same ``message_id``, which receivers use to drop the repeat.

Failed attempts are retried after 5 s, 5 min, 30 min, 2 h and 5 h (or the receiver's Retry-After
when longer); then the row has failed for good. A test message gets one attempt.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from ..extensions import db
from ..models import NotificationChannel, NotificationDelivery, Tenant, utcnow
from .base import Outcome
from .channels import deactivate_channel
from .outbox import enqueue_delivery, event_body, record_test_send
from .senders import sender_for

log = logging.getLogger("tollgate.notify")

LEASE = timedelta(minutes=2)
BACKOFF = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
)
MAX_ATTEMPTS = len(BACKOFF) + 1
# Rows claimed at a time: each attempt may take a connect and a read timeout, and a claim's
# lease must outlast its rows' sends.
CLAIM_BATCH = 10


@dataclass(frozen=True)
class Claim:
    ids: list[int]
    until: datetime


def _due(now: datetime):
    d = NotificationDelivery
    return (
        d.status == "pending",
        d.next_attempt_at <= now,
        or_(d.locked_until.is_(None), d.locked_until < now),
    )


def claim_due(now: datetime, limit: int = CLAIM_BATCH, lease: timedelta = LEASE) -> Claim:
    """Lease up to ``limit`` due rows until ``now + lease`` and commit; returns their ids."""
    d = NotificationDelivery
    until = now + lease
    candidates = select(d.id).where(*_due(now)).order_by(d.next_attempt_at, d.id).limit(limit)
    if db.session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    # The conditions again on the UPDATE itself: a row another worker leased meanwhile is not taken.
    claimed = db.session.scalars(
        update(d)
        .where(d.id.in_(candidates.scalar_subquery()), *_due(now))
        .values(locked_until=until)
        .returning(d.id)
        .execution_options(synchronize_session=False)
    ).all()
    db.session.commit()
    return Claim(sorted(claimed), until)


def max_attempts(delivery: NotificationDelivery) -> int:
    return 1 if delivery.event_type == "test" else MAX_ATTEMPTS


def next_attempt(attempts: int, at: datetime, retry_after: float | None) -> datetime:
    wait = BACKOFF[min(attempts, len(BACKOFF)) - 1]
    if retry_after is not None and retry_after > wait.total_seconds():
        wait = timedelta(seconds=retry_after)
    return at + wait


def attempt(channel: NotificationChannel, delivery: NotificationDelivery) -> Outcome:
    """One attempt through the channel's sender. A sender reports what receivers and networks do;
    anything else it raises is a fault of ours, logged with its traceback and retried."""
    try:
        return sender_for(channel.kind).send(channel, delivery)
    except Exception as error:
        log.exception("Sending delivery %s (%s) raised", delivery.id, delivery.message_id)
        return Outcome.retry_later(f"Tollgate failed while sending: {error.__class__.__name__}: {error}")


def deliver_claimed(delivery_id: int, until: datetime, now: datetime | None = None) -> str:
    """Send one row leased until ``until`` and record the attempt. Returns ``sent``,
    ``retrying``, ``failed``, or ``lost`` (the lease was no longer ours)."""
    delivery = db.session.get(NotificationDelivery, delivery_id)
    if delivery is None or delivery.status != "pending" or delivery.locked_until != until:
        db.session.rollback()
        return "lost"
    channel = db.session.get(NotificationChannel, delivery.channel_id)
    if channel.is_active:
        outcome, attempted = attempt(channel, delivery), True
    else:
        reason = channel.disabled_reason or "deactivated"
        outcome, attempted = Outcome.final(f"not sent: the channel is turned off: {reason}"), False
    return record(delivery, channel, outcome, until, now or utcnow(), attempted)


def record(
    delivery: NotificationDelivery,
    channel: NotificationChannel,
    outcome: Outcome,
    until: datetime,
    at: datetime,
    attempted: bool = True,
) -> str:
    d = NotificationDelivery
    attempts = delivery.attempts + (1 if attempted else 0)
    allowed = max_attempts(delivery)
    values: dict = {"locked_until": None}
    if attempted:
        values.update(attempts=attempts, last_attempt_at=at, last_status_code=outcome.status_code)
    if outcome.delivered:
        result = "sent"
        values.update(status="sent", delivered_at=at, last_error=None)
    elif outcome.retry and attempts < allowed:
        result = "retrying"
        values.update(next_attempt_at=next_attempt(attempts, at, outcome.retry_after), last_error=outcome.error)
    else:
        result = "failed"
        error = outcome.error or "failed"
        if outcome.retry and allowed > 1:
            error = f"{error} (gave up after {attempts} attempts)"
        values.update(status="failed", last_error=error)
    where = f"{delivery.id} ({delivery.event_type} {delivery.message_id}) to {channel.kind} channel {channel.id}"
    # Only while the lease is ours: a worker that outlived its lease must not overwrite the
    # outcome of the one that took the row over.
    recorded = db.session.execute(
        update(d)
        .where(d.id == delivery.id, d.status == "pending", d.locked_until == until)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not recorded:
        db.session.rollback()
        log.warning("Notification delivery %s: the lease ran out before the attempt was recorded (%s)", where, result)
        return "lost"
    if outcome.disable_reason and channel.is_active:
        deactivate_channel(channel, outcome.disable_reason, at)
    db.session.commit()
    if result == "retrying":
        log.warning(
            "Notification delivery %s: attempt %d of %d failed: %s; next attempt at %s",
            where,
            attempts,
            allowed,
            outcome.error,
            values["next_attempt_at"].isoformat(),
        )
    elif result == "failed":
        log.error("Notification delivery %s failed for good after %d attempt(s): %s", where, attempts, error)
    else:
        log.info("Notification delivery %s sent on attempt %d", where, attempts)
    return result


def deliver_due(now: datetime | None = None, limit: int = 200) -> dict:
    """Send up to ``limit`` due notifications (the deliver-notifications job). ``now`` fixes the
    clock (tests); by default each claim and record reads the time afresh."""
    counts: Counter[str] = Counter()
    while counts["claimed"] < limit:
        claim = claim_due(now or utcnow(), min(CLAIM_BATCH, limit - counts["claimed"]))
        if not claim.ids:
            break
        counts["claimed"] += len(claim.ids)
        for delivery_id in claim.ids:
            counts[deliver_claimed(delivery_id, claim.until, now)] += 1
    return {key: counts[key] for key in ("claimed", "sent", "retrying", "failed", "lost")}


def channel_test_event(channel: NotificationChannel, at: datetime) -> dict:
    tenant = db.session.get(Tenant, channel.tenant_id)
    data = {
        "tenant": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name},
        "channel": {"id": channel.id, "kind": channel.kind, "name": channel.name},
        "message": "This is a test notification from Tollgate. Alerts will arrive here like this one.",
    }
    return event_body("test", data, at)


def send_test(
    channel: NotificationChannel, now: datetime | None = None, asked_by: dict | None = None
) -> NotificationDelivery:
    """Write a ``test`` delivery to ``channel`` and make its one attempt now; returns the row
    as recorded. ``asked_by`` (the keywords of :func:`record_test_send`) audits the test in the
    same commit as its delivery."""
    at = now or utcnow()
    delivery = enqueue_delivery(channel, channel_test_event(channel, at), at)
    # Leased from the start: the job leaves it to this attempt.
    delivery.locked_until = until = at + LEASE
    if asked_by is not None:
        record_test_send(delivery, **asked_by)
    db.session.commit()
    delivery_id = delivery.id
    deliver_claimed(delivery_id, until, now)
    return db.session.get(NotificationDelivery, delivery_id)
