"""Alert rules evaluated against generated usage: each default rule firing and clearing, dedup,
escalation, repeats and cooldowns, hysteresis, and period thresholds across a period boundary.

Usage goes in through the real store writer (rows and rollups), counters through the real
Redis keys the admission script writes; every pass gets an explicit time, nothing sleeps."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.alerts.evaluate import evaluate_alerts
from portal.alerts.rules import DEFAULT_RULES, create_custom_rule, rule_of_kind
from portal.costs.budgets import create_budget, evaluate_budgets
from portal.extensions import db
from portal.kernel.audit import record_event
from portal.kernel.redis_keys import quota_key
from portal.metering.store import store_usage
from portal.models import Alert, AlertRule, AlertSettings, Notification, NotificationChannel, NotificationDelivery
from portal.redis_store import get_redis
from tests.api_helpers import add_key, set_limits
from tests.factories import new_tenant

NOW = datetime(2026, 11, 18, 12, 40, tzinfo=UTC)
_ids = itertools.count()


def store(tenant_id: int, at: datetime, count: int = 1, **fields) -> None:
    """``count`` calls at ``at`` through the real writer (rows and rollups)."""
    records = []
    for _ in range(count):
        record = {
            "tenant_id": tenant_id,
            "service": "tollgate",
            "endpoint": "/api/v1/ping",
            "status_code": 200,
            "duration_ms": 40,
            "occurred_at": at,
            "idempotency_key": f"t-{next(_ids)}",
        }
        record.update(fields)
        records.append(record)
    store_usage(records)
    db.session.commit()


def run(app, now: datetime, tenant_ids=None):
    with app.app_context():
        result = evaluate_alerts(get_redis(app), now, tenant_ids)
        db.session.remove()
    return result


def alerts_of(tenant_id: int, alert_type: str | None = None) -> list[Alert]:
    query = select(Alert).where(Alert.tenant_id == tenant_id).order_by(Alert.id)
    if alert_type:
        query = query.where(Alert.alert_type == alert_type)
    return list(db.session.scalars(query))


def open_alerts(tenant_id: int, alert_type: str | None = None) -> list[Alert]:
    return [a for a in alerts_of(tenant_id, alert_type) if a.status != "resolved"]


def add_channel(tenant_id: int, min_severity: str = "warning") -> NotificationChannel:
    channel = NotificationChannel(
        tenant_id=tenant_id,
        kind="webhook",
        name="ops",
        target="http://127.0.0.1:9/hook",
        signing_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        min_severity=min_severity,
    )
    db.session.add(channel)
    db.session.commit()
    return channel


def deliveries(tenant_id: int) -> list[tuple[str, str]]:
    query = select(NotificationDelivery).where(NotificationDelivery.tenant_id == tenant_id)
    rows = db.session.scalars(query.order_by(NotificationDelivery.id))
    return [(d.event_type, d.payload["data"]["alert"]["severity"]) for d in rows]


def test_every_new_tenant_gets_the_seeds_default_rules(app, db, tenant):
    rules = db.session.scalars(select(AlertRule).where(AlertRule.tenant_id == tenant.tenant_id)).all()
    assert sorted(r.kind for r in rules) == sorted(r.kind for r in DEFAULT_RULES)
    by_kind = {r.kind: r for r in rules}
    assert (by_kind["error_rate"].warning_threshold, by_kind["error_rate"].critical_threshold) == (5, 10)
    assert (by_kind["response_time"].warning_threshold, by_kind["response_time"].critical_threshold) == (1000, 2000)
    assert (by_kind["usage_spike"].warning_threshold, by_kind["usage_spike"].critical_threshold) == (2, 3)
    assert by_kind["unauthorized_access"].critical_threshold == 5
    assert (by_kind["quota_usage"].warning_threshold, by_kind["quota_usage"].critical_threshold) == (80, 100)
    assert by_kind["day_window"].warning_threshold == 80
    assert by_kind["error_rate"].min_volume > 0


def test_a_quiet_tenant_has_no_alerts(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(minutes=10), 50)
    result = run(app, NOW)
    assert result.rules == len(DEFAULT_RULES)
    assert result.triggered == 0
    assert alerts_of(tenant.tenant_id) == []


# -- the monthly quota: a period threshold ------------------------------------------------------
def test_quota_warns_at_80_escalates_at_100_once_per_period_and_again_next_period(app, db, tenant):
    set_limits(app, "starter", monthly_quota=1000)
    redis = get_redis(app)
    channel = add_channel(tenant.tenant_id)
    redis.set(quota_key(tenant.tenant_id, NOW), 799)
    assert run(app, NOW).triggered == 0

    redis.set(quota_key(tenant.tenant_id, NOW), 800)
    assert run(app, NOW + timedelta(minutes=1)).triggered == 1
    [alert] = open_alerts(tenant.tenant_id, "quota_usage")
    assert (alert.severity, alert.value, alert.threshold, alert.period_key) == ("warning", 80, 80, "2026-11")
    assert "800 of 1,000 calls" in alert.message

    # Still at 85%: the same alert, counted, not told again (a period threshold is told once).
    redis.set(quota_key(tenant.tenant_id, NOW), 850)
    result = run(app, NOW + timedelta(hours=3))
    assert (result.triggered, result.repeated, result.notifications) == (0, 0, 0)
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "quota_usage")
    assert alert.occurrences == 2

    redis.set(quota_key(tenant.tenant_id, NOW), 1000)
    assert run(app, NOW + timedelta(hours=4)).escalated == 1
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "quota_usage")
    assert (alert.severity, alert.threshold) == ("critical", 100)
    assert deliveries(tenant.tenant_id) == [("alert.triggered", "warning"), ("alert.escalated", "critical")]
    assert db.session.get(NotificationChannel, channel.id).is_active

    # Resolved by hand mid-period: the threshold does not fire again this period.
    alert.status, alert.resolved_at, alert.resolved_by = "resolved", NOW + timedelta(hours=5), "user"
    db.session.commit()
    assert run(app, NOW + timedelta(hours=6)).triggered == 0

    # December: a new period, a new counter; at 80% again the threshold fires again.
    december = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    redis.set(quota_key(tenant.tenant_id, december), 810)
    assert run(app, december).triggered == 1
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "quota_usage")
    assert (alert.severity, alert.period_key) == ("warning", "2026-12")


def test_an_absolute_quota_threshold_fires_once_per_period_too(app, db, tenant):
    rule = rule_of_kind(tenant.tenant_id, "quota_usage")
    rule.threshold_unit, rule.warning_threshold, rule.critical_threshold = "absolute", Decimal(500), None
    db.session.commit()
    redis = get_redis(app)
    redis.set(quota_key(tenant.tenant_id, NOW), 600)
    assert run(app, NOW).triggered == 1
    for minutes in (1, 2, 3):  # the November counter: never again this period
        assert run(app, NOW + timedelta(days=1, minutes=minutes)).triggered == 0
    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    redis.set(quota_key(tenant.tenant_id, december), 501)
    assert run(app, december).triggered == 1
    db.session.expire_all()
    assert [(a.period_key, a.status) for a in alerts_of(tenant.tenant_id, "quota_usage")] == [
        ("2026-11", "active"),
        ("2026-12", "active"),
    ]
    # The November alert's condition is gone (its period is over): it resolves after 3 passes.
    for minutes in (1, 2):
        run(app, december + timedelta(minutes=minutes))
    db.session.expire_all()
    assert [a.period_key for a in open_alerts(tenant.tenant_id, "quota_usage")] == ["2026-12"]


def test_day_window_warns_at_80_percent_of_the_per_day_limit(app, db, tenant):
    set_limits(app, "starter", per_day=100)
    redis = get_redis(app)
    day_key = f"tollgate:w:{tenant.tenant_id}:d:{int(NOW.timestamp()) // 86400}"
    redis.set(day_key, 79)
    assert run(app, NOW).triggered == 0
    redis.set(day_key, 80)
    assert run(app, NOW + timedelta(minutes=1)).triggered == 1
    [alert] = open_alerts(tenant.tenant_id, "day_window")
    assert (alert.severity, alert.period_key) == ("warning", "2026-11-18")


# -- windowed rules ---------------------------------------------------------------------------------
def test_rate_limited_calls_in_the_last_hour(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 3, status_code=429)
    assert run(app, NOW).triggered == 1
    [alert] = open_alerts(tenant.tenant_id, "rate_limited")
    assert (alert.severity, alert.value) == ("warning", 3)
    # Two hours later the window is clear; three clear passes resolve it with a notice.
    later = NOW + timedelta(hours=2)
    for minutes in range(3):
        run(app, later + timedelta(minutes=minutes))
    db.session.expire_all()
    [alert] = alerts_of(tenant.tenant_id, "rate_limited")
    assert (alert.status, alert.resolved_by) == ("resolved", "auto")


def test_error_rate_warns_above_5_and_is_critical_above_10_percent(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 94)
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 6, status_code=500)
    assert run(app, NOW).triggered == 1
    [alert] = open_alerts(tenant.tenant_id, "error_rate")
    assert (alert.severity, alert.value) == ("warning", 6)
    store(tenant.tenant_id, NOW - timedelta(minutes=10), 8, status_code=503)
    assert run(app, NOW + timedelta(minutes=1)).escalated == 1
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "error_rate")
    assert alert.severity == "critical"
    assert alert.value == pytest.approx(Decimal("12.963"), abs=Decimal("0.001"))  # 14 of 108


def test_rate_limit_refusals_are_not_errors_in_the_error_rate(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 50)
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 50, status_code=429)
    run(app, NOW)
    assert open_alerts(tenant.tenant_id, "error_rate") == []


def test_three_errors_in_four_calls_at_night_page_nobody(app, db, tenant):
    night = datetime(2026, 11, 18, 3, 30, tzinfo=UTC)
    store(tenant.tenant_id, night - timedelta(minutes=10), 1)
    store(tenant.tenant_id, night - timedelta(minutes=10), 3, status_code=500)
    run(app, night)
    assert open_alerts(tenant.tenant_id) == []


def test_p95_response_time_uses_the_seeds_one_and_two_seconds(app, db, tenant):
    # 95 of 100 calls under a second: the 95th percentile is under a second, no alert.
    store(tenant.tenant_id, NOW - timedelta(minutes=30), 95, duration_ms=200)
    store(tenant.tenant_id, NOW - timedelta(minutes=30), 5, duration_ms=1800)
    run(app, NOW)
    assert open_alerts(tenant.tenant_id, "response_time") == []
    # Ten more slow calls: p95 falls between 1 and 2 seconds — a warning.
    store(tenant.tenant_id, NOW - timedelta(minutes=30), 10, duration_ms=1500)
    run(app, NOW + timedelta(minutes=1))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "response_time")
    assert alert.severity == "warning"
    assert 1000 < alert.value <= 2000
    # Many calls over 2 seconds: critical.
    store(tenant.tenant_id, NOW - timedelta(minutes=30), 20, duration_ms=4000)
    run(app, NOW + timedelta(minutes=2))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "response_time")
    assert alert.severity == "critical"
    assert alert.value > 2000


def test_the_trailing_hour_weights_the_previous_hours_bucket(app, db, tenant):
    # 40 errors at 11:10 and 60 good calls at 12:05. At 12:40 the window starts at 11:40, so a
    # third of the 11:00 bucket counts: about 13 errors in 73 calls (18%) — critical.
    store(tenant.tenant_id, datetime(2026, 11, 18, 11, 10, tzinfo=UTC), 40, status_code=500)
    store(tenant.tenant_id, datetime(2026, 11, 18, 12, 5, tzinfo=UTC), 60)
    run(app, NOW)
    [alert] = open_alerts(tenant.tenant_id, "error_rate")
    assert alert.value == pytest.approx(Decimal("18.18"), abs=Decimal("0.05"))
    # At 12:59 only 1/60 of the 11:00 bucket is left: 0.67 errors in 60.67 calls, 1.1% — clear.
    for minute in (57, 58, 59):
        run(app, datetime(2026, 11, 18, 12, minute, tzinfo=UTC))
    db.session.expire_all()
    assert open_alerts(tenant.tenant_id, "error_rate") == []


def test_usage_spike_against_the_median_of_the_same_hour_of_the_last_four_weeks(app, db, tenant):
    for weeks, calls in ((1, 100), (2, 120), (3, 80), (4, 110)):
        store(tenant.tenant_id, NOW - timedelta(weeks=weeks, minutes=20), calls)
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 210)  # median normal: 105, so exactly 2×
    run(app, NOW)
    assert open_alerts(tenant.tenant_id, "usage_spike") == []
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 10)  # 220: above 2×
    run(app, NOW + timedelta(seconds=30))
    [alert] = open_alerts(tenant.tenant_id, "usage_spike")
    assert alert.severity == "warning"
    assert alert.value == pytest.approx(Decimal("2.095"), abs=Decimal("0.001"))
    assert "220 calls against a normal 105" in alert.message
    store(tenant.tenant_id, NOW - timedelta(minutes=15), 110)  # 330 against 105: over 3×
    run(app, NOW + timedelta(minutes=1))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "usage_spike")
    assert alert.severity == "critical"


def test_no_spike_without_history_or_below_the_minimum_volume(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(minutes=20), 500)  # no earlier weeks at all
    run(app, NOW)
    other = new_tenant(app, "Small Co", key=True)
    for weeks in (1, 2, 3, 4):
        store(other.tenant_id, NOW - timedelta(weeks=weeks, minutes=20), 5)
    store(other.tenant_id, NOW - timedelta(minutes=20), 50)  # 10× the normal, but only 50 calls
    run(app, NOW + timedelta(minutes=1))
    assert alerts_of(tenant.tenant_id, "usage_spike") == []
    assert alerts_of(other.tenant_id, "usage_spike") == []


def test_failed_authentications_over_five_an_hour_are_critical(app, db, tenant):
    redis = get_redis(app)
    hour = int(NOW.timestamp()) // 3600
    redis.set(f"tollgate:authfail:tenant:{tenant.tenant_id}:{hour}", 3)
    for _ in range(2):
        record_event("login.failure", tenant.tenant_id, None, "127.0.0.1", reason="bad credentials")
    db.session.commit()
    run(app, NOW)  # 5 is not above 5
    assert alerts_of(tenant.tenant_id, "unauthorized_access") == []
    redis.set(f"tollgate:authfail:tenant:{tenant.tenant_id}:{hour}", 4)
    run(app, NOW + timedelta(minutes=1))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "unauthorized_access")
    assert (alert.severity, alert.value) == ("critical", 6)


def test_revoked_key_calls_count_as_failed_authentications(app, client, db, tenant):
    from portal.models import ApiKey
    from portal.tenancy.keys import revoke_api_key

    revoke_api_key(db.session.get(ApiKey, tenant.key_id))
    db.session.commit()
    for _ in range(6):
        assert client.get("/api/v1/ping", headers=tenant.headers).status_code in (401, 403)
    run(app, datetime.now(UTC))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "unauthorized_access")
    assert alert.value >= 6


def test_daily_cost(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(hours=3), 1, source="external", service="openai", cost=Decimal("49.99"))
    run(app, NOW)
    assert alerts_of(tenant.tenant_id, "daily_cost") == []
    store(tenant.tenant_id, NOW - timedelta(hours=2), 1, source="external", service="openai", cost=Decimal("0.01"))
    run(app, NOW + timedelta(minutes=1))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "daily_cost")
    assert (alert.severity, alert.value, alert.period_key) == ("warning", 50, "2026-11-18")
    assert alert.title == "Daily cost: $50.00 ≥ $50.00"
    store(tenant.tenant_id, NOW - timedelta(hours=1), 1, source="external", service="openai", cost=Decimal("60"))
    run(app, NOW + timedelta(minutes=2))
    db.session.expire_all()
    [alert] = open_alerts(tenant.tenant_id, "daily_cost")
    assert alert.severity == "critical"
    # The next day starts at $0: the alert clears; a new day's threshold may fire again.
    tomorrow = datetime(2026, 11, 19, 8, 0, tzinfo=UTC)
    for minutes in range(3):
        run(app, tomorrow + timedelta(minutes=minutes))
    db.session.expire_all()
    assert open_alerts(tenant.tenant_id, "daily_cost") == []


def test_each_budget_threshold_alerts_once_per_period(app, db, tenant):
    budget = create_budget(tenant.tenant_id, "LLM spend", Decimal(100), warning_percentages=[50, 80, 100])
    db.session.commit()
    redis = get_redis(app)
    store(tenant.tenant_id, NOW - timedelta(hours=1), 1, source="external", service="openai", cost=Decimal(55))
    evaluate_budgets(redis, {tenant.tenant_id}, NOW)
    db.session.commit()
    run(app, NOW)
    [alert] = open_alerts(tenant.tenant_id, "budget")
    assert (alert.severity, alert.subject) == ("warning", f"budget:{budget.id}:50")
    assert "spent $55.00 of $100.00" in alert.message
    store(tenant.tenant_id, NOW - timedelta(minutes=30), 1, source="external", service="openai", cost=Decimal(50))
    evaluate_budgets(redis, {tenant.tenant_id}, NOW)
    db.session.commit()
    run(app, NOW + timedelta(minutes=1))
    db.session.expire_all()
    assert sorted((a.subject, a.severity) for a in open_alerts(tenant.tenant_id, "budget")) == [
        (f"budget:{budget.id}:100", "critical"),
        (f"budget:{budget.id}:50", "warning"),
        (f"budget:{budget.id}:80", "warning"),
    ]
    for minutes in (2, 3, 4):
        assert run(app, NOW + timedelta(minutes=minutes)).triggered == 0
    # December: the crossings were November's; the alerts resolve.
    december = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    for minutes in range(3):
        run(app, december + timedelta(minutes=minutes))
    db.session.expire_all()
    assert open_alerts(tenant.tenant_id, "budget") == []


# -- transitions --------------------------------------------------------------------------------------
def test_one_open_alert_per_rule_with_occurrences_and_repeats_after_the_cooldown(app, db, tenant):
    add_channel(tenant.tenant_id)
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    run(app, NOW)
    for minutes in range(1, 5):
        run(app, NOW + timedelta(minutes=minutes))
    [alert] = alerts_of(tenant.tenant_id, "rate_limited")
    assert alert.occurrences == 5
    assert deliveries(tenant.tenant_id) == [("alert.triggered", "warning")]
    # An hour on (the rule's cooldown) and still firing: told again.
    store(tenant.tenant_id, NOW + timedelta(minutes=55), 1, status_code=429)
    result = run(app, NOW + timedelta(minutes=61))
    assert result.repeated == 1
    assert deliveries(tenant.tenant_id) == [("alert.triggered", "warning")] * 2


def test_acknowledging_silences_repeats_but_not_an_escalation(app, db, client, tenant):
    add_channel(tenant.tenant_id)
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    run(app, NOW)
    [alert] = alerts_of(tenant.tenant_id, "rate_limited")
    _, admin_secret = add_key(app, tenant.tenant_id, "admin", scope="admin")  # acknowledging is an admin's
    response = client.post(f"/api/v1/alerts/{alert.id}/acknowledge", headers={"X-API-Key": admin_secret})
    assert response.status_code == 200
    assert response.get_json()["alert"]["status"] == "acknowledged"
    store(tenant.tenant_id, NOW + timedelta(minutes=55), 1, status_code=429)
    assert run(app, NOW + timedelta(minutes=61)).repeated == 0
    store(tenant.tenant_id, NOW + timedelta(minutes=62), 100, status_code=429)
    assert run(app, NOW + timedelta(minutes=63)).escalated == 1
    db.session.expire_all()
    [alert] = alerts_of(tenant.tenant_id, "rate_limited")
    assert (alert.severity, alert.status) == ("critical", "active")
    assert deliveries(tenant.tenant_id) == [("alert.triggered", "warning"), ("alert.escalated", "critical")]


def test_hysteresis_resolves_only_after_enough_clear_passes_in_a_row(app, db, tenant):
    db.session.add(AlertSettings(tenant_id=tenant.tenant_id, resolve_after_evaluations=3, notify_on_resolve=True))
    db.session.commit()
    add_channel(tenant.tenant_id)
    at = datetime(2026, 11, 18, 12, 10, tzinfo=UTC)
    store(tenant.tenant_id, at - timedelta(minutes=1), 1, status_code=429)
    run(app, at)
    run(app, at + timedelta(hours=2))  # clear 1
    run(app, at + timedelta(hours=2, minutes=1))  # clear 2
    store(tenant.tenant_id, at + timedelta(hours=2, minutes=1, seconds=30), 1, status_code=429)
    run(app, at + timedelta(hours=2, minutes=2))  # firing again: the count starts over
    db.session.expire_all()
    [alert] = alerts_of(tenant.tenant_id, "rate_limited")
    assert (alert.status, alert.clear_evaluations) == ("active", 0)
    later = at + timedelta(hours=4)
    for minutes in (0, 1):
        run(app, later + timedelta(minutes=minutes))
    db.session.expire_all()
    assert alerts_of(tenant.tenant_id, "rate_limited")[0].status == "active"
    run(app, later + timedelta(minutes=2))
    db.session.expire_all()
    [alert] = alerts_of(tenant.tenant_id, "rate_limited")
    assert (alert.status, alert.resolved_by) == ("resolved", "auto")
    # Told when it fired, again when it came back past the cooldown, and when it resolved.
    assert deliveries(tenant.tenant_id) == [
        ("alert.triggered", "warning"),
        ("alert.triggered", "warning"),
        ("alert.resolved", "warning"),
    ]


def test_the_number_of_clear_passes_is_the_tenants_setting(app, db, tenant):
    db.session.add(AlertSettings(tenant_id=tenant.tenant_id, resolve_after_evaluations=1, notify_on_resolve=False))
    db.session.commit()
    add_channel(tenant.tenant_id)
    store(tenant.tenant_id, NOW - timedelta(minutes=1), 1, status_code=429)
    run(app, NOW)
    run(app, NOW + timedelta(hours=2))
    db.session.expire_all()
    assert alerts_of(tenant.tenant_id, "rate_limited")[0].status == "resolved"
    assert deliveries(tenant.tenant_id) == [("alert.triggered", "warning")]  # no resolved notice


def test_after_a_resolution_the_cooldown_holds_off_a_new_alert(app, db, tenant):
    rule = rule_of_kind(tenant.tenant_id, "rate_limited")
    rule.cooldown_minutes = 30
    db.session.commit()
    at = datetime(2026, 11, 18, 12, 10, tzinfo=UTC)
    store(tenant.tenant_id, at - timedelta(minutes=1), 1, status_code=429)
    run(app, at)
    resolved_at = datetime(2026, 11, 18, 14, 2, tzinfo=UTC)
    for minutes in (2, 1, 0):
        run(app, resolved_at - timedelta(minutes=minutes))
    db.session.expire_all()
    assert alerts_of(tenant.tenant_id, "rate_limited")[0].status == "resolved"
    store(tenant.tenant_id, resolved_at + timedelta(minutes=3), 1, status_code=429)
    assert run(app, resolved_at + timedelta(minutes=9)).triggered == 0  # 9 minutes after: held off
    assert run(app, resolved_at + timedelta(minutes=31)).triggered == 1  # past the cooldown
    db.session.expire_all()
    assert [a.status for a in alerts_of(tenant.tenant_id, "rate_limited")] == ["resolved", "active"]


def test_min_severity_decides_which_channels_hear_of_it_and_every_user_gets_a_notice(app, db, tenant):
    critical_only = add_channel(tenant.tenant_id, min_severity="critical")
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    run(app, NOW)
    assert deliveries(tenant.tenant_id) == []
    [notice] = db.session.scalars(select(Notification).where(Notification.tenant_id == tenant.tenant_id)).all()
    assert notice.read_at is None and notice.title.startswith("Rate-limited calls")
    store(tenant.tenant_id, NOW - timedelta(minutes=4), 200, status_code=429)
    run(app, NOW + timedelta(minutes=1))
    rows = db.session.scalars(select(NotificationDelivery)).all()
    assert [(d.channel_id, d.event_type) for d in rows] == [(critical_only.id, "alert.escalated")]
    payload = rows[0].payload
    assert payload["type"] == "alert.escalated"
    assert payload["data"]["alert"]["severity"] == "critical"
    assert payload["data"]["tenant"]["slug"] == tenant.slug


def test_a_custom_rule_with_a_filter_watches_only_what_it_names(app, db, tenant):
    create_custom_rule(
        tenant.tenant_id,
        {
            "name": "OpenAI calls",
            "metric": "calls",
            "comparator": "gte",
            "warning_threshold": 10,
            "critical_threshold": 20,
            "window_minutes": 30,
            "service": "openai",
        },
    )
    db.session.commit()
    store(tenant.tenant_id, NOW - timedelta(minutes=10), 50, service="groq", source="external")
    store(tenant.tenant_id, NOW - timedelta(minutes=10), 9, service="openai", source="external")
    run(app, NOW)
    assert alerts_of(tenant.tenant_id, "calls") == []
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 1, service="openai", source="external")
    run(app, NOW + timedelta(minutes=1))
    [alert] = alerts_of(tenant.tenant_id, "calls")
    assert (alert.severity, alert.value) == ("warning", 10)
    assert "for service openai" in alert.message


def test_a_custom_rule_over_a_long_window_and_below_a_threshold(app, db, tenant):
    create_custom_rule(
        tenant.tenant_id,
        {"name": "Too quiet", "metric": "calls", "comparator": "lt", "warning_threshold": 100, "window_minutes": 1440},
    )
    db.session.commit()
    store(tenant.tenant_id, NOW - timedelta(hours=20), 60)
    run(app, NOW)
    [alert] = alerts_of(tenant.tenant_id, "calls")
    assert (alert.severity, alert.value) == ("warning", 60)
    store(tenant.tenant_id, NOW - timedelta(hours=2), 60)
    for minutes in (1, 2, 3):
        run(app, NOW + timedelta(minutes=minutes))
    db.session.expire_all()
    assert alerts_of(tenant.tenant_id, "calls")[0].status == "resolved"


def test_a_disabled_rule_does_not_fire_and_its_open_alert_resolves(app, db, tenant):
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    run(app, NOW)
    rule = rule_of_kind(tenant.tenant_id, "rate_limited")
    rule.is_enabled = False
    db.session.commit()
    for minutes in (1, 2, 3):
        run(app, NOW + timedelta(minutes=minutes))
    db.session.expire_all()
    assert [a.status for a in alerts_of(tenant.tenant_id, "rate_limited")] == ["resolved"]


def test_each_transition_is_logged_at_warning_or_critical(app, db, tenant, caplog):
    caplog.set_level(logging.WARNING, logger="tollgate.alerts")
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    run(app, NOW)
    store(tenant.tenant_id, NOW - timedelta(minutes=4), 200, status_code=429)
    run(app, NOW + timedelta(minutes=1))
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tollgate.alerts"]
    assert records[0][0] == logging.WARNING and "triggered" in records[0][1]
    assert records[1][0] == logging.CRITICAL and "escalated" in records[1][1]


def test_one_pass_at_a_time_and_tenants_are_evaluated_apart(app, db, tenant):
    other = new_tenant(app, "Other Co", key=True)
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    store(other.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    redis = get_redis(app)
    redis.set("tollgate:alerts:evaluating", "busy")
    assert run(app, NOW).skipped
    redis.delete("tollgate:alerts:evaluating")
    result = run(app, NOW)
    assert (result.tenants, result.triggered) == (2, 2)
    assert [a.tenant_id for a in alerts_of(tenant.tenant_id)] == [tenant.tenant_id]


def test_the_database_refuses_a_second_open_alert_for_one_dedup_key(app, db, tenant):
    from sqlalchemy.exc import IntegrityError

    fields = {"tenant_id": tenant.tenant_id, "alert_type": "x", "severity": "warning", "title": "t", "dedup_key": "k"}
    db.session.add(Alert(**fields))
    db.session.commit()
    db.session.add(Alert(**fields))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()
    first = db.session.scalar(select(Alert).where(Alert.dedup_key == "k"))
    first.status = "resolved"
    db.session.add(Alert(**fields))
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(Alert).where(Alert.dedup_key == "k")) == 2


def test_every_default_rule_fires_on_generated_data_and_clears_when_it_is_over(app, db, tenant):
    set_limits(app, "starter", monthly_quota=1000, per_day=500)
    redis = get_redis(app)
    budget = create_budget(tenant.tenant_id, "All", Decimal(40))
    db.session.commit()
    at = NOW
    for weeks in (1, 2, 3, 4):
        store(tenant.tenant_id, at - timedelta(weeks=weeks, minutes=20), 100)
    store(tenant.tenant_id, at - timedelta(minutes=20), 300, duration_ms=3000)  # slow, and a spike
    store(tenant.tenant_id, at - timedelta(minutes=20), 60, status_code=500)  # errors
    store(tenant.tenant_id, at - timedelta(minutes=20), 5, status_code=429)  # refused
    store(tenant.tenant_id, at - timedelta(minutes=20), 1, source="external", service="openai", cost=Decimal(120))
    evaluate_budgets(redis, {tenant.tenant_id}, at)
    db.session.commit()
    redis.set(quota_key(tenant.tenant_id, at), 900)
    redis.set(f"tollgate:w:{tenant.tenant_id}:d:{int(at.timestamp()) // 86400}", 450)
    redis.set(f"tollgate:authfail:tenant:{tenant.tenant_id}:{int(at.timestamp()) // 3600}", 7)
    run(app, at)
    fired = {a.alert_type for a in open_alerts(tenant.tenant_id)}
    assert fired == {rule.kind for rule in DEFAULT_RULES}
    assert {a.subject for a in open_alerts(tenant.tenant_id, "budget")} == {
        f"budget:{budget.id}:{pct}" for pct in (50, 80, 100)
    }

    # Next month at 09:00: no recent calls, new counters, a new budget period.
    later = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    for minutes in range(3):
        run(app, later + timedelta(minutes=minutes))
    db.session.expire_all()
    assert open_alerts(tenant.tenant_id) == []
    assert {a.resolved_by for a in alerts_of(tenant.tenant_id)} == {"auto"}


def test_a_deactivated_tenant_is_not_paged(app, db, tenant):
    from portal.models import Tenant

    db.session.get(Tenant, tenant.tenant_id).is_active = False
    db.session.commit()
    store(tenant.tenant_id, NOW - timedelta(minutes=5), 2, status_code=429)
    result = run(app, NOW)
    assert (result.rules, result.triggered) == (0, 0)
