"""Alert changes as notifications: what each channel is sent and what the portal shows."""

from __future__ import annotations

from datetime import datetime

from flask import current_app

from ..models import Alert, NotificationDelivery
from ..notify.outbox import Announcement, enqueue_announcements
from .serialize import alert_json

VERBS = {"alert.triggered": "", "alert.escalated": "Escalated: ", "alert.resolved": "Resolved: "}


def announcement(alert: Alert, event_type: str) -> Announcement:
    return Announcement(
        tenant_id=alert.tenant_id,
        event_type=event_type,
        severity=alert.severity,
        title=f"{VERBS[event_type]}{alert.title}",
        body=alert.message,
        data={"alert": alert_json(alert, current_app.config["PORTAL_BASE_URL"])},
        alert_id=alert.id,
    )


def enqueue_alert_changes(changes: list[tuple[Alert, str]], at: datetime) -> list[NotificationDelivery]:
    """The deliveries and in-portal notifications of many alerts' changes at once; the caller
    commits them together with the changes. Each alert must have its id (flush first)."""
    return enqueue_announcements([announcement(alert, event_type) for alert, event_type in changes], at)


def enqueue_alert_notifications(alert: Alert, event_type: str, at: datetime) -> list[NotificationDelivery]:
    """The same for one alert's change."""
    return enqueue_alert_changes([(alert, event_type)], at)
