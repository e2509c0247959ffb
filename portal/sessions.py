"""Portal sessions: signed cookies for the portal, none at all for the API.

The API authenticates by API key only. Giving ``/api/`` requests a null session means the
session cookie is never even read there — a CSRF-exempt API cannot be driven by a signed-in
browser — and the API skips the cookie's signing work on every call.
"""

from __future__ import annotations

from flask import Flask
from flask.sessions import SecureCookieSessionInterface


class PortalSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request):
        if request.path.startswith("/api/"):
            return self.null_session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session, response) -> None:
        if self.is_null_session(session):
            return
        super().save_session(app, session, response)
