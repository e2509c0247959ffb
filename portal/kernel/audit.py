"""Recording audit events."""

from __future__ import annotations

from ..extensions import db
from ..models import AuditEvent
from ..models.audit import ACTIONS


def record_event(
    action: str,
    tenant_id: int | None = None,
    user_id: int | None = None,
    ip_address: str | None = None,
    **details: object,
) -> AuditEvent:
    """Add an audit event to the session; the caller's commit stores it.

    ``action`` must be one of ``ACTIONS`` (the audit page filters by them)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}: add it to portal.models.audit.ACTIONS")
    event = AuditEvent(
        action=action,
        tenant_id=tenant_id,
        user_id=user_id,
        ip_address=ip_address,
        details=details or None,
    )
    db.session.add(event)
    return event
