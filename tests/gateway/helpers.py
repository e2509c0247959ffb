"""Declaring gateway routes in tests, and reading what the gateway stored."""

from __future__ import annotations

import time

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


def stored_calls_of_servers(app: Flask, tenant_id: int, expected: int, within_seconds: float = 15) -> list[UsageRecord]:
    """The tenant's stored calls once ``expected`` are stored: live servers send completions
    of idle connections within a second or two (bounded wait)."""
    deadline = time.monotonic() + within_seconds
    while True:
        records = stored_calls(app, tenant_id)
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.2)
