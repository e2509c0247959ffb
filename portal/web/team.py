"""Portal pages: the team (members, roles, invitations), accepting an invitation, and the audit
trail with its CSV export.

An invitation's link is shown once, in the response to the POST that made it (never stored,
flashed or redirected to), and e-mailed when a mail server is configured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import (
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_limiter.errors import RateLimitExceeded
from flask_login import current_user, login_required, logout_user

from ..errors import handle_http_error
from ..extensions import db, limiter
from ..kernel.audit import record_event
from ..kernel.clock import now
from ..kernel.csv_export import csv_lines
from ..models import Invite, User
from ..sessions import sign_in, sign_out
from ..tenancy import two_factor
from ..tenancy.invites import (
    InviteError,
    InviteNotAllowed,
    InviteUnusable,
    accept_invite,
    create_invite,
    find_invite,
    invitable_roles,
    pending_invites,
    revoke_invite,
    send_invite_email,
)
from ..tenancy.members import (
    AuditFilter,
    Cursor,
    NotAllowed,
    TeamError,
    assignable_roles,
    audit_page,
    audit_users,
    change_role,
    export_rows,
    keys_made_by,
    may_manage,
    remove_member,
    team_members,
)
from . import bp
from .filters import query_id
from .once import claim_form
from .roles import admin_required, can_change, is_owner, owner_required
from .team_forms import ROLE_LABELS, AcceptInviteForm, AuditFilterForm, InviteForm, RoleForm
from .tenancy import get_owned_or_404


def _no_store(response: Response) -> Response:
    # The page holds a one-time link: no browser or proxy may keep a copy, nor pass it on.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# -- the team page --------------------------------------------------------------------------------


def _render_team(form: InviteForm | None = None, status: int = 200):
    moment = now()
    page = render_template(
        "web/team.html",
        members=team_members(current_user.tenant_id),
        invites=pending_invites(current_user.tenant_id, moment),
        form=form or InviteForm(invitable_roles(current_user)),
        can_change=can_change(),
        may_manage=lambda target: may_manage(current_user, target),
        assignable=assignable_roles(current_user),
        invitable=invitable_roles(current_user),
        role_labels=ROLE_LABELS,
        is_owner=is_owner(),
        now=moment,
    )
    return page, status


def _refused(message: str, status: int):
    """The team page again, with why the change was refused."""
    db.session.rollback()
    flash(message, "error")
    return _render_team(status=status)


@bp.get("/team")
@login_required
def team():
    return _render_team()


@bp.post("/team/invites")
@admin_required
def team_invite():
    form = InviteForm(invitable_roles(current_user))
    if current_user.role == "admin" and request.form.get("role") == "owner":
        return _refused("Only an owner can invite an owner.", 403)
    if not form.validate_on_submit():
        return _render_team(form, 400)
    first = claim_form(form)
    if first is None:
        return _render_team(form, 400)
    if not first:
        flash(
            "That form was already sent, and its invitation was made then. The link is shown only once: "
            "if you did not copy it, invite the same address again for a new link.",
            "info",
        )
        return redirect(url_for("web.team"))
    moment = now()
    try:
        invite, token, replaced = create_invite(
            current_user, form.email.data, form.role.data, moment, request.remote_addr
        )
    except InviteNotAllowed as exc:
        return _refused(str(exc), 403)
    except InviteError as exc:
        db.session.rollback()
        getattr(form, exc.field or "email").errors.append(str(exc))
        return _render_team(form, 400)
    db.session.commit()
    link = current_app.config["PORTAL_BASE_URL"] + url_for("web.invite", token=token)
    smtp = bool(current_app.config.get("SMTP_URL"))
    sign_in_url = current_app.config["PORTAL_BASE_URL"] + url_for("auth.login")
    mail_error = send_invite_email(invite, link, current_user, sign_in_url) if smtp else None
    page = render_template(
        "web/invite_link.html", invite=invite, link=link, replaced=replaced, smtp=smtp, mail_error=mail_error
    )
    return _no_store(make_response(page, 201))


@bp.post("/team/invites/<int:invite_id>/revoke")
@admin_required
def team_invite_revoke(invite_id: int):
    invite = get_owned_or_404(Invite, invite_id)
    try:
        revoke_invite(invite, current_user, now(), request.remote_addr)
    except InviteNotAllowed as exc:
        return _refused(str(exc), 403)
    except InviteUnusable as exc:
        flash(f"The invitation to {invite.email} is {exc.state} already.", "info")
        return redirect(url_for("web.team"))
    db.session.commit()
    flash(f"The invitation to {invite.email} is revoked: its link no longer works.", "success")
    return redirect(url_for("web.team"))


def _member_or_404(user_id: int) -> User:
    user = get_owned_or_404(User, user_id)
    if not user.is_enabled:
        abort(404)  # removed already
    return user


@bp.post("/team/members/<int:user_id>/role")
@admin_required
def team_member_role(user_id: int):
    target = _member_or_404(user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        return _refused("Choose one of the roles owner, admin or member.", 400)
    try:
        old_role = change_role(target, form.role.data, current_user, now(), request.remote_addr)
    except NotAllowed as exc:
        return _refused(str(exc), 403)
    except TeamError as exc:
        return _refused(str(exc), 409)
    if old_role is None:
        flash(f"{target.email} is {form.role.data} already.", "info")
    else:
        db.session.commit()
        flash(f"{target.email} is now {form.role.data} (was {old_role}).", "success")
    return redirect(url_for("web.team"))


@bp.get("/team/members/<int:user_id>/remove")
@admin_required
def team_member_remove_page(user_id: int):
    """What removing someone does, the API keys they made, and the choice to keep those keys."""
    target = _member_or_404(user_id)
    if not may_manage(current_user, target):
        return _refused("Only an owner can grant or take away the owner role, or remove an owner.", 403)
    page = render_template(
        "web/team_remove.html", target=target, keys=keys_made_by(target), myself=target.id == current_user.id, now=now()
    )
    return page


def _keys_said(count: int, kept: bool) -> str:
    """The sentence after a removal about the API keys the removed user made."""
    if count == 0:
        return ""
    if count == 1:
        return f" The API key they made {'stays active' if kept else 'is revoked'}."
    return f" The {count} API keys they made {'stay active' if kept else 'are revoked'}."


@bp.post("/team/members/<int:user_id>/remove")
@admin_required
def team_member_remove(user_id: int):
    target = _member_or_404(user_id)
    myself = target.id == current_user.id
    keep = request.form.get("keep_keys") == "yes"
    kept = len(keys_made_by(target)) if keep else 0
    try:
        revoked = remove_member(target, current_user, now(), request.remote_addr, keep_keys=keep)
    except NotAllowed as exc:
        return _refused(str(exc), 403)
    except TeamError as exc:
        return _refused(str(exc), 409)
    db.session.commit()
    keys_note = _keys_said(kept, True) if keep else _keys_said(len(revoked), False)
    if myself:
        logout_user()
        flash(f"You left {target.tenant.name}.{keys_note}", "info")
        return redirect(url_for("auth.login"))
    flash(f"{target.email} is removed from the team and signed out everywhere.{keys_note}", "success")
    return redirect(url_for("web.team"))


# -- two-factor sign-in ----------------------------------------------------------------------------


@bp.post("/team/two-factor")
@owner_required
def team_two_factor_required():
    """The tenant rule: owners and admins must sign in with a second factor."""
    tenant = current_user.tenant
    required = request.form.get("require") == "yes"
    if required == tenant.require_two_factor:
        flash("Nothing changed.", "info")
        return redirect(url_for("web.team"))
    tenant.require_two_factor = required
    record_event(
        "settings.changed", tenant.id, current_user.id, request.remote_addr, require_two_factor=required
    ).created_at = now()
    db.session.commit()
    if required:
        missing = sum(1 for m in team_members(tenant.id) if two_factor.must_set_up(m))
        flash(
            "Owners and admins must now sign in with two-factor; "
            f"{missing} of them will be asked to set it up on their next page.",
            "success",
        )
    else:
        flash("Two-factor sign-in is no longer required; those who set it up keep it.", "success")
    return redirect(url_for("web.team"))


@bp.post("/team/members/<int:user_id>/two-factor/reset")
@owner_required
def team_member_two_factor_reset(user_id: int):
    """An owner turns off a member's two-factor (a lost phone): they sign in with the password,
    and set it up again if the team requires it."""
    target = _member_or_404(user_id)
    if target.id == current_user.id:
        return _refused("Turn your own two-factor sign-in off on your account page.", 409)
    if not target.has_two_factor:
        flash(f"{target.email} has no two-factor sign-in to reset.", "info")
        return redirect(url_for("web.team"))
    two_factor.turn_off(target, now(), request.remote_addr, by=current_user._get_current_object())
    db.session.commit()
    flash(
        f"Two-factor sign-in of {target.email} is reset: their password alone signs them in"
        + (", and they are asked to set it up again." if two_factor.must_set_up(target) else "."),
        "success",
    )
    return redirect(url_for("web.team"))


# -- accepting an invitation (public) -------------------------------------------------------------


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _throttled(limit) -> Response:
    retry_after = max(1, int(limit.reset_at - time.time()))
    page = render_template("web/invite_invalid.html", reason="throttled", retry_after=retry_after)
    response = make_response(page, 429)
    response.headers["Retry-After"] = str(retry_after)
    return _no_store(response)


@bp.errorhandler(RateLimitExceeded)
def _rate_limited(error: RateLimitExceeded):
    # A limit with an on_breach page (accepting an invitation) answers with it; others as usual.
    return error.response if error.response is not None else handle_http_error(error)


INVALID_STATUS = {"unknown": 404, "expired": 410, "accepted": 410, "revoked": 410}


@bp.route("/invite/<token>", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"], on_breach=_throttled)
def invite(token: str):
    found = find_invite(token)
    moment = now()
    state = "unknown" if found is None else found.state(moment)
    if state != "pending":
        page = render_template("web/invite_invalid.html", reason=state, invite=found)
        return _no_store(make_response(page, INVALID_STATUS[state]))
    form = AcceptInviteForm()
    status = 200
    if form.validate_on_submit():
        try:
            user = accept_invite(found, form.name.data, form.password.data, moment, request.remote_addr)
        except InviteUnusable as exc:  # used or revoked a moment ago
            db.session.rollback()
            page = render_template("web/invite_invalid.html", reason=exc.state, invite=found)
            return _no_store(make_response(page, 410))
        except InviteError as exc:
            db.session.rollback()
            target = getattr(form, exc.field) if exc.field else None
            (target.errors if target is not None else form.form_errors).append(str(exc))
            status = 400 if exc.field else 409
        else:
            db.session.commit()
            if current_user.is_authenticated:
                sign_out()
            sign_in(user)
            db.session.commit()
            flash(f"Welcome to {found.tenant.name}! You are signed in as {user.email} ({user.role}).", "success")
            return redirect(url_for("web.dashboard"))
    elif request.method == "POST":
        status = 400
    page = render_template("web/invite_accept.html", invite=found, form=form, role_labels=ROLE_LABELS)
    return _no_store(make_response(page, status))


# -- the audit trail ------------------------------------------------------------------------------


def _audit_filter(users: list[User]) -> tuple[AuditFilterForm, AuditFilter | None]:
    """The filter form read from the URL, and the filter (None when the form is invalid)."""
    user_arg = request.args.get("user", "")
    if user_arg.isdigit() and query_id(user_arg) not in {user.id for user in users}:
        abort(404)  # someone else's user (or no one's)
    form = AuditFilterForm(request.args, users)
    return form, (form.audit_filter() if form.validate() else None)


def _cursor(name: str) -> Cursor | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        return Cursor.parse(value)
    except ValueError:
        abort(400, description="That page link is not valid; start again from the newest events.")


@bp.get("/team/audit")
@login_required
def team_audit():
    users = audit_users(current_user.tenant_id)
    form, where = _audit_filter(users)
    if where is None:
        page = render_template("web/audit.html", form=form, page=None, users={}, newer_url=None, older_url=None)
        return page, 400
    result = audit_page(current_user.tenant_id, where, before=_cursor("before"), after=_cursor("after"))
    args = form.query_args()
    return render_template(
        "web/audit.html",
        form=form,
        page=result,
        users={user.id: user for user in users},
        export_url=url_for("web.team_audit_csv", **args),
        newer_url=url_for("web.team_audit", after=str(result.newer), **args) if result.newer else None,
        older_url=url_for("web.team_audit", before=str(result.older), **args) if result.older else None,
        first_page_url=url_for("web.team_audit", **args),
        paged=bool(request.args.get("before") or request.args.get("after")),
    )


@bp.get("/team/audit.csv")
@login_required
def team_audit_csv():
    users = audit_users(current_user.tenant_id)
    form, where = _audit_filter(users)
    if where is None:
        errors = "; ".join(f"{form[name].label.text}: {' '.join(messages)}" for name, messages in form.errors.items())
        abort(400, description=f"The filter is not valid ({errors}).")
    tenant_id, slug = current_user.tenant_id, current_user.tenant.slug

    def generate() -> Iterator[str]:
        chunk: list[str] = []
        size = 0
        for line in csv_lines(export_rows(tenant_id, where)):
            chunk.append(line)
            size += len(line)
            if size > 32_768:
                yield "".join(chunk)
                chunk, size = [], 0
        yield "".join(chunk)

    response = Response(stream_with_context(generate()), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-{slug}-{now():%Y%m%d-%H%M%S}.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/activity")
def activity():
    """The old activity page moved to the audit trail."""
    return redirect(url_for("web.team_audit"), 301)
