"""Signed webhooks, as the Standard Webhooks specification says: the body is the event's JSON;
``webhook-id`` is the delivery's message_id (the same on every attempt, so a receiver drops a
repeat), ``webhook-timestamp`` the attempt's time, ``webhook-signature`` ``v1,<base64 HMAC-SHA256
of "id.timestamp.body">``. 2xx is delivered; 429 and 5xx are retried; 410 turns the channel off."""

from __future__ import annotations

import binascii
import json
from datetime import UTC, datetime
from math import floor

from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from ..models import NotificationChannel, NotificationDelivery
from .base import Answer, Outcome, http_outcome, post

GONE = frozenset({410})


def webhook_body(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))


def signed_headers(secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of ``body``, signed at ``at`` (the wall clock: receivers
    refuse a timestamp more than five minutes away from theirs)."""
    at = at.astimezone(UTC)  # sign() reads the time as UTC whatever zone it carries
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(floor(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }


class WebhookSender:
    kind = "webhook"

    def send(self, channel: NotificationChannel, delivery: NotificationDelivery) -> Outcome:
        body = webhook_body(delivery.payload)
        try:
            headers = signed_headers(channel.signing_secret or "", delivery.message_id, body, datetime.now(UTC))
        except (binascii.Error, EmptyWebhookSecretError) as bad:
            return Outcome.final(f"not sent: the channel's signing secret is unusable ({bad.__class__.__name__})")
        headers["Content-Type"] = "application/json"
        answer = post(channel.target, body.encode(), headers)
        if not isinstance(answer, Answer):
            return answer
        return http_outcome("The webhook", answer, GONE)
