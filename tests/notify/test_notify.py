"""Alert notifications delivered end to end to real receivers on this machine — an SMTP sink,
a signature-checking webhook endpoint, a Slack-shaped hook, one that never answers — with the
clock passed in, so retries and leases are tested without waiting for them."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from portal.models import NotificationChannel, NotificationDelivery, utcnow
from portal.notify.channels import generate_secret
from portal.notify.deliver import BACKOFF, LEASE, claim_due, deliver_due, send_test
from portal.notify.senders import sender_for
from tests.notify_helpers import NOW, add_channel, app_config, channel_row, delivery, raise_alert
from tests.receivers import Answer, SilentReceiver, SlackReceiver, SmtpSink, WebhookReceiver, free_port

NOTIFY_LOG = "tollgate.notify"


@pytest.fixture
def smtp(app):
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        yield sink


@pytest.fixture
def secret() -> str:
    return generate_secret()


@pytest.fixture
def webhook(secret):
    with WebhookReceiver(secret) as receiver:
        yield receiver


@pytest.fixture
def slack():
    with SlackReceiver() as receiver:
        yield receiver


# -- each channel end to end ----------------------------------------------------------------------
def test_an_email_has_a_text_and_an_html_part_and_a_subject_led_by_the_severity(db, tenant_id, smtp):
    add_channel(tenant_id, "email", "ops@example.com")
    [delivery_id] = raise_alert(tenant_id, "critical", "Error rate 12.5% above 10%")

    assert deliver_due(NOW) == {"claimed": 1, "sent": 1, "retrying": 0, "failed": 0, "lost": 0}

    [message] = smtp.messages
    assert message["Subject"] == "[CRITICAL] Error rate 12.5% above 10%"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["From"] == "tollgate@localhost" and message["To"] == "ops@example.com"
    sent = delivery(delivery_id)
    assert message["Message-ID"] == f"<{sent.message_id}@localhost>"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Error rate 12.5% above 10%" in text and "Threshold: 10" in text and "Value: 12.5" in text
    assert "<h1" in html and "Error rate 12.5% above 10%" in html
    assert "http://localhost/alerts/" in text and 'href="http://localhost/alerts/' in html
    assert smtp.envelopes == [("tollgate@localhost", ["ops@example.com"])]
    assert (sent.status, sent.attempts, sent.delivered_at, sent.last_error) == ("sent", 1, NOW, None)


def test_resolved_warning_and_test_emails_say_so_first(db, tenant_id, smtp):
    channel = add_channel(tenant_id, "email", "ops@example.com")
    raise_alert(tenant_id, "warning", "Daily request limit 85% used")
    raise_alert(tenant_id, "critical", "Monthly quota used up", event_type="alert.resolved")
    raise_alert(tenant_id, "critical", "Error rate 30%", event_type="alert.escalated")
    deliver_due(NOW)
    test = send_test(channel, NOW)

    subjects = sorted(m["Subject"] for m in smtp.messages)
    assert subjects == [
        "[CRITICAL] Escalated: Error rate 30%",
        "[RESOLVED] Monthly quota used up",
        "[TEST] Tollgate test notification (ops@example.com)",
        "[WARNING] Daily request limit 85% used",
    ]
    assert (test.event_type, test.status, test.alert_id) == ("test", "sent", None)


def test_an_email_the_server_defers_is_sent_again_with_the_same_message_id(db, tenant_id, smtp):
    add_channel(tenant_id, "email", "ops@example.com")
    [delivery_id] = raise_alert(tenant_id)
    smtp.refuse(1, "451 4.3.0 Mailbox busy, try again later")

    assert deliver_due(NOW)["retrying"] == 1
    deferred = delivery(delivery_id)
    assert (deferred.status, deferred.attempts, deferred.last_status_code) == ("pending", 1, 451)
    assert "451 4.3.0 Mailbox busy" in deferred.last_error
    assert deferred.next_attempt_at == NOW + timedelta(seconds=5)

    assert deliver_due(NOW + timedelta(seconds=5))["sent"] == 1
    assert len(smtp.offered) == 2 and smtp.offered[0] == smtp.offered[1]
    assert len(smtp.messages) == 1


def test_a_recipient_the_server_refuses_fails_at_once(db, tenant_id, app):
    add_channel(tenant_id, "email", "nobody@example.com")
    [delivery_id] = raise_alert(tenant_id)

    class Refusing(SmtpSink):
        async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
            return "550 5.1.1 No such user"

    with Refusing() as sink, app_config(app, SMTP_URL=sink.url):
        assert deliver_due(NOW)["failed"] == 1
    refused = delivery(delivery_id)
    assert (refused.status, refused.attempts, refused.last_status_code) == ("failed", 1, 550)
    assert "refused nobody@example.com: 550 5.1.1 No such user" in refused.last_error


def test_without_smtp_url_an_email_waits_for_one(db, tenant_id, app):
    add_channel(tenant_id, "email", "ops@example.com")
    [delivery_id] = raise_alert(tenant_id)
    with app_config(app, SMTP_URL=None):
        assert deliver_due(NOW)["retrying"] == 1
    assert "SMTP_URL is not set" in delivery(delivery_id).last_error


def test_slack_gets_text_and_blocks(db, tenant_id, slack):
    add_channel(tenant_id, "slack", slack.url, name="#ops")
    [delivery_id] = raise_alert(tenant_id, "warning", "p95 response time 1,250 ms above 1,000 ms")

    assert deliver_due(NOW)["sent"] == 1

    [message] = slack.messages
    assert message["text"] == "[WARNING] p95 response time 1,250 ms above 1,000 ms"
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["header", "section", "section", "context", "actions"]
    assert "[WARNING] p95 response time" in message["blocks"][0]["text"]["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in message["blocks"][2]["fields"]}
    assert fields["*Severity*"] == "warning" and fields["*Threshold*"] == "10"
    assert message["blocks"][4]["elements"][0]["url"].startswith("http://localhost/alerts/")
    assert slack.received[0].headers["content-type"] == "application/json"
    assert delivery(delivery_id).last_status_code == 200


def test_a_webhook_is_signed_and_a_replay_is_refused_by_the_receiver(db, tenant_id, webhook, secret):
    add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    [delivery_id] = raise_alert(tenant_id, "critical")

    assert deliver_due(NOW)["sent"] == 1

    [event] = webhook.accepted
    assert event["type"] == "alert.triggered"
    assert event["data"]["alert"]["severity"] == "critical" and event["data"]["alert"]["value"] == 12.5
    assert event["data"]["tenant"]["name"] == "Acme Co"
    [request] = webhook.received
    sent = delivery(delivery_id)
    assert request.headers["webhook-id"] == sent.message_id
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.json == sent.payload  # the body is the stored event, exactly
    assert sent.last_status_code == 204

    # Someone who captured the request sends it again: signed, but a repeat, so dropped.
    again = requests.post(webhook.url, data=request.body, headers=request.headers, timeout=5)
    assert again.status_code == 200 and webhook.repeats == [sent.message_id]
    # With the body changed the signature no longer matches.
    forged = requests.post(webhook.url, data=request.body.replace(b"critical", b"warning"), headers=request.headers)
    assert forged.status_code == 401
    assert len(webhook.accepted) == 1


# -- which channels hear of what ------------------------------------------------------------------
def test_a_channel_hears_only_of_alerts_at_least_as_severe_as_it_asks(db, tenant_id, webhook, secret, slack):
    add_channel(tenant_id, "webhook", webhook.url, secret=secret, min_severity="warning")
    add_channel(tenant_id, "slack", slack.url, min_severity="critical")

    assert len(raise_alert(tenant_id, "warning", "Usage spike")) == 1
    assert len(raise_alert(tenant_id, "critical", "Monthly quota used up")) == 2
    deliver_due(NOW)

    assert [e["data"]["alert"]["title"] for e in webhook.accepted] == ["Usage spike", "Monthly quota used up"]
    assert [m["text"] for m in slack.messages] == ["[CRITICAL] Monthly quota used up"]


# -- retries --------------------------------------------------------------------------------------
def test_a_receiver_that_fails_and_recovers_gets_the_message_after_5_s_and_5_min(
    db, tenant_id, webhook, secret, caplog
):
    add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    [delivery_id] = raise_alert(tenant_id)
    webhook.then(Answer(500, "database down"), Answer(503, "still down"))
    caplog.set_level(logging.WARNING, logger=NOTIFY_LOG)

    assert deliver_due(NOW)["retrying"] == 1
    first = delivery(delivery_id)
    assert (first.attempts, first.last_status_code, first.next_attempt_at) == (1, 500, NOW + timedelta(seconds=5))
    assert first.last_error == "The webhook answered 500 database down"

    assert deliver_due(NOW + timedelta(seconds=4))["claimed"] == 0  # not due yet
    later = NOW + timedelta(seconds=5)
    assert deliver_due(later)["retrying"] == 1
    assert delivery(delivery_id).next_attempt_at == later + timedelta(minutes=5)

    assert deliver_due(later + timedelta(minutes=5))["sent"] == 1
    done = delivery(delivery_id)
    assert (done.status, done.attempts, done.last_error, done.delivered_at) == (
        "sent",
        3,
        None,
        later + timedelta(minutes=5),
    )
    assert len(set(webhook.ids)) == 1 and len(webhook.accepted) == 1
    warnings = [r for r in caplog.records if r.name == NOTIFY_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "attempt 1 of 6 failed: The webhook answered 500 database down" in warnings[0].getMessage()


def test_slack_429_waits_for_retry_after_when_it_is_longer_than_the_backoff(db, tenant_id, slack):
    add_channel(tenant_id, "slack", slack.url)
    [slow, quick] = [raise_alert(tenant_id)[0], raise_alert(tenant_id)[0]]
    slack.then(slack.rate_limited(600), slack.rate_limited(1))

    assert deliver_due(NOW)["retrying"] == 2
    assert delivery(slow).next_attempt_at == NOW + timedelta(seconds=600)
    assert delivery(quick).next_attempt_at == NOW + timedelta(seconds=5)
    assert delivery(slow).last_error == "Slack answered 429 rate_limited" and delivery(slow).last_status_code == 429


def test_a_receiver_that_never_answers_times_out_and_is_tried_again(db, app, tenant_id):
    with SilentReceiver() as silent, app_config(app, NOTIFY_READ_TIMEOUT=1):
        add_channel(tenant_id, "slack", silent.url)
        [delivery_id] = raise_alert(tenant_id)
        assert deliver_due(NOW)["retrying"] == 1
    timed_out = delivery(delivery_id)
    assert timed_out.last_error.startswith("timed out: ReadTimeout")
    assert (timed_out.status, timed_out.last_status_code) == ("pending", None)
    assert timed_out.next_attempt_at == NOW + timedelta(seconds=5)


def test_a_receiver_that_is_down_is_tried_again(db, tenant_id):
    add_channel(tenant_id, "webhook", f"http://127.0.0.1:{free_port()}/hook", secret=generate_secret())
    [delivery_id] = raise_alert(tenant_id)
    assert deliver_due(NOW)["retrying"] == 1
    assert delivery(delivery_id).last_error.startswith("could not connect")


def test_after_the_last_backoff_the_delivery_has_failed_for_good(db, tenant_id, slack, caplog):
    add_channel(tenant_id, "slack", slack.url)
    [delivery_id] = raise_alert(tenant_id)
    slack.default = SlackReceiver.ERROR
    caplog.set_level(logging.WARNING, logger=NOTIFY_LOG)

    at = NOW
    for wait in BACKOFF:  # 5 s, 5 min, 30 min, 2 h, 5 h
        assert deliver_due(at)["retrying"] == 1
        assert delivery(delivery_id).next_attempt_at == at + wait
        at += wait
    assert deliver_due(at)["failed"] == 1

    failed = delivery(delivery_id)
    assert (failed.status, failed.attempts, failed.last_status_code) == ("failed", 6, 500)
    assert failed.last_error == "Slack answered 500 internal_error (gave up after 6 attempts)"
    assert deliver_due(at + timedelta(days=1))["claimed"] == 0
    assert len(slack.received) == 6
    levels = [r.levelno for r in caplog.records if r.name == NOTIFY_LOG]
    assert levels == [logging.WARNING] * 5 + [logging.ERROR]


def test_other_4xx_answers_are_final_and_leave_the_channel_on(db, tenant_id, webhook, secret):
    channel = add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    [delivery_id] = raise_alert(tenant_id)
    webhook.then(Answer(400, "unknown event type"))

    assert deliver_due(NOW)["failed"] == 1
    refused = delivery(delivery_id)
    assert (refused.attempts, refused.last_status_code) == (1, 400)
    assert refused.last_error == "The webhook answered 400 unknown event type"
    assert channel_row(channel.id).is_active is True


def test_a_redirect_is_not_followed(db, tenant_id, webhook, secret):
    add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    [delivery_id] = raise_alert(tenant_id)
    webhook.then(Answer(302, "", {"Location": "http://169.254.169.254/latest/meta-data/"}))

    assert deliver_due(NOW)["failed"] == 1
    redirected = delivery(delivery_id)
    assert redirected.last_status_code == 302
    assert redirected.last_error == (
        "The webhook answered 302: a redirect to http://169.254.169.254/latest/meta-data/, "
        "which Tollgate does not follow; update the URL"
    )
    assert len(webhook.received) == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (SlackReceiver.CHANNEL_NOT_FOUND, "Slack answered 404 channel_not_found"),
        (SlackReceiver.ARCHIVED, "Slack answered 410 channel_is_archived"),
    ],
)
def test_slack_channel_not_found_or_archived_turns_the_channel_off(db, tenant_id, slack, answer, reason):
    channel = add_channel(tenant_id, "slack", slack.url)
    [first] = raise_alert(tenant_id)
    [waiting] = raise_alert(tenant_id, at=NOW + timedelta(minutes=1))
    slack.then(answer)

    assert deliver_due(NOW)["failed"] == 1

    off = channel_row(channel.id)
    assert (off.is_active, off.disabled_reason, off.disabled_at) == (False, reason, NOW)
    assert delivery(first).last_error == reason and delivery(first).last_status_code == answer.status
    # What was still waiting for the channel fails with it, unsent; new alerts skip it.
    assert delivery(waiting).status == "failed" and reason in delivery(waiting).last_error
    assert raise_alert(tenant_id) == []
    assert deliver_due(NOW + timedelta(hours=1))["claimed"] == 0
    assert len(slack.received) == 1


def test_a_webhook_that_is_gone_turns_the_channel_off(db, tenant_id, webhook, secret):
    channel = add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    raise_alert(tenant_id)
    webhook.then(Answer(410, "endpoint deleted"))
    assert deliver_due(NOW)["failed"] == 1
    assert channel_row(channel.id).disabled_reason == "The webhook answered 410 endpoint deleted"


def test_a_turned_off_channels_pending_deliveries_fail_unsent(db, tenant_id, slack):
    channel = add_channel(tenant_id, "slack", slack.url)
    [delivery_id] = raise_alert(tenant_id)
    row = channel_row(channel.id)
    row.is_active, row.disabled_reason, row.disabled_at = False, "turned off by the tenant", NOW
    db.session.commit()

    assert deliver_due(NOW)["failed"] == 1
    unsent = delivery(delivery_id)
    assert (unsent.status, unsent.attempts) == ("failed", 0)
    assert unsent.last_error == "not sent: the channel is turned off: turned off by the tenant"
    assert slack.received == []


# -- at least once, never twice at a time ---------------------------------------------------------
def test_a_worker_killed_mid_send_is_covered_by_the_lease_and_the_receiver_drops_the_repeat(
    db, tenant_id, webhook, secret
):
    channel = add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    [delivery_id] = raise_alert(tenant_id)

    # A worker claims the row and sends it, then dies before recording the attempt.
    claim = claim_due(NOW)
    assert claim.ids == [delivery_id] and claim.until == NOW + LEASE
    row = delivery(delivery_id)
    assert sender_for("webhook").send(channel_row(channel.id), row).delivered

    # While the lease holds, no other worker sends it.
    assert deliver_due(NOW + timedelta(seconds=30))["claimed"] == 0
    # When it has run out, the row is due again and goes out with the same message id.
    assert deliver_due(NOW + LEASE + timedelta(seconds=1))["sent"] == 1

    assert webhook.ids == [row.message_id, row.message_id]
    assert webhook.repeats == [row.message_id] and len(webhook.accepted) == 1
    done = delivery(delivery_id)
    assert (done.status, done.attempts, done.locked_until) == ("sent", 1, None)


def test_a_late_worker_does_not_overwrite_what_the_next_one_recorded(db, tenant_id, webhook, secret):
    from portal.notify.base import Outcome
    from portal.notify.deliver import record

    channel = add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    [delivery_id] = raise_alert(tenant_id)
    stale = claim_due(NOW)
    assert deliver_due(NOW + LEASE + timedelta(seconds=1))["sent"] == 1
    # The first worker wakes up after its lease and tries to record a failure.
    late = record(delivery(delivery_id), channel_row(channel.id), Outcome.final("late"), stale.until, NOW)
    assert late == "lost"
    assert delivery(delivery_id).status == "sent"


def test_two_workers_claiming_at_once_never_share_a_row(app, db, tenant_id, webhook, secret):
    add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    ids = {raise_alert(tenant_id)[0] for _ in range(12)}
    start = threading.Barrier(2)
    claimed: list[list[int]] = []

    def worker():
        with app.app_context():
            start.wait()
            claimed.append(claim_due(NOW, limit=12).ids)
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    first, second = claimed
    assert not set(first) & set(second)
    assert set(first) | set(second) == ids


def test_deliver_due_runs_on_the_wall_clock_with_no_arguments(db, tenant_id, webhook, secret):
    add_channel(tenant_id, "webhook", webhook.url, secret=secret)
    raise_alert(tenant_id, at=utcnow())
    result = deliver_due()
    assert result["sent"] == 1 and len(webhook.accepted) == 1


# -- addresses refused when sent ------------------------------------------------------------------
@pytest.fixture
def public_only(app):
    with app_config(app, ALLOW_PRIVATE_WEBHOOKS=False):
        yield


@pytest.mark.parametrize("kind", ["slack", "webhook"])
@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("10.0.0.1", "10.0.0.1 is a private"),
        ("127.0.0.1", "127.0.0.1 is a private"),
        ("169.254.169.254", "169.254.169.254 is a private"),
        ("[::1]", "::1 is a private"),
        ("localhost", "localhost resolves to 127.0.0.1, which is a private"),
    ],
)
def test_a_private_address_saved_earlier_is_refused_when_sent(db, tenant_id, public_only, webhook, kind, host, shown):
    # Saved directly, as a channel made before the check (or under other settings) would be.
    db.session.add(
        NotificationChannel(
            tenant_id=tenant_id,
            kind=kind,
            name="internal",
            target=f"http://{host}:{webhook.port}/hook",
            signing_secret=webhook.secret,
        )
    )
    db.session.commit()
    [delivery_id] = raise_alert(tenant_id)

    assert deliver_due(NOW)["failed"] == 1
    refused = delivery(delivery_id)
    assert (refused.status, refused.attempts, refused.last_status_code) == ("failed", 1, None)
    assert refused.last_error.startswith(f"not sent: {shown}")
    assert "public addresses only" in refused.last_error
    assert webhook.received == []  # the receiver on 127.0.0.1 was never reached


def test_send_test_makes_one_attempt_and_answers_its_outcome(db, tenant_id, webhook, secret, slack):
    hook = add_channel(tenant_id, "webhook", webhook.url, secret=secret, name="Ops hook")
    test = send_test(hook, NOW)
    assert (test.status, test.attempts, test.event_type) == ("sent", 1, "test")
    [event] = webhook.accepted
    assert event["type"] == "test" and event["data"]["channel"] == {
        "id": hook.id,
        "kind": "webhook",
        "name": "Ops hook",
    }

    broken = add_channel(tenant_id, "slack", slack.url)
    slack.then(SlackReceiver.ERROR)
    failed = send_test(broken, NOW)
    # A test is not retried later: the answer is now.
    assert (failed.status, failed.attempts, failed.last_error) == ("failed", 1, "Slack answered 500 internal_error")
    assert db.session.scalar(select(NotificationDelivery.id).where(NotificationDelivery.status == "pending")) is None
