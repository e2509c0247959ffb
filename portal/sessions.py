"""Portal sessions: signed cookies for the portal, none at all for the API.

The API authenticates by API key only. Giving ``/api/`` requests a null session means the
session cookie is never even read there — a CSRF-exempt API cannot be driven by a signed-in
browser — and the API skips the cookie's signing work on every call.

Each sign-in is also a row on the server (:class:`~portal.models.UserSession`) whose random key
the session and remember cookies carry. Signing out deletes the row, so a copy of either cookie
opens nothing afterwards; a session past its ``expires_at`` opens nothing either. Ending every
session of a user (sign out everywhere, a password change) is one delete.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from flask import Flask, current_app
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user, login_user, logout_user
from sqlalchemy import delete, select

from .extensions import db
from .models import User, UserSession, utcnow


class PortalSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request):
        if request.path.startswith("/api/"):
            return self.null_session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session, response) -> None:
        if self.is_null_session(session):
            return
        super().save_session(app, session, response)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def start_session(user: User, remember: bool, lifetime: timedelta, now: datetime) -> str:
    """A new server-side session for ``user``, lasting ``lifetime``; returns its key (also set as
    ``user.session_key``, so ``user.get_id()`` carries it). The user's expired sessions go."""
    key = secrets.token_urlsafe(32)
    db.session.execute(delete(UserSession).where(UserSession.user_id == user.id, UserSession.expires_at <= now))
    db.session.add(
        UserSession(
            tenant_id=user.tenant_id,
            user_id=user.id,
            key_hash=_key_hash(key),
            remember=remember,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    user.session_key = key
    return key


def session_user(user_id: int, key: str, now: datetime) -> User | None:
    """The user of the live session ``key``, or None when it ended, expired or is someone else's."""
    user = db.session.scalar(
        select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(User.id == user_id, UserSession.key_hash == _key_hash(key), UserSession.expires_at > now)
    )
    if user is not None:
        user.session_key = key
    return user


def end_session(key: str) -> None:
    """End one session (signing out of this browser)."""
    db.session.execute(delete(UserSession).where(UserSession.key_hash == _key_hash(key)))


def end_user_sessions(user_id: int, keep_key: str | None = None) -> int:
    """End every session of a user, but ``keep_key``'s if given; returns how many ended."""
    query = delete(UserSession).where(UserSession.user_id == user_id)
    if keep_key is not None:
        query = query.where(UserSession.key_hash != _key_hash(keep_key))
    return db.session.execute(query).rowcount


def delete_expired_sessions(now: datetime) -> int:
    """Delete every session row past its ``expires_at`` (the hourly cleanup); returns how many."""
    result = db.session.execute(delete(UserSession).where(UserSession.expires_at <= now))
    db.session.commit()
    return result.rowcount


def sign_in(user: User, remember: bool = False) -> None:
    """Sign ``user`` in to this browser with a new server-side session: the remember cookie
    ("keep me signed in") lasts ``REMEMBER_COOKIE_DURATION``, a plain session the session
    lifetime. The caller commits."""
    lifetime = current_app.config["REMEMBER_COOKIE_DURATION"] if remember else current_app.permanent_session_lifetime
    start_session(user, remember, lifetime, utcnow())
    login_user(user, remember=remember)


def sign_out() -> None:
    """Sign this browser out and end its session on the server. The caller commits."""
    if current_user.is_authenticated and current_user.session_key:
        end_session(current_user.session_key)
    logout_user()
