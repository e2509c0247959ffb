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

from ..billing.plans import billing_period
from ..extensions import db
from ..models import Alert, AlertRule, AlertSettings, Budget, BudgetCrossing
from ..notify.outbox import enqueue_many
from . import metrics
from .rules import COMPARATORS, FILTERABLE, METRICS

log = logging.getLogger("tollgate.alerts")
LOCK_KEY = "tollgate:alerts:evaluating"
LOCK_SECONDS = 300
IN_CHUNK = 5000
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


class Evaluator:
    """Reads every figure once, then turns each rule into findings."""

    def __init__(self, redis: Redis, now: datetime, tenant_ids: list[int] | None = None) -> None:
        self.now = now
        # Plain rows, not ORM objects: a pass reads every rule of every tenant.
        rules_query = select(*AlertRule.__table__.c).where(AlertRule.is_enabled.is_(True))
        if tenant_ids is not None:
            rules_query = rules_query.where(AlertRule.tenant_id.in_(tenant_ids))
        self.rules: list = list(db.session.execute(rules_query))
        self.tenant_ids = sorted({r.tenant_id for r in self.rules})
        self.periods = metrics.period_keys(now)
        only = tenant_ids
        self.windows = metrics.tenant_windows(now, only=only)
        long_or_filtered = [r for r in self.rules if self._reads_per_rule(r)]
        self.rule_sums = metrics.rule_windows(long_or_filtered, now)
        self.limits = metrics.plan_limits(only)
        self.counters = metrics.redis_counters(redis, self.tenant_ids, now, only)
        spike = any(r.metric == "usage_spike" for r in self.rules)
        self.normal = metrics.normal_calls(now, only=only) if spike else {}
        self.cost_today = metrics.cost_today(now, only) if any(r.metric == "daily_cost" for r in self.rules) else {}
        self.crossings = self._budget_crossings(only) if any(r.metric == "budget" for r in self.rules) else {}

    @staticmethod
    def _reads_per_rule(rule: AlertRule) -> bool:
        if rule.metric not in FILTERABLE and rule.metric != "usage_spike":
            return False
        filtered = any(v is not None for v in (rule.service, rule.endpoint, rule.api_key_id, rule.end_user))
        return filtered or timedelta(minutes=rule.window_minutes) > metrics.SHORT_WINDOW

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
        found: list[Finding] = []
        for rule in self.rules:
            if rule.metric == "budget":
                found += self._budget_findings(rule)
            else:
                finding = self._finding(rule)
                if finding is not None:
                    found.append(finding)
        return found

    def _sums(self, rule: AlertRule) -> metrics.Sums:
        if self._reads_per_rule(rule):
            return self.rule_sums.get(rule.id) or metrics.Sums()
        return self.windows.get(rule.tenant_id) or metrics.Sums()

    def _finding(self, rule: AlertRule) -> Finding | None:
        metric = METRICS.get(rule.metric)
        if metric is None:
            return None
        tenant_id = rule.tenant_id
        unit = metric.unit
        period_key = self.periods[metric.period] if metric.period else None
        scope = f" in the last {_window_text(rule)}{_filter_text(rule)}"
        value = None
        if rule.metric in ("quota_usage", "day_window"):
            limits = self.limits.get(tenant_id)
            if limits is None:
                return None
            if rule.metric == "quota_usage":
                used, limit, scope = self.counters.quota_used.get(tenant_id, 0), limits.monthly_quota, " this month"
            else:
                used, limit, scope = self.counters.day_used.get(tenant_id, 0), limits.per_day, " today"
            if rule.threshold_unit == "absolute":
                value, unit = used, "calls"
            elif limit:
                value = Decimal(used) * 100 / Decimal(limit)
            if value is not None and limit:
                scope += f" ({used:,} of {limit:,} calls)"
        elif rule.metric == "daily_cost":
            value, scope = self.cost_today.get(tenant_id, Decimal(0)), " today"
        elif rule.metric == "failed_auth":
            value, scope = self.counters.failed_auth.get(tenant_id, 0), " in the last hour"
        else:
            sums = self._sums(rule)
            if metric.volume and sums.answered < rule.min_volume:
                value = None  # too few calls to judge a rate
            elif rule.metric == "usage_spike":
                normal = self.normal.get(tenant_id)
                if normal:
                    value = Decimal(str(sums.calls)) / Decimal(str(normal))
                    scope += f" ({sums.calls:,.0f} calls against a normal {normal:,.0f})"
            else:
                value = {
                    "rate_limited": lambda: sums.rate_limited,
                    "error_rate": sums.error_rate,
                    "p95_latency": lambda: sums.percentile_ms(0.95),
                    "avg_latency": sums.average_ms,
                    "calls": lambda: sums.calls,
                    "errors": lambda: sums.failed,
                    "tokens": lambda: sums.tokens,
                    "cost": lambda: sums.cost,
                }[rule.metric]()
        if value is not None and not isinstance(value, Decimal):
            value = Decimal(str(round(value, 6)))
        severity, threshold = _severity(rule, value)
        if severity is None:
            return None  # clear: an open alert for it counts a clear pass
        title, message = _describe(rule, value, threshold, unit, scope)
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
    result.notifications = len(enqueue_many(result.transitions, now))
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
    lock = f"{LOCK_KEY}:{','.join(map(str, tenant_ids))}" if tenant_ids is not None else LOCK_KEY
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
