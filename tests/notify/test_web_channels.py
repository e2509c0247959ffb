"""The channels page: the tenant's notification channels, adding an e-mail, Slack or signed
webhook channel (checked as the API checks it, private addresses refused), a test send that goes
through the outbox and arrives at a real receiver on this machine once deliver-notifications
runs, and the delivery log. Members read; owners and admins change; CSRF on every form; another
tenant's channel is a 404; the page runs a fixed number of SQL statements.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from markupsafe import escape
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import NotificationChannel, NotificationDelivery
from portal.notify.channels import SECRET, deactivate_channel
from portal.notify.deliver import deliver_due
from tests.api_helpers import T0
from tests.conftest import csrf_token
from tests.notify_helpers import add_channel, app_config, raise_alert
from tests.portal_helpers import audit_events, count_statements, page_text, post_form, sign_in
from tests.receivers import SmtpSink, WebhookReceiver

CHANNELS = "/alerts/channels"
NOW = datetime.fromtimestamp(T0, UTC)


# -- helpers -------------------------------------------------------------------------------------
def channels_of(app, tenant_id: int) -> list[NotificationChannel]:
    with app.app_context():
        rows = _db.session.scalars(
            select(NotificationChannel)
            .where(NotificationChannel.tenant_id == tenant_id)
            .order_by(NotificationChannel.id)
        ).all()
        _db.session.expunge_all()
        _db.session.remove()
    return list(rows)


def deliveries_of(app, tenant_id: int) -> list[NotificationDelivery]:
    with app.app_context():
        rows = _db.session.scalars(
            select(NotificationDelivery)
            .where(NotificationDelivery.tenant_id == tenant_id)
            .order_by(NotificationDelivery.id)
        ).all()
        _db.session.expunge_all()
        _db.session.remove()
    return list(rows)


def channel(app, tenant_id: int, kind: str, target: str, **options) -> int:
    with app.app_context():
        channel_id = add_channel(tenant_id, kind, target, **options).id
        _db.session.remove()
    return channel_id


def submission(html: str) -> str:
    return re.search(r'name="submission" type="hidden" value="([^"]+)"', html).group(1)


def add(client, **fields):
    """Fill in the add-a-channel form on the page and send it."""
    page = client.get(CHANNELS).text
    form = {"kind": "email", "name": "", "target": "", "min_severity": "warning", "secret": ""}
    form.update(fields)
    form.update(csrf_token=csrf_token(page), submission=submission(page))
    return client.post(CHANNELS, data=form)


def deliver(app, at: datetime = NOW) -> dict:
    with app.app_context():
        result = deliver_due(at)
        _db.session.remove()
    return result


@pytest.fixture
def admin(client, clock, portal_tenant):
    sign_in(client, portal_tenant.admin)
    return portal_tenant


@pytest.fixture
def smtp(app):
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        yield sink


# -- adding channels -------------------------------------------------------------------------------
def test_an_admin_adds_an_email_channel_and_sees_it_listed(app, client, admin):
    response = add(client, target="ops@initech.example", min_severity="critical")
    assert response.status_code == 302
    [made] = channels_of(app, admin.tenant_id)
    assert (made.kind, made.name, made.target, made.min_severity, made.is_active) == (
        "email",
        "ops@initech.example",
        "ops@initech.example",
        "critical",
        True,
    )
    assert response.headers["Location"] == f"/alerts/channels#channel-{made.id}"
    [event] = audit_events(app, admin.tenant_id, "notification_channel.created")
    assert (event.user_id, event.details["kind"], event.details["target"]) == (
        admin.user_ids["admin"],
        "email",
        "ops@initech.example",
    )
    text = page_text(client.get(CHANNELS).text)
    assert "Added the email channel “ops@initech.example”. Send it a test to check it." in text
    assert "ops@initech.example active E-mail told about critical alerts only Sends to ops@initech.example" in text


def test_a_webhooks_secret_is_shown_once_and_then_only_hinted(app, client, admin):
    response = add(client, kind="webhook", target="http://127.0.0.1:9/hook", name="Ops hook")
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    secret = re.search(r'<code id="secret">([^<]+)</code>', response.text).group(1)
    assert re.fullmatch(SECRET, secret)
    assert "Copy its signing secret now; it will not be shown again." in page_text(response.text)
    [made] = channels_of(app, admin.tenant_id)
    assert made.signing_secret == secret
    listed = client.get(CHANNELS).text
    assert secret not in listed and f"whsec_…{secret[-4:]}" in listed
    with client.session_transaction() as session:
        assert secret not in str(dict(session))


def test_a_given_webhook_secret_is_kept_and_a_slack_url_is_shown_only_by_its_end(app, client, admin):
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert add(client, kind="webhook", target="http://127.0.0.1:9/hook", secret=secret).status_code == 201
    assert add(client, kind="slack", target="http://127.0.0.1:9/services/T000/B000/XYZW1234").status_code == 302
    webhook, slack = channels_of(app, admin.tenant_id)
    assert webhook.signing_secret == secret
    listed = client.get(CHANNELS).text
    assert "http://127.0.0.1:9/…1234" in listed and "T000/B000" not in listed


def test_sending_the_form_twice_adds_one_channel(app, client, admin):
    page = client.get(CHANNELS).text
    form = {"kind": "email", "target": "ops@initech.example", "min_severity": "warning"}
    form.update(csrf_token=csrf_token(page), submission=submission(page))
    assert client.post(CHANNELS, data=form).status_code == 302
    again = client.post(CHANNELS, data=form)
    assert again.status_code == 302
    assert len(channels_of(app, admin.tenant_id)) == 1


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"target": ""}, "target", "Required."),
        ({"target": "not-an-address"}, "target", "Expected an e-mail address such as ops@example.com."),
        ({"kind": "slack", "target": "gopher://127.0.0.1/"}, "target", "Must be an http:// or https:// URL."),
        ({"kind": "webhook", "target": "http://127.0.0.1:9/", "secret": "nope"}, "secret", "Expected a Standard"),
        ({"target": "ops@initech.example", "secret": "whsec_x"}, "secret", "Only a webhook channel has a signing"),
        ({"target": "ops@initech.example", "name": "n" * 121}, "name", "String should have at most 120 characters."),
        ({"target": "ops@initech.example", "min_severity": "info"}, "min_severity", "Input should be 'warning'"),
        ({"kind": "sms", "target": "+15550100"}, "kind", "Input should be 'email', 'slack' or 'webhook'."),
    ],
)
def test_a_refused_channel_is_shown_beside_its_field_with_400_and_nothing_is_stored(
    app, client, admin, fields, field, message
):
    response = add(client, **fields)
    assert response.status_code == 400
    html = response.text.replace("&#39;", "'")
    assert f'id="channel-{ {"min_severity": "severity"}.get(field, field) }-error">{message}' in html
    assert channels_of(app, admin.tenant_id) == []
    assert audit_events(app, admin.tenant_id, "notification_channel.created") == []


def test_a_private_webhook_address_is_refused_when_they_are_not_allowed(app, client, admin):
    with app_config(app, ALLOW_PRIVATE_WEBHOOKS=False):
        response = add(client, kind="webhook", target="http://10.0.0.1/hook")
        assert response.status_code == 400
        assert 'id="channel-target-error">10.0.0.1 is a private, loopback, link-local or otherwise internal' in (
            response.text
        )
        loopback = add(client, kind="slack", target="http://127.0.0.1:9/services/T/B/X")
        assert loopback.status_code == 400 and "127.0.0.1 is a private" in loopback.text
    assert channels_of(app, admin.tenant_id) == []
    assert "Copy its signing secret" not in response.text


# -- test sends and the delivery log -------------------------------------------------------------
def test_a_test_send_goes_through_the_outbox_to_a_real_smtp_sink(app, client, admin, smtp):
    channel_id = channel(app, admin.tenant_id, "email", "ops@initech.example")
    response = post_form(client, f"{CHANNELS}/{channel_id}/test", page=CHANNELS)
    assert response.status_code == 302 and response.headers["Location"] == "/alerts/channels#deliveries"
    [queued] = deliveries_of(app, admin.tenant_id)
    assert (queued.channel_id, queued.event_type, queued.status, queued.attempts) == (channel_id, "test", "pending", 0)
    assert smtp.messages == []  # not sent from the request
    text = page_text(client.get(CHANNELS).text)
    assert "A test message to “ops@initech.example” is on its way" in text
    assert "2026-11-18 12:30 UTC ops@initech.example test pending 0 attempts next 2026-11-18 12:30:10 UTC —" in text

    assert deliver(app)["sent"] == 1
    [message] = smtp.messages
    assert message["To"] == "ops@initech.example" and message["Subject"].startswith("[TEST]")
    text = page_text(client.get(CHANNELS).text)
    assert "ops@initech.example test sent 1 attempt sent 2026-11-18 12:30:10 UTC —" in text
    [event] = audit_events(app, admin.tenant_id, "notification_channel.tested")
    assert event.details == {"channel_id": channel_id, "delivery_id": queued.id}


def test_a_test_send_reaches_a_webhook_that_checks_its_signature(app, client, admin):
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with WebhookReceiver(secret) as hook:
        channel_id = channel(app, admin.tenant_id, "webhook", hook.url, secret=secret)
        post_form(client, f"{CHANNELS}/{channel_id}/test", page=CHANNELS)
        assert deliver(app)["sent"] == 1
        [event] = hook.accepted
    assert hook.rejected == []
    assert event["type"] == "test" and event["data"]["channel"]["id"] == channel_id


def test_the_log_shows_failures_with_their_error_and_next_attempt_and_filters_by_status(app, client, admin):
    channel_id = channel(app, admin.tenant_id, "webhook", "http://127.0.0.1:9/hook", name="Dead hook")
    with app.app_context():
        raise_alert(admin.tenant_id, at=NOW)
        _db.session.remove()
    deliver(app)  # nothing listens on port 9: refused, retried in 5 seconds
    [row] = deliveries_of(app, admin.tenant_id)
    assert row.status == "pending" and row.attempts == 1 and row.last_error
    text = page_text(client.get(CHANNELS).text)
    assert "Dead hook alert.triggered pending 1 attempt next 2026-11-18 12:30:15 UTC could not connect" in text
    html = client.get(CHANNELS).text
    assert f'href="/alerts/{row.alert_id}">alert.triggered</a>' in html
    assert str(escape(row.last_error)) in html  # the whole error, as recorded

    assert "Dead hook alert.triggered" in page_text(client.get(f"{CHANNELS}?status=pending").text)
    assert "Dead hook alert.triggered" not in page_text(client.get(f"{CHANNELS}?status=sent").text)
    assert "No deliveries match these filters." in client.get(f"{CHANNELS}?status=sent&channel={channel_id}").text
    bad = client.get(f"{CHANNELS}?status=lost")
    assert bad.status_code == 400 and 'id="log-status-error">Not a valid choice.' in bad.text


def test_a_turned_off_channel_shows_why_and_sends_no_test(app, client, admin):
    channel_id = channel(app, admin.tenant_id, "slack", "http://127.0.0.1:9/services/T/B/X", name="Old Slack")
    with app.app_context():
        deactivate_channel(
            _db.session.get(NotificationChannel, channel_id), "Slack answered 404 channel_not_found", NOW
        )
        _db.session.commit()
        _db.session.remove()
    html = client.get(CHANNELS).text
    assert "turned off" in html and "Slack answered 404 channel_not_found" in html
    assert f"/alerts/channels/{channel_id}/test" not in html
    response = post_form(client, f"{CHANNELS}/{channel_id}/test", page=CHANNELS)
    assert response.status_code == 302
    assert deliveries_of(app, admin.tenant_id) == []
    assert "nothing was sent" in page_text(client.get(CHANNELS).text)


# -- who may do what -------------------------------------------------------------------------------
def test_a_member_reads_the_channels_and_log_but_gets_403_on_every_post(app, client, clock, portal_tenant):
    channel_id = channel(app, portal_tenant.tenant_id, "email", "ops@initech.example")
    sign_in(client, portal_tenant.member)
    html = client.get(CHANNELS).text
    assert "ops@initech.example" in html and "Delivery log" in html
    assert 'action="/alerts/channels"' not in html and "/test" not in html
    form = {"kind": "email", "target": "new@initech.example"}
    assert post_form(client, CHANNELS, form).status_code == 403
    assert post_form(client, f"{CHANNELS}/{channel_id}/test", page=CHANNELS).status_code == 403
    assert len(channels_of(app, portal_tenant.tenant_id)) == 1
    assert deliveries_of(app, portal_tenant.tenant_id) == []


def test_every_channel_form_needs_its_csrf_token(app, client, admin):
    channel_id = channel(app, admin.tenant_id, "email", "ops@initech.example")
    assert client.post(CHANNELS, data={"kind": "email", "target": "new@initech.example"}).status_code == 400
    assert client.post(f"{CHANNELS}/{channel_id}/test").status_code == 400
    assert len(channels_of(app, admin.tenant_id)) == 1 and deliveries_of(app, admin.tenant_id) == []


def test_another_tenants_channel_and_deliveries_are_not_found(app, client, admin, other_tenant):
    theirs = channel(app, other_tenant.tenant_id, "email", "ops@globex.example")
    with app.app_context():
        raise_alert(other_tenant.tenant_id, at=NOW)
        _db.session.remove()
    assert post_form(client, f"{CHANNELS}/{theirs}/test", page=CHANNELS).status_code == 404
    assert post_form(client, f"{CHANNELS}/{2**40}/test", page=CHANNELS).status_code == 404
    html = client.get(f"{CHANNELS}?channel={theirs}").text
    assert "ops@globex.example" not in html and "alert.triggered" not in html
    assert len(deliveries_of(app, other_tenant.tenant_id)) == 1


# -- cost ----------------------------------------------------------------------------------------------
def test_the_page_runs_a_fixed_number_of_statements_with_1_or_50_deliveries(app, client, admin):
    channel(app, admin.tenant_id, "email", "ops@initech.example")
    channel(app, admin.tenant_id, "webhook", "http://127.0.0.1:9/hook")
    with app.app_context():
        raise_alert(admin.tenant_id, at=NOW)
        _db.session.remove()
    client.get(CHANNELS)
    with count_statements(app) as small:
        assert client.get(CHANNELS).status_code == 200
    with app.app_context():
        for n in range(25):
            raise_alert(admin.tenant_id, at=NOW + timedelta(seconds=n))
        _db.session.remove()
    assert len(deliveries_of(app, admin.tenant_id)) == 52
    with count_statements(app) as big:
        started = time.perf_counter()
        response = client.get(CHANNELS)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.text.count("alert.triggered</a>") == 50
    assert len(big) == len(small) <= 6
    assert elapsed < 0.5  # generous on a shared machine


def test_adding_and_testing_a_channel_through_the_page_write_one_audit_event_each_with_the_user_and_address(
    app, client, admin
):
    client.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    sign_in(client, admin.admin)  # from that address (a session is bound to its address)
    assert add(client, target="ops@initech.example").status_code == 302
    [made] = channels_of(app, admin.tenant_id)
    assert post_form(client, f"{CHANNELS}/{made.id}/test", page=CHANNELS).status_code == 302
    [queued] = deliveries_of(app, admin.tenant_id)
    events = audit_events(app, admin.tenant_id, "notification_channel.created")
    events += audit_events(app, admin.tenant_id, "notification_channel.tested")
    assert [(e.action, e.user_id, e.ip_address, e.details) for e in events] == [
        (
            "notification_channel.created",
            admin.user_ids["admin"],
            "203.0.113.7",
            {
                "channel_id": made.id,
                "kind": "email",
                "name": "ops@initech.example",
                "target": "ops@initech.example",
                "min_severity": "warning",
            },
        ),
        (
            "notification_channel.tested",
            admin.user_ids["admin"],
            "203.0.113.7",
            {"channel_id": made.id, "delivery_id": queued.id},
        ),
    ]
