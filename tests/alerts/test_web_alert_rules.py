"""The alert rules page: the default rules and the tenant's own, with their thresholds in words;
changing thresholds, windows and cooldowns, turning rules off and on, adding and deleting custom
rules, and the tenant's alert settings. The page checks input as the API does, and a refused
value is shown beside its field with status 400 and nothing stored. Members read; owners and
admins change; CSRF on every form; another tenant's rule is a 404.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.alerts.rules import DEFAULT_RULES, create_custom_rule
from portal.extensions import db as _db
from portal.models import AlertRule, AlertSettings, AuditEvent
from portal.tenancy.keys import create_api_key
from tests.portal_helpers import audit_events, count_statements, page_text, post_form, sign_in

RULES = "/alerts/rules"


# -- helpers -------------------------------------------------------------------------------------
def rule_of(app, tenant_id: int, kind: str | None = None, name: str | None = None) -> AlertRule:
    with app.app_context():
        query = select(AlertRule).where(AlertRule.tenant_id == tenant_id)
        query = query.where(AlertRule.kind == kind) if kind else query.where(AlertRule.name == name)
        rule = _db.session.scalar(query)
        if rule is not None:
            _db.session.expunge(rule)
        _db.session.remove()
    return rule


def custom_rules(app, tenant_id: int) -> list[str]:
    with app.app_context():
        names = _db.session.scalars(
            select(AlertRule.name).where(AlertRule.tenant_id == tenant_id, AlertRule.kind == "custom")
        ).all()
        _db.session.remove()
    return list(names)


def add_rule(app, tenant_id: int, **fields) -> int:
    with app.app_context():
        rule = create_custom_rule(tenant_id, {"metric": "calls", "warning_threshold": 100, **fields})
        _db.session.commit()
        rule_id = rule.id
        _db.session.remove()
    return rule_id


def rule_section(html: str, rule_id: int) -> str:
    start = html.index(f'id="rule-{rule_id}"')
    end = html.find('<li class="rule', start + 1)
    return html[start : end if end != -1 else len(html)]


def change(client, rule_id: int, **fields):
    return post_form(client, f"{RULES}/{rule_id}", fields, page=RULES)


def new_rule(client, **fields):
    form = {
        "name": "Slow search",
        "metric": "p95_latency",
        "comparator": "gt",
        "threshold_unit": "",
        "warning_threshold": "800",
        "critical_threshold": "1500",
        "window_minutes": "15",
        "min_volume": "10",
        "cooldown_minutes": "30",
        "service": "",
        "endpoint": "/api/v1/search",
        "api_key_id": "",
        "end_user": "",
        "is_enabled": "y",
    }
    form.update(fields)
    return post_form(client, RULES, form)


@pytest.fixture
def admin(client, clock, portal_tenant):
    sign_in(client, portal_tenant.admin)
    return portal_tenant


# -- reading -------------------------------------------------------------------------------------
def test_the_default_rules_are_listed_with_their_thresholds_in_words(client, admin):
    text = page_text(client.get(RULES).text)
    for rule in DEFAULT_RULES:
        assert rule.name in text
    assert "p95 response time over the last 1 hour, once there are at least 20 calls: " in text
    assert "warning above 1,000 ms; critical above 2,000 ms." in text
    assert (
        "Error rate over the last 1 hour, once there are at least 20 calls: warning above 5%; critical above 10%."
        in text
    )
    assert "Monthly quota used in the billing month: warning at or above 80%; critical at or above 100%." in text
    assert "Cost today today (UTC)" not in text and "Cost today (UTC): warning at or above $50.00" in text
    assert "Failed authentications over the last 1 hour: critical above 5 attempts." in text
    assert "Unacknowledged alerts are told again after 1 hour." in text
    assert "Resolve an alert after this many clear evaluations" in text


def test_a_member_reads_the_rules_and_settings_without_forms(client, clock, portal_tenant):
    sign_in(client, portal_tenant.member)
    html = client.get(RULES).text
    assert "warning above 1,000 ms" in page_text(html)
    assert "Only owners and admins can change rules and settings." in page_text(html)
    assert "Resolve after 3 clear evaluations" in page_text(html)
    assert 'method="post" action="/alerts/rules' not in html and 'action="/alerts/settings"' not in html


# -- changing a default rule -------------------------------------------------------------------------
def test_an_admin_changes_a_default_rules_thresholds_window_and_cooldown(app, client, admin):
    rule = rule_of(app, admin.tenant_id, "response_time")
    response = change(
        client,
        rule.id,
        warning_threshold="1,500",
        critical_threshold="2500.5",
        window_minutes="30",
        min_volume="50",
        cooldown_minutes="0",
    )
    assert response.status_code == 302 and response.headers["Location"] == f"/alerts/rules#rule-{rule.id}"
    rule = rule_of(app, admin.tenant_id, "response_time")
    assert (rule.warning_threshold, rule.critical_threshold) == (Decimal("1500"), Decimal("2500.5"))
    assert (rule.window_minutes, rule.min_volume, rule.cooldown_minutes) == (30, 50, 0)
    [event] = audit_events(app, admin.tenant_id, "alert_rule.changed")
    assert event.user_id == admin.user_ids["admin"]
    assert event.details["rule_id"] == rule.id
    assert set(event.details["changes"]) == {
        "warning_threshold",
        "critical_threshold",
        "window_minutes",
        "min_volume",
        "cooldown_minutes",
    }
    text = page_text(client.get(RULES).text)
    assert "p95 response time over the last 30 minutes, once there are at least 50 calls: " in text
    assert "warning above 1,500 ms; critical above 2,500.5 ms." in text


def test_a_blank_threshold_removes_that_level(app, client, admin):
    rule = rule_of(app, admin.tenant_id, "error_rate")
    assert (
        change(
            client,
            rule.id,
            warning_threshold="",
            critical_threshold="12",
            window_minutes="60",
            min_volume="20",
            cooldown_minutes="60",
        ).status_code
        == 302
    )
    rule = rule_of(app, admin.tenant_id, "error_rate")
    assert (rule.warning_threshold, rule.critical_threshold) == (None, Decimal("12"))


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"warning_threshold": "lots"}, "warning_threshold", "Input should be a valid decimal."),
        ({"warning_threshold": "-1"}, "warning_threshold", "Input should be greater than or equal to 0."),
        ({"critical_threshold": "2000000000"}, "critical_threshold", "Input should be less than or equal to"),
        ({"critical_threshold": "900"}, "critical_threshold", "Must be at least the warning threshold."),
        (
            {"warning_threshold": "", "critical_threshold": ""},
            "warning_threshold",
            "A rule needs a warning or a critical threshold.",
        ),
        ({"window_minutes": "0"}, "window_minutes", "Input should be greater than or equal to 1."),
        ({"window_minutes": "20000"}, "window_minutes", "Input should be less than or equal to 10080."),
        ({"window_minutes": "1.5"}, "window_minutes", "Must be a whole number."),
        ({"cooldown_minutes": ""}, "cooldown_minutes", "Required."),
    ],
)
def test_a_refused_value_is_shown_beside_its_field_with_400_and_nothing_is_stored(
    app, client, admin, fields, field, message
):
    rule = rule_of(app, admin.tenant_id, "response_time")
    form = {
        "warning_threshold": "1000",
        "critical_threshold": "2000",
        "window_minutes": "60",
        "min_volume": "20",
        "cooldown_minutes": "60",
        **fields,
    }
    response = change(client, rule.id, **form)
    assert response.status_code == 400
    section = rule_section(response.text, rule.id)
    assert f'id="rule-{rule.id}-{field}-error">{message}' in section
    assert '<details class="rule-edit" open>' in section
    after = rule_of(app, admin.tenant_id, "response_time")
    assert (after.warning_threshold, after.critical_threshold, after.window_minutes) == (1000, 2000, 60)
    assert audit_events(app, admin.tenant_id, "alert_rule.changed") == []


def test_the_quota_rule_takes_percent_or_a_count_and_has_no_window(app, client, admin):
    rule = rule_of(app, admin.tenant_id, "quota_usage")
    section = rule_section(client.get(RULES).text, rule.id)
    assert f'id="rule-{rule.id}-threshold_unit"' in section and f'id="rule-{rule.id}-window_minutes"' not in section
    response = change(
        client,
        rule.id,
        threshold_unit="absolute",
        warning_threshold="8000",
        critical_threshold="10000",
        cooldown_minutes="60",
    )
    assert response.status_code == 302
    text = page_text(rule_section(client.get(RULES).text, rule.id))
    assert (
        "Monthly quota used in the billing month: warning at or above 8,000 calls; critical at or above 10,000 calls."
        in text
    )
    refused = change(
        client,
        rule_of(app, admin.tenant_id, "error_rate").id,
        threshold_unit="absolute",
        warning_threshold="5",
        critical_threshold="10",
        window_minutes="60",
        min_volume="20",
        cooldown_minutes="60",
    )
    assert refused.status_code == 302  # not a field of the error-rate form: the rule keeps percent
    assert rule_of(app, admin.tenant_id, "error_rate").threshold_unit == "percent"


def test_turning_a_default_rule_off_and_on_and_it_cannot_be_deleted(app, client, admin):
    rule = rule_of(app, admin.tenant_id, "usage_spike")
    assert post_form(client, f"{RULES}/{rule.id}/disable", page=RULES).status_code == 302
    assert rule_of(app, admin.tenant_id, "usage_spike").is_enabled is False
    section = page_text(rule_section(client.get(RULES).text, rule.id))
    assert "Usage spike off" in section and "Turn on" in section
    assert post_form(client, f"{RULES}/{rule.id}/enable", page=RULES).status_code == 302
    assert rule_of(app, admin.tenant_id, "usage_spike").is_enabled is True
    assert [e.action for e in audit_events(app, admin.tenant_id, "alert_rule.disabled")] == ["alert_rule.disabled"]
    assert len(audit_events(app, admin.tenant_id, "alert_rule.enabled")) == 1

    assert post_form(client, f"{RULES}/{rule.id}/delete", page=RULES).status_code == 302
    assert "is a default rule and cannot be deleted; turn it off instead." in page_text(client.get(RULES).text)
    assert rule_of(app, admin.tenant_id, "usage_spike") is not None


# -- custom rules --------------------------------------------------------------------------------------
def test_an_admin_adds_a_custom_rule_and_deletes_it(app, client, admin):
    with app.app_context():
        from portal.models import Tenant

        key, _ = create_api_key(_db.session.get(Tenant, admin.tenant_id), "search backend")
        _db.session.commit()
        key_id, prefix = key.id, key.prefix
        _db.session.remove()
    response = new_rule(client, api_key_id=str(key_id))
    assert response.status_code == 302
    rule = rule_of(app, admin.tenant_id, name="Slow search")
    assert (rule.kind, rule.metric, rule.comparator, rule.threshold_unit) == ("custom", "p95_latency", "gt", "absolute")
    assert (rule.warning_threshold, rule.critical_threshold) == (800, 1500)
    assert (rule.window_minutes, rule.min_volume, rule.cooldown_minutes) == (15, 10, 30)
    assert (rule.endpoint, rule.api_key_id, rule.service, rule.is_enabled) == ("/api/v1/search", key_id, None, True)
    assert response.headers["Location"] == f"/alerts/rules#rule-{rule.id}"
    [event] = audit_events(app, admin.tenant_id, "alert_rule.created")
    assert (event.user_id, event.details["name"]) == (admin.user_ids["admin"], "Slow search")
    text = page_text(rule_section(client.get(RULES).text, rule.id))
    assert "p95 response time over the last 15 minutes, once there are at least 10 calls:" in text
    assert f"Only for endpoint /api/v1/search, key search backend ({prefix}…)." in text

    assert post_form(client, f"{RULES}/{rule.id}/delete", page=RULES).status_code == 302
    assert custom_rules(app, admin.tenant_id) == []
    assert len(audit_events(app, admin.tenant_id, "alert_rule.deleted")) == 1


def test_a_custom_rule_is_changed_on_its_own_page(app, client, admin):
    rule_id = add_rule(app, admin.tenant_id, name="Busy")
    listed = rule_section(client.get(RULES).text, rule_id)
    assert f'href="/alerts/rules/{rule_id}">Change this rule' in listed
    assert f'action="/alerts/rules/{rule_id}" novalidate' not in listed  # the long form is on its page
    own = client.get(f"{RULES}/{rule_id}")
    assert own.status_code == 200
    assert f'id="rule-{rule_id}-name" name="name" type="text" value="Busy"' in own.text
    fields = {
        "name": "Very busy",
        "metric": "calls",
        "comparator": "gte",
        "threshold_unit": "absolute",
        "warning_threshold": "500",
        "critical_threshold": "",
        "window_minutes": "5",
        "min_volume": "0",
        "cooldown_minutes": "60",
        "service": "openai",
        "endpoint": "",
        "api_key_id": "",
        "end_user": "",
    }
    refused = post_form(client, f"{RULES}/{rule_id}", {**fields, "window_minutes": "0"}, page=f"{RULES}/{rule_id}")
    assert refused.status_code == 400
    assert f'id="rule-{rule_id}-window_minutes-error">Input should be greater than or equal to 1.' in refused.text
    assert 'value="Very busy"' in refused.text  # what was typed stays
    assert rule_of(app, admin.tenant_id, name="Busy").window_minutes == 60

    assert post_form(client, f"{RULES}/{rule_id}", fields, page=f"{RULES}/{rule_id}").status_code == 302
    rule = rule_of(app, admin.tenant_id, name="Very busy")
    assert (rule.comparator, rule.warning_threshold, rule.window_minutes, rule.service) == ("gte", 500, 5, "openai")


def test_a_rules_own_page_shows_a_member_no_form_and_another_tenants_rule_is_not_found(
    app, client, clock, portal_tenant, other_tenant
):
    ours = add_rule(app, portal_tenant.tenant_id, name="Busy")
    theirs = add_rule(app, other_tenant.tenant_id, name="Globex rule")
    sign_in(client, portal_tenant.member)
    page = client.get(f"{RULES}/{ours}")
    assert page.status_code == 200 and "Calls over the last 1 hour: warning above 100 calls." in page_text(page.text)
    assert "<form" not in page.text.split("<main", 1)[1]
    assert client.get(f"{RULES}/{theirs}").status_code == 404
    assert client.get(f"{RULES}/{2**40}").status_code == 404


@pytest.mark.parametrize(
    ("fields", "where", "message"),
    [
        ({"name": ""}, 'id="new-rule-name-error"', "Required."),
        ({"metric": "budget"}, 'id="new-rule-metric-error"', "Input should be 'quota_usage', 'day_window'"),
        (
            {"warning_threshold": "", "critical_threshold": ""},
            'id="new-rule-warning_threshold-error"',
            "A rule needs a warning or a critical threshold.",
        ),
        (
            {"metric": "error_rate", "threshold_unit": "absolute"},
            'id="new-rule-threshold_unit-error"',
            "error_rate takes percent thresholds.",
        ),
        (
            {"metric": "usage_spike", "endpoint": "/x"},
            'role="alert"',
            "usage_spike: cannot be narrowed by service, endpoint, key or end user.",
        ),
        ({"api_key_id": "999999"}, 'id="new-rule-api_key_id-error"', "No such key."),
        ({"api_key_id": "²"}, 'id="new-rule-api_key_id-error"', "No such key."),
        ({"api_key_id": "9" * 5000}, 'id="new-rule-api_key_id-error"', "No such key."),
        ({"comparator": "lt"}, 'id="new-rule-critical_threshold-error"', "Must be at most the warning threshold."),
    ],
)
def test_a_refused_custom_rule_says_why_with_400_and_is_not_stored(app, client, admin, fields, where, message):
    response = new_rule(client, **fields)
    assert response.status_code == 400
    assert f"{where}>{message}" in response.text.replace("&#39;", "'")
    assert '<details class="new-rule" open>' in response.text
    assert custom_rules(app, admin.tenant_id) == []


# -- settings --------------------------------------------------------------------------------------------
def test_an_admin_changes_the_alert_settings(app, client, admin):
    response = post_form(client, "/alerts/settings", {"resolve_after_evaluations": "5"}, page=RULES)
    assert response.status_code == 302 and response.headers["Location"] == "/alerts/rules#settings"
    with app.app_context():
        settings = _db.session.get(AlertSettings, admin.tenant_id)
        assert (settings.resolve_after_evaluations, settings.notify_on_resolve) == (5, False)
        _db.session.remove()
    [event] = audit_events(app, admin.tenant_id, "alerts.settings_changed")
    assert (event.user_id, event.ip_address) == (admin.user_ids["admin"], "127.0.0.1")
    assert event.details["resolve_after_evaluations"] == 5
    html = client.get(RULES).text
    assert 'id="settings-resolve" inputmode="numeric" name="resolve_after_evaluations" type="text" value="5"' in html
    assert 'id="settings-notify" name="notify_on_resolve" type="checkbox" value="y">' in html


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "Input should be greater than or equal to 1."),
        ("1441", "Input should be less than or equal to 1440."),
        ("three", "Must be a whole number."),
        ("", "Required."),
    ],
)
def test_a_refused_setting_is_shown_beside_its_field(app, client, admin, value, message):
    form = {"resolve_after_evaluations": value, "notify_on_resolve": "y"}
    response = post_form(client, "/alerts/settings", form, page=RULES)
    assert response.status_code == 400
    assert f'id="settings-resolve-error">{message}' in response.text
    with app.app_context():
        assert _db.session.get(AlertSettings, admin.tenant_id) is None
        _db.session.remove()


# -- who may do what -------------------------------------------------------------------------------------
def test_a_member_gets_403_on_every_rule_and_settings_post(app, client, clock, portal_tenant):
    rule_id = add_rule(app, portal_tenant.tenant_id, name="Mine")
    sign_in(client, portal_tenant.member)
    for url in (
        RULES,
        f"{RULES}/{rule_id}",
        f"{RULES}/{rule_id}/disable",
        f"{RULES}/{rule_id}/enable",
        f"{RULES}/{rule_id}/delete",
        "/alerts/settings",
    ):
        assert post_form(client, url, {"name": "x", "resolve_after_evaluations": "4"}, page=RULES).status_code == 403
    assert custom_rules(app, portal_tenant.tenant_id) == ["Mine"]
    assert rule_of(app, portal_tenant.tenant_id, name="Mine").is_enabled is True


def test_every_rule_form_needs_its_csrf_token(app, client, admin):
    rule_id = add_rule(app, admin.tenant_id, name="Mine")
    for url in (
        RULES,
        f"{RULES}/{rule_id}",
        f"{RULES}/{rule_id}/disable",
        f"{RULES}/{rule_id}/delete",
        "/alerts/settings",
    ):
        assert client.post(url, data={"name": "x", "resolve_after_evaluations": "4"}).status_code == 400
    assert rule_of(app, admin.tenant_id, name="Mine").is_enabled is True


def test_another_tenants_rule_is_not_found(app, client, admin, other_tenant):
    theirs = add_rule(app, other_tenant.tenant_id, name="Globex rule")
    for suffix in ("", "/disable", "/enable", "/delete"):
        assert post_form(client, f"{RULES}/{theirs}{suffix}", {"name": "x"}, page=RULES).status_code == 404
    assert post_form(client, f"{RULES}/{2**40}", page=RULES).status_code == 404
    assert "Globex rule" not in client.get(RULES).text
    assert custom_rules(app, other_tenant.tenant_id) == ["Globex rule"]


# -- cost ----------------------------------------------------------------------------------------------
def test_the_rules_page_runs_a_fixed_number_of_statements_with_1_or_50_custom_rules(app, client, admin):
    add_rule(app, admin.tenant_id, name="Rule 0")
    client.get(RULES)
    with count_statements(app) as small:
        assert client.get(RULES).status_code == 200
    for n in range(1, 50):
        add_rule(app, admin.tenant_id, name=f"Rule {n}", service="openai")
    with app.app_context():
        assert _db.session.scalar(select(func.count()).select_from(AlertRule)) == len(DEFAULT_RULES) + 50
        _db.session.remove()
    with count_statements(app) as big:
        started = time.perf_counter()
        response = client.get(RULES)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200 and "Rule 49" in response.text
    assert len(big) == len(small)
    assert elapsed < 1.0  # generous on a shared machine


# -- the audit trail -------------------------------------------------------------------------------------
def audit_trail(app, tenant_id: int) -> list[tuple]:
    with app.app_context():
        query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action.like("alert%"))
        rows = [
            (e.action, e.user_id, e.ip_address, e.details) for e in _db.session.scalars(query.order_by(AuditEvent.id))
        ]
        _db.session.remove()
    return rows


def test_each_rule_change_through_the_page_writes_exactly_one_audit_event_with_the_user_and_address(app, client, admin):
    client.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    sign_in(client, admin.admin)  # from that address (a session is bound to its address)
    who = (admin.user_ids["admin"], "203.0.113.7")
    rule = rule_of(app, admin.tenant_id, "response_time")
    form = {"warning_threshold": "1200", "critical_threshold": "2000", "window_minutes": "60", "min_volume": "20"}
    assert change(client, rule.id, **form, cooldown_minutes="60").status_code == 302
    assert change(client, rule.id, **form, cooldown_minutes="60").status_code == 302  # the same: no event
    assert [event[:3] for event in audit_trail(app, admin.tenant_id)] == [("alert_rule.changed", *who)]
    assert audit_trail(app, admin.tenant_id)[0][3] == {
        "rule_id": rule.id,
        "name": "p95 response time",
        "changes": {"warning_threshold": "1200.000000"},
    }

    assert post_form(client, f"{RULES}/{rule.id}/disable", page=RULES).status_code == 302
    assert new_rule(client).status_code == 302
    custom = rule_of(app, admin.tenant_id, name="Slow search")
    assert post_form(client, f"{RULES}/{custom.id}/delete", page=RULES).status_code == 302
    trail = audit_trail(app, admin.tenant_id)
    assert [event[:3] for event in trail] == [
        ("alert_rule.changed", *who),
        ("alert_rule.disabled", *who),
        ("alert_rule.created", *who),
        ("alert_rule.deleted", *who),
    ]
    assert trail[1][3] == {"rule_id": rule.id, "name": "p95 response time"}
    assert trail[2][3] == trail[3][3] == {"rule_id": custom.id, "name": "Slow search", "metric": "p95_latency"}


def test_a_settings_change_through_the_page_records_the_user_and_address_once(app, client, admin):
    client.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    sign_in(client, admin.admin)  # from that address (a session is bound to its address)
    form = {"resolve_after_evaluations": "4", "notify_on_resolve": "y"}
    assert post_form(client, "/alerts/settings", form, page=RULES).status_code == 302
    [event] = audit_trail(app, admin.tenant_id)
    assert event == (
        "alerts.settings_changed",
        admin.user_ids["admin"],
        "203.0.113.7",
        {"thresholds": [], "resolve_after_evaluations": 4, "notify_on_resolve": True},
    )
