"""E-mail notifications, sent through the mail transport (:mod:`portal.kernel.mail`): a
plain-text part and an HTML alternative."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

from flask import current_app
from markupsafe import escape

from ..kernel.mail import mail_domain, transmit
from ..models import NotificationChannel, NotificationDelivery
from .base import Outcome
from .render import Notice, notice, plain_text

COLOURS = {"CRITICAL": "#b42318", "WARNING": "#b54708", "RESOLVED": "#067647", "TEST": "#175cd3"}


def html_body(n: Notice) -> str:
    rows = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{escape(name)}</th><td>{escape(value)}</td></tr>'
        for name, value in n.facts
    )
    link = f'<p><a href="{escape(n.url)}">View it in Tollgate</a></p>' if n.url else ""
    summary = f"<p>{escape(n.summary)}</p>" if n.summary else ""
    colour = COLOURS.get(n.label, "#344054")
    return (
        '<!doctype html><html><body style="font-family:sans-serif;color:#101828">'
        f'<p style="color:{colour};font-weight:bold;margin:0">{escape(n.label)}</p>'
        f'<h1 style="font-size:18px;margin:4px 0 12px">{escape(n.title)}</h1>'
        f"{summary}<table>{rows}</table>{link}"
        f'<p style="color:#667085;font-size:12px">Sent by Tollgate at {escape(n.timestamp)}.</p>'
        "</body></html>"
    )


def build_message(to: str, delivery: NotificationDelivery, mail_from: str) -> EmailMessage:
    """The e-mail of ``delivery``; its Message-ID comes from the delivery's message_id, so a
    repeated attempt is recognisably the same message."""
    n = notice(delivery.payload)
    message = EmailMessage()
    message["Subject"] = n.subject
    message["From"] = mail_from
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{delivery.message_id}@{mail_domain(mail_from)}>"
    # RFC 3834: no vacation or out-of-office replies to an automatic message.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Tollgate-Event"] = delivery.event_type
    message.set_content(plain_text(n))
    message.add_alternative(html_body(n), subtype="html")
    return message


def _said(code: int, text: bytes | str) -> str:
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(text.split())}"[:300]


class EmailSender:
    kind = "email"

    def send(self, channel: NotificationChannel, delivery: NotificationDelivery) -> Outcome:
        config = current_app.config
        smtp_url = config.get("SMTP_URL")
        if not smtp_url:
            return Outcome.retry_later("not sent: SMTP_URL is not set, so Tollgate has no mail server to send through")
        mail_from = config["MAIL_FROM"]
        message = build_message(channel.target, delivery, mail_from)
        timeout = float(config["NOTIFY_CONNECT_TIMEOUT"]) + float(config["NOTIFY_READ_TIMEOUT"])
        try:
            transmit(smtp_url, message, parseaddr(mail_from)[1], channel.target, timeout)
        except smtplib.SMTPRecipientsRefused as refused:
            code, text = next(iter(refused.recipients.values()), (0, b""))
            error = f"the mail server refused {channel.target}: {_said(code, text)}"
            return Outcome.final(error, code) if code >= 500 else Outcome.retry_later(error, code)
        except smtplib.SMTPDataError as refused:
            error = f"the mail server refused the message: {_said(refused.smtp_code, refused.smtp_error)}"
            if refused.smtp_code >= 500:
                return Outcome.final(error, refused.smtp_code)
            return Outcome.retry_later(error, refused.smtp_code)
        except smtplib.SMTPResponseException as failed:
            # Sender refused, authentication failed, server busy: the operator's to mend, so retried.
            error = f"the mail server answered {_said(failed.smtp_code, failed.smtp_error)}"
            return Outcome.retry_later(error, failed.smtp_code)
        except (smtplib.SMTPException, OSError) as failed:
            return Outcome.retry_later(f"could not reach the mail server: {failed.__class__.__name__}: {failed}")
        return Outcome.sent()
