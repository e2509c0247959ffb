"""The alert API (seed 001): listing and filtering, history, acknowledging and resolving,
statistics, thresholds in the seed's units and custom rules — scoped to the key's tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.alerts.rules import rule_of_kind
from portal.extensions import db as _db
from portal.models import Alert, AuditEvent, Notification, NotificationChannel, NotificationDelivery
from tests.api_helpers import add_key
from tests.factories import new_tenant

T = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


@pytest.fixture
def admin(app, tenant):
    _, secret = add_key(app, tenant.tenant_id, "admin", scope="admin")
    return {"X-API-Key": secret}


def make_alert(tenant_id: int, **fields) -> int:
    values = {
        "tenant_id": tenant_id,
        "alert_type": "error_rate",
        "severity": "warning",
        "status": "active",
        "title": "Error rate: 6.0% > 5.0%",
        "message": "Error rate is 6.0% in the last 1 hour.",
        "dedup_key": f"k{datetime.now().timestamp()}-{fields.get('alert_type', '')}-{fields.get('status', '')}",
        "first_triggered_at": T,
        "last_triggered_at": T,
    }
    values.update(fields)
    alert = Alert(**values)
    _db.session.add(alert)
    _db.session.commit()
    return alert.id


def test_alerts_lists_the_open_ones_and_filters_by_type_severity_and_status(clock, client, db, tenant):
    make_alert(tenant.tenant_id, dedup_key="a")
    make_alert(tenant.tenant_id, dedup_key="b", alert_type="response_time", severity="critical")
    make_alert(tenant.tenant_id, dedup_key="c", status="resolved", resolved_at=T + timedelta(minutes=5))
    body = client.get("/api/v1/alerts", headers=tenant.headers).get_json()
    assert body["success"] is True
    assert sorted(a["type"] for a in body["alerts"]) == ["error_rate", "response_time"]
    critical = client.get("/api/v1/alerts?severity=critical", headers=tenant.headers).get_json()["alerts"]
    assert [a["type"] for a in critical] == ["response_time"]
    by_type = client.get("/api/v1/alerts?type=error_rate", headers=tenant.headers).get_json()["alerts"]
    assert [a["status"] for a in by_type] == ["active"]
    resolved = client.get("/api/v1/alerts?status=resolved", headers=tenant.headers).get_json()["alerts"]
    assert [a["status"] for a in resolved] == ["resolved"]
    alert = body["alerts"][0]
    for field in (
        "id",
        "type",
        "severity",
        "status",
        "title",
        "message",
        "value",
        "threshold",
        "occurrences",
        "first_triggered_at",
        "last_triggered_at",
        "acknowledged_at",
        "resolved_at",
        "url",
    ):
        assert field in alert
    assert alert["url"].startswith("http://localhost/alerts/")


def test_a_bad_filter_is_a_422_naming_it(clock, client, tenant):
    response = client.get("/api/v1/alerts?severity=loud", headers=tenant.headers)
    assert response.status_code == 422
    assert "severity" in response.get_json()["detail"]


def test_history_includes_resolved_alerts_of_the_last_days(client, db, tenant, clock):
    now = datetime.fromtimestamp(clock(), UTC)
    make_alert(
        tenant.tenant_id,
        dedup_key="old",
        last_triggered_at=now - timedelta(days=40),
        status="resolved",
        resolved_at=now - timedelta(days=40),
    )
    make_alert(
        tenant.tenant_id,
        dedup_key="recent",
        last_triggered_at=now - timedelta(days=2),
        status="resolved",
        resolved_at=now - timedelta(days=2),
    )
    make_alert(tenant.tenant_id, dedup_key="open", last_triggered_at=now - timedelta(hours=1))
    body = client.get("/api/v1/alerts/history", headers=tenant.headers).get_json()
    assert [a["status"] for a in body["alerts"]] == ["active", "resolved"]
    assert body["days"] == 30
    everything = client.get("/api/v1/alerts/history?days=60", headers=tenant.headers).get_json()
    assert everything["count"] == 3


def test_acknowledge_then_resolve(client, db, tenant, admin, clock):
    channel = NotificationChannel(tenant_id=tenant.tenant_id, kind="email", target="ops@example.com")
    db.session.add(channel)
    db.session.commit()
    alert_id = make_alert(tenant.tenant_id)
    response = client.post(f"/api/v1/alerts/{alert_id}/acknowledge", headers=admin)
    assert response.status_code == 200
    alert = response.get_json()["alert"]
    assert alert["status"] == "acknowledged" and alert["acknowledged_at"]
    response = client.post(f"/api/v1/alerts/{alert_id}/resolve", headers=admin)
    assert response.status_code == 200
    assert response.get_json()["alert"]["status"] == "resolved"
    assert response.get_json()["alert"]["resolved_by"] == "user"
    again = client.post(f"/api/v1/alerts/{alert_id}/resolve", headers=admin)
    assert again.status_code == 409
    assert again.get_json() == {"detail": f"alert {alert_id} is resolved already"}
    # A resolved notice went out, and both actions are in the audit log.
    [delivery] = db.session.scalars(select(NotificationDelivery)).all()
    assert delivery.event_type == "alert.resolved"
    assert db.session.scalars(select(Notification.event_type)).all() == ["alert.resolved"]
    actions = db.session.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant.tenant_id)).all()
    assert "alert.acknowledged" in actions and "alert.resolved" in actions


def test_another_tenants_alert_is_a_404(clock, app, client, db, tenant, admin):
    other = new_tenant(app, "Other Alert Co", key=True)
    theirs = make_alert(other.tenant_id)
    for action in ("acknowledge", "resolve"):
        response = client.post(f"/api/v1/alerts/{theirs}/{action}", headers=admin)
        assert response.status_code == 404
        assert response.get_json() == {"detail": f"No alert {theirs}"}
    assert client.get("/api/v1/alerts?status=all", headers=tenant.headers).get_json()["alerts"] == []
    assert db.session.get(Alert, theirs).status == "active"


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_a_usage_key_may_not_acknowledge_or_resolve_an_alert(clock, client, db, tenant, admin, action):
    """A leaked application key cannot silence an alert (in the portal, too, only admins can)."""
    alert_id = make_alert(tenant.tenant_id, alert_type="unauthorized_access", severity="critical")
    response = client.post(f"/api/v1/alerts/{alert_id}/{action}", headers=tenant.headers)
    assert response.status_code == 403
    assert response.get_json() == {
        "detail": "This API key's scope is usage; changing settings needs a key with the admin scope"
    }
    listed = client.get("/api/v1/alerts", headers=tenant.headers).get_json()["alerts"]
    assert [(a["id"], a["status"]) for a in listed] == [(alert_id, "active")]
    assert db.session.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant.tenant_id)).all() == []
    # An admin key may, and the document says which scope it takes.
    assert client.post(f"/api/v1/alerts/{alert_id}/{action}", headers=admin).status_code == 200
    document = client.get("/api/v1/openapi.json").get_json()
    refused = document["paths"][f"/api/v1/alerts/{{alert_id}}/{action}"]["post"]["responses"]["403"]
    assert "admin scope" in refused["description"]


def test_stats_count_by_type_and_severity_and_time_to_acknowledge_and_resolve(client, db, tenant, clock):
    now = datetime.fromtimestamp(clock(), UTC)
    start = now - timedelta(days=1)
    make_alert(
        tenant.tenant_id,
        dedup_key="1",
        first_triggered_at=start,
        acknowledged_at=start + timedelta(minutes=10),
        status="resolved",
        resolved_at=start + timedelta(hours=1),
    )
    make_alert(
        tenant.tenant_id,
        dedup_key="2",
        first_triggered_at=start,
        alert_type="usage_spike",
        severity="critical",
        status="resolved",
        resolved_at=start + timedelta(hours=3),
    )
    make_alert(tenant.tenant_id, dedup_key="3", first_triggered_at=start, alert_type="usage_spike")
    stats = client.get("/api/v1/alerts/stats", headers=tenant.headers).get_json()["stats"]
    assert stats["total"] == 3
    assert (stats["active"], stats["resolved"]) == (1, 2)
    assert stats["by_type"] == {"error_rate": 1, "usage_spike": 2}
    assert stats["by_severity"] == {"warning": 2, "critical": 1}
    assert stats["time_to_acknowledge"] == {"count": 1, "mean_seconds": 600.0, "median_seconds": 600.0}
    assert stats["time_to_resolve"] == {"count": 2, "mean_seconds": 7200.0, "median_seconds": 7200.0}


def test_settings_show_the_seeds_thresholds_in_the_seeds_units(clock, client, tenant):
    body = client.get("/api/v1/alerts/settings", headers=tenant.headers).get_json()
    thresholds = body["settings"]["alert_thresholds"]
    assert thresholds["response_time"] == {"warning": 1, "critical": 2, "enabled": True}
    assert thresholds["error_rate"] == {"warning": 0.05, "critical": 0.1, "enabled": True}
    assert thresholds["usage_spike"] == {"warning": 2, "critical": 3, "enabled": True}
    assert thresholds["unauthorized_access"]["critical"] == 5
    assert thresholds["quota_usage"] == {"warning": 80, "critical": 100, "enabled": True}
    assert body["settings"]["resolve_after_evaluations"] == 3
    assert len(body["rules"]) == 9


def test_changing_settings_needs_an_admin_key(clock, client, tenant):
    response = client.put("/api/v1/alerts/settings", json={"resolve_after_evaluations": 5}, headers=tenant.headers)
    assert response.status_code == 403
    assert "admin" in response.get_json()["detail"]


def test_an_admin_changes_thresholds_in_seed_units(clock, client, db, tenant, admin):
    response = client.put(
        "/api/v1/alerts/settings",
        json={
            "alert_thresholds": {"response_time": {"warning": 1.5, "critical": 3}, "error_rate": {"warning": 0.02}},
            "resolve_after_evaluations": 5,
        },
        headers=admin,
    )
    assert response.status_code == 200, response.get_json()
    settings = response.get_json()["settings"]
    assert settings["alert_thresholds"]["response_time"] == {"warning": 1.5, "critical": 3, "enabled": True}
    assert settings["alert_thresholds"]["error_rate"]["warning"] == 0.02
    assert settings["resolve_after_evaluations"] == 5
    rule = rule_of_kind(tenant.tenant_id, "response_time")
    assert (rule.warning_threshold, rule.critical_threshold) == (1500, 3000)
    events = db.session.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant.tenant_id)).all()
    assert "alerts.settings_changed" in events


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"alert_thresholds": {"error_rate": {"warning": 0.2}}}, "error_rate.critical: must be at least"),
        ({"alert_thresholds": {"loudness": {"warning": 1}}}, "alert_thresholds"),
        ({"resolve_after_evaluations": 0}, "resolve_after_evaluations"),
        ({"alert_thresholds": {"response_time": {"warning": -1}}}, "warning"),
    ],
)
def test_bad_settings_are_refused_with_what_was_wrong(clock, client, tenant, admin, body, message):
    response = client.put("/api/v1/alerts/settings", json=body, headers=admin)
    assert response.status_code == 422
    assert message in response.get_json()["detail"]
    thresholds = client.get("/api/v1/alerts/settings", headers=tenant.headers).get_json()["settings"]
    assert thresholds["alert_thresholds"]["error_rate"]["warning"] == 0.05  # nothing changed


def test_custom_rules_are_added_changed_and_deleted(clock, client, db, tenant, admin):
    body = {
        "name": "Slow search",
        "metric": "p95_latency",
        "warning_threshold": 800,
        "critical_threshold": 1500,
        "endpoint": "/api/v1/search",
        "window_minutes": 30,
        "min_volume": 50,
    }
    assert client.post("/api/v1/alerts/rules", json=body, headers=tenant.headers).status_code == 403
    response = client.post("/api/v1/alerts/rules", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    rule = response.get_json()["rule"]
    assert (rule["kind"], rule["threshold_unit"], rule["endpoint"]) == ("custom", "absolute", "/api/v1/search")
    changed = client.put(f"/api/v1/alerts/rules/{rule['id']}", json={"critical_threshold": 2000}, headers=admin)
    assert changed.get_json()["rule"]["critical_threshold"] == 2000
    assert client.delete(f"/api/v1/alerts/rules/{rule['id']}", headers=admin).status_code == 200
    assert client.put(f"/api/v1/alerts/rules/{rule['id']}", json={"name": "x"}, headers=admin).status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "metric": "quota_usage", "warning_threshold": 1, "service": "openai"}, "cannot be narrowed"),
        ({"name": "x", "metric": "calls"}, "needs a warning or a critical threshold"),
        ({"name": "x", "metric": "error_rate", "threshold_unit": "absolute", "warning_threshold": 1}, "percent"),
        ({"name": "x", "metric": "calls", "warning_threshold": 1, "api_key_id": 999999}, "api_key_id: no such key"),
        ({"name": "x", "metric": "budget", "warning_threshold": 1}, "metric"),
    ],
)
def test_bad_custom_rules_are_refused(clock, client, admin, body, message):
    response = client.post("/api/v1/alerts/rules", json=body, headers=admin)
    assert response.status_code == 422
    assert message in response.get_json()["detail"]


def test_a_default_rule_changes_its_thresholds_but_is_not_deleted(clock, client, tenant, admin):
    rules = client.get("/api/v1/alerts/rules", headers=tenant.headers).get_json()["rules"]
    error_rate = next(r for r in rules if r["kind"] == "error_rate")
    response = client.put(f"/api/v1/alerts/rules/{error_rate['id']}", json={"min_volume": 100}, headers=admin)
    assert response.get_json()["rule"]["min_volume"] == 100
    refused = client.put(f"/api/v1/alerts/rules/{error_rate['id']}", json={"metric": "calls"}, headers=admin)
    assert refused.status_code == 422
    assert "metric: cannot be set on the default rule" in refused.get_json()["detail"]
    deleted = client.delete(f"/api/v1/alerts/rules/{error_rate['id']}", headers=admin)
    assert deleted.status_code == 409


def test_another_tenants_rule_is_a_404(clock, app, client, admin):
    other = new_tenant(app, "Rule Owner Co", key=True)
    with app.app_context():
        theirs = rule_of_kind(other.tenant_id, "error_rate").id
        _db.session.remove()
    assert client.put(f"/api/v1/alerts/rules/{theirs}", json={"min_volume": 1}, headers=admin).status_code == 404
    assert client.delete(f"/api/v1/alerts/rules/{theirs}", headers=admin).status_code == 404


def rule_events(db, tenant_id: int) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action.like("alert_rule.%"))
    return list(db.session.scalars(query.order_by(AuditEvent.id)))


def test_each_rule_change_through_the_api_writes_one_audit_event_naming_the_key(clock, app, client, db, tenant):
    key_id, secret = add_key(app, tenant.tenant_id, "automation", scope="admin")
    admin = {"X-API-Key": secret}
    body = {"name": "Busy", "metric": "calls", "warning_threshold": 100}
    rule_id = client.post("/api/v1/alerts/rules", json=body, headers=admin).get_json()["rule"]["id"]
    rule = f"/api/v1/alerts/rules/{rule_id}"
    for change in ({"warning_threshold": 150}, {"warning_threshold": 150}, {"is_enabled": False}, {"is_enabled": True}):
        assert client.put(rule, json=change, headers=admin).status_code == 200
    assert client.delete(rule, headers=admin).status_code == 200
    events = rule_events(db, tenant.tenant_id)
    # The second change sets what is set already: no event.
    assert [e.action for e in events] == [
        "alert_rule.created",
        "alert_rule.changed",
        "alert_rule.disabled",
        "alert_rule.enabled",
        "alert_rule.deleted",
    ]
    assert all((e.user_id, e.ip_address, e.details["api_key_id"]) == (None, "127.0.0.1", key_id) for e in events)
    assert all(e.details["rule_id"] == rule_id and e.details["name"] == "Busy" for e in events)
    assert events[0].details["metric"] == "calls"
    assert events[1].details["changes"] == {"warning_threshold": "150.000000"}


def test_a_refused_rule_change_through_the_api_writes_no_audit_event(clock, client, db, tenant, admin):
    rules = client.get("/api/v1/alerts/rules", headers=tenant.headers).get_json()["rules"]
    error_rate = next(r for r in rules if r["kind"] == "error_rate")
    assert (
        client.put(f"/api/v1/alerts/rules/{error_rate['id']}", json={"metric": "calls"}, headers=admin).status_code
        == 422
    )
    assert client.post("/api/v1/alerts/rules", json={"name": "x", "metric": "calls"}, headers=admin).status_code == 422
    assert client.delete(f"/api/v1/alerts/rules/{error_rate['id']}", headers=admin).status_code == 409
    assert rule_events(db, tenant.tenant_id) == []


def test_acknowledging_resolving_and_settings_through_the_api_record_the_callers_address(
    clock, client, db, tenant, admin
):
    alert_id = make_alert(tenant.tenant_id)
    assert client.post(f"/api/v1/alerts/{alert_id}/acknowledge", headers=admin).status_code == 200
    assert client.post(f"/api/v1/alerts/{alert_id}/resolve", headers=admin).status_code == 200
    body = {"resolve_after_evaluations": 4}
    assert client.put("/api/v1/alerts/settings", json=body, headers=admin).status_code == 200
    events = db.session.scalars(
        select(AuditEvent).where(AuditEvent.tenant_id == tenant.tenant_id).order_by(AuditEvent.id)
    ).all()
    assert [(e.action, e.user_id, e.ip_address) for e in events] == [
        ("alert.acknowledged", None, "127.0.0.1"),
        ("alert.resolved", None, "127.0.0.1"),
        ("alerts.settings_changed", None, "127.0.0.1"),
    ]
