"""The portal's navigation, and the unread-notification count it shows."""

from __future__ import annotations

from flask import Flask, current_app
from flask_login import current_user
from sqlalchemy import func, select

from ..extensions import db
from ..models import Notification

# (endpoint, label); an endpoint that is not registered is left out.
ITEMS = (
    ("web.dashboard", "Dashboard"),
    ("web.explorer", "Usage"),
    ("web.logs", "Logs"),
    ("web.costs", "Costs"),
    ("web.keys", "API keys"),
    ("web.alerts", "Alerts"),
    ("web.billing", "Plan & billing"),
    ("web.team", "Team"),
)


def unread_notifications() -> int:
    """The signed-in user's unread in-portal notifications (one COUNT per page)."""
    return db.session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(
            Notification.user_id == current_user.id,
            Notification.tenant_id == current_user.tenant_id,
            Notification.read_at.is_(None),
        )
    )


def _nav_context() -> dict:
    if not current_user.is_authenticated:
        return {}
    views = current_app.view_functions
    return {
        "nav_items": [(endpoint, label) for endpoint, label in ITEMS if endpoint in views],
        "unread_notifications": unread_notifications,
        "has_notifications_page": "web.notifications" in views,
    }


def init_app(app: Flask) -> None:
    app.context_processor(_nav_context)
