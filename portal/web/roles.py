"""Who may do what in the portal: members read; owners and admins change; only owners change the
plan (what the tenant pays) and who is an owner."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from ..tenancy.members import PLAN_ROLES

CHANGER_ROLES = frozenset({"owner", "admin"})


def can_change(user=None) -> bool:
    """True for an owner or admin of the tenant (members see everything but change nothing)."""
    user = current_user if user is None else user
    return getattr(user, "role", None) in CHANGER_ROLES


def is_owner(user=None) -> bool:
    user = current_user if user is None else user
    return getattr(user, "role", None) == "owner"


def can_change_plan(user=None) -> bool:
    """True for an owner: the plan is what the tenant pays, so admins read it but do not change it."""
    user = current_user if user is None else user
    return getattr(user, "role", None) in PLAN_ROLES


def admin_required(view: Callable) -> Callable:
    """Signed in as an owner or admin of the tenant, or 403."""

    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not can_change():
            abort(403)
        return view(*args, **kwargs)

    return wrapper


def owner_required(view: Callable) -> Callable:
    """Signed in as an owner of the tenant, or 403."""

    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if not is_owner():
            abort(403)
        return view(*args, **kwargs)

    return wrapper


plan_manager_required = owner_required
