"""Helpers for the portal's page tests: a tenant with one user of each role, signing in, sending
forms with their CSRF token, reading a page's text and counting the SQL statements a page runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select

from portal.extensions import db

from .conftest import csrf_token
from .factories import PASSWORD, MadeTenant, new_tenant

__all__ = ["PASSWORD", "audit_events", "count_statements", "page_text", "post_form", "sign_in"]


@pytest.fixture
def portal_tenant(app: Flask) -> MadeTenant:
    """Initech: an owner, an admin and a member, on the starter plan."""
    return new_tenant(app, "Initech", team=True)


@pytest.fixture
def other_tenant(app: Flask) -> MadeTenant:
    """Globex: a second tenant, for isolation tests."""
    return new_tenant(app, "Globex", team=True)


def sign_in(client: FlaskClient, email: str, password: str = PASSWORD) -> None:
    """Sign ``client`` in through the real form (it is signed out of any earlier session)."""
    client.get("/logout")  # harmless when signed out; GET shows the sign-out page
    client.delete_cookie("session")
    page = client.get("/login")
    response = client.post("/login", data={"email": email, "password": password, "csrf_token": csrf_token(page.text)})
    assert response.status_code == 302, f"sign-in as {email} failed: {response.status_code}"


def post_form(client: FlaskClient, url: str, data: dict | None = None, page: str | None = None, **kwargs):
    """POST ``data`` to ``url`` with the CSRF token of ``page`` (default: the page at ``url``,
    or the dashboard when ``url`` has no GET)."""
    source = client.get(page or url)
    if source.status_code != 200 or "csrf_token" not in source.text:
        source = client.get("/dashboard")
    form = dict(data or {})
    form.setdefault("csrf_token", csrf_token(source.text))
    return client.post(url, data=form, **kwargs)


def audit_events(app: Flask, tenant_id: int, action: str) -> list:
    """The tenant's audit events with ``action``, oldest first (detached from the session)."""
    from portal.models import AuditEvent

    with app.app_context():
        rows = db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.action == action)
            .order_by(AuditEvent.id)
        ).all()
        db.session.expunge_all()
        db.session.remove()
    return list(rows)


def page_text(html: str) -> str:
    """The page's visible text: tags dropped, spaces collapsed."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


@contextmanager
def count_statements(app: Flask) -> Iterator[list[str]]:
    """Collects the SQL statements run inside the block (a list of their texts)."""
    statements: list[str] = []
    with app.app_context():
        engine = db.engine

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)
