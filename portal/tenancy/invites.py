"""Invitations to a tenant's team: a one-time link that works for seven days.

The link carries a random token; only its sha256 is stored, so the link is shown once (and
e-mailed when a mail server is configured). Accepting it creates the user with the invited role
and uses the invitation up; a revoked, used or expired invitation creates nothing.

An address belongs to one account, in one tenant. Inviting an address that has an account in
another tenant answers exactly as for a new address; only the e-mail differs, and it goes to the
address's owner: it says the address has an account already and cannot join with it.
"""

from __future__ import annotations

import hashlib
import secrets
import smtplib
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from flask import current_app
from markupsafe import escape
from sqlalchemy import select, update
from sqlalchemy.orm import contains_eager

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.mail import mail_domain, transmit
from ..models import Invite, Tenant, User
from ..models.tenancy import ROLES
from .accounts import AccountError, find_user_by_email, normalise_email
from .passwords import hash_password

INVITE_LIFETIME = timedelta(days=7)


class InviteError(ValueError):
    """An invitation cannot be made or accepted as asked; ``field`` names the form field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InviteNotAllowed(InviteError):
    """The signed-in user's role does not allow this (an admin inviting an owner)."""


class InviteUnusable(InviteError):
    """The link no longer works: ``state`` is expired, accepted or revoked."""

    def __init__(self, state: str) -> None:
        super().__init__(f"this invitation is {state}")
        self.state = state


def hash_token(token: str) -> str:
    # A token is 256 random bits, so a fast hash is enough.
    return hashlib.sha256(token.encode()).hexdigest()


def invitable_roles(inviter: User) -> tuple[str, ...]:
    """The roles ``inviter`` may give: owners any, admins admin or member."""
    if inviter.role == "owner":
        return ROLES
    if inviter.role == "admin":
        return ("admin", "member")
    return ()


def _audit(action: str, tenant_id: int, user_id: int | None, ip: str | None, now: datetime, **details) -> None:
    record_event(action, tenant_id, user_id, ip, **details).created_at = now


def create_invite(
    inviter: User, email: str, role: str, now: datetime, ip: str | None = None
) -> tuple[Invite, str, list[Invite]]:
    """A new invitation from ``inviter`` to their tenant; returns it, its token (never stored)
    and the earlier pending invitations to the same address, which it replaces (revoked)."""
    if role not in ROLES:
        raise InviteError(f"Choose one of: {', '.join(ROLES)}.", "role")
    if role not in invitable_roles(inviter):
        raise InviteNotAllowed("Only an owner can invite an owner.", "role")
    try:
        address = normalise_email(email)
    except AccountError:
        raise InviteError("Enter a valid e-mail address.", "email") from None
    existing = find_user_by_email(address)
    if existing is not None and existing.tenant_id == inviter.tenant_id and existing.is_enabled:
        raise InviteError(f"{address} is on the team already.", "email")
    # An address with an account in another tenant is invited like any other, so the inviter
    # cannot learn who has an account; the e-mail tells its owner instead (see invite_email).
    superseded = list(
        db.session.scalars(
            _pending(inviter.tenant_id, now).where(Invite.email == address).order_by(Invite.id).with_for_update()
        )
    )
    for old in superseded:
        old.revoked_at = now
        _audit(
            "invite.revoked",
            inviter.tenant_id,
            inviter.id,
            ip,
            now,
            invite_id=old.id,
            email=old.email,
            role=old.role,
            reason="replaced by a new invitation",
        )
    token = secrets.token_urlsafe(32)
    invite = Invite(
        tenant_id=inviter.tenant_id,
        email=address,
        role=role,
        token_hash=hash_token(token),
        created_by_id=inviter.id,
        created_at=now,
        expires_at=now + INVITE_LIFETIME,
    )
    db.session.add(invite)
    db.session.flush()  # the id goes into the audit event
    _audit(
        "invite.created",
        inviter.tenant_id,
        inviter.id,
        ip,
        now,
        invite_id=invite.id,
        email=address,
        role=role,
        expires_at=invite.expires_at.isoformat(),
    )
    return invite, token, superseded


def _pending(tenant_id: int, now: datetime):
    return select(Invite).where(
        Invite.tenant_id == tenant_id,
        Invite.accepted_at.is_(None),
        Invite.revoked_at.is_(None),
        Invite.expires_at > now,
    )


def pending_invites(tenant_id: int, now: datetime) -> list[Invite]:
    """The tenant's invitations that can still be accepted, newest first, with who sent them
    (one query)."""
    query = (
        _pending(tenant_id, now)
        .outerjoin(User, User.id == Invite.created_by_id)
        .options(contains_eager(Invite.created_by))
        .order_by(Invite.created_at.desc(), Invite.id.desc())
    )
    return list(db.session.scalars(query))


def revoke_invite(invite: Invite, actor: User, now: datetime, ip: str | None = None) -> None:
    """Stop ``invite``'s link from working; only an owner may revoke an invitation to be owner."""
    state = invite.state(now)
    if state != "pending":
        raise InviteUnusable(state)
    if invite.role not in invitable_roles(actor):
        raise InviteNotAllowed("Only an owner can revoke an invitation to be an owner.")
    invite.revoked_at = now
    _audit(
        "invite.revoked", invite.tenant_id, actor.id, ip, now, invite_id=invite.id, email=invite.email, role=invite.role
    )


def find_invite(token: str) -> Invite | None:
    """The invitation this link's token belongs to (of an active tenant), whatever its state."""
    if not token or len(token) > 128:
        return None
    return db.session.scalar(
        select(Invite)
        .join(Tenant, Tenant.id == Invite.tenant_id)
        .options(contains_eager(Invite.tenant))
        .where(Invite.token_hash == hash_token(token), Tenant.is_active.is_(True))
    )


def accept_invite(invite: Invite, name: str, password: str, now: datetime, ip: str | None = None) -> User:
    """Create the invited user (or bring back the same person removed earlier from this team)
    with the invited role, and use the invitation up. The caller commits, or rolls back on error."""
    state = invite.state(now)
    if state != "pending":
        raise InviteUnusable(state)
    name = name.strip()
    if not name:
        raise InviteError("Enter your name.", "name")
    try:
        password_hash = hash_password(password, (invite.email, name, invite.tenant.name))
    except ValueError as exc:
        raise InviteError(str(exc), "password") from None
    existing = find_user_by_email(invite.email)
    if existing is not None and (existing.tenant_id != invite.tenant_id or existing.is_enabled):
        raise InviteError(f"{invite.email} already has a Tollgate account: sign in with it instead.")
    # Used up with a guarded UPDATE, so two submissions at once cannot both accept it.
    claimed = db.session.execute(
        update(Invite)
        .where(
            Invite.id == invite.id,
            Invite.accepted_at.is_(None),
            Invite.revoked_at.is_(None),
            Invite.expires_at > now,
        )
        .values(accepted_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        db.session.refresh(invite)
        raise InviteUnusable(invite.state(now))
    if existing is not None:
        user = existing
        user.name, user.password_hash, user.role, user.is_enabled = name[:120], password_hash, invite.role, True
    else:
        user = User(
            tenant_id=invite.tenant_id,
            email=invite.email,
            name=name[:120],
            password_hash=password_hash,
            role=invite.role,
            created_at=now,
        )
        db.session.add(user)
    user.last_login_at = now
    db.session.flush()
    invite.accepted_at = now
    invite.accepted_user_id = user.id
    _audit(
        "invite.accepted",
        invite.tenant_id,
        user.id,
        ip,
        now,
        invite_id=invite.id,
        email=invite.email,
        role=invite.role,
        invited_by_id=invite.created_by_id,
    )
    return user


def has_account_elsewhere(invite: Invite) -> bool:
    """Whether the invited address belongs to an account of another tenant (it cannot join)."""
    existing = find_user_by_email(invite.email)
    return existing is not None and existing.tenant_id != invite.tenant_id


def invite_email(invite: Invite, link: str, inviter: User, mail_from: str, sign_in_url: str = "") -> EmailMessage:
    """The invitation e-mail: a plain-text part and an HTML alternative, with the link; to an
    address that has an account elsewhere, why it cannot be accepted with it, and no link."""
    tenant = invite.tenant.name
    who = inviter.name or inviter.email
    expires = invite.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    article = "an" if invite.role in ("admin", "owner") else "a"
    message = EmailMessage()
    message["Subject"] = f"{who} invited you to {tenant} on Tollgate"
    message["From"] = mail_from
    message["To"] = invite.email
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=mail_domain(mail_from))
    message["Auto-Submitted"] = "auto-generated"
    if has_account_elsewhere(invite):
        _existing_account_body(message, who, tenant, article, invite.role, sign_in_url)
        return message
    message.set_content(
        f"{who} invited you to join {tenant} on Tollgate as {article} {invite.role}.\n\n"
        f"Accept the invitation (the link works once, until {expires}):\n{link}\n\n"
        "If you did not expect this, ignore this e-mail.\n"
    )
    message.add_alternative(
        '<!doctype html><html><body style="font-family:sans-serif;color:#101828">'
        f"<p>{escape(who)} invited you to join <strong>{escape(tenant)}</strong> on Tollgate "
        f"as {article} {escape(invite.role)}.</p>"
        f'<p><a href="{escape(link)}">Accept the invitation</a></p>'
        f'<p style="color:#667085;font-size:12px">The link works once, until {escape(expires)}. '
        "If you did not expect this, ignore this e-mail.</p></body></html>",
        subtype="html",
    )
    return message


def _existing_account_body(message: EmailMessage, who: str, tenant: str, article: str, role: str, sign_in: str):
    lines = (
        f"{who} invited you to join {tenant} on Tollgate as {article} {role}.",
        "This e-mail address already has a Tollgate account, and an address belongs to one team only, "
        "so the invitation cannot be accepted with it.",
        f"To join {tenant}, ask {who} to invite another address of yours. "
        "Your account is unchanged: sign in with it as usual" + (f" at {sign_in}" if sign_in else "") + ".",
        "If you did not expect this, ignore this e-mail.",
    )
    message.set_content("\n\n".join(lines) + "\n")
    html = "".join(f"<p>{escape(line)}</p>" for line in lines[:-1])
    if sign_in:
        html += f'<p><a href="{escape(sign_in)}">Sign in to Tollgate</a></p>'
    message.add_alternative(
        f'<!doctype html><html><body style="font-family:sans-serif;color:#101828">{html}'
        f'<p style="color:#667085;font-size:12px">{escape(lines[-1])}</p></body></html>',
        subtype="html",
    )


def send_invite_email(invite: Invite, link: str, inviter: User, sign_in_url: str = "") -> str | None:
    """E-mail the invitation through ``SMTP_URL``; returns why it could not be sent, or None."""
    config = current_app.config
    mail_from = config["MAIL_FROM"]
    message = invite_email(invite, link, inviter, mail_from, sign_in_url)
    timeout = float(config["NOTIFY_CONNECT_TIMEOUT"]) + float(config["NOTIFY_READ_TIMEOUT"])
    try:
        transmit(config["SMTP_URL"], message, parseaddr(mail_from)[1], invite.email, timeout)
    except (smtplib.SMTPException, OSError) as failed:
        current_app.logger.warning("The invitation e-mail to %s was not sent: %s", invite.email, failed)
        return f"the mail server could not be reached or refused the message ({failed.__class__.__name__})"
    return None
