"""One evaluation pass: every enabled rule of every tenant against its metric, and the alerts'
transitions that follow.

* One open alert per rule and subject (its dedup key). While the condition holds, each pass
  counts an occurrence; an alert nobody acknowledged is notified again once the rule's cooldown
  has passed since its last notice.
* A warning that reaches the critical threshold escalates: it becomes critical, active again if
  it was acknowledged, and is notified again.
* An alert resolves itself once its condition has been clear for the tenant's
  ``resolve_after_evaluations`` passes in a row (a pass that finds it firing again starts the
  count over), and a resolved notice goes out. After a resolution the rule waits for its
  cooldown before it opens a new alert for the same subject.
* A period threshold (quota, day window, daily cost, budget) carries its period in the dedup
  key, so it fires once per period — a threshold already fired and resolved in the period does
  not fire again until the next one, unless a higher severity is reached.

Each transition writes its notifications to the outbox in the same transaction and is logged at
WARNING or CRITICAL (seed 001). Two passes never run at once: the pass holds a Redis lock, and
the database refuses a second open alert for one dedup key.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from redis import Redis
from sqlalchemy import select

from ..extensions import db
from ..kernel.periods import billing_period
from ..kernel.redis_keys import ALERTS_LOCK
from ..models import Alert, AlertRule, AlertSettings, Budget, BudgetCrossing, Tenant
from . import metrics
from .announce import enqueue_alert_changes
from .rules import COMPARATORS, FILTERABLE, METRICS, RULE_FIELDS

log = logging.getLogger("tollgate.alerts")
LOCK_SECONDS = 300
IN_CHUNK = 5000
SHORT_WINDOW_MINUTES = int(metrics.SHORT_WINDOW.total_seconds() // 60)
RANK = {"warning": 1, "critical": 2}
LOG_LEVEL = {"warning": logging.WARNING, "critical": logging.CRITICAL}


@dataclass(frozen=True)
class Finding:
    """What one rule found for one subject in this pass."""

    rule: AlertRule
    subject: str
    severity: str | None  # None: the condition is clear
    value: Decimal | None
    threshold: Decimal | None
    period_key: str | None
    title: str
    message: str

    @property
    def dedup_key(self) -> str:
        key = f"rule:{self.rule.id}:{self.subject}"
        return f"{key}:{self.period_key}" if self.period_key else key


@dataclass
class PassResult:
    tenants: int = 0
    rules: int = 0
    triggered: int = 0
    escalated: int = 0
    repeated: int = 0
    resolved: int = 0
    open: int = 0
    notifications: int = 0
    skipped: bool = False
    transitions: list[tuple[Alert, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "tenants": self.tenants,
            "rules": self.rules,
            "triggered": self.triggered,
            "escalated": self.escalated,
            "repeated": self.repeated,
            "resolved": self.resolved,
            "open": self.open,
            "notifications": self.notifications,
            "skipped": self.skipped,
        }


COMPARE = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}


def _compare(value: Decimal, comparator: str, threshold: Decimal) -> bool:
    return COMPARE[comparator](value, threshold)


def _severity(rule: AlertRule, value) -> tuple[str | None, Decimal | None]:
    if value is None:
        return None, None
    if rule.critical_threshold is not None and _compare(value, rule.comparator, rule.critical_threshold):
        return "critical", rule.critical_threshold
    if rule.warning_threshold is not None and _compare(value, rule.comparator, rule.warning_threshold):
        return "warning", rule.warning_threshold
    return None, None


def _shown(value, unit: str) -> str:
    if value is None:
        return "n/a"
    number = Decimal(str(value))
    if unit == "$":
        return f"${number.quantize(Decimal('0.01')):,}"
    if unit == "%":
        return f"{number.quantize(Decimal('0.1'))}%"
    if unit == "×":
        return f"{number.quantize(Decimal('0.01'))}×"
    if unit == "ms":
        return f"{number.quantize(Decimal('1')):,} ms"
    if number == number.to_integral_value():
        return f"{number.quantize(Decimal('1')):,} {unit}"
    return f"{number:,.2f} {unit}"


def _describe(rule: AlertRule, value, threshold, unit: str, scope: str) -> tuple[str, str]:
    metric = METRICS[rule.metric]
    shown_value = _shown(value, unit)
    if threshold is None:
        return f"{rule.name}: {shown_value}", f"{metric.label} is {shown_value}{scope}."
    sign = COMPARATORS[rule.comparator]
    shown_threshold = _shown(threshold, unit)
    title = f"{rule.name}: {shown_value} {sign} {shown_threshold}"
    return title[:200], f"{metric.label} is {shown_value}{scope}, {sign} the threshold of {shown_threshold}."


def _window_text(rule: AlertRule) -> str:
    minutes = rule.window_minutes
    if minutes % 1440 == 0:
        return f"{minutes // 1440} day{'s' if minutes > 1440 else ''}"
    if minutes % 60 == 0:
        return f"{minutes // 60} hour{'s' if minutes > 60 else ''}"
    return f"{minutes} minutes"


def _filter_text(rule: AlertRule) -> str:
    parts = [
        f"{name} {value}"
        for name, value in (
            ("service", rule.service),
            ("endpoint", rule.endpoint),
            ("key", rule.api_key_id),
            ("end user", rule.end_user),
        )
        if value is not None
    ]
    return f" for {', '.join(parts)}" if parts else ""


# The columns a pass reads: a rule's identity and every field a tenant sets but on/off (only
# enabled rules are read).
RULE_COLUMNS = ("id", "tenant_id", "kind", *(name for name in RULE_FIELDS if name != "is_enabled"))
ZERO = Decimal(0)
EMPTY = metrics.Sums()


def _reads_per_rule(rule) -> bool:
    """Whether a rule needs figures of its own (a filter, or a window over an hour)."""
    if rule.metric not in FILTERABLE and rule.metric != "usage_spike":
        return False
    if rule.service is not None or rule.endpoint is not None or rule.api_key_id is not None:
        return True
    return rule.end_user is not None or rule.window_minutes > SHORT_WINDOW_MINUTES


class Evaluator:
    """Reads every figure once, then turns each rule into findings."""

    def __init__(self, redis: Redis, now: datetime, tenant_ids: list[int] | None = None) -> None:
        self.now = now
        # Plain rows, not ORM objects: a pass reads every rule of every tenant.
        # A deactivated tenant's rules rest (its open alerts resolve as their conditions clear).
        rules_query = (
            select(*(AlertRule.__table__.c[name] for name in RULE_COLUMNS))
            .join(Tenant, Tenant.id == AlertRule.tenant_id)
            .where(AlertRule.is_enabled.is_(True), Tenant.is_active.is_(True))
        )
        if tenant_ids is not None:
            rules_query = rules_query.where(AlertRule.tenant_id.in_(tenant_ids))
        self.rules: list = list(db.session.execute(rules_query))
        self.tenant_ids = sorted({r.tenant_id for r in self.rules})
        self.periods = metrics.period_keys(now)
        only = tenant_ids
        self.windows = metrics.tenant_windows(now, only=only)
        long_or_filtered = [r for r in self.rules if _reads_per_rule(r)]
        self.per_rule = {r.id for r in long_or_filtered}
        self.rule_sums = metrics.rule_windows(long_or_filtered, now)
        self.limits = metrics.plan_limits(only)
        self.counters = metrics.redis_counters(redis, self.tenant_ids, now, only)
        used = {r.metric for r in self.rules}
        self.normal = metrics.normal_calls(now, only=only) if "usage_spike" in used else {}
        self.cost_today = metrics.cost_today(now, only) if "daily_cost" in used else {}
        self.crossings = self._budget_crossings(only) if "budget" in used else {}

    def _budget_crossings(self, only: list[int] | None) -> dict[int, list[tuple[BudgetCrossing, Budget]]]:
        start, _ = billing_period(self.now)
        query = (
            select(BudgetCrossing, Budget)
            .join(Budget, Budget.id == BudgetCrossing.budget_id)
            .where(BudgetCrossing.period_start == start)
        )
        if only is not None:
            query = query.where(BudgetCrossing.tenant_id.in_(only))
        rows = db.session.execute(query)
        found: dict[int, list] = defaultdict(list)
        for crossing, budget in rows:
            found[crossing.tenant_id].append((crossing, budget))
        return found

    def findings(self) -> list[Finding]:
        """What every rule finds firing (a rule whose condition is clear finds nothing)."""
        found: list[Finding] = []
        for rule in self.rules:
            if rule.metric == "budget":
                found += self._budget_findings(rule)
            else:
                finding = self._finding(rule)
                if finding is not None:
                    found.append(finding)
        return found

    def _sums(self, rule) -> metrics.Sums:
        if rule.id in self.per_rule:
            return self.rule_sums.get(rule.id) or EMPTY
        return self.windows.get(rule.tenant_id) or EMPTY

    def _value(self, rule, metric) -> Decimal | float | int | None:
        tenant_id = rule.tenant_id
        name = rule.metric
        if name in ("quota_usage", "day_window"):
            limits = self.limits.get(tenant_id)
            if limits is None:
                return None
            used, limit = self._used(rule, limits)
            if rule.threshold_unit == "absolute":
                return used
            return Decimal(used) * 100 / Decimal(limit) if limit else None
        if name == "daily_cost":
            return self.cost_today.get(tenant_id, ZERO)
        if name == "failed_auth":
            return self.counters.failed_auth.get(tenant_id, 0)
        sums = self._sums(rule)
        if metric.volume and sums.answered < rule.min_volume:
            return None  # too few calls to judge a rate
        if name == "usage_spike":
            normal = self.normal.get(tenant_id)
            return sums.calls / normal if normal else None
        if name == "rate_limited":
            return sums.rate_limited
        if name == "error_rate":
            return sums.error_rate()
        if name == "p95_latency":
            return sums.percentile_ms(0.95)
        if name == "avg_latency":
            return sums.average_ms()
        if name == "calls":
            return sums.calls
        if name == "errors":
            return sums.failed
        if name == "tokens":
            return sums.tokens
        if name == "cost":
            return sums.cost
        return None

    def _used(self, rule, limits) -> tuple[int, int | None]:
        if rule.metric == "quota_usage":
            return self.counters.quota_used.get(rule.tenant_id, 0), limits.monthly_quota
        return self.counters.day_used.get(rule.tenant_id, 0), limits.per_day

    def _scope(self, rule) -> str:
        """The words after the figure in an alert's message: when and what it measured."""
        name = rule.metric
        if name in ("quota_usage", "day_window"):
            used, limit = self._used(rule, self.limits[rule.tenant_id])
            when = " this month" if name == "quota_usage" else " today"
            return f"{when} ({used:,} of {limit:,} calls)" if limit else when
        if name == "daily_cost":
            return " today"
        if name == "failed_auth":
            return " in the last hour"
        scope = f" in the last {_window_text(rule)}{_filter_text(rule)}"
        if name == "usage_spike":
            sums = self._sums(rule)
            scope += f" ({sums.calls:,.0f} calls against a normal {self.normal[rule.tenant_id]:,.0f})"
        return scope

    def _finding(self, rule) -> Finding | None:
        metric = METRICS.get(rule.metric)
        if metric is None:
            return None
        value = self._value(rule, metric)
        if value is None:
            return None
        if not isinstance(value, Decimal):
            value = Decimal(str(round(value, 6)))
        severity, threshold = _severity(rule, value)
        if severity is None:
            return None  # clear: an open alert for it counts a clear pass
        unit = (
            "calls"
            if metric.name in ("quota_usage", "day_window") and rule.threshold_unit == "absolute"
            else metric.unit
        )
        title, message = _describe(rule, value, threshold, unit, self._scope(rule))
        period_key = self.periods[metric.period] if metric.period else None
        return Finding(rule, "tenant", severity, value, threshold, period_key, title, message)

    def _budget_findings(self, rule: AlertRule) -> list[Finding]:
        found = []
        for crossing, budget in self.crossings.get(rule.tenant_id, []):
            pct = Decimal(crossing.percentage)
            severity = "critical" if crossing.percentage >= 100 else "warning"
            spent = crossing.spend.quantize(Decimal("0.01"))
            title = f"Budget {budget.name}: {crossing.percentage}% reached"
            message = (
                f"Budget {budget.name!r} has spent ${spent:,} of ${budget.monthly_amount:,} this month, "
                f"reaching its {crossing.percentage}% threshold."
            )
            if budget.hard_stop and crossing.percentage >= 100:
                message += " Its hard stop refuses further calls until the month ends."
            found.append(
                Finding(
                    rule,
                    f"budget:{budget.id}:{crossing.percentage}",
                    severity,
                    pct,
                    pct,
                    self.periods["month"],
                    title[:200],
                    message,
                )
            )
        return found


def _settings(tenant_ids: list[int]) -> dict[int, AlertSettings]:
    found: dict[int, AlertSettings] = {}
    for i in range(0, len(tenant_ids), IN_CHUNK):
        chunk = tenant_ids[i : i + IN_CHUNK]
        rows = db.session.scalars(select(AlertSettings).where(AlertSettings.tenant_id.in_(chunk)))
        found.update((s.tenant_id, s) for s in rows)
    return found


def _transition(alert: Alert, event_type: str, result: PassResult, now: datetime) -> None:
    """Note a transition; its notifications are written together at the end of the pass."""
    alert.last_notified_at = now
    result.transitions.append((alert, event_type))


VERB = {"alert.triggered": "triggered", "alert.escalated": "escalated", "alert.resolved": "resolved"}


def _notify(result: PassResult, now: datetime) -> None:
    db.session.flush()  # the new alerts' ids, in one batch
    result.notifications = len(enqueue_alert_changes(result.transitions, now))
    for event_type, alert in ((e, a) for a, e in result.transitions):
        level = logging.WARNING if event_type == "alert.resolved" else LOG_LEVEL[alert.severity]
        log.log(
            level,
            "alert %s %s: tenant %s, %s (%s, %s)",
            alert.id,
            VERB[event_type],
            alert.tenant_id,
            alert.title,
            alert.severity,
            alert.dedup_key,
        )


def evaluate_alerts(redis: Redis, now: datetime, tenant_ids: list[int] | None = None) -> PassResult:
    """Run one evaluation pass (for ``tenant_ids``, or every tenant) and commit it."""
    lock = f"{ALERTS_LOCK}:{','.join(map(str, tenant_ids))}" if tenant_ids is not None else ALERTS_LOCK
    if not redis.set(lock, now.isoformat(), nx=True, ex=LOCK_SECONDS):
        return PassResult(skipped=True)
    try:
        result = _evaluate(redis, now, tenant_ids)
        db.session.commit()
        return result
    except Exception:
        db.session.rollback()
        raise
    finally:
        redis.delete(lock)


def _evaluate(redis: Redis, now: datetime, tenant_ids: list[int] | None) -> PassResult:
    evaluator = Evaluator(redis, now, tenant_ids)
    result = PassResult(tenants=len(evaluator.tenant_ids), rules=len(evaluator.rules))
    findings = evaluator.findings()

    open_query = select(Alert).where(Alert.status != "resolved")
    if tenant_ids is not None:
        open_query = open_query.where(Alert.tenant_id.in_(tenant_ids))
    open_alerts = {(a.tenant_id, a.dedup_key): a for a in db.session.scalars(open_query)}
    firing = [f for f in findings if f.severity is not None]
    closed = _recently_closed(firing, now)
    settings = _settings(sorted({a.tenant_id for a in open_alerts.values()} | {f.rule.tenant_id for f in firing}))
    seen: set[tuple[int, str]] = set()

    for finding in firing:
        rule = finding.rule
        key = (rule.tenant_id, finding.dedup_key)
        seen.add(key)
        alert = open_alerts.get(key)
        if alert is not None:
            _still_firing(alert, finding, result, now)
            continue
        previous = closed.get(key)
        if previous is not None:
            if finding.period_key is not None and RANK[finding.severity] <= RANK[previous.severity]:
                continue  # this period's threshold has fired already
            cooldown = timedelta(minutes=rule.cooldown_minutes)
            if finding.period_key is None and previous.resolved_at and now - previous.resolved_at < cooldown:
                continue
        alert = Alert(
            tenant_id=rule.tenant_id,
            rule_id=rule.id,
            alert_type=rule.kind if rule.kind != "custom" else rule.metric,
            severity=finding.severity,
            status="active",
            title=finding.title,
            message=finding.message,
            dedup_key=finding.dedup_key,
            subject=finding.subject,
            period_key=finding.period_key,
            value=finding.value,
            threshold=finding.threshold,
            occurrences=1,
            clear_evaluations=0,
            first_triggered_at=now,
            last_triggered_at=now,
        )
        db.session.add(alert)
        open_alerts[key] = alert
        result.triggered += 1
        _transition(alert, "alert.triggered", result, now)

    for key, alert in open_alerts.items():
        if key in seen:
            continue
        alert.clear_evaluations += 1
        tenant_settings = settings.get(alert.tenant_id)
        needed = tenant_settings.resolve_after_evaluations if tenant_settings else 3
        if alert.clear_evaluations >= needed:
            alert.status = "resolved"
            alert.resolved_at = now
            alert.resolved_by = "auto"
            result.resolved += 1
            if tenant_settings is None or tenant_settings.notify_on_resolve:
                _transition(alert, "alert.resolved", result, now)
            else:
                log.warning("alert %s resolved: tenant %s, %s", alert.id, alert.tenant_id, alert.title)
    result.open = sum(1 for a in open_alerts.values() if a.status != "resolved")
    _notify(result, now)
    return result


def _still_firing(alert: Alert, finding: Finding, result: PassResult, now: datetime) -> None:
    alert.clear_evaluations = 0
    alert.occurrences += 1
    alert.last_triggered_at = now
    alert.value = finding.value
    if RANK[finding.severity] > RANK[alert.severity]:
        alert.severity = finding.severity
        alert.threshold = finding.threshold
        alert.title = finding.title
        alert.message = finding.message
        alert.escalated_at = now
        alert.status = "active"  # a higher severity needs attention again
        result.escalated += 1
        _transition(alert, "alert.escalated", result, now)
        return
    cooldown = timedelta(minutes=finding.rule.cooldown_minutes)
    # A period's threshold is told once; a lasting condition again after each cooldown.
    due = alert.last_notified_at is not None and now - alert.last_notified_at >= cooldown
    if alert.status == "active" and due and finding.period_key is None:
        alert.title, alert.message = finding.title, finding.message
        result.repeated += 1
        _transition(alert, "alert.triggered", result, now)


def _recently_closed(firing: list[Finding], now: datetime) -> dict[tuple[int, str], Alert]:
    """The last resolved alert of each firing finding's dedup key (for cooldowns and periods)."""
    if not firing:
        return {}
    keys = {f.dedup_key for f in firing}
    longest = max(timedelta(minutes=f.rule.cooldown_minutes) for f in firing)
    since = min(now - longest, now - timedelta(days=31))
    keys = sorted(keys)
    rows: list[Alert] = []
    for i in range(0, len(keys), IN_CHUNK):
        rows += db.session.scalars(
            select(Alert).where(
                Alert.status == "resolved", Alert.resolved_at >= since, Alert.dedup_key.in_(keys[i : i + IN_CHUNK])
            )
        )
    rows.sort(key=lambda a: a.resolved_at)
    closed: dict[tuple[int, str], Alert] = {}
    for alert in rows:
        key = (alert.tenant_id, alert.dedup_key)
        known = closed.get(key)
        # Keep the highest severity a period reached; else the latest.
        if known is None or alert.period_key is None or RANK[alert.severity] >= RANK[known.severity]:
            closed[key] = alert
    return closed
