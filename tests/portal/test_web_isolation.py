"""Tenant isolation: every portal route that takes an id, visited by tenant B's owner with
tenant A's ids, answers 404 — by GET and by POST — and changes nothing of A's.

The routes come from the URL map, so a new route with an id is swept as soon as it exists; an
id parameter this file cannot fill fails the test until it learns to make that object.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import (
    Alert,
    AlertRule,
    ApiKey,
    Budget,
    Notification,
    NotificationChannel,
    NotificationDelivery,
    Statement,
    Tenant,
    UsageRecord,
    User,
)
from portal.models.team import Invite
from portal.tenancy.keys import create_api_key
from tests.conftest import csrf_token
from tests.factories import new_tenant
from tests.portal_helpers import sign_in

PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
# Tables whose rows a stray POST could change; counted before and after the sweep.
WATCHED = (ApiKey, Budget, Alert, AlertRule, NotificationChannel, Notification, Statement, Invite, User)


def _objects_of(app, tenant_id: int, owner_id: int) -> dict[str, int]:
    """One object of each kind a portal URL names, owned by ``tenant_id``: {url parameter: id}."""
    now = datetime.now(UTC).replace(microsecond=0)
    with app.app_context():
        tenant = db.session.get(Tenant, tenant_id)
        key, _ = create_api_key(tenant, "isolation")
        db.session.flush()
        store_usage(
            [
                {
                    "tenant_id": tenant_id,
                    "api_key_id": key.id,
                    "service": "tollgate",
                    "endpoint": "/api/v1/ping",
                    "status_code": 200,
                    "occurred_at": now - timedelta(minutes=5),
                    "idempotency_key": uuid.uuid4().hex,
                }
            ]
        )
        record = db.session.scalar(select(UsageRecord.id).where(UsageRecord.tenant_id == tenant_id))
        budget = Budget(tenant_id=tenant_id, name="All spend", monthly_amount=Decimal("100.00"))
        channel = NotificationChannel(tenant_id=tenant_id, kind="email", name="ops", target="ops@example.com")
        db.session.add_all([budget, channel])
        rule = db.session.scalar(select(AlertRule).where(AlertRule.tenant_id == tenant_id).limit(1))
        alert = Alert(
            tenant_id=tenant_id,
            rule_id=rule.id,
            alert_type=rule.kind,
            severity="warning",
            title="Isolation alert",
            dedup_key=f"rule:{rule.id}:tenant",
        )
        db.session.add(alert)
        db.session.flush()
        delivery = NotificationDelivery(
            tenant_id=tenant_id, alert_id=alert.id, channel_id=channel.id, message_id=uuid.uuid4().hex, payload={}
        )
        notice = Notification(
            tenant_id=tenant_id,
            user_id=owner_id,
            alert_id=alert.id,
            event_type="alert.triggered",
            severity="warning",
            title="Isolation alert",
        )
        statement = Statement(
            tenant_id=tenant_id,
            period_start=datetime(2026, 10, 1, tzinfo=UTC),
            period_end=datetime(2026, 11, 1, tzinfo=UTC),
            plan_code="starter",
            plan_fee=Decimal("29.00"),
            total=Decimal("29.00"),
        )
        invite = Invite(
            tenant_id=tenant_id,
            email="new@isolation.example",
            role="member",
            token_hash=uuid.uuid4().hex + uuid.uuid4().hex,
            expires_at=now + timedelta(days=7),
        )
        db.session.add_all([delivery, notice, statement, invite])
        db.session.commit()
        member = db.session.scalar(select(User.id).where(User.tenant_id == tenant_id, User.role == "member"))
        ids = {
            "key_id": key.id,
            "record_id": record,
            "budget_id": budget.id,
            "channel_id": channel.id,
            "rule_id": rule.id,
            "alert_id": alert.id,
            "delivery_id": delivery.id,
            "notification_id": notice.id,
            "statement_id": statement.id,
            "invite_id": invite.id,
            "user_id": member,
        }
        db.session.remove()
    return ids


def _counts(app, tenant_id: int) -> dict[str, int]:
    with app.app_context():
        counts = {}
        for model in WATCHED:
            query = select(func.count()).select_from(model).where(model.tenant_id == tenant_id)
            counts[model.__name__] = db.session.scalar(query)
        db.session.remove()
    return counts


def _id_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("web.") and any(name.endswith("_id") for _, name in PARAM.findall(rule.rule)):
            yield rule


@pytest.fixture
def tenants(app):
    a = new_tenant(app, "Alpha Industries", team=True)
    b = new_tenant(app, "Beta Logistics", team=True)
    return a, b, _objects_of(app, a.tenant_id, a.user_ids["owner"])


def test_every_route_with_an_id_is_a_404_for_another_tenant(app, client, tenants):
    a, b, ids_of_a = tenants
    routes = list(_id_routes(app))
    assert len(routes) >= 6, [r.rule for r in routes]
    before = _counts(app, a.tenant_id)
    sign_in(client, b.owner)
    token = csrf_token(client.get("/dashboard").text)
    visited = []
    for rule in routes:

        def fill(match: re.Match) -> str:
            name = match.group(2)
            assert name in ids_of_a, f"{rule.rule}: the sweep cannot make a {name} (teach _objects_of)"
            return str(ids_of_a[name])

        url = PARAM.sub(fill, rule.rule)
        for method in sorted(rule.methods & {"GET", "POST"}):
            if method == "GET":
                response = client.get(url)
            else:
                response = client.post(url, data={"csrf_token": token, "role": "member", "name": "x"})
            assert response.status_code == 404, f"{method} {url} answered {response.status_code} to another tenant"
            visited.append(f"{method} {rule.rule}")
    assert _counts(app, a.tenant_id) == before, "a POST from another tenant changed tenant A's data"
    print("\n".join(visited))


def test_the_owner_reaches_the_same_pages(app, client, tenants):
    """The sweep's ids are real: tenant A's owner gets each GET page (not a 404)."""
    a, _, ids_of_a = tenants
    sign_in(client, a.owner)
    for rule in _id_routes(app):
        if "GET" not in rule.methods:
            continue
        url = PARAM.sub(lambda m: str(ids_of_a[m.group(2)]), rule.rule)
        response = client.get(url)
        assert response.status_code in (200, 301, 302), f"GET {url}: {response.status_code}"
