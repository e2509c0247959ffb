"""Recording audit events.

Who made a change is the signed-in user (``user_id``) in the portal. Through the API there is no
user: the admin-scope operations declare the key that calls them (:func:`act_as`), and every event
recorded while that request runs names it (``api_key_id`` in its details); operator commands name
themselves the same way (``via``: ``command line``, and the system user that ran it).
"""

from __future__ import annotations

from flask import g, has_app_context

from ..extensions import db
from ..models import AuditEvent
from ..models.audit import ACTIONS

ACTOR = "audit_actor"


def act_as(**who: object) -> None:
    """Name who makes the changes of this request or command in every audit event it records."""
    setattr(g, ACTOR, who)


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
    actor = g.get(ACTOR) if has_app_context() else None
    if actor:
        details = {**actor, **details}
    event = AuditEvent(
        action=action,
        tenant_id=tenant_id,
        user_id=user_id,
        ip_address=ip_address,
        details=details or None,
    )
    db.session.add(event)
    return event
