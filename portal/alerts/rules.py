"""Alert rules: the defaults every tenant gets, the metrics a rule can watch, and changes.

A rule watches one metric over a window and compares it with a warning and a critical
threshold. The metrics and what their thresholds mean:

=================  ==========================================================  ==========
metric             value                                                        period
=================  ==========================================================  ==========
quota_usage        calls admitted this billing period, % of the plan's quota    month
                   (or the count, with ``threshold_unit = "absolute"``)
day_window         calls admitted today, % of the plan's per-day limit (or the   day
                   count)
daily_cost         outside-service and API cost today, in dollars               day
budget             each budget's warning percentages (thresholds come from the   month
                   budget: under 100% warns, 100% and over is critical)
rate_limited       calls refused with 429 in the window
error_rate         % of calls answered 4xx/5xx (429 excluded) in the window
p95_latency        95th percentile response time in the window, milliseconds
avg_latency        mean response time in the window, milliseconds
calls              calls in the window
errors             calls answered 4xx/5xx (429 excluded) in the window
tokens             tokens in and out in the window
cost               cost in the window, dollars
usage_spike        calls in the window ÷ the normal rate (the median of the same
                   hour of the week over the last four weeks)
failed_auth        failed authentications in the last hour (API keys that are
                   revoked or expired, and portal sign-ins)
=================  ==========================================================  ==========

A period metric fires once per period (its alert's dedup key carries the period) and again the
next period. Windowed metrics fire while the condition holds and resolve after it has been
clear for the tenant's ``resolve_after_evaluations``.

Creating, changing, switching and deleting a rule write its audit event here, whichever way the
change came (the portal passes the signed-in user and address, the API the caller's address and
key), so each change is recorded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import select

from ..extensions import db
from ..kernel.audit import record_event
from ..models import AlertRule, AlertSettings, ApiKey, Tenant

COMPARATORS = {"gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}
THRESHOLD_UNITS = ("percent", "absolute")
MAX_WINDOW_MINUTES = 7 * 1440


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str  # how a value reads: "%", "ms", "calls", "$", "×"
    period: str | None = None  # "month" or "day" for a period threshold
    units: tuple[str, ...] = ("absolute",)  # the threshold units it accepts
    volume: bool = False  # whether min_volume applies


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("quota_usage", "Monthly quota used", "%", period="month", units=("percent", "absolute")),
        Metric("day_window", "Daily request limit used", "%", period="day", units=("percent", "absolute")),
        Metric("daily_cost", "Cost today", "$", period="day"),
        Metric("budget", "Budget spent", "%", period="month", units=("percent",)),
        Metric("rate_limited", "Rate-limited calls", "calls"),
        Metric("error_rate", "Error rate", "%", units=("percent",), volume=True),
        Metric("p95_latency", "p95 response time", "ms", volume=True),
        Metric("avg_latency", "Average response time", "ms", volume=True),
        Metric("calls", "Calls", "calls"),
        Metric("errors", "Errors", "calls"),
        Metric("tokens", "Tokens", "tokens"),
        Metric("cost", "Cost", "$"),
        Metric("usage_spike", "Usage against the normal rate", "×", volume=True),
        Metric("failed_auth", "Failed authentications", "attempts"),
    )
}
# Metrics a rule may narrow with a service, endpoint, key or end-user filter (they read rollups).
FILTERABLE = frozenset(
    {"rate_limited", "error_rate", "p95_latency", "avg_latency", "calls", "errors", "tokens", "cost"}
)


@dataclass(frozen=True)
class DefaultRule:
    kind: str
    name: str
    metric: str
    comparator: str
    threshold_unit: str
    warning: int | None
    critical: int | None
    window_minutes: int
    min_volume: int


# The seeds' defaults (000, 001, 002, 004); migration 0003 gives existing tenants the same.
DEFAULT_RULES: tuple[DefaultRule, ...] = (
    DefaultRule("quota_usage", "Monthly quota", "quota_usage", "gte", "percent", 80, 100, 0, 0),
    DefaultRule("day_window", "Daily request limit", "day_window", "gte", "percent", 80, 100, 1440, 0),
    DefaultRule("rate_limited", "Rate-limited calls", "rate_limited", "gte", "absolute", 1, 100, 60, 0),
    DefaultRule("error_rate", "Error rate", "error_rate", "gt", "percent", 5, 10, 60, 20),
    DefaultRule("response_time", "p95 response time", "p95_latency", "gt", "absolute", 1000, 2000, 60, 20),
    DefaultRule("usage_spike", "Usage spike", "usage_spike", "gt", "absolute", 2, 3, 60, 100),
    DefaultRule("unauthorized_access", "Failed authentications", "failed_auth", "gt", "absolute", None, 5, 60, 0),
    DefaultRule("daily_cost", "Daily cost", "daily_cost", "gte", "absolute", 50, 100, 1440, 0),
    DefaultRule("budget", "Budget thresholds", "budget", "gte", "percent", None, None, 0, 0),
)
DEFAULT_KINDS = frozenset(rule.kind for rule in DEFAULT_RULES)
DEFAULT_COOLDOWN_MINUTES = 60


class RuleError(ValueError):
    """A rule change that cannot be made; the message says why, naming the field."""


def _dec(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def add_default_rules(tenant: Tenant) -> None:
    for rule in DEFAULT_RULES:
        db.session.add(
            AlertRule(
                tenant=tenant,
                kind=rule.kind,
                name=rule.name,
                metric=rule.metric,
                comparator=rule.comparator,
                threshold_unit=rule.threshold_unit,
                warning_threshold=_dec(rule.warning),
                critical_threshold=_dec(rule.critical),
                window_minutes=rule.window_minutes,
                min_volume=rule.min_volume,
                cooldown_minutes=DEFAULT_COOLDOWN_MINUTES,
            )
        )


def tenant_rules(tenant_id: int) -> list[AlertRule]:
    return list(db.session.scalars(select(AlertRule).where(AlertRule.tenant_id == tenant_id).order_by(AlertRule.id)))


def get_rule(tenant_id: int, rule_id: int) -> AlertRule | None:
    return db.session.scalar(select(AlertRule).where(AlertRule.tenant_id == tenant_id, AlertRule.id == rule_id))


def rule_of_kind(tenant_id: int, kind: str) -> AlertRule | None:
    return db.session.scalar(select(AlertRule).where(AlertRule.tenant_id == tenant_id, AlertRule.kind == kind))


def settings_for(tenant_id: int) -> AlertSettings:
    """The tenant's alert settings (the defaults until it changes them)."""
    settings = db.session.get(AlertSettings, tenant_id)
    if settings is None:
        settings = AlertSettings(tenant_id=tenant_id, resolve_after_evaluations=3, notify_on_resolve=True)
    return settings


def _threshold(field: str, value) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise RuleError(f"{field}: must be a number or null")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RuleError(f"{field}: must be a number or null") from None
    if not number.is_finite() or number < 0:
        raise RuleError(f"{field}: must be a number of at least 0")
    if number >= Decimal(10) ** 12:
        raise RuleError(f"{field}: must be below 1,000,000,000,000")
    return number.quantize(Decimal("0.000001"))


def _int(field: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RuleError(f"{field}: must be a whole number from {low} to {high}")
    return value


def _text(field: str, value, length: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > length or "\x00" in value:
        raise RuleError(f"{field}: must be text of at most {length} characters")
    return value.strip() or None


RULE_FIELDS = (
    "name",
    "metric",
    "comparator",
    "threshold_unit",
    "warning_threshold",
    "critical_threshold",
    "window_minutes",
    "min_volume",
    "cooldown_minutes",
    "service",
    "endpoint",
    "api_key_id",
    "end_user",
    "is_enabled",
)
# What a default rule lets a tenant change (its metric and filters are what make it the default).
DEFAULT_RULE_FIELDS = (
    "warning_threshold",
    "critical_threshold",
    "threshold_unit",
    "window_minutes",
    "min_volume",
    "cooldown_minutes",
    "is_enabled",
)


def apply_changes(rule: AlertRule, changes: dict) -> AlertRule:
    """Validate ``changes`` (a dict of RULE_FIELDS) and apply them to ``rule``; raises RuleError."""
    allowed = RULE_FIELDS if rule.kind == "custom" else DEFAULT_RULE_FIELDS
    if rule.kind != "custom":  # a field set to what it is already is no change
        changes = {k: v for k, v in changes.items() if k in allowed or getattr(rule, k, object()) != v}
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        what = "a custom rule" if rule.kind == "custom" else f"the default rule {rule.kind!r}"
        raise RuleError(f"{unknown[0]}: cannot be set on {what}")
    values = {}
    if "name" in changes:
        name = _text("name", changes["name"], 120)
        if not name:
            raise RuleError("name: must not be empty")
        values["name"] = name
    if "metric" in changes:
        if changes["metric"] not in METRICS or changes["metric"] == "budget":
            names = ", ".join(m for m in METRICS if m != "budget")
            raise RuleError(f"metric: must be one of {names}")
        values["metric"] = changes["metric"]
    if "comparator" in changes:
        if changes["comparator"] not in COMPARATORS:
            raise RuleError(f"comparator: must be one of {', '.join(COMPARATORS)}")
        values["comparator"] = changes["comparator"]
    if "threshold_unit" in changes:
        if changes["threshold_unit"] not in THRESHOLD_UNITS:
            raise RuleError("threshold_unit: must be percent or absolute")
        values["threshold_unit"] = changes["threshold_unit"]
    for field in ("warning_threshold", "critical_threshold"):
        if field in changes:
            values[field] = _threshold(field, changes[field])
    if "window_minutes" in changes:
        values["window_minutes"] = _int("window_minutes", changes["window_minutes"], 1, MAX_WINDOW_MINUTES)
    if "min_volume" in changes:
        values["min_volume"] = _int("min_volume", changes["min_volume"], 0, 10**9)
    if "cooldown_minutes" in changes:
        values["cooldown_minutes"] = _int("cooldown_minutes", changes["cooldown_minutes"], 0, MAX_WINDOW_MINUTES)
    for field, length in (("service", 64), ("endpoint", 255), ("end_user", 120)):
        if field in changes:
            values[field] = _text(field, changes[field], length)
    if "api_key_id" in changes:
        key_id = changes["api_key_id"]
        if key_id is not None:
            key_id = _int("api_key_id", key_id, 1, 2**31 - 1)
            owned = db.session.scalar(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.tenant_id == rule.tenant_id))
            if owned is None:
                raise RuleError("api_key_id: no such key")
        values["api_key_id"] = key_id
    if "is_enabled" in changes:
        if not isinstance(changes["is_enabled"], bool):
            raise RuleError("is_enabled: must be true or false")
        values["is_enabled"] = changes["is_enabled"]

    merged = {field: values.get(field, getattr(rule, field)) for field in RULE_FIELDS}
    metric = METRICS.get(merged["metric"])
    if metric is None:
        raise RuleError("metric: is required")
    if merged["threshold_unit"] not in metric.units:
        raise RuleError(f"threshold_unit: {metric.name} takes {' or '.join(metric.units)} thresholds")
    filtered = any(merged[f] is not None for f in ("service", "endpoint", "api_key_id", "end_user"))
    if filtered and metric.name not in FILTERABLE:
        raise RuleError(f"{metric.name}: cannot be narrowed by service, endpoint, key or end user")
    warning, critical = merged["warning_threshold"], merged["critical_threshold"]
    if warning is None and critical is None and metric.name != "budget":
        raise RuleError("warning_threshold: a rule needs a warning or a critical threshold")
    if warning is not None and critical is not None:
        upward = merged["comparator"] in ("gt", "gte")
        if (upward and warning > critical) or (not upward and warning < critical):
            bound = "at least" if upward else "at most"
            raise RuleError(f"critical_threshold: must be {bound} the warning threshold")
    for field, value in values.items():
        setattr(rule, field, value)
    return rule


def _via(api_key_id: int | None) -> dict:
    """The audit details that say a change came through the API, with which key."""
    return {} if api_key_id is None else {"api_key_id": api_key_id}


def create_custom_rule(
    tenant_id: int,
    fields: dict,
    *,
    user_id: int | None = None,
    ip_address: str | None = None,
    api_key_id: int | None = None,
) -> AlertRule:
    """A tenant's own rule from ``fields``, flushed (it has its id) and audited; the caller
    commits. Raises RuleError."""
    for required in ("name", "metric"):
        if required not in fields:
            raise RuleError(f"{required}: is required")
    rule = AlertRule(
        tenant_id=tenant_id,
        kind="custom",
        name="",
        metric="",
        comparator="gt",
        threshold_unit="absolute",
        window_minutes=60,
        min_volume=0,
        cooldown_minutes=DEFAULT_COOLDOWN_MINUTES,
        is_enabled=True,
    )
    fields = dict(fields)
    metric = METRICS.get(fields.get("metric"))
    if "threshold_unit" not in fields and metric is not None:
        fields["threshold_unit"] = metric.units[0]
    apply_changes(rule, fields)
    db.session.add(rule)
    db.session.flush()
    record_event(
        "alert_rule.created",
        tenant_id,
        user_id,
        ip_address,
        rule_id=rule.id,
        name=rule.name,
        metric=rule.metric,
        **_via(api_key_id),
    )
    return rule


def change_rule(
    rule: AlertRule,
    changes: dict,
    *,
    user_id: int | None = None,
    ip_address: str | None = None,
    api_key_id: int | None = None,
) -> list[str]:
    """Apply ``changes`` as :func:`apply_changes` does and audit them; returns the names of the
    fields whose value changed (none: nothing is recorded). Turning a rule on or off and nothing
    else is ``alert_rule.enabled`` / ``alert_rule.disabled``; any other change is
    ``alert_rule.changed`` with the new values. The caller commits. Raises RuleError."""
    before = {name: getattr(rule, name, None) for name in changes}
    apply_changes(rule, changes)
    changed = sorted(name for name, value in before.items() if getattr(rule, name) != value)
    if changed == ["is_enabled"]:
        action = "alert_rule.enabled" if rule.is_enabled else "alert_rule.disabled"
        record_event(action, rule.tenant_id, user_id, ip_address, rule_id=rule.id, name=rule.name, **_via(api_key_id))
    elif changed:
        record_event(
            "alert_rule.changed",
            rule.tenant_id,
            user_id,
            ip_address,
            rule_id=rule.id,
            name=rule.name,
            changes={name: None if getattr(rule, name) is None else str(getattr(rule, name)) for name in changed},
            **_via(api_key_id),
        )
    return changed


def delete_rule(
    rule: AlertRule,
    *,
    user_id: int | None = None,
    ip_address: str | None = None,
    api_key_id: int | None = None,
) -> None:
    """Delete a custom rule and audit it (its past alerts stay); the caller commits. A default
    rule cannot be deleted (it is turned off instead): RuleError."""
    if rule.kind != "custom":
        raise RuleError(f"rule {rule.id} is a default rule; turn it off instead")
    record_event(
        "alert_rule.deleted",
        rule.tenant_id,
        user_id,
        ip_address,
        rule_id=rule.id,
        name=rule.name,
        metric=rule.metric,
        **_via(api_key_id),
    )
    db.session.delete(rule)
