from __future__ import annotations

import hashlib
import time

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..extensions import db, limiter
from ..kernel.audit import record_event
from ..kernel.clock import now
from ..sessions import sign_out
from ..tenancy.accounts import find_user_by_email
from ..tenancy.passwords import DUMMY_HASH, needs_rehash, rehash_password, verify_password
from ..tenancy.two_factor import device_remembered
from . import bp
from .forms import ForgotPasswordForm, LoginForm, TwoFactorForm
from .signin import complete_sign_in, record_failure
from .two_factor import DEVICE_COOKIE, start_second_step


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
            remember = bool(form.remember.data)
            if not user.has_two_factor:
                return complete_sign_in(user, remember, form.next.data)
            if device_remembered(user, request.cookies.get(DEVICE_COOKIE), now()):
                return complete_sign_in(user, remember, form.next.data, second_factor="remembered device")
            db.session.commit()
            return start_second_step(user, remember, form.next.data)
        record_failure(user, "disabled" if (user is not None and ok) else "bad credentials", form.email.data)
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
    elif request.endpoint == "auth.login_two_factor":
        flash(f"Too many codes tried. Try again in {_wait(retry_after)}.", "error")
        page = render_template("auth/two_factor.html", form=TwoFactorForm())
    elif request.endpoint in ("auth.account_password", "auth.account_email") or request.endpoint.startswith(
        "auth.two_factor_"
    ):
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
