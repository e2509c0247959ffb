"""The outbox: an alert's change becomes one delivery row per matching channel, and an
in-portal notification per user, in the same transaction as the change itself.

The deliver-notifications job sends the rows later; a crash between the change and the send
loses nothing, and every attempt carries the row's ``message_id`` so a receiver can drop a
repeat.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime

from flask import current_app
from sqlalchemy import select

from ..alerts.serialize import alert_json, iso
from ..extensions import db
from ..models import Alert, Notification, NotificationChannel, NotificationDelivery, Tenant, User
from ..tenancy.audit import record_event

SEVERITY_RANK = {"warning": 1, "critical": 2}
CHUNK = 5000  # ids per IN list


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def event_body(event_type: str, data: dict, at: datetime) -> dict:
    """The JSON every channel is built from (and the body of a webhook)."""
    return {"type": event_type, "timestamp": iso(at), "data": data}


def alert_event(alert: Alert, event_type: str, at: datetime, tenant: Tenant | None = None) -> dict:
    tenant = tenant or db.session.get(Tenant, alert.tenant_id)
    data = {
        "tenant": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name},
        "alert": alert_json(alert, current_app.config["PORTAL_BASE_URL"]),
    }
    return event_body(event_type, data, at)


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


VERBS = {"alert.triggered": "", "alert.escalated": "Escalated: ", "alert.resolved": "Resolved: "}


def enqueue_alert_notifications(alert: Alert, event_type: str, at: datetime) -> list[NotificationDelivery]:
    """Write the deliveries and in-portal notifications of ``alert``'s change; the caller
    commits them together with the change. ``alert`` must have its id (flush first)."""
    return enqueue_many([(alert, event_type)], at)


def enqueue_many(changes: list[tuple[Alert, str]], at: datetime) -> list[NotificationDelivery]:
    """The same for many alerts' changes at once, in a fixed number of queries."""
    if not changes:
        return []
    tenant_ids = sorted({alert.tenant_id for alert, _ in changes})
    tenants, channels, users = _tenants(tenant_ids), _channels_of(tenant_ids), _users_of(tenant_ids)
    deliveries: list[NotificationDelivery] = []
    notices: list[Notification] = []
    for alert, event_type in changes:
        payload = alert_event(alert, event_type, at, tenants[alert.tenant_id])
        deliveries += [
            new_delivery(channel, payload, at, alert.id)
            for channel in _matching(channels.get(alert.tenant_id, []), alert.severity)
        ]
        title = f"{VERBS[event_type]}{alert.title}"[:200]
        notices += [
            Notification(
                tenant_id=alert.tenant_id,
                user_id=user_id,
                alert_id=alert.id,
                event_type=event_type,
                severity=alert.severity,
                title=title,
                body=alert.message,
                created_at=at,
            )
            for user_id in users.get(alert.tenant_id, [])
        ]
    db.session.add_all(deliveries)
    db.session.add_all(notices)
    return deliveries
