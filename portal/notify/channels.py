"""A tenant's notification channels: an e-mail address, a Slack incoming webhook or a signed
webhook, each with the least severity it is told about.

The rules for a target are written once here as patterns (the API's document states the same
ones): with ``ALLOW_PRIVATE_WEBHOOKS`` off, a Slack target is a Slack hooks URL and a webhook
target an http(s) URL with a public host name; with it on, any http(s) URL will do (a receiver
on this machine). Either way a target's address is checked again on every send.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
from datetime import datetime
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.times import iso
from ..models import NotificationChannel, NotificationDelivery
from ..models.alerts import CHANNEL_KINDS, SEVERITIES
from .addresses import AddressRefused, check_address, private_allowed
from .base import masked_url

log = logging.getLogger("tollgate.notify")

MAX_CHANNELS = 50
MAX_URL = 500
MAX_EMAIL = 254
MAX_NAME = 120

# A DNS label with single hyphens only ("ab--c" is not a valid name), a top-level label that
# starts and ends with a letter, and at most four labels before it.
_LABEL = r"[A-Za-z0-9]{1,15}(?:-[A-Za-z0-9]{1,15}){0,2}"
_TLD = r"[A-Za-z][A-Za-z0-9]{0,18}[A-Za-z]"
HOST_NAME = rf"(?:{_LABEL}\.){{1,4}}{_TLD}"
_PORT = r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
_PCHAR = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})"
_PATH = rf"(?:/{_PCHAR}*)?(?:\?(?:{_PCHAR}|\?)*)?"
WEBHOOK_URL = rf"https?://{HOST_NAME}{_PORT}{_PATH}"
SLACK_URL = r"https://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{1,400}"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}"
EMAIL = rf"{_ATOM}(?:\.{_ATOM}){{0,2}}@(?:{_LABEL}\.){{1,3}}{_TLD}"
# 24 to 62 bytes of key in base64 (Standard Webhooks asks for 24 to 64).
SECRET = r"whsec_(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"


class ChannelError(ValueError):
    """A channel's field is invalid; the message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class TooManyChannels(ChannelError):
    pass


def generate_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str | None) -> str | None:
    return None if not secret else f"whsec_…{secret[-4:]}"


def shown_target(channel: NotificationChannel, full: bool = False) -> str:
    """The target as listed. A Slack hook URL is itself a credential, so only its end ever shows;
    a webhook URL shows whole only with ``full`` (to admins and admin-scope keys)."""
    if channel.kind == "slack" or (channel.kind == "webhook" and not full):
        return masked_url(channel.target)
    return channel.target


def check_email(target: str) -> str:
    if len(target) > MAX_EMAIL or not re.fullmatch(EMAIL, target):
        raise ChannelError("target", "expected an e-mail address such as ops@example.com")
    try:
        return validate_email(target, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise ChannelError("target", f"not a usable e-mail address: {error}") from None


def check_hook_url(kind: str, target: str) -> str:
    """A Slack or webhook target, refused if it is not http(s) or points at an internal address."""
    if len(target) > MAX_URL:
        raise ChannelError("target", f"at most {MAX_URL} characters")
    if re.search(r"[\s\x00-\x1f\x7f]", target):
        raise ChannelError("target", "a URL has no spaces or control characters")
    try:
        check_address(target)
    except AddressRefused as refused:
        raise ChannelError("target", str(refused)) from None
    if private_allowed():
        return target
    if kind == "slack" and not re.fullmatch(SLACK_URL, target):
        raise ChannelError("target", "expected a Slack incoming-webhook URL, https://hooks.slack.com/services/…")
    if kind == "webhook" and not re.fullmatch(WEBHOOK_URL, target):
        raise ChannelError(
            "target", "expected an http(s) URL with a public host name, e.g. https://hooks.example.com/tollgate"
        )
    return target


def check_target(kind: str, target: str) -> str:
    """``target`` as stored for a channel of ``kind``; raises :class:`ChannelError`."""
    if kind not in CHANNEL_KINDS:
        raise ChannelError("kind", "expected email, slack or webhook")
    if not isinstance(target, str) or not target.strip():
        raise ChannelError("target", "required")
    target = target.strip()
    return check_email(target) if kind == "email" else check_hook_url(kind, target)


def check_secret(secret: str) -> str:
    if not re.fullmatch(SECRET, secret):
        raise ChannelError(
            "secret", "expected a Standard Webhooks secret: whsec_ and 24 to 62 bytes in base64 (padded)"
        )
    return secret


def default_name(kind: str, target: str) -> str:
    if kind == "email":
        return target
    if kind == "slack":
        return "Slack"
    return urlsplit(target).hostname or "Webhook"


def create_channel(
    tenant_id: int,
    kind: str,
    target: str,
    *,
    name: str | None = None,
    secret: str | None = None,
    min_severity: str = "warning",
    user_id: int | None = None,
    ip_address: str | None = None,
    api_key_id: int | None = None,
) -> tuple[NotificationChannel, str | None]:
    """Add a channel and audit it with who added it (``user_id``; through the API none, and the
    ``api_key_id`` it came with) and from where; the caller commits. Returns the channel and, for
    a webhook, its signing secret (generated when none is given) — the only time the secret is
    handed out (it is never in the audit event; a Slack target shows as in the list)."""
    target = check_target(kind, target)
    if min_severity not in SEVERITIES:
        raise ChannelError("min_severity", "expected warning or critical")
    if kind != "webhook" and secret is not None:
        raise ChannelError("secret", "only a webhook channel has a signing secret")
    if kind == "webhook":
        secret = generate_secret() if secret is None else check_secret(secret)
    name = " ".join((name or "").split())
    if len(name) > MAX_NAME:
        raise ChannelError("name", f"at most {MAX_NAME} characters")
    count = db.session.scalar(
        select(func.count()).select_from(NotificationChannel).where(NotificationChannel.tenant_id == tenant_id)
    )
    if count >= MAX_CHANNELS:
        raise TooManyChannels("channels", f"a tenant has at most {MAX_CHANNELS} notification channels")
    channel = NotificationChannel(
        tenant_id=tenant_id,
        kind=kind,
        name=name or default_name(kind, target)[:MAX_NAME],
        target=target,
        signing_secret=secret,
        min_severity=min_severity,
        is_active=True,
    )
    db.session.add(channel)
    db.session.flush()
    record_event(
        "notification_channel.created",
        tenant_id,
        user_id,
        ip_address,
        channel_id=channel.id,
        kind=channel.kind,
        name=channel.name,
        target=shown_target(channel),
        min_severity=channel.min_severity,
        **({} if api_key_id is None else {"api_key_id": api_key_id}),
    )
    return channel, secret


def list_channels(tenant_id: int) -> list[NotificationChannel]:
    return list(
        db.session.scalars(
            select(NotificationChannel)
            .where(NotificationChannel.tenant_id == tenant_id)
            .order_by(NotificationChannel.id)
        )
    )


def get_channel(tenant_id: int, channel_id: int) -> NotificationChannel | None:
    channel = db.session.get(NotificationChannel, channel_id)
    return channel if channel is not None and channel.tenant_id == tenant_id else None


def deactivate_channel(channel: NotificationChannel, reason: str, at: datetime) -> int:
    """Turn ``channel`` off with ``reason``; its pending deliveries fail with it (the caller
    commits). Returns how many deliveries that failed."""
    channel.is_active = False
    channel.disabled_reason = reason
    channel.disabled_at = at
    failed = db.session.execute(
        update(NotificationDelivery)
        .where(NotificationDelivery.channel_id == channel.id, NotificationDelivery.status == "pending")
        .values(status="failed", locked_until=None, last_error=f"not sent: the channel was turned off: {reason}")
        .execution_options(synchronize_session=False)
    ).rowcount
    log.error(
        "Notification channel %s (%s, tenant %s) turned off: %s; %d pending deliveries failed with it",
        channel.id,
        channel.kind,
        channel.tenant_id,
        reason,
        failed,
    )
    return failed


def channel_json(channel: NotificationChannel, full: bool = False) -> dict:
    """A channel as the API answers it; ``full`` shows a webhook's whole URL (admin keys)."""
    return {
        "id": channel.id,
        "kind": channel.kind,
        "name": channel.name,
        "target": shown_target(channel, full),
        "min_severity": channel.min_severity,
        "is_active": channel.is_active,
        "disabled_reason": channel.disabled_reason,
        "disabled_at": iso(channel.disabled_at),
        "secret_hint": secret_hint(channel.signing_secret),
        "created_at": iso(channel.created_at),
    }
