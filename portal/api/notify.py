"""The API's notification operations: channels (list, add, send a test) and the deliveries'
outcomes. Adding a channel and sending it a test are audited as in the portal, with the caller's
address and API key."""

from __future__ import annotations

from flask import g
from sqlalchemy import select

from ..extensions import db
from ..kernel.times import iso
from ..models import NotificationDelivery
from ..notify import channels as channel_domain
from ..notify.bodies import ChannelBody
from ..notify.deliver import send_test
from . import bp
from .guard import api_error
from .notify_bodies import DeliveriesQuery
from .operations import operation
from .views import caller, tenant_id, utcnow


def delivery_json(delivery: NotificationDelivery) -> dict:
    return {
        "id": delivery.id,
        "channel_id": delivery.channel_id,
        "alert_id": delivery.alert_id,
        "event_type": delivery.event_type,
        "message_id": delivery.message_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_error": delivery.last_error,
        "last_status_code": delivery.last_status_code,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_attempt_at": iso(delivery.last_attempt_at),
        "created_at": iso(delivery.created_at),
        "delivered_at": iso(delivery.delivered_at),
    }


@bp.get("/notification-channels")
@operation(
    "Notification channels (a webhook's secret shows as a hint; its URL in full to admin keys only)",
    category="system",
    tag="alerts",
    budget_exempt=True,
)
def list_notification_channels():
    channels = channel_domain.list_channels(tenant_id())
    full = g.api_call.entry.is_admin  # a usage key sees a webhook's URL shortened, as Slack's always is
    return {"success": True, "channels": [channel_domain.channel_json(c, full) for c in channels]}


@bp.post("/notification-channels")
@operation(
    "Add a notification channel (e-mail, Slack or a signed webhook)",
    category="system",
    tag="alerts",
    body=ChannelBody,
    scope="admin",
    status=201,
    budget_exempt=True,
    responses={409: "the account has as many channels as it may have"},
    description=ChannelBody.__doc__ or "",
)
def create_notification_channel(payload):
    try:
        channel, secret = channel_domain.create_channel(
            tenant_id(),
            payload.kind,
            payload.target,
            name=payload.name,
            secret=getattr(payload, "secret", None),
            min_severity=payload.min_severity,
            **caller(),
        )
    except channel_domain.TooManyChannels as error:
        db.session.rollback()
        return api_error(409, str(error))
    except channel_domain.ChannelError as error:
        db.session.rollback()
        return api_error(422, str(error))
    db.session.commit()
    body = {"success": True, "channel": channel_domain.channel_json(channel, full=True)}
    if secret is not None:
        body["secret"] = secret  # the only time it is answered
    return body, 201


@bp.post("/notification-channels/<record_id:channel_id>/test")
@operation(
    "Send a test notification through a channel now, and answer its outcome",
    category="system",
    tag="alerts",
    scope="admin",
    budget_exempt=True,
    responses={409: "the channel is turned off (the detail says why)"},
)
def test_notification_channel(channel_id: str):
    channel = channel_domain.get_channel(tenant_id(), int(channel_id)) if int(channel_id) < 2**31 else None
    if channel is None:
        return api_error(404, f"No notification channel {channel_id}")
    if not channel.is_active:
        reason = channel.disabled_reason or "deactivated"
        return api_error(409, f"Notification channel {channel.id} is turned off: {reason}")
    delivery = send_test(channel, utcnow(), asked_by=caller())
    return {
        "success": True,
        "delivered": delivery.status == "sent",
        "delivery": delivery_json(delivery),
        "channel": channel_domain.channel_json(db.session.get(type(channel), channel.id), full=True),
    }


@bp.get("/notification-deliveries")
@operation(
    "Notification deliveries, newest first: attempts, state and last error",
    category="system",
    tag="alerts",
    query=DeliveriesQuery,
    budget_exempt=True,
)
def list_notification_deliveries(params: DeliveriesQuery):
    d = NotificationDelivery
    query = select(d).where(d.tenant_id == tenant_id())
    if params.status:
        query = query.where(d.status == params.status)
    if params.channel_id is not None:
        query = query.where(d.channel_id == params.channel_id)
    deliveries = db.session.scalars(query.order_by(d.created_at.desc(), d.id.desc()).limit(params.limit))
    return {"success": True, "deliveries": [delivery_json(x) for x in deliveries], "limit": params.limit}
