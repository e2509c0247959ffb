"""Portal sign-in sessions as rows on the server (:class:`~portal.models.UserSession`).

A session's random key is what the session and remember cookies carry; only its sha256 is
stored. Signing out deletes the row, so a copy of either cookie opens nothing afterwards; a
session past its ``expires_at`` opens nothing either. Ending every session of a user (sign out
everywhere, a password change, removal from the team) is one delete.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from ..extensions import db
from ..models import User, UserSession


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
