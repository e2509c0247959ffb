"""The portal session: who is signed in, and where they may be sent afterwards."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask

from ..extensions import db, login_manager
from ..models import User


def load_user(user_id: str) -> User | None:
    """Resolve a session id; one made before a password change no longer matches."""
    raw_id, _, fingerprint = user_id.partition("-")
    if not raw_id.isdigit():
        return None
    user = db.session.get(User, int(raw_id))
    if user is None or user.get_id() != user_id:
        return None
    return user


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
