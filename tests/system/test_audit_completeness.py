"""Every state-changing route and operator command leaves exactly one audit event, naming who made
the change: the signed-in user in the portal, the admin key through the API (``api_key_id``), the
command line for an operator command (``via``).

The two listing tests read the routes from the URL map and the commands from the CLI, so a new one
fails them until it is a scenario here, or an exemption with the reason it leaves no event.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal

import click
import pyotp
import pytest
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select, update
from werkzeug.test import TestResponse

from portal.alerts.rules import create_custom_rule
from portal.costs import budgets
from portal.costs.prices import forget_price_book
from portal.costs.service_limits import set_limit
from portal.extensions import db
from portal.kernel.clock import now
from portal.models import Alert, AlertRule, ApiKey, AuditEvent, ModelPrice, Tenant, User
from portal.notify.channels import create_channel
from portal.redis_store import get_redis
from portal.tenancy import two_factor
from portal.tenancy.invites import create_invite
from portal.tenancy.keys import set_key_active
from portal.tenancy.self_service import request_email_change, request_password_reset
from tests.api_helpers import Clock, add_key, drain
from tests.conftest import csrf_token
from tests.factories import PASSWORD, MadeTenant, new_tenant
from tests.notify_helpers import app_config
from tests.portal_helpers import sign_in
from tests.receivers import SlackReceiver, SmtpSink

NEW_PASSWORD = "quiet lantern orbit meadow 77"
NEW_EMAIL = "bill@initech-mail.example"
INVITED = "milton@initech.example"
SECRET_TEXT = re.compile(r'<code id="totp-secret">([A-Z2-7 ]+)</code>')

# Who a route's event must name.
OWNER = "the signed-in owner"
ADMIN_KEY = "the admin key that called"
INVITEE = "the user the invitation made"


# -- the world a scenario runs in ----------------------------------------------------------------
@dataclass
class World:
    """Initech (an owner, an admin and a member), a browser, an admin-scope API key, and the
    receivers a scenario asks for (stopped after the test)."""

    app: Flask
    client: FlaskClient
    clock: Clock
    team: MadeTenant
    admin_key_id: int
    admin_secret: str
    extras: ExitStack

    @property
    def tenant_id(self) -> int:
        return self.team.tenant_id

    def user_id(self, role: str = "owner") -> int:
        return self.team.user_ids[role]

    def user(self, role: str = "owner") -> User:
        """The user of ``role`` (inside :meth:`run`)."""
        return db.session.get(User, self.user_id(role))

    def run(self, work: Callable[[], object]):
        """Domain code in an application context of its own, committed; returns its (plain) result."""
        with self.app.app_context():
            result = work()
            db.session.commit()
            db.session.remove()
        return result

    def form(self, url: str, data: dict | None = None, page: str = "/dashboard") -> TestResponse:
        """POST a form to ``url`` with the CSRF token of ``page``, as the browser sends it."""
        token = csrf_token(self.client.get(page).text)
        return self.client.post(url, data={**(data or {}), "csrf_token": token})

    def api(self, method: str, path: str, body: dict | None = None) -> TestResponse:
        return self.client.open(path, method=method, json=body, headers={"X-API-Key": self.admin_secret})

    def cli(self, *args: str):
        return self.app.test_cli_runner().invoke(args=list(args))

    def mail(self) -> SmtpSink:
        sink = self.extras.enter_context(SmtpSink())
        self.extras.enter_context(app_config(self.app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"))
        return sink

    def slack(self) -> SlackReceiver:
        return self.extras.enter_context(SlackReceiver())


def wait_for_mail(sink: SmtpSink, count: int) -> None:
    """Until ``count`` e-mails arrived: the portal sends them on a thread after its answer."""
    deadline = time.monotonic() + 10
    while len(sink.messages) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(sink.messages) >= count, f"{len(sink.messages)} of {count} e-mails arrived"


@pytest.fixture
def world(app, client, clock) -> Iterator[World]:
    team = new_tenant(app, "Initech", team=True)
    key_id, secret = add_key(app, team.tenant_id, "Automation", scope="admin")
    with ExitStack() as extras:
        yield World(app, client, clock, team, key_id, secret, extras)
    drain(app)  # the API calls' usage, stored before the tables are emptied


def last_event_id(app: Flask) -> int:
    with app.app_context():
        newest = db.session.scalar(select(func.max(AuditEvent.id))) or 0
        db.session.remove()
    return newest


def events_since(app: Flask, mark: int) -> list[AuditEvent]:
    """Every audit event after ``mark``, whatever its tenant (detached from the session)."""
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.id > mark).order_by(AuditEvent.id)).all()
        db.session.expunge_all()
        db.session.remove()
    return list(events)


def shown(events: list[AuditEvent]) -> str:
    return (
        "; ".join(
            f"{e.action} (tenant {e.tenant_id}, user {e.user_id}, from {e.ip_address}, {e.details})" for e in events
        )
        or "none"
    )


# -- what the routes need --------------------------------------------------------------------------
@dataclass
class Request:
    """The request a scenario makes once its set-up is done, and details its event must carry."""

    send: Callable[[], TestResponse]
    details: dict = field(default_factory=dict)


def submission() -> str:
    """The once-only token of the forms a reload must not send twice (portal.web.once)."""
    return secrets.token_urlsafe(18)


def with_two_factor(w: World, role: str = "owner") -> str:
    """Two-factor turned on for the user of ``role``, as its set-up page does; returns the secret."""
    secret = two_factor.new_secret()
    w.run(lambda: two_factor.enable(w.user(role), secret, pyotp.TOTP(secret).at(w.clock.now), now(), None))
    return secret


def new_key(w: World) -> int:
    key_id, _ = add_key(w.app, w.tenant_id, "Backend")
    return key_id


def new_budget(w: World) -> int:
    def add() -> int:
        actor = budgets.Actor(user_id=w.user_id())
        return budgets.add_budget(w.tenant_id, "LLM spend", Decimal("250"), actor, get_redis(), now()).id

    return w.run(add)


def new_alert(w: World) -> int:
    def add() -> int:
        at = now()
        alert = Alert(
            tenant_id=w.tenant_id,
            alert_type="error_rate",
            severity="critical",
            status="active",
            title="Error rate 12.5% above 10%",
            message="12.5% of the calls in the last 60 minutes failed (threshold 10%).",
            dedup_key="error_rate:tenant",
            first_triggered_at=at,
            last_triggered_at=at,
        )
        db.session.add(alert)
        db.session.flush()
        return alert.id

    return w.run(add)


def new_rule(w: World, **fields) -> int:
    rule = {"name": "Calls", "metric": "calls", "warning_threshold": 100, **fields}
    return w.run(lambda: create_custom_rule(w.tenant_id, rule, user_id=w.user_id()).id)


def default_rule(w: World, kind: str) -> int:
    return w.run(
        lambda: db.session.scalar(
            select(AlertRule.id).where(AlertRule.tenant_id == w.tenant_id, AlertRule.kind == kind)
        )
    )


def new_channel(w: World, kind: str = "email", target: str = "oncall@example.com") -> int:
    return w.run(lambda: create_channel(w.tenant_id, kind, target, user_id=w.user_id())[0].id)


def new_invite(w: World) -> tuple[int, str]:
    def invite() -> tuple[int, str]:
        made, token, _ = create_invite(w.user(), INVITED, "member", now())
        return made.id, token

    return w.run(invite)


BUDGET_FORM = {"name": "LLM spend", "amount": "250", "warning_percentages": "50, 80, 100", "scope": "account"}
RULE_FORM = {
    "name": "Slow search",
    "metric": "p95_latency",
    "comparator": "gt",
    "warning_threshold": "800",
    "critical_threshold": "1500",
    "window_minutes": "15",
    "min_volume": "10",
    "cooldown_minutes": "30",
    "endpoint": "/api/v1/search",
    "is_enabled": "y",
}


# -- the portal: signing in and the account ----------------------------------------------------------
def login(w: World) -> Request:
    return Request(lambda: w.form("/login", {"email": w.team.owner, "password": PASSWORD}, page="/login"))


def logout(w: World) -> Request:
    return Request(lambda: w.form("/logout", page="/logout"))


def forgot_password(w: World) -> Request:
    sink = w.mail()

    def send() -> TestResponse:
        answer = w.form("/forgot-password", {"email": w.team.owner}, page="/forgot-password")
        wait_for_mail(sink, 1)
        return answer

    return Request(send)


def reset_password(w: World) -> Request:
    token = w.run(lambda: request_password_reset(w.team.owner, now(), None)[1])
    link = f"/reset-password/{token}"
    return Request(lambda: w.form(link, {"new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, page=link))


def account_name(w: World) -> Request:
    return Request(lambda: w.form("/account/name", {"name": "Bill Lumbergh"}), {"name": "Bill Lumbergh"})


def account_password(w: World) -> Request:
    data = {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    return Request(lambda: w.form("/account/password", data))


def account_email(w: World) -> Request:
    sink = w.mail()

    def send() -> TestResponse:
        answer = w.form("/account/email", {"new_email": NEW_EMAIL, "password": PASSWORD})
        wait_for_mail(sink, 2)  # the link to the new address, the notice to the old one
        return answer

    return Request(send, {"new_email": NEW_EMAIL})


def confirm_email(w: World) -> Request:
    token = w.run(lambda: request_email_change(w.user(), NEW_EMAIL, PASSWORD, now(), None).token)
    link = f"/account/email/confirm/{token}"
    return Request(lambda: w.form(link, page=link), {"new_email": NEW_EMAIL})


def sign_out_everywhere(w: World) -> Request:
    return Request(lambda: w.form("/account/sign-out-everywhere"))


def login_two_factor(w: World) -> Request:
    secret = with_two_factor(w)
    password_step = w.form("/login", {"email": w.team.owner, "password": PASSWORD}, page="/login")
    assert password_step.headers["Location"] == "/login/two-factor"
    code = pyotp.TOTP(secret).at(w.clock.now + 30)  # the next step's: the set-up used this one's
    return Request(
        lambda: w.form("/login/two-factor", {"code": code}, page="/login/two-factor"),
        {"second_factor": "authenticator"},
    )


def two_factor_setup(w: World) -> Request:
    def send() -> TestResponse:
        page = w.client.get("/account/two-factor")
        secret = SECRET_TEXT.search(page.text).group(1).replace(" ", "")
        code = pyotp.TOTP(secret).at(w.clock.now)
        return w.client.post("/account/two-factor", data={"code": code, "csrf_token": csrf_token(page.text)})

    return Request(send)


def two_factor_recovery_codes(w: World) -> Request:
    with_two_factor(w)
    return Request(lambda: w.form("/account/two-factor/recovery-codes", {"password": PASSWORD}))


def two_factor_disable(w: World) -> Request:
    with_two_factor(w)
    return Request(lambda: w.form("/account/two-factor/disable", {"password": PASSWORD}))


def two_factor_forget_devices(w: World) -> Request:
    with_two_factor(w)
    w.run(lambda: two_factor.remember_device(w.user(), "pytest browser", now()))
    return Request(lambda: w.form("/account/two-factor/devices/forget"), {"devices": 1})


# -- the portal: keys, costs, alerts, billing, team ------------------------------------------------
def create_key(w: World) -> Request:
    data = {"name": "Billing export", "scope": "usage", "submission": submission()}
    return Request(lambda: w.form("/keys", data), {"name": "Billing export"})


def deactivate_key(w: World) -> Request:
    key_id = new_key(w)
    return Request(lambda: w.form(f"/keys/{key_id}/deactivate"), {"key_id": key_id})


def reactivate_key(w: World) -> Request:
    key_id = new_key(w)
    w.run(lambda: set_key_active(db.session.get(ApiKey, key_id), False))
    return Request(lambda: w.form(f"/keys/{key_id}/reactivate"), {"key_id": key_id})


def revoke_key(w: World) -> Request:
    key_id = new_key(w)
    return Request(lambda: w.form(f"/keys/{key_id}/revoke"), {"key_id": key_id})


def rotate_key(w: World) -> Request:
    key_id = new_key(w)
    return Request(lambda: w.form(f"/keys/{key_id}/rotate", {"submission": submission()}), {"key_id": key_id})


def costs_create_budget(w: World) -> Request:
    return Request(lambda: w.form("/costs/budgets", BUDGET_FORM), {"name": "LLM spend", "amount": "250.00"})


def costs_update_budget(w: World) -> Request:
    budget_id = new_budget(w)
    return Request(
        lambda: w.form(f"/costs/budgets/{budget_id}", {**BUDGET_FORM, "amount": "300"}),
        {"budget_id": budget_id, "amount": "300.00"},
    )


def costs_delete_budget(w: World) -> Request:
    budget_id = new_budget(w)
    return Request(lambda: w.form(f"/costs/budgets/{budget_id}/delete"), {"budget_id": budget_id})


def alerts_acknowledge(w: World) -> Request:
    alert_id = new_alert(w)
    return Request(lambda: w.form(f"/alerts/{alert_id}/acknowledge"), {"alert_id": alert_id})


def alerts_resolve(w: World) -> Request:
    alert_id = new_alert(w)
    return Request(lambda: w.form(f"/alerts/{alert_id}/resolve"), {"alert_id": alert_id})


def alerts_rule_create(w: World) -> Request:
    return Request(lambda: w.form("/alerts/rules", RULE_FORM), {"name": "Slow search"})


def alerts_rule_change(w: World) -> Request:
    rule_id = default_rule(w, "response_time")  # warning above 1,000 ms, critical above 2,000
    data = {
        "warning_threshold": "1500",
        "critical_threshold": "2000",
        "window_minutes": "60",
        "min_volume": "20",
        "cooldown_minutes": "60",
    }
    return Request(lambda: w.form(f"/alerts/rules/{rule_id}", data), {"rule_id": rule_id})


def alerts_rule_enable(w: World) -> Request:
    rule_id = new_rule(w, is_enabled=False)
    return Request(lambda: w.form(f"/alerts/rules/{rule_id}/enable"), {"rule_id": rule_id})


def alerts_rule_disable(w: World) -> Request:
    rule_id = new_rule(w)
    return Request(lambda: w.form(f"/alerts/rules/{rule_id}/disable"), {"rule_id": rule_id})


def alerts_rule_delete(w: World) -> Request:
    rule_id = new_rule(w)
    return Request(lambda: w.form(f"/alerts/rules/{rule_id}/delete"), {"rule_id": rule_id})


def alerts_settings(w: World) -> Request:
    data = {"resolve_after_evaluations": "5", "notify_on_resolve": "y"}
    return Request(lambda: w.form("/alerts/settings", data), {"resolve_after_evaluations": 5})


def alerts_channel_create(w: World) -> Request:
    data = {"kind": "email", "target": "oncall@example.com", "min_severity": "warning", "submission": submission()}
    return Request(lambda: w.form("/alerts/channels", data), {"kind": "email"})


def alerts_channel_test(w: World) -> Request:
    channel_id = new_channel(w)
    return Request(lambda: w.form(f"/alerts/channels/{channel_id}/test"), {"channel_id": channel_id})


def billing_change_plan(w: World) -> Request:
    return Request(lambda: w.form("/billing/plan", {"plan": "professional"}), {"to": "professional"})


def team_invite(w: World) -> Request:
    data = {"email": INVITED, "role": "member", "submission": submission()}
    return Request(lambda: w.form("/team/invites", data), {"email": INVITED})


def team_invite_revoke(w: World) -> Request:
    invite_id, _ = new_invite(w)
    return Request(lambda: w.form(f"/team/invites/{invite_id}/revoke"), {"invite_id": invite_id})


def team_member_role(w: World) -> Request:
    member = w.user_id("member")
    return Request(lambda: w.form(f"/team/members/{member}/role", {"role": "admin"}), {"member_id": member})


def team_member_remove(w: World) -> Request:
    member = w.user_id("member")
    return Request(lambda: w.form(f"/team/members/{member}/remove"), {"member_id": member})


def team_two_factor_required(w: World) -> Request:
    return Request(lambda: w.form("/team/two-factor", {"require": "yes"}), {"require_two_factor": True})


def team_member_two_factor_reset(w: World) -> Request:
    with_two_factor(w, "admin")
    admin = w.user_id("admin")
    return Request(lambda: w.form(f"/team/members/{admin}/two-factor/reset"), {"member_id": admin})


def accept_invite(w: World) -> Request:
    invite_id, token = new_invite(w)
    link = f"/invite/{token}"
    data = {"name": "Milton Waddams", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    return Request(lambda: w.form(link, data, page=link), {"invite_id": invite_id})


# -- the API, with an admin-scope key ------------------------------------------------------------
def api_acknowledge_alert(w: World) -> Request:
    alert_id = new_alert(w)
    return Request(lambda: w.api("POST", f"/api/v1/alerts/{alert_id}/acknowledge"), {"alert_id": alert_id})


def api_resolve_alert(w: World) -> Request:
    alert_id = new_alert(w)
    return Request(lambda: w.api("POST", f"/api/v1/alerts/{alert_id}/resolve"), {"alert_id": alert_id})


def api_change_alert_settings(w: World) -> Request:
    body = {"resolve_after_evaluations": 5}
    return Request(lambda: w.api("PUT", "/api/v1/alerts/settings", body), body)


def api_create_rule(w: World) -> Request:
    body = {"name": "Calls", "metric": "calls", "warning_threshold": 100}
    return Request(lambda: w.api("POST", "/api/v1/alerts/rules", body), {"name": "Calls"})


def api_change_rule(w: World) -> Request:
    rule_id = new_rule(w)
    return Request(
        lambda: w.api("PUT", f"/api/v1/alerts/rules/{rule_id}", {"critical_threshold": 2000}), {"rule_id": rule_id}
    )


def api_delete_rule(w: World) -> Request:
    rule_id = new_rule(w)
    return Request(lambda: w.api("DELETE", f"/api/v1/alerts/rules/{rule_id}"), {"rule_id": rule_id})


def api_change_subscription(w: World) -> Request:
    return Request(
        lambda: w.api("PUT", "/api/v1/billing/subscription", {"plan": "professional"}), {"to": "professional"}
    )


def api_set_service_limit(w: World) -> Request:
    body = {"limit_type": "minute", "limit_value": 100}
    return Request(lambda: w.api("PUT", "/api/v1/usage/rate-limits/groq", body), {"service": "groq", **body})


def api_delete_service_limit(w: World) -> Request:
    w.run(lambda: set_limit(w.tenant_id, "groq", "minute", 100, "requests"))
    return Request(
        lambda: w.api("DELETE", "/api/v1/usage/rate-limits/groq?limit_type=minute"),
        {"service": "groq", "limit_type": "minute"},
    )


def api_create_budget(w: World) -> Request:
    body = {"name": "LLM spend", "amount": "250.00"}
    return Request(lambda: w.api("POST", "/api/v1/budgets", body), body)


def api_update_budget(w: World) -> Request:
    budget_id = new_budget(w)
    return Request(
        lambda: w.api("PUT", f"/api/v1/budgets/{budget_id}", {"amount": "300.00"}),
        {"budget_id": budget_id, "amount": "300.00"},
    )


def api_delete_budget(w: World) -> Request:
    budget_id = new_budget(w)
    return Request(lambda: w.api("DELETE", f"/api/v1/budgets/{budget_id}"), {"budget_id": budget_id})


def api_change_account_settings(w: World) -> Request:
    body = {"limits_when_redis_down": "closed"}  # the default is open
    return Request(lambda: w.api("PUT", "/api/v1/account/settings", body), body)


def api_create_notification_channel(w: World) -> Request:
    body = {"kind": "email", "target": "oncall@example.com"}
    return Request(lambda: w.api("POST", "/api/v1/notification-channels", body), {"kind": "email"})


def api_test_notification_channel(w: World) -> Request:
    channel_id = new_channel(w, "slack", w.slack().url)
    return Request(
        lambda: w.api("POST", f"/api/v1/notification-channels/{channel_id}/test"), {"channel_id": channel_id}
    )


# -- the routes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    action: str
    prepare: Callable[[World], Request]  # sets up what the route needs; returns the request to make
    status: int = 302
    by: str = OWNER
    signed_in: bool = True  # the owner signs in through the form first


def api(action: str, prepare: Callable[[World], Request], status: int = 200) -> Scenario:
    return Scenario(action, prepare, status, by=ADMIN_KEY, signed_in=False)


SCENARIOS = {
    "auth.login": Scenario("login.success", login, signed_in=False),
    "auth.logout": Scenario("logout", logout),
    "auth.forgot_password": Scenario("password.reset_requested", forgot_password, 200, signed_in=False),
    "auth.reset_password": Scenario("password.reset", reset_password, signed_in=False),
    "auth.account_name": Scenario("profile.changed", account_name),
    "auth.account_password": Scenario("password.changed", account_password),
    "auth.account_email": Scenario("email.change_requested", account_email),
    "auth.confirm_email": Scenario("email.changed", confirm_email),
    "auth.account_sign_out_everywhere": Scenario("logout.everywhere", sign_out_everywhere),
    "auth.login_two_factor": Scenario("login.success", login_two_factor, signed_in=False),
    "auth.two_factor_setup": Scenario("two_factor.enabled", two_factor_setup, 200),
    "auth.two_factor_recovery_codes": Scenario("two_factor.codes_renewed", two_factor_recovery_codes, 200),
    "auth.two_factor_disable": Scenario("two_factor.disabled", two_factor_disable),
    "auth.two_factor_forget_devices": Scenario("two_factor.devices_forgotten", two_factor_forget_devices),
    "web.create_key": Scenario("api_key.created", create_key, 201),
    "web.deactivate_key": Scenario("api_key.deactivated", deactivate_key),
    "web.reactivate_key": Scenario("api_key.reactivated", reactivate_key),
    "web.revoke_key": Scenario("api_key.revoked", revoke_key),
    "web.rotate_key": Scenario("api_key.rotated", rotate_key, 200),
    "web.costs_create_budget": Scenario("budget.created", costs_create_budget),
    "web.costs_update_budget": Scenario("budget.updated", costs_update_budget),
    "web.costs_delete_budget": Scenario("budget.deleted", costs_delete_budget),
    "web.alerts_acknowledge": Scenario("alert.acknowledged", alerts_acknowledge),
    "web.alerts_resolve": Scenario("alert.resolved", alerts_resolve),
    "web.alerts_rule_create": Scenario("alert_rule.created", alerts_rule_create),
    "web.alerts_rule_change": Scenario("alert_rule.changed", alerts_rule_change),
    "web.alerts_rule_enable": Scenario("alert_rule.enabled", alerts_rule_enable),
    "web.alerts_rule_disable": Scenario("alert_rule.disabled", alerts_rule_disable),
    "web.alerts_rule_delete": Scenario("alert_rule.deleted", alerts_rule_delete),
    "web.alerts_settings": Scenario("alerts.settings_changed", alerts_settings),
    "web.alerts_channel_create": Scenario("notification_channel.created", alerts_channel_create),
    "web.alerts_channel_test": Scenario("notification_channel.tested", alerts_channel_test),
    "web.billing_change_plan": Scenario("plan.changed", billing_change_plan),
    "web.team_invite": Scenario("invite.created", team_invite, 201),
    "web.team_invite_revoke": Scenario("invite.revoked", team_invite_revoke),
    "web.team_member_role": Scenario("user.role_changed", team_member_role),
    "web.team_member_remove": Scenario("user.removed", team_member_remove),
    "web.team_two_factor_required": Scenario("settings.changed", team_two_factor_required),
    "web.team_member_two_factor_reset": Scenario("two_factor.reset", team_member_two_factor_reset),
    "web.invite": Scenario("invite.accepted", accept_invite, by=INVITEE, signed_in=False),
    "api.acknowledge_alert": api("alert.acknowledged", api_acknowledge_alert),
    "api.resolve_alert": api("alert.resolved", api_resolve_alert),
    "api.change_alert_settings": api("alerts.settings_changed", api_change_alert_settings),
    "api.create_rule": api("alert_rule.created", api_create_rule, 201),
    "api.change_rule": api("alert_rule.changed", api_change_rule),
    "api.delete_rule": api("alert_rule.deleted", api_delete_rule),
    "api.change_subscription": api("plan.changed", api_change_subscription),
    "api.set_service_limit": api("service_limit.set", api_set_service_limit),
    "api.delete_service_limit": api("service_limit.removed", api_delete_service_limit),
    "api.create_budget": api("budget.created", api_create_budget, 201),
    "api.update_budget": api("budget.updated", api_update_budget),
    "api.delete_budget": api("budget.deleted", api_delete_budget),
    "api.change_account_settings": api("settings.changed", api_change_account_settings),
    "api.create_notification_channel": api("notification_channel.created", api_create_notification_channel, 201),
    "api.test_notification_channel": api("notification_channel.tested", api_test_notification_channel),
}

METERED = "metered usage: it leaves a usage record, not a change to the account"
EXEMPT = {
    "api.usage_events": METERED,
    "api.acquire": METERED,
    "api_verify.verify": METERED,
    "api_verify.complete": METERED,
    "web.notifications_read": "the user's own reading state of a notice",
    "web.notifications_read_all": "the user's own reading state of their notices",
}

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def test_every_state_changing_route_is_a_scenario_or_exempt(app):
    routes = {rule.endpoint for rule in app.url_map.iter_rules() if rule.methods & STATE_CHANGING}
    assert not SCENARIOS.keys() & EXEMPT.keys()
    assert sorted(routes - SCENARIOS.keys() - EXEMPT.keys()) == [], "routes with no scenario nor exemption"
    assert sorted((SCENARIOS.keys() | EXEMPT.keys()) - routes) == [], "scenarios or exemptions of no route"


@pytest.mark.parametrize("endpoint", sorted(SCENARIOS))
def test_a_state_changing_route_leaves_one_audit_event(world, endpoint):
    scenario = SCENARIOS[endpoint]
    if scenario.signed_in:
        sign_in(world.client, world.team.owner)
    request = scenario.prepare(world)
    mark = last_event_id(world.app)

    response = request.send()

    assert response.status_code == scenario.status, f"{endpoint}: {response.status_code} {response.text[:300]}"
    events = events_since(world.app, mark)
    assert [event.action for event in events] == [scenario.action], f"{endpoint} left {shown(events)}"
    [event] = events
    details = event.details or {}
    assert event.tenant_id == world.tenant_id, shown(events)
    if scenario.by == ADMIN_KEY:
        assert event.user_id is None, shown(events)
        assert details.get("api_key_id") == world.admin_key_id, f"names no calling key as api_key_id: {shown(events)}"
    else:
        expected = world.user_id() if scenario.by == OWNER else invited_user_id(world.app)
        assert event.user_id == expected, f"names no {scenario.by}: {shown(events)}"
        assert "via" not in details, shown(events)
    assert event.ip_address == "127.0.0.1", f"says not where the change came from: {shown(events)}"
    assert {name: details.get(name) for name in request.details} == request.details, shown(events)


def invited_user_id(app: Flask) -> int:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == INVITED))
        db.session.remove()
    return user_id


# -- the operator commands -------------------------------------------------------------------------
OURS, NO_TENANT, CREATED = "the world's tenant", "no tenant", "the tenant it created"


@dataclass(frozen=True)
class Command:
    action: str
    prepare: Callable[[World], list[str]]  # sets up what the command needs; returns its arguments
    tenant: str = OURS


def ran(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"


def revoke_api_key(w: World) -> list[str]:
    ran(w.cli("create-api-key", w.team.slug, "--name", "Backend"))
    return ["revoke-api-key", w.team.slug, "Backend"]


def revoke_service_token(w: World) -> list[str]:
    ran(w.cli("create-service-token", "checkout"))
    return ["revoke-service-token", "checkout"]


def gateway_remove(w: World) -> list[str]:
    ran(w.cli("gateway", "add", "/chat", "http://127.0.0.1:5055/chat"))
    return ["gateway", "remove", "/chat"]


def fixed(*args: str) -> Callable[[World], list[str]]:
    return lambda w: [arg.format(slug=w.team.slug) for arg in args]


CLI_SCENARIOS = {
    "create-tenant": Command(
        "tenant.created",
        fixed(
            "create-tenant",
            "Globex",
            "--plan",
            "starter",
            "--admin-email",
            "hank@globex.example",
            "--password",
            PASSWORD,
        ),
        CREATED,
    ),
    "create-api-key": Command("api_key.created", fixed("create-api-key", "{slug}", "--name", "Backend")),
    "revoke-api-key": Command("api_key.revoked", revoke_api_key),
    "set-plan": Command("plan.limits_changed", fixed("set-plan", "starter", "--per-minute", "120"), NO_TENANT),
    "add-channel": Command("notification_channel.created", fixed("add-channel", "{slug}", "email", "ops@example.com")),
    "create-service-token": Command("service_token.created", fixed("create-service-token", "checkout"), NO_TENANT),
    "revoke-service-token": Command("service_token.revoked", revoke_service_token, NO_TENANT),
    "gateway add": Command(
        "gateway_route.added", fixed("gateway", "add", "/chat", "http://127.0.0.1:5055/chat"), NO_TENANT
    ),
    "gateway remove": Command("gateway_route.removed", gateway_remove, NO_TENANT),
    "prices set": Command("price.set", fixed("prices", "set", "groq", "audit-test-model", "--input", "1"), NO_TENANT),
    "prices import": Command("prices.imported", fixed("prices", "import"), NO_TENANT),
    "usage dead-letters retry": Command(
        "usage.dead_letters_retried", fixed("usage", "dead-letters", "retry"), NO_TENANT
    ),
}

READS = "reads only"
CLI_EXEMPT = {
    "billing reconcile": READS,
    "gateway list": READS,
    "prices list": READS,
    "jobs list": READS,
    "usage dead-letters list": READS,
    "jobs run": "runs a periodic job, recorded in the job history",
    "worker": "runs the queued and periodic jobs, recorded in the job history",
    "seed-demo": "demo data for a development database",
    "generate-usage": "benchmark data",
    "backup": "copies the database and Redis to files",
    "restore": "replaces the whole database, audit trail and all, from a backup",
    "db": "Flask-Migrate's schema migrations",
    "limiter": "Flask-Limiter's own: shows the limits, or clears a client's rate-limit counters in Redis",
    "routes": "Flask's own: lists the URL rules",
    "shell": "Flask's own: a Python shell",
    "run": "Flask's own: the development server",
}


def command_paths(app: Flask) -> set[str]:
    """Every command ``flask --app wsgi`` offers, by its path (``usage dead-letters retry``); a
    group exempted whole (another package's) counts as one."""
    group = FlaskGroup(create_app=lambda: app)

    def walk(command: click.Command, path: str, ctx: click.Context) -> Iterator[str]:
        if not isinstance(command, click.Group) or path in CLI_EXEMPT:
            yield path
            return
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), f"{path} {name}".strip(), ctx)

    with click.Context(group, obj=ScriptInfo(create_app=lambda: app)) as ctx:
        return set(walk(group, "", ctx))


def test_every_operator_command_is_a_scenario_or_exempt(app):
    commands = command_paths(app)
    assert not CLI_SCENARIOS.keys() & CLI_EXEMPT.keys()
    assert sorted(commands - CLI_SCENARIOS.keys() - CLI_EXEMPT.keys()) == [], "commands with no scenario nor exemption"
    assert sorted((CLI_SCENARIOS.keys() | CLI_EXEMPT.keys()) - commands) == [], "scenarios or exemptions of no command"


@pytest.fixture
def restore_catalog(app) -> Iterator[None]:
    """model_prices is reference data the suite keeps: put it back as it was (``prices set``/``import``)."""
    with app.app_context():
        newest = db.session.scalar(select(func.max(ModelPrice.id))) or 0
        open_ids = set(db.session.scalars(select(ModelPrice.id).where(ModelPrice.effective_to.is_(None))))
        db.session.remove()
    yield
    with app.app_context():
        db.session.execute(delete(ModelPrice).where(ModelPrice.id > newest))
        if open_ids:
            db.session.execute(update(ModelPrice).where(ModelPrice.id.in_(open_ids)).values(effective_to=None))
        db.session.commit()
        db.session.remove()
    forget_price_book()


@pytest.mark.parametrize("command", sorted(CLI_SCENARIOS))
def test_an_operator_command_leaves_one_audit_event(world, restore_catalog, command):
    scenario = CLI_SCENARIOS[command]
    args = scenario.prepare(world)
    mark = last_event_id(world.app)

    result = world.cli(*args)

    ran(result)
    events = events_since(world.app, mark)
    assert [event.action for event in events] == [scenario.action], f"{command} left {shown(events)}"
    [event] = events
    details = event.details or {}
    expected_tenant = {OURS: world.tenant_id, NO_TENANT: None}.get(scenario.tenant) or created_tenant(world)
    assert event.tenant_id == expected_tenant, shown(events)
    assert event.user_id is None
    assert details.get("via") == "command line", shown(events)
    assert details.get("os_user"), shown(events)


def created_tenant(w: World) -> int:
    with w.app.app_context():
        tenant_id = db.session.scalar(select(Tenant.id).where(Tenant.slug == "globex"))
        db.session.remove()
    return tenant_id
