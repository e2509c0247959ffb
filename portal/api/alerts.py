"""The API's alert operations (seed 001): alerts and their history, acknowledging and resolving,
statistics, thresholds and custom rules. Each change is audited as the portal's is: without a
user, with the caller's address and (for rule changes) the key it came with."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app, request

from ..alerts import rules as rule_domain
from ..alerts import service
from ..alerts.bodies import AlertSettingsBody, RuleBody, RuleChange
from ..alerts.serialize import alert_json, number
from ..extensions import db
from ..kernel.times import iso
from ..models import AlertRule
from . import bp
from .alert_params import AlertsQuery, HistoryQuery, StatsQuery
from .guard import api_error
from .operations import operation
from .views import caller, tenant_id, utcnow

NOT_FOUND = {404: "no such alert in this account"}


def _alert(alert) -> dict:
    return alert_json(alert, current_app.config["PORTAL_BASE_URL"])


def rule_json(rule: AlertRule) -> dict:
    return {
        "id": rule.id,
        "kind": rule.kind,
        "name": rule.name,
        "metric": rule.metric,
        "comparator": rule.comparator,
        "threshold_unit": rule.threshold_unit,
        "warning_threshold": number(rule.warning_threshold),
        "critical_threshold": number(rule.critical_threshold),
        "window_minutes": rule.window_minutes,
        "min_volume": rule.min_volume,
        "cooldown_minutes": rule.cooldown_minutes,
        "service": rule.service,
        "endpoint": rule.endpoint,
        "api_key_id": rule.api_key_id,
        "end_user": rule.end_user,
        "is_enabled": rule.is_enabled,
        "updated_at": iso(rule.updated_at),
    }


@bp.get("/alerts")
@operation("Alerts, the open ones unless a status is given", category="alerts", tag="alerts", query=AlertsQuery)
def list_alerts(params: AlertsQuery):
    alerts = service.list_alerts(tenant_id(), params.type, params.severity, params.status, limit=params.limit)
    return {"success": True, "alerts": [_alert(a) for a in alerts], "count": len(alerts)}


@bp.get("/alerts/history")
@operation("Every alert of the last days, resolved ones included", category="alerts", tag="alerts", query=HistoryQuery)
def alert_history(params: HistoryQuery):
    since = utcnow() - timedelta(days=params.days)
    alerts = service.list_alerts(tenant_id(), params.type, params.severity, "all", since=since, limit=params.limit)
    return {"success": True, "alerts": [_alert(a) for a in alerts], "count": len(alerts), "days": params.days}


@bp.get("/alerts/stats")
@operation(
    "Alert statistics: counts by type and severity, times to acknowledge and resolve",
    category="alerts",
    tag="alerts",
    query=StatsQuery,
)
def alert_stats(params: StatsQuery):
    return {"success": True, "stats": service.alert_stats(tenant_id(), utcnow(), params.days)}


def _owned(alert_id: str):
    alert = service.get_alert(tenant_id(), int(alert_id)) if int(alert_id) < 2**31 else None
    if alert is None:
        return None, api_error(404, f"No alert {alert_id}")
    return alert, None


@bp.post("/alerts/<record_id:alert_id>/acknowledge")
@operation(
    "Acknowledge an alert: its repeats stop",
    category="alerts",
    tag="alerts",
    scope="admin",  # silencing an alert is a change, as in the portal (admins only)
    responses={**NOT_FOUND, 409: "the alert is resolved already"},
)
def acknowledge_alert(alert_id: str):
    alert, missing = _owned(alert_id)
    if missing:
        return missing
    try:
        service.acknowledge(alert, utcnow(), None, request.remote_addr)
    except service.AlertError as error:
        return api_error(409, str(error))
    db.session.commit()
    return {"success": True, "alert": _alert(alert)}


@bp.post("/alerts/<record_id:alert_id>/resolve")
@operation(
    "Resolve an alert",
    category="alerts",
    tag="alerts",
    scope="admin",  # resolving ends the alert's notices: a change, as in the portal
    responses={**NOT_FOUND, 409: "the alert is resolved already"},
)
def resolve_alert(alert_id: str):
    alert, missing = _owned(alert_id)
    if missing:
        return missing
    try:
        service.resolve(alert, utcnow(), None, request.remote_addr)
    except service.AlertError as error:
        return api_error(409, str(error))
    db.session.commit()
    return {"success": True, "alert": _alert(alert)}


@bp.get("/alerts/settings")
@operation("Alert thresholds (seed 001's units) and rules", category="alerts", tag="alerts")
def alert_settings():
    rules = rule_domain.tenant_rules(tenant_id())
    return {"success": True, "settings": service.settings_json(tenant_id()), "rules": [rule_json(r) for r in rules]}


@bp.put("/alerts/settings")
@operation(
    "Change alert thresholds and settings", category="alerts", tag="alerts", body=AlertSettingsBody, scope="admin"
)
def change_alert_settings(payload: AlertSettingsBody):
    thresholds = {
        kind: {k: v for k, v in change.model_dump(exclude_unset=True).items() if v is not None or k != "enabled"}
        for kind, change in (payload.alert_thresholds or {}).items()
    }
    try:
        settings = service.change_settings(
            tenant_id(),
            thresholds,
            payload.resolve_after_evaluations,
            payload.notify_on_resolve,
            user_id=None,
            ip_address=request.remote_addr,
        )
    except rule_domain.RuleError as error:
        db.session.rollback()
        return api_error(422, str(error))
    db.session.commit()
    return {"success": True, "settings": settings}


@bp.get("/alerts/rules")
@operation("Alert rules: the defaults and the account's own", category="alerts", tag="alerts")
def list_rules():
    return {"success": True, "rules": [rule_json(r) for r in rule_domain.tenant_rules(tenant_id())]}


@bp.post("/alerts/rules")
@operation("Add a custom alert rule", category="alerts", tag="alerts", body=RuleBody, scope="admin", status=201)
def create_rule(payload: RuleBody):
    fields = payload.model_dump(exclude_unset=True)
    if fields.get("threshold_unit") is None:
        fields.pop("threshold_unit", None)
    try:
        rule = rule_domain.create_custom_rule(tenant_id(), fields, **caller())
    except rule_domain.RuleError as error:
        db.session.rollback()
        return api_error(422, str(error))
    db.session.commit()
    return {"success": True, "rule": rule_json(rule)}, 201


def _owned_rule(rule_id: str):
    rule = rule_domain.get_rule(tenant_id(), int(rule_id)) if int(rule_id) < 2**31 else None
    if rule is None:
        return None, api_error(404, f"No alert rule {rule_id}")
    return rule, None


@bp.put("/alerts/rules/<record_id:rule_id>")
@operation(
    "Change an alert rule (a default rule: its thresholds, window, volume, cooldown, on/off)",
    category="alerts",
    tag="alerts",
    body=RuleChange,
    scope="admin",
    responses={404: "no such rule"},
)
def change_rule(rule_id: str, payload: RuleChange):
    rule, missing = _owned_rule(rule_id)
    if missing:
        return missing
    try:
        rule_domain.change_rule(rule, payload.changes(), **caller())
    except rule_domain.RuleError as error:
        db.session.rollback()
        return api_error(422, str(error))
    db.session.commit()
    return {"success": True, "rule": rule_json(rule)}


@bp.delete("/alerts/rules/<record_id:rule_id>")
@operation(
    "Delete a custom alert rule (a default rule is turned off instead)",
    category="alerts",
    tag="alerts",
    scope="admin",
    responses={404: "no such rule", 409: "a default rule cannot be deleted"},
)
def delete_rule(rule_id: str):
    rule, missing = _owned_rule(rule_id)
    if missing:
        return missing
    if rule.kind != "custom":
        return api_error(409, f"rule {rule.id} is a default rule; turn it off with is_enabled: false")
    rule_domain.delete_rule(rule, **caller())
    db.session.commit()
    return {"success": True}
