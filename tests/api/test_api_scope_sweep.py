"""Every state-changing API operation needs an admin key, except the few a usage key is for.

The sweep reads the operations from the OpenAPI document, so a new POST/PUT/PATCH/DELETE fails
it until its scope is decided: ``scope="admin"``, or a line in ``USAGE_MAY`` saying why not."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import select

from portal.extensions import db
from portal.models import Alert, Budget, NotificationChannel
from tests.api_helpers import add_key
from tests.factories import new_tenant

STATE_CHANGING = {"post", "put", "patch", "delete"}

# What a usage key is for (README: "call, report events, acquire, read"), each with its reason.
USAGE_MAY = {
    ("post", "/api/v1/usage/events"): "reporting the calls an application made is what its key is for",
    ("post", "/api/v1/usage/rate-limits/{service}/acquire"): "an application asks for a permit before each call",
}

# A minimal valid body of each operation that takes one (the sweep checks it validates).
BODIES = {
    "usage_events": {"service": "groq", "endpoint": "/chat", "tokens_used": 10},
    "acquire": {"units": 1},
    "set_service_limit": {"limit_type": "minute", "limit_value": 10},
    "create_budget": {"name": "Swept", "amount": "10.00"},
    "update_budget": {"amount": "20.00"},
    "change_account_settings": {"limits_when_redis_down": "closed"},
    "change_subscription": {"plan": "professional"},
    "change_alert_settings": {"resolve_after_evaluations": 5},
    "create_rule": {"name": "Swept rule", "metric": "calls", "warning_threshold": 10},
    "change_rule": {"min_volume": 1},
    "create_notification_channel": {"kind": "email", "target": "ops@example.com"},
}

# Query strings an operation needs besides its body.
QUERIES = {"delete_service_limit": "?limit_type=minute"}

ADMIN_ONLY = {"detail": "This API key's scope is usage; changing settings needs a key with the admin scope"}


def _tenant_records(client, tenant_id: int, admin: dict) -> dict[str, str]:
    """One record of each kind a path names, made the way a tenant makes them."""
    budget = client.post("/api/v1/budgets", json={"name": "Ops", "amount": "100.00"}, headers=admin)
    rule = client.post(
        "/api/v1/alerts/rules", json={"name": "Calls", "metric": "calls", "warning_threshold": 5}, headers=admin
    )
    channel = client.post(
        "/api/v1/notification-channels", json={"kind": "email", "target": "oncall@example.com"}, headers=admin
    )
    limit = client.put(
        "/api/v1/usage/rate-limits/groq", json={"limit_type": "minute", "limit_value": 100}, headers=admin
    )
    assert (budget.status_code, rule.status_code, channel.status_code, limit.status_code) == (201, 201, 201, 200)
    now = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
    alert = Alert(
        tenant_id=tenant_id,
        alert_type="unauthorized_access",
        severity="critical",
        status="active",
        title="Failed sign-ins",
        message="Failed API authentications in the last hour.",
        dedup_key="swept",
        first_triggered_at=now,
        last_triggered_at=now,
    )
    db.session.add(alert)
    db.session.commit()
    return {
        "alert_id": str(alert.id),
        "budget_id": str(db.session.scalar(select(Budget.id).where(Budget.tenant_id == tenant_id))),
        "rule_id": str(rule.get_json()["rule"]["id"]),
        "channel_id": str(
            db.session.scalar(select(NotificationChannel.id).where(NotificationChannel.tenant_id == tenant_id))
        ),
        "service": "groq",
    }


def _valid_body(app, operation_id: str):
    body = BODIES.get(operation_id)
    model = getattr(app.view_functions[f"api.{operation_id}"], "operation").body
    assert (body is None) == (model is None), f"{operation_id}: give BODIES a minimal valid body (or none)"
    if model is not None:
        getattr(model, "parse_json", model.model_validate)(body)  # raises if the sweep's body is invalid
    return body


def test_a_usage_key_changes_nothing_but_what_it_is_for(app, client, db, clock):
    tenant = new_tenant(app, "Scope Sweep Co", key=True)
    _, admin_secret = add_key(app, tenant.tenant_id, "admin", scope="admin")
    ids = _tenant_records(client, tenant.tenant_id, {"X-API-Key": admin_secret})
    document = client.get("/api/v1/openapi.json").get_json()
    operations = [
        (method, path, spec)
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
        # The verify API takes a service token, never a customer key (tests/api/test_verify.py).
        if method in STATE_CHANGING and spec["security"] != [{"ServiceToken": []}]
    ]
    assert len(operations) >= 17
    assert set(USAGE_MAY) <= {(m, p) for m, p, _ in operations}, "USAGE_MAY names an operation that is gone"
    refused, allowed = [], []
    for method, path, spec in operations:
        url = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "1"), path) + QUERIES.get(spec["operationId"], "")
        body = _valid_body(app, spec["operationId"])
        response = client.open(url, method=method.upper(), json=body, headers=tenant.headers)
        if (method, path) in USAGE_MAY:
            assert response.status_code in (200, 202), (method, path, response.status_code, response.get_json())
            allowed.append(path)
            continue
        assert response.status_code == 403, f"{method.upper()} {path} answered a usage key {response.status_code}"
        assert response.get_json() == ADMIN_ONLY, (method, path)
        assert "admin scope" in spec["responses"]["403"]["description"], f"{method.upper()} {path}: document it"
        refused.append(path)
    assert len(allowed) == len(USAGE_MAY) and len(refused) == len(operations) - len(USAGE_MAY)
    # What the refused calls named is as it was, as the usage key itself reads it.
    read = lambda path: client.get(f"/api/v1/{path}", headers=tenant.headers).get_json()  # noqa: E731
    assert [(a["id"], a["status"]) for a in read("alerts")["alerts"]] == [(int(ids["alert_id"]), "active")]
    assert [(b["name"], b["amount"]) for b in read("budgets")["budgets"]] == [("Ops", 100.0)]
    assert [r["name"] for r in read("alerts/rules")["rules"] if r["kind"] == "custom"] == ["Calls"]
    assert [c["target"] for c in read("notification-channels")["channels"]] == ["oncall@example.com"]
    assert read("billing/subscription")["subscription"]["plan"]["code"] == "starter"
    assert read("alerts/settings")["settings"]["resolve_after_evaluations"] == 3


def test_every_state_changing_api_route_is_in_the_document(app, client):
    """A route outside the document would escape the sweep (and its scope check)."""
    documented = {
        (method, path)
        for path, methods in client.get("/api/v1/openapi.json").get_json()["paths"].items()
        for method in methods
    }
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in {m.lower() for m in rule.methods or ()} & STATE_CHANGING:
            assert (method, path) in documented, f"{method.upper()} {rule.rule} is not a documented operation"
