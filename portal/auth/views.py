from __future__ import annotations

import hashlib
import time

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..extensions import db, limiter
from ..kernel.audit import record_event
from ..models import utcnow
from ..sessions import sign_in, sign_out
from ..tenancy.accounts import find_user_by_email
from ..tenancy.passwords import DUMMY_HASH, needs_rehash, rehash_password, verify_password
from . import bp
from .forms import ForgotPasswordForm, LoginForm
from .session import is_safe_next


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _account_login_limit() -> str:
    return current_app.config["LOGIN_ACCOUNT_RATE_LIMIT"]


def _account_tried() -> str:
    """The account a sign-in attempt is for, whatever address it comes from: a hash of the
    e-mail as the sign-in looks it up (fixed length, however long the field sent)."""
    email = request.form.get("email", "").strip().lower()
    return "account:" + hashlib.sha256(email.encode()).hexdigest()


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
@limiter.limit(_account_login_limit, methods=["POST"], key_func=_account_tried, scope="account")
def login():
    if current_user.is_authenticated:
        return redirect(url_for("web.dashboard"))
    form = LoginForm(next=request.args.get("next", ""))
    if form.validate_on_submit():
        user = find_user_by_email(form.email.data)
        ok = verify_password(user.password_hash if user else DUMMY_HASH, form.password.data)
        if user is not None and ok and user.is_active:
            if needs_rehash(user.password_hash):  # before sign_in: the session id folds in the hash
                user.password_hash = rehash_password(form.password.data)
            sign_in(user, remember=bool(form.remember.data))
            user.last_login_at = utcnow()
            record_event(
                "login.success", user.tenant_id, user.id, request.remote_addr, browser=request.user_agent.string[:200]
            )
            db.session.commit()
            target = form.next.data
            return redirect(target if is_safe_next(target) else url_for("web.dashboard"))
        record_event(
            "login.failure",
            user.tenant_id if user else None,
            user.id if user else None,
            request.remote_addr,
            email=form.email.data[:254],
            reason="disabled" if (user is not None and ok) else "bad credentials",
            browser=request.user_agent.string[:200],
        )
        db.session.commit()
        flash("Wrong e-mail or password.", "error")
    elif request.method == "POST":
        flash("Please fill in both fields correctly.", "error")
    status = 401 if request.method == "POST" else 200
    return render_template("auth/login.html", form=form), status


@bp.route("/logout", methods=["GET", "POST"])
@login_required
def logout():
    if request.method == "GET":
        # Signing out changes state, so it needs the CSRF token of the confirmation form.
        return render_template("auth/logout.html")
    record_event("logout", current_user.tenant_id, current_user.id, request.remote_addr)
    # Ends the session on the server: a copy of this browser's cookies opens nothing any more.
    sign_out()
    db.session.commit()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.errorhandler(429)
def login_throttled(error):
    """Too many sign-in attempts: the form again, with when to retry."""
    retry_after = _retry_after_seconds(error)
    if request.endpoint in ("auth.forgot_password", "auth.reset_password"):
        flash(f"Too many password reset requests. Try again in {_wait(retry_after)}.", "error")
        page = render_template("auth/forgot.html", form=ForgotPasswordForm(), mail=True)
    elif request.endpoint in ("auth.account_password", "auth.account_email"):
        flash(f"Too many attempts with your current password. Try again in {_wait(retry_after)}.", "error")
        page = render_template("auth/throttled.html")
    else:
        flash(f"Too many sign-in attempts. Try again in {retry_after} seconds.", "error")
        page = render_template("auth/login.html", form=LoginForm())
    response = make_response(page, 429)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _wait(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{round(seconds / 60)} minutes"


def _retry_after_seconds(error) -> int:
    reset_at = getattr(limiter, "current_limit", None)
    if reset_at is None:
        return 60
    return max(1, int(reset_at.reset_at - time.time()))
