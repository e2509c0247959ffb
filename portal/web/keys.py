"""Portal pages for API keys: the list, a key's page, and creating, rotating, deactivating and revoking.

A secret is shown once, in the response to the request that made it; it never goes into the
session, a flash message, a URL or a redirect.
"""

from __future__ import annotations

from flask import flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.clock import now
from ..models import ApiKey
from ..tenancy.key_search import KeyQuery, search_keys
from ..tenancy.keys import create_api_key, revoke_api_key, rotate_api_key, set_key_active
from ..tenancy.members import key_maker
from . import bp
from .filters import query_args
from .forms import ApiKeyForm, KeyFilterForm, first_expiry_date
from .once import claim_form, first_submission
from .roles import admin_required, can_change
from .tenancy import get_owned_or_404

can_manage_keys = can_change
key_manager_required = admin_required


def _audit(action: str, key: ApiKey, **details: object) -> None:
    record_event(
        action,
        current_user.tenant_id,
        current_user.id,
        request.remote_addr,
        key_id=key.id,
        prefix=key.prefix,
        name=key.name,
        **details,
    )


def _render_list(form: ApiKeyForm, status: int = 200):
    filters = KeyFilterForm(query_args())
    if request.args and not filters.validate():
        status = 400
        found = search_keys(current_user.tenant_id, KeyQuery(), now())
    else:
        found = search_keys(current_user.tenant_id, filters.query(), now())
    base = {k: v for k, v in request.args.items() if k not in ("before", "after") and v}
    page = render_template(
        "web/keys.html",
        keys=found.keys,
        found=found,
        filters=filters,
        filtered=bool(base.keys() - {"per_page"}),
        older_url=url_for("web.keys", **base, before=found.older) if found.older else None,
        newer_url=url_for("web.keys", **base, after=found.newer) if found.newer else None,
        now=now(),
        form=form,
        can_manage=can_manage_keys(current_user),
        first_expiry=first_expiry_date(),
    )
    return page, status


def _render_secret(key: ApiKey, secret: str, rotated: bool, status: int):
    response = make_response(
        render_template("web/key_secret.html", key=key, secret=secret, rotated=rotated, now=now()), status
    )
    # The page holds a secret: no browser or proxy may keep a copy.
    response.headers["Cache-Control"] = "no-store"
    return response


def _back_to(key: ApiKey):
    return redirect(url_for("web.key_detail", key_id=key.id))


@bp.get("/keys")
@login_required
def keys():
    return _render_list(ApiKeyForm())


@bp.post("/keys")
@key_manager_required
def create_key():
    form = ApiKeyForm()
    if not form.validate_on_submit():
        return _render_list(form, 400)
    first = claim_form(form)
    if first is None:
        return _render_list(form, 400)
    if not first:
        flash(
            "That form was already sent, and its key was made then. A secret is shown only once: "
            "if you did not copy it, rotate the key for a new one.",
            "info",
        )
        return redirect(url_for("web.keys"))
    key, secret = create_api_key(
        current_user.tenant,
        form.name.data,
        description=form.description.data or "",
        expires_at=form.expires_at,
        scope=form.scope.data,
        created_by_id=current_user.id,
    )
    db.session.flush()  # the key's id goes into the audit event
    _audit("api_key.created", key, expires_at=key.expires_at.isoformat() if key.expires_at else None)
    db.session.commit()
    return _render_secret(key, secret, rotated=False, status=201)


@bp.get("/keys/<int:key_id>")
@login_required
def key_detail(key_id: int):
    key = get_owned_or_404(ApiKey, key_id)
    return render_template(
        "web/key_detail.html", key=key, maker=key_maker(key), now=now(), can_manage=can_manage_keys(current_user)
    )


def _set_active(key_id: int, active: bool):
    key = get_owned_or_404(ApiKey, key_id)
    if key.revoked_at is None and key.is_active == active:
        flash(f"Key “{key.name}” is already {'active' if active else 'inactive'}.", "info")
        return _back_to(key)
    try:
        set_key_active(key, active)
    except ValueError as exc:
        db.session.rollback()
        flash(f"Could not change key “{key.name}”: {exc}.", "error")
        return _back_to(key)
    _audit("api_key.reactivated" if active else "api_key.deactivated", key)
    db.session.commit()
    if active:
        flash(f"Key “{key.name}” is active again.", "success")
    else:
        flash(f"Key “{key.name}” is deactivated: calls with it are refused until you reactivate it.", "success")
    return _back_to(key)


@bp.post("/keys/<int:key_id>/deactivate")
@key_manager_required
def deactivate_key(key_id: int):
    return _set_active(key_id, False)


@bp.post("/keys/<int:key_id>/reactivate")
@key_manager_required
def reactivate_key(key_id: int):
    return _set_active(key_id, True)


@bp.post("/keys/<int:key_id>/revoke")
@key_manager_required
def revoke_key(key_id: int):
    key = get_owned_or_404(ApiKey, key_id)
    if key.revoked_at is not None:
        # Revoking again would move the revocation time.
        flash(f"Key “{key.name}” is already revoked.", "error")
        return _back_to(key)
    revoke_api_key(key)
    _audit("api_key.revoked", key)
    db.session.commit()
    flash(f"Key “{key.name}” is revoked. It can no longer be used.", "success")
    return _back_to(key)


@bp.post("/keys/<int:key_id>/rotate")
@key_manager_required
def rotate_key(key_id: int):
    key = get_owned_or_404(ApiKey, key_id)
    first = first_submission()
    if first is None:
        flash("That form has expired. Please try again.", "error")
        return _back_to(key)
    if not first:
        flash(
            f"Key “{key.name}” was already rotated by that form. The new secret was shown only once: "
            "if you did not copy it, rotate the key again.",
            "info",
        )
        return _back_to(key)
    old_prefix = key.prefix
    try:
        secret = rotate_api_key(key, current_user.id)
    except ValueError as exc:
        db.session.rollback()
        flash(f"Could not rotate key “{key.name}”: {exc}.", "error")
        return _back_to(key)
    _audit("api_key.rotated", key, old_prefix=old_prefix)
    db.session.commit()
    return _render_secret(key, secret, rotated=True, status=200)
