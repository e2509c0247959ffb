"""The outbox: an alert's change becomes one delivery row per matching channel, and an
in-portal notification per user, in the same transaction as the change itself.

The deliver-notifications job sends the rows later; a crash between the change and the send
loses nothing, and every attempt carries the row's ``message_id`` so a receiver can drop a
repeat.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from flask import current_app
from sqlalchemy import select

from ..alerts.serialize import alert_json, iso
from ..extensions import db
from ..models import Alert, Notification, NotificationChannel, NotificationDelivery, Tenant, User

SEVERITY_RANK = {"warning": 1, "critical": 2}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def event_body(event_type: str, data: dict, at: datetime) -> dict:
    """The JSON every channel is built from (and the body of a webhook)."""
    return {"type": event_type, "timestamp": iso(at), "data": data}


def alert_event(alert: Alert, event_type: str, at: datetime) -> dict:
    tenant = db.session.get(Tenant, alert.tenant_id)
    data = {
        "tenant": {"id": tenant.id, "slug": tenant.slug, "name": tenant.name},
        "alert": alert_json(alert, current_app.config["PORTAL_BASE_URL"]),
    }
    return event_body(event_type, data, at)


def matching_channels(tenant_id: int, severity: str) -> list[NotificationChannel]:
    rank = SEVERITY_RANK[severity]
    channels = db.session.scalars(
        select(NotificationChannel).where(
            NotificationChannel.tenant_id == tenant_id, NotificationChannel.is_active.is_(True)
        )
    )
    return [c for c in channels if SEVERITY_RANK.get(c.min_severity, 1) <= rank]


def enqueue_delivery(channel: NotificationChannel, payload: dict, at: datetime, alert_id: int | None = None):
    delivery = NotificationDelivery(
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
    db.session.add(delivery)
    return delivery


def enqueue_alert_notifications(alert: Alert, event_type: str, at: datetime) -> list[NotificationDelivery]:
    """Write the deliveries and in-portal notifications of ``alert``'s change; the caller
    commits them together with the change. ``alert`` must have its id (flush first)."""
    payload = alert_event(alert, event_type, at)
    channels = matching_channels(alert.tenant_id, alert.severity)
    deliveries = [enqueue_delivery(channel, payload, at, alert.id) for channel in channels]
    users = db.session.scalars(select(User.id).where(User.tenant_id == alert.tenant_id, User.is_enabled.is_(True)))
    verb = {"alert.triggered": "", "alert.escalated": "Escalated: ", "alert.resolved": "Resolved: "}[event_type]
    for user_id in users:
        db.session.add(
            Notification(
                tenant_id=alert.tenant_id,
                user_id=user_id,
                alert_id=alert.id,
                event_type=event_type,
                severity=alert.severity,
                title=f"{verb}{alert.title}"[:200],
                body=alert.message,
                created_at=at,
            )
        )
    return deliveries
