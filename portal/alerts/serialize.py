"""An alert as the API, the webhooks and the portal show it."""

from __future__ import annotations

from decimal import Decimal

from ..kernel.times import iso
from ..models import Alert


def number(value: Decimal | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def alert_json(alert: Alert, base_url: str = "") -> dict:
    return {
        "id": alert.id,
        "type": alert.alert_type,
        "severity": alert.severity,
        "status": alert.status,
        "title": alert.title,
        "message": alert.message,
        "rule_id": alert.rule_id,
        "subject": alert.subject,
        "period": alert.period_key,
        "value": number(alert.value),
        "threshold": number(alert.threshold),
        "occurrences": alert.occurrences,
        "first_triggered_at": iso(alert.first_triggered_at),
        "last_triggered_at": iso(alert.last_triggered_at),
        "escalated_at": iso(alert.escalated_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "resolved_at": iso(alert.resolved_at),
        "resolved_by": alert.resolved_by,
        "url": f"{base_url}/alerts/{alert.id}" if base_url else None,
    }
