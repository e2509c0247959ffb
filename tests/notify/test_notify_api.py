"""Notification channels through the JSON API: adding channels, their secrets shown once, test
sends, the deliveries' outcomes; admin scope, tenant isolation and validation."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import AuditEvent
from portal.notify.channels import SECRET, generate_secret
from tests.api_helpers import add_key, drain
from tests.factories import new_tenant
from tests.notify_helpers import app_config
from tests.receivers import SlackReceiver, WebhookReceiver

# -- the API --------------------------------------------------------------------------------------
CHANNELS = "/api/v1/notification-channels"
DELIVERIES = "/api/v1/notification-deliveries"


@pytest.fixture
def admin(app, acme) -> dict[str, str]:
    _, secret = add_key(app, acme.tenant_id, "admin", scope="admin")
    return {"X-API-Key": secret}


@pytest.fixture
def slack():
    with SlackReceiver() as receiver:
        yield receiver


def test_a_usage_key_lists_channels_but_only_an_admin_key_adds_or_tests_them(client, acme, admin, slack):
    body = {"kind": "slack", "target": slack.url}
    refused = client.post(CHANNELS, json=body, headers=acme.headers)
    assert refused.status_code == 403 and "admin scope" in refused.json["detail"]
    made = client.post(CHANNELS, json=body, headers=admin)
    assert made.status_code == 201
    channel_id = made.json["channel"]["id"]
    assert client.post(f"{CHANNELS}/{channel_id}/test", headers=acme.headers).status_code == 403
    listed = client.get(CHANNELS, headers=acme.headers)
    assert listed.status_code == 200 and [c["id"] for c in listed.json["channels"]] == [channel_id]


def test_a_webhook_channels_secret_is_answered_once_and_then_only_hinted(client, acme, admin):
    made = client.post(
        CHANNELS,
        json={"kind": "webhook", "target": "http://127.0.0.1:9/hook", "name": "Ops hook", "min_severity": "critical"},
        headers=admin,
    )
    assert made.status_code == 201 and made.json["success"] is True
    secret = made.json["secret"]
    assert re.fullmatch(SECRET, secret)
    channel = made.json["channel"]
    assert channel == {
        "id": channel["id"],
        "kind": "webhook",
        "name": "Ops hook",
        "target": "http://127.0.0.1:9/hook",
        "min_severity": "critical",
        "is_active": True,
        "disabled_reason": None,
        "disabled_at": None,
        "secret_hint": f"whsec_…{secret[-4:]}",
        "created_at": channel["created_at"],
    }
    listed = client.get(CHANNELS, headers=admin)
    assert secret not in listed.text and listed.json["channels"][0]["secret_hint"] == f"whsec_…{secret[-4:]}"
    email = client.post(CHANNELS, json={"kind": "email", "target": "ops@example.com"}, headers=admin)
    assert email.status_code == 201 and "secret" not in email.json


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "kind: Field required"),
        ({"kind": "sms", "target": "+15550100"}, "kind: Input should be 'email', 'slack' or 'webhook'"),
        ({"kind": "email"}, "target: Field required"),
        ({"kind": "email", "target": "not-an-address"}, "target: expected an e-mail address"),
        ({"kind": "email", "target": "ops@example.com", "secret": "whsec_x"}, "secret: Extra inputs"),
        ({"kind": "webhook", "target": "http://127.0.0.1:9/", "secret": "nope"}, "secret: expected a Standard"),
        ({"kind": "webhook", "target": "http://127.0.0.1:9/", "min_severity": "info"}, "min_severity: Input should"),
        ({"kind": "slack", "target": "gopher://127.0.0.1/"}, "target: must be an http:// or https:// URL"),
        ({"kind": "slack", "target": "http://127.0.0.1/", "name": "n" * 121}, "name: String should have at most"),
        ([], "body: Input should be a valid dictionary"),
    ],
)
def test_an_invalid_channel_is_refused_with_422_naming_the_field(client, admin, body, detail):
    response = client.post(CHANNELS, json=body, headers=admin)
    assert response.status_code == 422, response.json
    assert response.json["detail"].startswith(detail)


def test_a_private_address_is_refused_with_422_when_they_are_not_allowed(app, client, admin):
    with app_config(app, ALLOW_PRIVATE_WEBHOOKS=False):
        response = client.post(CHANNELS, json={"kind": "webhook", "target": "http://10.0.0.1/hook"}, headers=admin)
    assert response.status_code == 422
    assert response.json["detail"].startswith("target: 10.0.0.1 is a private")


def test_a_test_send_answers_its_outcome_and_shows_in_the_deliveries(client, acme, admin, slack):
    channel_id = client.post(CHANNELS, json={"kind": "slack", "target": slack.url}, headers=admin).json["channel"]["id"]
    sent = client.post(f"{CHANNELS}/{channel_id}/test", headers=admin)
    assert sent.status_code == 200 and sent.json["delivered"] is True
    delivery = sent.json["delivery"]
    assert (delivery["status"], delivery["attempts"], delivery["event_type"]) == ("sent", 1, "test")
    assert slack.messages[0]["text"].startswith("[TEST] Tollgate test notification")

    slack.then(SlackReceiver.INVALID_PAYLOAD)
    failed = client.post(f"{CHANNELS}/{channel_id}/test", headers=admin).json
    assert failed["delivered"] is False
    assert (failed["delivery"]["status"], failed["delivery"]["last_error"]) == (
        "failed",
        "Slack answered 400 invalid_payload",
    )
    assert failed["delivery"]["last_status_code"] == 400

    listed = client.get(DELIVERIES, headers=acme.headers).json["deliveries"]
    assert [d["status"] for d in listed] == ["failed", "sent"]  # newest first
    assert set(listed[0]) == {
        "id",
        "channel_id",
        "alert_id",
        "event_type",
        "message_id",
        "status",
        "attempts",
        "last_error",
        "last_status_code",
        "next_attempt_at",
        "last_attempt_at",
        "created_at",
        "delivered_at",
    }
    only_sent = client.get(DELIVERIES, query_string={"status": "sent"}, headers=acme.headers).json["deliveries"]
    assert [d["message_id"] for d in only_sent] == [delivery["message_id"]]
    limited = client.get(DELIVERIES, query_string={"limit": 1, "channel_id": channel_id}, headers=acme.headers)
    assert len(limited.json["deliveries"]) == 1 and limited.json["limit"] == 1
    other_channel = client.get(DELIVERIES, query_string={"channel_id": channel_id + 1}, headers=acme.headers)
    assert other_channel.json["deliveries"] == []


def test_a_turned_off_channel_answers_409_to_a_test(client, admin, slack):
    channel_id = client.post(CHANNELS, json={"kind": "slack", "target": slack.url}, headers=admin).json["channel"]["id"]
    slack.then(SlackReceiver.CHANNEL_NOT_FOUND)
    first = client.post(f"{CHANNELS}/{channel_id}/test", headers=admin).json
    assert first["channel"]["is_active"] is False
    assert first["channel"]["disabled_reason"] == "Slack answered 404 channel_not_found"
    again = client.post(f"{CHANNELS}/{channel_id}/test", headers=admin)
    assert again.status_code == 409
    assert (
        again.json["detail"] == f"Notification channel {channel_id} is turned off: Slack answered 404 channel_not_found"
    )


def test_another_tenants_channels_and_deliveries_are_out_of_reach(app, client, admin):
    other = new_tenant(app, "Other Co", key=True)
    _, other_admin = add_key(app, other.tenant_id, "admin", scope="admin")
    theirs = {"X-API-Key": other_admin}
    secret = generate_secret()
    with WebhookReceiver(secret) as receiver:
        made = client.post(CHANNELS, json={"kind": "webhook", "target": receiver.url, "secret": secret}, headers=theirs)
        their_id = made.json["channel"]["id"]
        assert client.post(f"{CHANNELS}/{their_id}/test", headers=theirs).json["delivered"] is True
        assert client.post(f"{CHANNELS}/{their_id}/test", headers=admin).status_code == 404
        assert len(receiver.accepted) == 1
    assert client.post(f"{CHANNELS}/9999999999/test", headers=admin).status_code == 404
    assert client.get(CHANNELS, headers=admin).json["channels"] == []
    assert client.get(DELIVERIES, headers=admin).json["deliveries"] == []
    assert client.get(DELIVERIES, query_string={"channel_id": their_id}, headers=admin).json["deliveries"] == []
    drain(app)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"limit": 201}, "limit"),
        ({"limit": 0}, "limit"),
        ({"channel_id": "abc"}, "channel_id"),
        ({"channel_id": "8_0"}, "channel_id"),
        ({"channel_id": 0}, "channel_id"),
        ({"status": "lost"}, "status"),
    ],
)
def test_bad_delivery_filters_are_refused_naming_them(client, acme, query, name):
    response = client.get(DELIVERIES, query_string=query, headers=acme.headers)
    assert response.status_code == 422 and response.json["detail"].startswith(f"{name}: ")


def test_the_openapi_document_describes_the_notification_operations(client):
    document = client.get("/api/v1/openapi.json").json
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/notification-channels"])
    assert "409" in paths["/api/v1/notification-channels/{channel_id}/test"]["post"]["responses"]
    deliveries = {p["name"] for p in paths["/api/v1/notification-deliveries"]["get"]["parameters"]}
    assert deliveries == {"status", "channel_id", "limit"}
    body = paths["/api/v1/notification-channels"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "kind"
    webhook = document["components"]["schemas"]["WebhookChannel"]
    assert webhook["properties"]["secret"]["pattern"] == f"^{SECRET}$"
    assert webhook["additionalProperties"] is False


def channel_events(app, tenant_id: int) -> list[tuple]:
    with app.app_context():
        query = select(AuditEvent).where(
            AuditEvent.tenant_id == tenant_id, AuditEvent.action.like("notification_channel.%")
        )
        rows = [
            (e.action, e.user_id, e.ip_address, e.details) for e in _db.session.scalars(query.order_by(AuditEvent.id))
        ]
        _db.session.remove()
    return rows


def test_adding_and_testing_a_channel_through_the_api_write_one_audit_event_each(app, client, acme, slack):
    key_id, secret = add_key(app, acme.tenant_id, "automation", scope="admin")
    admin = {"X-API-Key": secret}
    made = client.post(CHANNELS, json={"kind": "slack", "target": slack.url, "name": "Ops"}, headers=admin)
    assert made.status_code == 201
    channel = made.json["channel"]
    [created] = channel_events(app, acme.tenant_id)
    assert created == (
        "notification_channel.created",
        None,
        "127.0.0.1",
        {
            "channel_id": channel["id"],
            "kind": "slack",
            "name": "Ops",
            "target": channel["target"],  # a Slack hook's end only, as listed
            "min_severity": "warning",
            "api_key_id": key_id,
        },
    )
    assert slack.url not in str(created)
    sent = client.post(f"{CHANNELS}/{channel['id']}/test", headers=admin)
    assert sent.status_code == 200 and sent.json["delivered"] is True
    assert channel_events(app, acme.tenant_id)[1:] == [
        (
            "notification_channel.tested",
            None,
            "127.0.0.1",
            {"channel_id": channel["id"], "delivery_id": sent.json["delivery"]["id"], "api_key_id": key_id},
        )
    ]


def test_a_refused_channel_or_test_through_the_api_writes_no_audit_event(app, client, acme, admin, slack):
    assert client.post(CHANNELS, json={"kind": "email", "target": "nope"}, headers=admin).status_code == 422
    channel_id = client.post(CHANNELS, json={"kind": "slack", "target": slack.url}, headers=admin).json["channel"]["id"]
    slack.then(SlackReceiver.CHANNEL_NOT_FOUND)
    assert client.post(f"{CHANNELS}/{channel_id}/test", headers=admin).status_code == 200  # turns it off
    assert client.post(f"{CHANNELS}/{channel_id}/test", headers=admin).status_code == 409
    actions = [event[0] for event in channel_events(app, acme.tenant_id)]
    assert actions == ["notification_channel.created", "notification_channel.tested"]
