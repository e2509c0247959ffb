"""From metered calls to a notice in an inbox: calls are refused with 429, the worker's
evaluate-alerts job opens an alert, deliver-notifications sends it to a real SMTP sink and a
webhook receiver that verifies the Standard Webhooks signature — and the resolved notice follows
when the condition is over. Only loopback receivers; the clock is passed, nothing sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from portal.alerts.evaluate import evaluate_alerts
from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import NotificationDelivery
from portal.notify.deliver import deliver_due
from portal.redis_store import get_redis
from tests.factories import new_tenant
from tests.notify_helpers import add_channel, app_config
from tests.receivers import SmtpSink, WebhookReceiver

NOW = datetime(2026, 11, 18, 12, 40, tzinfo=UTC)


def refused_calls(tenant_id: int, at: datetime, count: int) -> None:
    store_usage(
        [
            {
                "tenant_id": tenant_id,
                "service": "tollgate",
                "endpoint": "/api/v1/ping",
                "status_code": 429,
                "occurred_at": at,
                "idempotency_key": f"e2e-{at.timestamp()}-{i}",
            }
            for i in range(count)
        ]
    )
    db.session.commit()


def test_an_alert_reaches_email_and_a_signed_webhook_and_so_does_its_resolution(app, db):
    tenant = new_tenant(app, "Inbox Co", key=True)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with SmtpSink() as sink, WebhookReceiver(secret) as hook, app_config(app, SMTP_URL=sink.url):
        add_channel(tenant.tenant_id, "email", "ops@inbox.example")
        add_channel(tenant.tenant_id, "webhook", hook.url, secret=hook.secret)
        refused_calls(tenant.tenant_id, NOW - timedelta(minutes=3), 4)

        result = evaluate_alerts(get_redis(app), NOW)
        assert (result.triggered, result.notifications) == (1, 2)
        assert deliver_due(NOW)["sent"] == 2

        [mail] = sink.messages
        assert mail["Subject"].startswith("[WARNING]")
        assert "Rate-limited calls" in mail["Subject"]
        assert mail["Auto-Submitted"] == "auto-generated"
        [event] = hook.accepted
        assert event["type"] == "alert.triggered"
        assert event["data"]["alert"]["type"] == "rate_limited"
        assert event["data"]["alert"]["value"] == 4
        assert event["data"]["tenant"]["slug"] == tenant.slug

        # Two hours on the hour is clear; three passes later the alert resolves itself.
        later = NOW + timedelta(hours=2)
        for minutes in range(3):
            evaluate_alerts(get_redis(app), later + timedelta(minutes=minutes))
        assert deliver_due(later + timedelta(minutes=3))["sent"] == 2
        assert sink.messages[-1]["Subject"].startswith("[RESOLVED]")
        assert [e["type"] for e in hook.accepted] == ["alert.triggered", "alert.resolved"]
        assert len(set(hook.ids)) == 2  # one message id per notice
    statuses = db.session.scalars(select(NotificationDelivery.status)).all()
    assert statuses == ["sent"] * 4
