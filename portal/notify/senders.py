"""The sender of each channel kind (one small module per channel, one interface)."""

from __future__ import annotations

from .base import Sender
from .email import EmailSender
from .slack import SlackSender
from .webhook import WebhookSender

SENDERS: dict[str, Sender] = {sender.kind: sender for sender in (EmailSender(), SlackSender(), WebhookSender())}


def sender_for(kind: str) -> Sender:
    try:
        return SENDERS[kind]
    except KeyError:
        raise LookupError(f"no sender for channel kind {kind!r}") from None
