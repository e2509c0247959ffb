"""Portal sessions: signed cookies for the portal, none at all for the API.

The API authenticates by API key only. Giving ``/api/`` requests a null session means the
session cookie is never even read there — a CSRF-exempt API cannot be driven by a signed-in
browser — and the API skips the cookie's signing work on every call.

Each sign-in is also a row on the server (:mod:`portal.tenancy.sessions`) whose random key the
session and remember cookies carry, so signing out ends it for every copy of either cookie.
"""

from __future__ import annotations

from flask import Flask, current_app
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user, login_user, logout_user

from .models import User, utcnow
from .tenancy.sessions import end_session, start_session


class PortalSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request):
        if request.path.startswith("/api/"):
            return self.null_session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session, response) -> None:
        if self.is_null_session(session):
            return
        super().save_session(app, session, response)


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
