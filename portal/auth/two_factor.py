"""Two-factor sign-in in the portal: the step after the password (``/login/two-factor``), setting
it up and managing it (``/account/two-factor``), and the tenant rule that sends an owner or admin
without it to set it up before any other page.

Between the password and the code, the browser holds only a pending sign-in in its (signed)
session cookie: the user's id, a fingerprint of their password and when it started. It lasts five
minutes and opens nothing but the code form; a password change in the meantime voids it.
"""

from __future__ import annotations

import hashlib

from flask import current_app, flash, make_response, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required

from ..extensions import db, limiter
from ..kernel.clock import now, seconds
from ..models import User
from ..tenancy import two_factor
from ..tenancy.passwords import verify_password
from . import bp
from .forms import EnableTwoFactorForm, PasswordCheckForm, TwoFactorForm
from .signin import browser, complete_sign_in, record_failure

DEVICE_COOKIE = "tollgate_device"
PENDING_KEY = "two_factor_pending"
SETUP_KEY = "two_factor_setup"
PENDING_SECONDS = 300
SETUP_SECONDS = 900
ISSUER = "Tollgate"
# Pages a user who must set up two-factor may still open.
OPEN_WHILE_REQUIRED = frozenset({"auth.two_factor_setup", "auth.logout", "static"})


def _fingerprint(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the second step of signing in ------------------------------------------------------------------


def start_second_step(user: User, remember: bool, target: str | None):
    """The password was right and the user has two-factor: ask for the code."""
    session[PENDING_KEY] = {
        "user": user.id,
        "password": _fingerprint(user),
        "at": int(seconds()),
        "remember": remember,
        "next": target if target and len(target) <= 1024 else "",  # the session cookie stays small
    }
    return redirect(url_for("auth.login_two_factor"))


def _pending_user() -> User | None:
    pending = session.get(PENDING_KEY)
    if not isinstance(pending, dict) or seconds() - pending.get("at", 0) > PENDING_SECONDS:
        return None
    user = db.session.get(User, pending.get("user"))
    if user is None or not user.is_active or not user.has_two_factor or _fingerprint(user) != pending.get("password"):
        return None
    return user


def _two_factor_limit() -> str:
    return current_app.config["TWO_FACTOR_RATE_LIMIT"]


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _pending_account() -> str:
    pending = session.get(PENDING_KEY)
    user_id = pending.get("user") if isinstance(pending, dict) else None
    return f"two-factor:{user_id}"


@bp.route("/login/two-factor", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
@limiter.limit(_two_factor_limit, methods=["POST"], key_func=_pending_account, scope="two-factor")
def login_two_factor():
    user = _pending_user()
    if user is None:
        session.pop(PENDING_KEY, None)
        flash("Your sign-in took too long or was interrupted: sign in again.", "info")
        return redirect(url_for("auth.login"))
    form = TwoFactorForm()
    if form.validate_on_submit():
        moment = now()
        factor = two_factor.check_second_factor(user, form.code.data, moment, request.remote_addr)
        if factor is None:
            db.session.rollback()
            record_failure(user, "wrong two-factor code")
            form.code.errors.append("That code is not right, or was used already. Try the one the app shows now.")
            return _no_store(make_response(render_template("auth/two_factor.html", form=form), 401))
        pending = session.pop(PENDING_KEY)
        token = None
        if form.remember_device.data:
            token = two_factor.remember_device(user, browser(), moment)
        if factor.codes_left is not None:
            left = factor.codes_left
            flash(
                f"You signed in with a recovery code; {left} of them left. "
                "Make new ones on your account page if you are running out.",
                "error" if left <= 2 else "info",
            )
        response = complete_sign_in(user, pending["remember"], pending["next"], second_factor=factor.method)
        if token is not None:
            response.set_cookie(
                DEVICE_COOKIE,
                token,
                max_age=int(two_factor.DEVICE_LIFETIME.total_seconds()),
                path=url_for("auth.login"),
                secure=current_app.config["SESSION_COOKIE_SECURE"],
                httponly=True,
                samesite="Lax",
            )
        return response
    status = 400 if request.method == "POST" else 200
    return _no_store(make_response(render_template("auth/two_factor.html", form=form), status))


# -- required of owners and admins ------------------------------------------------------------------


def _require_set_up():
    """An owner or admin of a tenant that requires two-factor, without it, sets it up first."""
    if request.blueprint not in ("web", "auth") or request.endpoint in OPEN_WHILE_REQUIRED:
        return None
    if not current_user.is_authenticated or not two_factor.must_set_up(current_user):
        return None
    flash(f"{current_user.tenant.name} requires two-factor sign-in for owners and admins: set it up first.", "info")
    return redirect(url_for("auth.two_factor_setup"))


bp.before_app_request(_require_set_up)


# -- /account/two-factor ----------------------------------------------------------------------------


def _setup_secret() -> str:
    """The secret being set up in this browser: kept for a while so a reload shows the same one."""
    pending = session.get(SETUP_KEY)
    if isinstance(pending, dict) and seconds() - pending.get("at", 0) < SETUP_SECONDS:
        return pending["secret"]
    secret = two_factor.new_secret()
    session[SETUP_KEY] = {"secret": secret, "at": int(seconds())}
    return secret


def _render(status: int = 200, **context):
    user = current_user._get_current_object()
    moment = now()
    if user.has_two_factor:
        context.setdefault("codes_form", PasswordCheckForm())
        context.setdefault("disable_form", PasswordCheckForm())
        page = render_template(
            "auth/two_factor_manage.html",
            codes_left=two_factor.recovery_codes_left(user),
            devices=two_factor.remembered_devices(user, moment),
            required=user.role in two_factor.REQUIRED_ROLES and user.tenant.require_two_factor,
            **context,
        )
    else:
        secret = _setup_secret()
        uri = two_factor.provisioning_uri(user, secret, ISSUER)
        context.setdefault("form", EnableTwoFactorForm())
        page = render_template(
            "auth/two_factor_setup.html",
            qr=two_factor.qr_svg(uri),
            secret=two_factor.spaced(secret),
            required=two_factor.must_set_up(user),
            **context,
        )
    return _no_store(make_response(page, status))


def _recovery_codes_page(codes: list[str], heading: str):
    response = make_response(render_template("auth/recovery_codes.html", codes=codes, heading=heading))
    response.headers["Referrer-Policy"] = "no-referrer"
    return _no_store(response)


@bp.route("/account/two-factor", methods=["GET", "POST"])
@login_required
def two_factor_setup():
    user = current_user._get_current_object()
    if request.method == "GET" or user.has_two_factor:
        return _render()
    form = EnableTwoFactorForm()
    if not form.validate_on_submit():
        return _render(400, form=form)
    try:
        codes = two_factor.enable(user, _setup_secret(), form.code.data, now(), request.remote_addr)
    except two_factor.TwoFactorError as refused:
        form.code.errors.append(str(refused))
        return _render(400, form=form)
    session.pop(SETUP_KEY, None)
    db.session.commit()
    return _recovery_codes_page(codes, "Two-factor sign-in is on")


def _check_limit() -> str:
    return current_app.config["ACCOUNT_CHECK_RATE_LIMIT"]


def _signed_in_user() -> str:
    return f"account-user:{current_user.get_id()}"


# The same budget of current-password checks as the account page's other forms.
_password_checks = limiter.shared_limit(_check_limit, scope="account-check", key_func=_signed_in_user)


def _password_confirmed(form: PasswordCheckForm) -> bool:
    if not form.validate_on_submit():
        return False
    if verify_password(current_user.password_hash, form.password.data):
        return True
    db.session.rollback()
    record_failure(current_user._get_current_object(), "wrong current password on the two-factor page")
    form.password.errors.append("Your current password is not that one.")
    return False


@bp.post("/account/two-factor/recovery-codes")
@login_required
@_password_checks
def two_factor_recovery_codes():
    user = current_user._get_current_object()
    if not user.has_two_factor:
        return redirect(url_for("auth.two_factor_setup"))
    form = PasswordCheckForm()
    if not _password_confirmed(form):
        return _render(400, codes_form=form)
    codes = two_factor.renew_recovery_codes(user, now(), request.remote_addr)
    db.session.commit()
    return _recovery_codes_page(codes, "New recovery codes")


@bp.post("/account/two-factor/disable")
@login_required
@_password_checks
def two_factor_disable():
    user = current_user._get_current_object()
    if not user.has_two_factor:
        return redirect(url_for("auth.two_factor_setup"))
    if user.tenant.require_two_factor and user.role in two_factor.REQUIRED_ROLES:
        flash(f"{user.tenant.name} requires two-factor sign-in for owners and admins: it stays on.", "error")
        return _render(409)
    form = PasswordCheckForm()
    if not _password_confirmed(form):
        return _render(400, disable_form=form)
    two_factor.turn_off(user, now(), request.remote_addr)
    db.session.commit()
    flash("Two-factor sign-in is off: your password alone signs you in.", "info")
    return redirect(url_for("auth.account"))


@bp.post("/account/two-factor/devices/forget")
@login_required
def two_factor_forget_devices():
    # The CSRF token (checked for every form) is enough: forgetting devices only makes signing
    # in stricter.
    forgotten = two_factor.forget_all_devices(current_user._get_current_object(), now(), request.remote_addr)
    db.session.commit()
    flash(f"Forgot {forgotten} remembered device{'s' if forgotten != 1 else ''}: each asks for a code again.", "info")
    return redirect(url_for("auth.two_factor_setup"))
