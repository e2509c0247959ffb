"""A user's own account: ``/account`` (name, password, e-mail address, sign out everywhere,
recent sign-ins) and the password reset reached from the sign-in page.

Every e-mail goes out on a thread of its own after the answer is decided, so the answer to
"forgot your password?" takes the same time and says the same words whether or not the address
has an account. Links in e-mails carry a one-time token (:mod:`portal.tenancy.self_service`);
the pages that show one are never cached and send no referrer.
"""

from __future__ import annotations

import hashlib
import threading
from email.message import EmailMessage

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required, logout_user
from sqlalchemy import select

from ..extensions import db, limiter
from ..kernel.audit import record_event
from ..kernel.clock import now
from ..models import AuditEvent
from ..models.accounts import EMAIL_CHANGE, PASSWORD_RESET
from ..sessions import sign_in
from ..tenancy.self_service import (
    SelfServiceError,
    Transport,
    change_name,
    change_password,
    confirm_email_change,
    email_change_emails,
    find_token,
    password_changed_email,
    request_email_change,
    request_password_reset,
    reset_email,
    reset_password,
    send,
    sign_out_everywhere,
)
from . import bp
from .forms import ChangeEmailForm, ChangePasswordForm, ConfirmForm, ForgotPasswordForm, NameForm, ResetPasswordForm

SIGN_IN_ACTIONS = ("login.success", "login.failure")
RECENT_SIGN_INS = 20


def _mail_configured() -> bool:
    return bool(current_app.config.get("SMTP_URL"))


def _send_later(*messages: EmailMessage) -> None:
    """Send on a thread of its own: the answer does not wait for the mail server, nor tells by
    its timing whether anything was sent."""
    if not messages or not _mail_configured():
        return
    app = current_app._get_current_object()
    transport = Transport.of(app.config)

    def deliver() -> None:
        with app.app_context():
            for message in messages:
                send(message, transport)

    threading.Thread(target=deliver, name="account-mail", daemon=True).start()


def _link(endpoint: str, **token: str) -> str:
    return current_app.config["PORTAL_BASE_URL"] + url_for(endpoint, **token)


def _private(page, status: int = 200):
    """A page reached by a one-time link: no cache keeps it, no referrer passes the link on."""
    response = make_response(page, status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# -- forgot your password? --------------------------------------------------------------------------


def _reset_limit() -> str:
    return current_app.config["PASSWORD_RESET_RATE_LIMIT"]


def _reset_address_limit() -> str:
    return current_app.config["PASSWORD_RESET_ADDRESS_RATE_LIMIT"]


def _address_tried() -> str:
    email = request.form.get("email", "").strip().lower()
    return "reset:" + hashlib.sha256(email.encode()).hexdigest()


@bp.route("/forgot-password", methods=["GET", "POST"])
@limiter.limit(_reset_limit, methods=["POST"])
@limiter.limit(_reset_address_limit, methods=["POST"], key_func=_address_tried, scope="reset-address")
def forgot_password():
    form = ForgotPasswordForm()
    if not _mail_configured():
        return render_template("auth/forgot.html", form=form, mail=False), 200
    if form.validate_on_submit():
        found = request_password_reset(form.email.data, now(), request.remote_addr)
        db.session.commit()
        if found is not None:
            user, token = found
            _send_later(reset_email(user, _link("auth.reset_password", reset_token=token)))
        # The same words whether or not the address has an account.
        return render_template("auth/forgot_sent.html", email=form.email.data)
    status = 400 if request.method == "POST" else 200
    return render_template("auth/forgot.html", form=form, mail=True), status


@bp.route("/reset-password/<reset_token>", methods=["GET", "POST"], endpoint="reset_password")
@limiter.limit(_reset_limit, methods=["POST"])
def reset_password_page(reset_token: str):
    moment = now()
    row = find_token(reset_token, PASSWORD_RESET, moment)
    if row is None:
        return _private(render_template("auth/link_invalid.html", what="password reset"), 404)
    form = ResetPasswordForm()
    if form.validate_on_submit():
        try:
            user = reset_password(row, form.new_password.data, moment, request.remote_addr)
        except SelfServiceError as refused:
            db.session.rollback()
            form.new_password.errors.append(str(refused))
        else:
            db.session.commit()
            _send_later(password_changed_email(user, "reset with a link sent to this address"))
            flash("Your password is changed and every earlier sign-in ended. Sign in with the new password.", "info")
            return redirect(url_for("auth.login"))
    status = 400 if request.method == "POST" else 200
    return _private(render_template("auth/reset.html", form=form, email=row.user.email), status)


# -- /account ---------------------------------------------------------------------------------------


def _check_limit() -> str:
    return current_app.config["ACCOUNT_CHECK_RATE_LIMIT"]


def _signed_in_user() -> str:
    return f"account-user:{current_user.get_id()}"


def _recent_sign_ins() -> list[AuditEvent]:
    return list(
        db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.user_id == current_user.id, AuditEvent.action.in_(SIGN_IN_ACTIONS))
            .order_by(AuditEvent.id.desc())
            .limit(RECENT_SIGN_INS)
        )
    )


def _render_account(status: int = 200, **forms):
    page = render_template(
        "auth/account.html",
        name_form=forms.get("name_form") or NameForm(name=current_user.name),
        password_form=forms.get("password_form") or ChangePasswordForm(),
        email_form=forms.get("email_form") or ChangeEmailForm(),
        everywhere_form=ConfirmForm(),
        sign_ins=_recent_sign_ins(),
        mail=_mail_configured(),
    )
    return page, status


@bp.get("/account")
@login_required
def account():
    return _render_account()


@bp.post("/account/name")
@login_required
def account_name():
    form = NameForm()
    if not form.validate_on_submit():
        return _render_account(400, name_form=form)
    try:
        change_name(current_user, form.name.data or "", now(), request.remote_addr)
    except SelfServiceError as refused:
        form.name.errors.append(str(refused))
        return _render_account(400, name_form=form)
    db.session.commit()
    flash("Your name is saved.", "info")
    return redirect(url_for("auth.account"))


def _wrong_password(field) -> None:
    """A wrong current password counts as a failed authentication, as at sign-in."""
    db.session.rollback()
    record_event(
        "login.failure",
        current_user.tenant_id,
        current_user.id,
        request.remote_addr,
        email=current_user.email,
        reason="wrong current password on the account page",
        browser=request.user_agent.string[:200],
    )
    db.session.commit()
    field.errors.append("Your current password is not that one.")


# One budget of current-password checks for both forms that ask for it.
_password_checks = limiter.shared_limit(_check_limit, scope="account-check", key_func=_signed_in_user)


@bp.post("/account/password")
@login_required
@_password_checks
def account_password():
    form = ChangePasswordForm()
    if not form.validate_on_submit():
        return _render_account(400, password_form=form)
    user = current_user._get_current_object()
    remember = bool(request.cookies.get(current_app.config.get("REMEMBER_COOKIE_NAME", "remember_token")))
    try:
        change_password(user, form.current_password.data, form.new_password.data, now(), request.remote_addr)
    except SelfServiceError as refused:
        if refused.field == "current_password":
            _wrong_password(form.current_password)
        else:
            db.session.rollback()
            form.new_password.errors.append(str(refused))
        return _render_account(400, password_form=form)
    # Every session ended with the old password; this browser goes on in a new one.
    sign_in(user, remember=remember)
    db.session.commit()
    _send_later(password_changed_email(user, "changed on the account page"))
    flash("Your password is changed. Every other sign-in of yours has ended.", "info")
    return redirect(url_for("auth.account"))


@bp.post("/account/email")
@login_required
@_password_checks
def account_email():
    form = ChangeEmailForm()
    if not _mail_configured():
        flash("This Tollgate has no mail server configured, so an address cannot be confirmed.", "error")
        return _render_account(400, email_form=form)
    if not form.validate_on_submit():
        return _render_account(400, email_form=form)
    user = current_user._get_current_object()
    try:
        change = request_email_change(user, form.new_email.data, form.password.data, now(), request.remote_addr)
    except SelfServiceError as refused:
        if refused.field == "password":
            _wrong_password(form.password)
        else:
            db.session.rollback()
            form.new_email.errors.append(str(refused))
        return _render_account(400, email_form=form)
    db.session.commit()
    _send_later(*email_change_emails(user, change, _link("auth.confirm_email", email_token=change.token)))
    flash(
        f"We sent a link to {change.new_email}: your address changes when it is opened (within 24 hours). "
        f"{change.old_email} was told.",
        "info",
    )
    return redirect(url_for("auth.account"))


@bp.route("/account/email/confirm/<email_token>", methods=["GET", "POST"])
def confirm_email(email_token: str):
    moment = now()
    row = find_token(email_token, EMAIL_CHANGE, moment)
    if row is None:
        return _private(render_template("auth/link_invalid.html", what="e-mail change"), 404)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            user = confirm_email_change(row, moment, request.remote_addr)
        except SelfServiceError as refused:
            db.session.commit()
            flash(str(refused), "error")
            return _private(render_template("auth/link_invalid.html", what="e-mail change"), 409)
        db.session.commit()
        flash(f"Your address is now {user.email}: sign in with it from now on.", "info")
        target = "auth.account" if current_user.is_authenticated else "auth.login"
        return redirect(url_for(target))
    return _private(render_template("auth/confirm_email.html", form=form, row=row))


@bp.post("/account/sign-out-everywhere")
@login_required
def account_sign_out_everywhere():
    form = ConfirmForm()
    if not form.validate_on_submit():
        return _render_account(400)
    ended = sign_out_everywhere(current_user, now(), request.remote_addr)
    logout_user()
    db.session.commit()
    flash(f"You are signed out everywhere ({ended} sign-in{'s' if ended != 1 else ''} ended).", "info")
    return redirect(url_for("auth.login"))
