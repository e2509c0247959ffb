"""The end of a successful sign-in, whichever way it went (a password alone, a remembered device,
an authenticator code, a recovery code)."""

from __future__ import annotations

from flask import redirect, request, url_for

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.clock import now
from ..models import User
from ..sessions import sign_in
from .session import is_safe_next


def browser() -> str:
    return request.user_agent.string[:200]


def complete_sign_in(user: User, remember: bool, target: str | None, **details: object):
    """Sign ``user`` in to this browser, audit it, commit, and send them on to ``target`` (a
    path on this site) or the dashboard."""
    sign_in(user, remember=remember)
    moment = now()
    user.last_login_at = moment
    record_event("login.success", user.tenant_id, user.id, request.remote_addr, browser=browser(), **details)
    db.session.commit()
    return redirect(target if is_safe_next(target) else url_for("web.dashboard"))


def record_failure(user: User | None, reason: str, email: str | None = None) -> None:
    """A failed sign-in attempt (it counts toward the failed-authentication alert). Commits."""
    record_event(
        "login.failure",
        user.tenant_id if user else None,
        user.id if user else None,
        request.remote_addr,
        email=(email if email is not None else user.email if user else "")[:254],
        reason=reason,
        browser=browser(),
    )
    db.session.commit()
