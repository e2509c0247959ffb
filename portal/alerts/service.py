"""What users do with alerts: list them, acknowledge and resolve them, read their statistics,
and change the thresholds (seed 001's ``alert_thresholds``)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from statistics import median

from sqlalchemy import func, select

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.times import iso
from ..models import Alert, AlertRule, AlertSettings
from .announce import enqueue_alert_notifications
from .rules import DEFAULT_KINDS, RuleError, apply_changes, rule_of_kind, settings_for

log = logging.getLogger("tollgate.alerts")
OPEN = ("active", "acknowledged")


class AlertError(ValueError):
    """A change an alert cannot take (e.g. acknowledging a resolved one)."""


def list_alerts(
    tenant_id: int,
    alert_type: str | None = None,
    severity: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[Alert]:
    """The tenant's alerts, newest first; without ``status`` the open ones (active and
    acknowledged), with ``status="all"`` every one."""
    query = select(Alert).where(Alert.tenant_id == tenant_id)
    if status is None:
        query = query.where(Alert.status.in_(OPEN))
    elif status != "all":
        query = query.where(Alert.status == status)
    if alert_type:
        query = query.where(Alert.alert_type == alert_type)
    if severity:
        query = query.where(Alert.severity == severity)
    if since is not None:
        query = query.where(Alert.last_triggered_at >= since)
    query = query.order_by(Alert.last_triggered_at.desc(), Alert.id.desc()).limit(limit)
    return list(db.session.scalars(query))


def get_alert(tenant_id: int, alert_id: int) -> Alert | None:
    return db.session.scalar(select(Alert).where(Alert.tenant_id == tenant_id, Alert.id == alert_id))


def acknowledge(alert: Alert, now: datetime, user_id: int | None = None, ip_address: str | None = None) -> Alert:
    """Silence an active alert's repeats; it still resolves and still escalates. The audit event
    names who did it (``user_id``, None through the API) and from where."""
    if alert.status == "resolved":
        raise AlertError(f"alert {alert.id} is resolved already")
    if alert.status == "active":
        alert.status = "acknowledged"
        alert.acknowledged_at = now
        alert.acknowledged_by_id = user_id
        record_event("alert.acknowledged", alert.tenant_id, user_id, ip_address, alert_id=alert.id, title=alert.title)
    return alert


def resolve(alert: Alert, now: datetime, user_id: int | None = None, ip_address: str | None = None) -> Alert:
    """Close an alert by hand; a resolved notice goes to the channels as for one that cleared.
    The audit event names who did it and from where, as for :func:`acknowledge`."""
    if alert.status == "resolved":
        raise AlertError(f"alert {alert.id} is resolved already")
    alert.status = "resolved"
    alert.resolved_at = now
    alert.resolved_by = "user"
    alert.resolved_by_id = user_id
    record_event("alert.resolved", alert.tenant_id, user_id, ip_address, alert_id=alert.id, title=alert.title)
    if settings_for(alert.tenant_id).notify_on_resolve:
        enqueue_alert_notifications(alert, "alert.resolved", now)
        alert.last_notified_at = now
    log.warning("alert %s resolved by hand: tenant %s, %s", alert.id, alert.tenant_id, alert.title)
    return alert


# -- statistics (seed 000) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Durations:
    count: int
    mean_seconds: float | None
    median_seconds: float | None

    def as_dict(self) -> dict:
        return {"count": self.count, "mean_seconds": self.mean_seconds, "median_seconds": self.median_seconds}


def _durations(values: list[float]) -> Durations:
    if not values:
        return Durations(0, None, None)
    return Durations(len(values), round(sum(values) / len(values), 1), round(median(values), 1))


def alert_stats(tenant_id: int, now: datetime, days: int) -> dict:
    """Counts by type, severity and status, and the times to acknowledge and to resolve, of the
    alerts first triggered in the last ``days`` days."""
    since = now - timedelta(days=days)
    rows = db.session.execute(
        select(
            Alert.alert_type,
            Alert.severity,
            Alert.status,
            Alert.first_triggered_at,
            Alert.acknowledged_at,
            Alert.resolved_at,
            Alert.resolved_by,
        ).where(Alert.tenant_id == tenant_id, Alert.first_triggered_at >= since)
    ).all()
    by_type, by_severity, by_status = Counter(), Counter(), Counter()
    to_ack, to_resolve = [], []
    for row in rows:
        by_type[row.alert_type] += 1
        by_severity[row.severity] += 1
        by_status[row.status] += 1
        if row.acknowledged_at is not None:
            to_ack.append((row.acknowledged_at - row.first_triggered_at).total_seconds())
        if row.resolved_at is not None:
            to_resolve.append((row.resolved_at - row.first_triggered_at).total_seconds())
    return {
        "period": {"days": days, "since": iso(since)},
        "total": len(rows),
        "active": by_status["active"],
        "acknowledged": by_status["acknowledged"],
        "resolved": by_status["resolved"],
        "by_type": dict(sorted(by_type.items())),
        "by_severity": {"warning": by_severity["warning"], "critical": by_severity["critical"]},
        "by_status": {status: by_status[status] for status in ("active", "acknowledged", "resolved")},
        "time_to_acknowledge": _durations(to_ack).as_dict(),
        "time_to_resolve": _durations(to_resolve).as_dict(),
    }


def open_counts(tenant_ids: list[int]) -> dict[int, int]:
    rows = db.session.execute(
        select(Alert.tenant_id, func.count())
        .where(Alert.tenant_id.in_(tenant_ids), Alert.status.in_(OPEN))
        .group_by(Alert.tenant_id)
    )
    return dict(rows.all())


# -- thresholds in seed 001's shape -------------------------------------------------------------
# The seed states response time in seconds and error rate as a fraction; rules keep
# milliseconds and percent. Everything else is shown in the rule's own unit.
SEED_SCALE = {"response_time": Decimal(1000), "error_rate": Decimal(100)}


def _seed_value(kind: str, value: Decimal | None) -> float | int | None:
    if value is None:
        return None
    value = value / SEED_SCALE.get(kind, Decimal(1))
    return int(value) if value == value.to_integral_value() else float(value.normalize())


def thresholds(tenant_id: int) -> dict:
    rules = db.session.scalars(
        select(AlertRule).where(AlertRule.tenant_id == tenant_id, AlertRule.kind.in_(DEFAULT_KINDS))
    )
    return {
        rule.kind: {
            "warning": _seed_value(rule.kind, rule.warning_threshold),
            "critical": _seed_value(rule.kind, rule.critical_threshold),
            "enabled": rule.is_enabled,
        }
        for rule in sorted(rules, key=lambda r: r.id)
        if rule.kind != "budget"
    }


def settings_json(tenant_id: int) -> dict:
    settings = settings_for(tenant_id)
    return {
        "alert_thresholds": thresholds(tenant_id),
        "resolve_after_evaluations": settings.resolve_after_evaluations,
        "notify_on_resolve": settings.notify_on_resolve,
    }


def change_settings(
    tenant_id: int,
    alert_thresholds: dict[str, dict] | None = None,
    resolve_after_evaluations: int | None = None,
    notify_on_resolve: bool | None = None,
    user_id: int | None = None,
    ip_address: str | None = None,
) -> dict:
    """Apply a settings change (thresholds in seed 001's units) and audit it with who made it
    (``user_id``, None through the API) and from where; raises RuleError naming the field. The
    caller commits."""
    for kind, change in (alert_thresholds or {}).items():
        if kind not in DEFAULT_KINDS or kind == "budget":
            names = ", ".join(sorted(DEFAULT_KINDS - {"budget"}))
            raise RuleError(f"alert_thresholds.{kind}: no such alert type; types are {names}")
        rule = rule_of_kind(tenant_id, kind)
        if rule is None:
            raise RuleError(f"alert_thresholds.{kind}: this account has no such rule")
        scale = SEED_SCALE.get(kind, Decimal(1))
        changes = {}
        for level in ("warning", "critical"):
            if level in change:
                value = change[level]
                changes[f"{level}_threshold"] = None if value is None else Decimal(str(value)) * scale
        if "enabled" in change:
            changes["is_enabled"] = change["enabled"]
        try:
            apply_changes(rule, changes)
        except RuleError as error:
            raise RuleError(f"alert_thresholds.{kind}.{str(error).replace('_threshold', '')}") from None
    if resolve_after_evaluations is not None or notify_on_resolve is not None:
        settings = db.session.get(AlertSettings, tenant_id)
        if settings is None:
            settings = AlertSettings(tenant_id=tenant_id, resolve_after_evaluations=3, notify_on_resolve=True)
            db.session.add(settings)
        if resolve_after_evaluations is not None:
            settings.resolve_after_evaluations = resolve_after_evaluations
        if notify_on_resolve is not None:
            settings.notify_on_resolve = notify_on_resolve
    db.session.flush()
    record_event(
        "alerts.settings_changed",
        tenant_id,
        user_id,
        ip_address,
        thresholds=sorted(alert_thresholds or {}),
        resolve_after_evaluations=resolve_after_evaluations,
        notify_on_resolve=notify_on_resolve,
    )
    return settings_json(tenant_id)
