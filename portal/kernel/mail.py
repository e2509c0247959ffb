"""The mail transport: one message to one address over ``SMTP_URL`` (smtp:// with STARTTLS when
the server offers it, or smtps://; optional user:password). Notifications and invitations both
send through it."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import parseaddr
from urllib.parse import unquote, urlsplit


def mail_domain(mail_from: str) -> str:
    """The domain of the sender's address, for Message-IDs."""
    address = parseaddr(mail_from)[1]
    return address.rpartition("@")[2] or "tollgate.invalid"


def transmit(smtp_url: str, message: EmailMessage, envelope_from: str, to: str, timeout: float) -> None:
    """Send ``message`` to ``to``; raises smtplib.SMTPException or OSError when it is not sent."""
    parts = urlsplit(smtp_url)
    context = ssl.create_default_context()
    if parts.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(parts.hostname, parts.port or 465, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(parts.hostname, parts.port or 25, timeout=timeout)
    with client:
        client.ehlo()
        if parts.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls(context=context)
            client.ehlo()
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        client.send_message(message, from_addr=envelope_from, to_addrs=[to])
