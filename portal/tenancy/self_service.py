"""What a user changes about their own account: name, password, e-mail address, a password reset.

A password reset and an e-mail change each travel as a one-time link (:class:`AccountToken`:
only the token's hash is kept; one hour for a reset, a day for an e-mail change; used once; a
newer link of the same purpose and any change of password void it). A new password ends every
other session of the user and forgets its remembered devices. The e-mails go out through
``SMTP_URL`` (:mod:`portal.kernel.mail`).
"""

from __future__ import annotations

import hashlib
import secrets
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from html import escape

from flask import current_app
from sqlalchemy import select, update

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.mail import mail_domain, transmit
from ..models import AccountToken, User
from ..models.accounts import EMAIL_CHANGE, PASSWORD_RESET
from .accounts import AccountError, find_user_by_email, normalise_email
from .passwords import hash_password, verify_password
from .sessions import end_user_sessions
from .two_factor import forget_devices

RESET_LIFETIME = timedelta(hours=1)
EMAIL_CHANGE_LIFETIME = timedelta(hours=24)


class SelfServiceError(ValueError):
    """A change refused; the message says why, ``field`` names the form field it concerns."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def _audit(action: str, user: User, ip: str | None, now: datetime, **details: object) -> None:
    record_event(action, user.tenant_id, user.id, ip, **details).created_at = now


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _issue(user: User, purpose: str, lifetime: timedelta, now: datetime, ip: str | None, new_email=None) -> str:
    """A new link's token; the user's earlier links of the same purpose end. The caller commits."""
    _void(user.id, now, purpose)
    token = secrets.token_urlsafe(32)
    db.session.add(
        AccountToken(
            tenant_id=user.tenant_id,
            user_id=user.id,
            purpose=purpose,
            token_hash=_token_hash(token),
            new_email=new_email,
            created_at=now,
            expires_at=now + lifetime,
            requested_from=ip,
        )
    )
    return token


def _void(user_id: int, now: datetime, *purposes: str) -> None:
    db.session.execute(
        update(AccountToken)
        .where(AccountToken.user_id == user_id, AccountToken.purpose.in_(purposes), AccountToken.ended_at.is_(None))
        .values(ended_at=now)
    )


def find_token(token: str, purpose: str, now: datetime) -> AccountToken | None:
    """The usable link of ``purpose`` that ``token`` opens, or None (unknown, used, voided, expired)."""
    row = db.session.scalar(
        select(AccountToken).where(AccountToken.token_hash == _token_hash(token), AccountToken.purpose == purpose)
    )
    if row is None or not row.usable(now) or not row.user.is_active:
        return None
    return row


# -- name and password ------------------------------------------------------------------------------


def change_name(user: User, name: str, now: datetime, ip: str | None) -> None:
    name = name.strip()
    if len(name) > 120:
        raise SelfServiceError("A name may be at most 120 characters.", "name")
    if name != user.name:
        _audit("profile.changed", user, ip, now, name=name)
        user.name = name


def set_password(user: User, new_password: str, now: datetime) -> None:
    """Store ``new_password`` (refused with the policy's message), void the user's open links and
    end every session of the user: the caller signs this browser in again. The caller commits."""
    try:
        user.password_hash = hash_password(new_password, _user_inputs(user))
    except ValueError as weak:
        raise SelfServiceError(str(weak), "new_password") from None
    _void(user.id, now, PASSWORD_RESET, EMAIL_CHANGE)
    end_user_sessions(user.id)
    forget_devices(user.id)


def change_password(user: User, current: str, new_password: str, now: datetime, ip: str | None) -> None:
    if not verify_password(user.password_hash, current):
        raise SelfServiceError("Your current password is not that one.", "current_password")
    if current == new_password:
        raise SelfServiceError("The new password is your current one: choose another.", "new_password")
    set_password(user, new_password, now)
    _audit("password.changed", user, ip, now)


def _user_inputs(user: User) -> list[str]:
    return [value for value in (user.email, user.name, user.tenant.name, user.email.partition("@")[0]) if value]


# -- password reset ---------------------------------------------------------------------------------


def request_password_reset(email: str, now: datetime, ip: str | None) -> tuple[User, str] | None:
    """The user and a new reset link's token, or None when no active account has that address
    (the caller answers the same either way). The caller commits."""
    user = find_user_by_email(email)
    if user is None or not user.is_active:
        return None
    token = _issue(user, PASSWORD_RESET, RESET_LIFETIME, now, ip)
    _audit("password.reset_requested", user, ip, now)
    return user, token


def reset_password(row: AccountToken, new_password: str, now: datetime, ip: str | None) -> User:
    """Set the password of a reset link's user; the link ends with every other. The caller commits."""
    user = row.user
    set_password(user, new_password, now)
    row.ended_at = now
    _audit("password.reset", user, ip, now)
    return user


# -- e-mail change ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailChange:
    token: str
    old_email: str
    new_email: str


def request_email_change(user: User, new_email: str, password: str, now: datetime, ip: str | None) -> EmailChange:
    """A link to confirm ``new_email`` (asked with the current password). The caller commits."""
    if not verify_password(user.password_hash, password):
        raise SelfServiceError("Your current password is not that one.", "password")
    try:
        address = normalise_email(new_email)
    except AccountError:
        raise SelfServiceError("Enter a valid e-mail address.", "new_email") from None
    if address == user.email.lower():
        raise SelfServiceError("That is your address already.", "new_email")
    if find_user_by_email(address) is not None:
        # Said to the signed-in user only, who proved their password: another account has it.
        raise SelfServiceError("Another Tollgate account uses that address.", "new_email")
    token = _issue(user, EMAIL_CHANGE, EMAIL_CHANGE_LIFETIME, now, ip, new_email=address)
    _audit("email.change_requested", user, ip, now, new_email=address)
    return EmailChange(token, user.email, address)


def confirm_email_change(row: AccountToken, now: datetime, ip: str | None) -> User:
    """Move the link's user to its new address. The caller commits."""
    user = row.user
    address = row.new_email or ""
    if find_user_by_email(address) is not None:
        row.ended_at = now
        raise SelfServiceError(f"{address} is used by another Tollgate account now: the change cannot be made.")
    old = user.email
    user.email = address
    row.ended_at = now
    _audit("email.changed", user, ip, now, old_email=old, new_email=address)
    return user


# -- sessions ---------------------------------------------------------------------------------------


def sign_out_everywhere(user: User, now: datetime, ip: str | None) -> int:
    """End every session of the user, this one too; returns how many. The caller commits."""
    ended = end_user_sessions(user.id)
    forget_devices(user.id)
    _audit("logout.everywhere", user, ip, now, sessions=ended)
    return ended


# -- e-mails ----------------------------------------------------------------------------------------


def _message(to: str, subject: str, paragraphs: list[str], link: tuple[str, str] | None = None) -> EmailMessage:
    mail_from = current_app.config["MAIL_FROM"]
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = mail_from
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=mail_domain(mail_from))
    message["Auto-Submitted"] = "auto-generated"
    text = list(paragraphs)
    html = [f"<p>{escape(paragraph)}</p>" for paragraph in paragraphs]
    if link is not None:
        label, url = link
        text.insert(1, f"{label}:\n{url}")
        html.insert(1, f'<p><a href="{escape(url)}">{escape(label)}</a></p>')
    message.set_content("\n\n".join(text) + "\n")
    message.add_alternative(
        '<!doctype html><html><body style="font-family:sans-serif;color:#101828">' + "".join(html) + "</body></html>",
        subtype="html",
    )
    return message


def reset_email(user: User, link: str) -> EmailMessage:
    return _message(
        user.email,
        "Reset your Tollgate password",
        [
            f"Someone (we hope you) asked to reset the password of your Tollgate account {user.email}.",
            "The link works once, for one hour. If you did not ask, ignore this e-mail: your password stays as it is.",
        ],
        ("Choose a new password", link),
    )


def email_change_emails(user: User, change: EmailChange, link: str) -> list[EmailMessage]:
    """The confirmation to the new address, and the notice to the old one."""
    confirm = _message(
        change.new_email,
        "Confirm your new Tollgate e-mail address",
        [
            f"Confirm that {change.new_email} is the new address of the Tollgate account {change.old_email}.",
            "The link works once, for 24 hours. If you did not ask for this, ignore this e-mail.",
        ],
        ("Confirm the new address", link),
    )
    notice = _message(
        change.old_email,
        "Your Tollgate e-mail address is about to change",
        [
            f"A change of your Tollgate account's address to {change.new_email} was asked for, with your password.",
            "It takes effect when the link sent to the new address is opened. If it was not you, "
            "sign in, change your password (which cancels the change) and tell your team's owner.",
        ],
    )
    return [confirm, notice]


def password_changed_email(user: User, how: str) -> EmailMessage:
    return _message(
        user.email,
        "Your Tollgate password was changed",
        [
            f"The password of your Tollgate account {user.email} was {how}, and every other sign-in was ended.",
            "If this was not you, reset your password from the sign-in page at once and tell your team's owner.",
        ],
    )


@dataclass(frozen=True)
class Transport:
    """The mail settings an e-mail goes out with, taken when it was decided on."""

    smtp_url: str
    envelope_from: str
    timeout: float

    @classmethod
    def of(cls, config) -> Transport:
        timeout = float(config["NOTIFY_CONNECT_TIMEOUT"]) + float(config["NOTIFY_READ_TIMEOUT"])
        return cls(config["SMTP_URL"], parseaddr(config["MAIL_FROM"])[1], timeout)


def send(message: EmailMessage, transport: Transport) -> str | None:
    """Send one e-mail; returns why it was not sent, or None."""
    to = message["To"]
    try:
        transmit(transport.smtp_url, message, transport.envelope_from, to, transport.timeout)
    except (smtplib.SMTPException, OSError) as failed:
        current_app.logger.warning("The account e-mail %r to %s was not sent: %s", message["Subject"], to, failed)
        return f"the mail server could not be reached or refused the message ({failed.__class__.__name__})"
    return None
