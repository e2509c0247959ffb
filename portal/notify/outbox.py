"""The outbox: an alert's change becomes one delivery row per matching channel, and an
in-portal notification per user, in the same transaction as the change itself.

The deliver-notifications job sends the rows later; a crash between the change and the send
loses nothing, and every attempt carries the row's ``message_id`` so a receiver can drop a
repeat.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.times import iso
from ..models import Notification, NotificationChannel, NotificationDelivery, Tenant, User

SEVERITY_RANK = {"warning": 1, "critical": 2}
CHUNK = 5000  # ids per IN list


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def event_body(event_type: str, data: dict, at: datetime) -> dict:
    """The JSON every channel is built from (and the body of a webhook)."""
    return {"type": event_type, "timestamp": iso(at), "data": data}


def _channels_of(tenant_ids: list[int]) -> dict[int, list[NotificationChannel]]:
    found: dict[int, list[NotificationChannel]] = defaultdict(list)
    for i in range(0, len(tenant_ids), CHUNK):
        rows = db.session.scalars(
            select(NotificationChannel).where(
                NotificationChannel.tenant_id.in_(tenant_ids[i : i + CHUNK]), NotificationChannel.is_active.is_(True)
            )
        )
        for channel in rows:
            found[channel.tenant_id].append(channel)
    return found


def _users_of(tenant_ids: list[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = defaultdict(list)
    for i in range(0, len(tenant_ids), CHUNK):
        rows = db.session.execute(
            select(User.tenant_id, User.id).where(
                User.tenant_id.in_(tenant_ids[i : i + CHUNK]), User.is_enabled.is_(True)
            )
        )
        for tenant_id, user_id in rows:
            found[tenant_id].append(user_id)
    return found


def _tenants(tenant_ids: list[int]) -> dict[int, Tenant]:
    found: dict[int, Tenant] = {}
    for i in range(0, len(tenant_ids), CHUNK):
        rows = db.session.scalars(select(Tenant).where(Tenant.id.in_(tenant_ids[i : i + CHUNK])))
        found.update((tenant.id, tenant) for tenant in rows)
    return found


def matching_channels(tenant_id: int, severity: str) -> list[NotificationChannel]:
    return _matching(_channels_of([tenant_id])[tenant_id], severity)


def _matching(channels: list[NotificationChannel], severity: str) -> list[NotificationChannel]:
    rank = SEVERITY_RANK[severity]
    return [c for c in channels if SEVERITY_RANK.get(c.min_severity, 1) <= rank]


def new_delivery(channel: NotificationChannel, payload: dict, at: datetime, alert_id: int | None = None):
    """An outbox row for ``channel``, due at once, with a message id of its own."""
    return NotificationDelivery(
        tenant_id=channel.tenant_id,
        alert_id=alert_id,
        channel_id=channel.id,
        event_type=payload["type"],
        message_id=new_message_id(),
        payload=payload,
        status="pending",
        attempts=0,
        next_attempt_at=at,
        created_at=at,
    )


def enqueue_delivery(channel: NotificationChannel, payload: dict, at: datetime, alert_id: int | None = None):
    delivery = new_delivery(channel, payload, at, alert_id)
    db.session.add(delivery)
    return delivery


def record_test_send(
    delivery: NotificationDelivery,
    *,
    user_id: int | None = None,
    ip_address: str | None = None,
    api_key_id: int | None = None,
):
    """Audit a test send to a channel (``notification_channel.tested``) with who asked for it
    (``user_id``; through the API none, and the ``api_key_id`` it came with) and from where. The
    portal's test (queued for the job) and the API's (sent at once) both record it here, once;
    the caller commits."""
    if delivery.id is None:
        db.session.flush()
    return record_event(
        "notification_channel.tested",
        delivery.tenant_id,
        user_id,
        ip_address,
        channel_id=delivery.channel_id,
        delivery_id=delivery.id,
        **({} if api_key_id is None else {"api_key_id": api_key_id}),
    )


@dataclass(frozen=True)
class Announcement:
    """A change to tell a tenant about: the JSON every matching channel is built from (``data``,
    beside the tenant, under ``event_type``), and the notice each of the tenant's users sees in
    the portal. A capability that announces (alerts) builds its own."""

    tenant_id: int
    event_type: str
    severity: str  # channels subscribe by severity
    title: str
    body: str
    data: dict
    alert_id: int | None = None


def enqueue_announcements(announcements: list[Announcement], at: datetime) -> list[NotificationDelivery]:
    """Write the deliveries and in-portal notifications of ``announcements`` in a fixed number of
    queries; the caller commits them together with the change they tell of."""
    if not announcements:
        return []
    tenant_ids = sorted({change.tenant_id for change in announcements})
    tenants, channels, users = _tenants(tenant_ids), _channels_of(tenant_ids), _users_of(tenant_ids)
    deliveries: list[NotificationDelivery] = []
    notices: list[Notification] = []
    for change in announcements:
        tenant = tenants[change.tenant_id]
        data = {"tenant": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name}, **change.data}
        payload = event_body(change.event_type, data, at)
        deliveries += [
            new_delivery(channel, payload, at, change.alert_id)
            for channel in _matching(channels.get(change.tenant_id, []), change.severity)
        ]
        notices += [
            Notification(
                tenant_id=change.tenant_id,
                user_id=user_id,
                alert_id=change.alert_id,
                event_type=change.event_type,
                severity=change.severity,
                title=change.title[:200],
                body=change.body,
                created_at=at,
            )
            for user_id in users.get(change.tenant_id, [])
        ]
    db.session.add_all(deliveries)
    db.session.add_all(notices)
    return deliveries
