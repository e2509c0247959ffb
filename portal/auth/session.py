"""The portal session: who is signed in, and where they may be sent afterwards."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, session
from flask_login import user_loaded_from_cookie

from ..extensions import login_manager
from ..models import User, utcnow
from ..tenancy.sessions import session_user

MAX_USER_ID = 2**31 - 1  # users.id is a 32-bit integer


def load_user(user_id: str) -> User | None:
    """Resolve a session id ``<user id>-<password fingerprint>-<session key>``: nothing when its
    server-side session ended (signed out) or expired, or the password changed since."""
    raw_id, _, rest = user_id.partition("-")
    _, _, key = rest.partition("-")
    if not raw_id.isdigit() or int(raw_id) > MAX_USER_ID or not key:
        return None
    user = session_user(int(raw_id), key, utcnow())
    if user is None or user.get_id() != user_id:
        return None
    return user


def _bind_restored_session(app: Flask, user: User | None = None, **extra) -> None:
    # A session brought back by the remember cookie gets the identifier sign-in gives a session;
    # without it "strong" protection sees a mismatch on the next request and signs the user out.
    session["_id"] = login_manager._session_identifier_generator()


def is_safe_next(target: str | None) -> bool:
    """Only a path on this site: no scheme, no host, no protocol-relative or backslash tricks."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return False
    if any(ch in target for ch in "\\\r\n\t") or any(ord(ch) < 32 for ch in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def init_app(app: Flask) -> None:
    login_manager.user_loader(load_user)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to see that page."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "strong"
    user_loaded_from_cookie.connect(_bind_restored_session)
