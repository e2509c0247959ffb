"""Helpers of the notification tests: alerts written the way the evaluator writes them, channels,
and the app's settings changed for one test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal

from flask import Flask

from portal.alerts.announce import enqueue_alert_notifications
from portal.extensions import db
from portal.models import Alert, NotificationChannel, NotificationDelivery
from portal.notify.channels import create_channel

NOW = datetime(2026, 11, 18, 12, 30, tzinfo=UTC)
_dedup = itertools.count(1)


@contextmanager
def app_config(app: Flask, **values) -> Iterator[None]:
    """Set app settings for the block, then put the old values back."""
    missing = object()
    saved = {name: app.config.get(name, missing) for name in values}
    app.config.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                app.config.pop(name, None)
            else:
                app.config[name] = value


def add_channel(tenant_id: int, kind: str, target: str, **options) -> NotificationChannel:
    channel, _ = create_channel(tenant_id, kind, target, **options)
    db.session.commit()
    return channel


def raise_alert(
    tenant_id: int,
    severity: str = "critical",
    title: str = "Error rate 12.5% above 10%",
    event_type: str = "alert.triggered",
    at: datetime = NOW,
) -> list[int]:
    """An alert row as the evaluator writes it, and its outbox rows; returns the deliveries' ids."""
    resolved = event_type == "alert.resolved"
    alert = Alert(
        tenant_id=tenant_id,
        alert_type="error_rate",
        severity=severity,
        status="resolved" if resolved else "active",
        title=title,
        message="12.5% of the calls in the last 60 minutes failed (threshold 10%).",
        dedup_key=f"error_rate:tenant:{next(_dedup)}",
        value=Decimal("12.5"),
        threshold=Decimal("10"),
        first_triggered_at=at,
        last_triggered_at=at,
        resolved_at=at if resolved else None,
        resolved_by="auto" if resolved else None,
    )
    db.session.add(alert)
    db.session.flush()
    deliveries = enqueue_alert_notifications(alert, event_type, at)
    db.session.commit()
    return [d.id for d in deliveries]


def delivery(delivery_id: int) -> NotificationDelivery:
    db.session.expire_all()
    return db.session.get(NotificationDelivery, delivery_id)


def channel_row(channel_id: int) -> NotificationChannel:
    db.session.expire_all()
    return db.session.get(NotificationChannel, channel_id)
