"""Declaring gateway routes in tests, and reading what the gateway stored."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from portal.api.gateway import state
from portal.extensions import db
from portal.gateway.routes import add_route, remove_route
from portal.models import UsageRecord
from tests.api_helpers import drain


def add_test_route(app: Flask, path: str, upstream_url: str, **options) -> None:
    """Declare a route as ``gateway add`` does; this process sees it at once."""
    with app.app_context():
        add_route(path, upstream_url, [rule.rule for rule in app.url_map.iter_rules()], **options)
        db.session.commit()
        db.session.remove()
    state(app).routes.forget()


def remove_test_route(app: Flask, path: str) -> None:
    with app.app_context():
        remove_route(path)
        db.session.commit()
        db.session.remove()
    state(app).routes.forget()


def stored_calls(app: Flask, tenant_id: int) -> list[UsageRecord]:
    """Everything the tenant's calls left, stored, oldest first (detached)."""
    drain(app)
    with app.app_context():
        rows = db.session.scalars(
            select(UsageRecord).where(UsageRecord.tenant_id == tenant_id).order_by(UsageRecord.id)
        ).all()
        db.session.expunge_all()
        db.session.remove()
    return list(rows)
