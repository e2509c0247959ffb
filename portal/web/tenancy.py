"""Tenant scoping for portal views: another tenant's object is a 404."""

from __future__ import annotations

from typing import TypeVar

from flask import abort
from flask_login import current_user
from sqlalchemy import select

from ..extensions import db

M = TypeVar("M")


def get_owned_or_404(model: type[M], object_id: int) -> M:
    """The signed-in tenant's ``model`` with this id, or 404 (never 403: ids are not disclosed)."""
    obj = db.session.scalar(select(model).where(model.id == object_id, model.tenant_id == current_user.tenant_id))
    if obj is None:
        abort(404)
    return obj


def owned(model: type[M]):
    """A select of ``model`` limited to the signed-in tenant."""
    return select(model).where(model.tenant_id == current_user.tenant_id)
