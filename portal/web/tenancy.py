"""Tenant scoping for portal views: another tenant's object is a 404."""

from __future__ import annotations

from typing import TypeVar

from flask import abort
from flask_login import current_user
from sqlalchemy import select

from ..extensions import db
from . import bp

M = TypeVar("M")

# The largest id each URL parameter's column holds (usage records have 64-bit ids, the rest 32).
ID_LIMITS = {"record_id": 2**63 - 1}
DEFAULT_ID_LIMIT = 2**31 - 1


@bp.url_value_preprocessor
def _ids_within_their_columns(endpoint: str | None, values: dict | None) -> None:
    """An id no row can have (0, or past its column's range) is a 404 before any query: the
    database would refuse the number itself."""
    for name, value in (values or {}).items():
        within = 0 < value <= ID_LIMITS.get(name, DEFAULT_ID_LIMIT) if isinstance(value, int) else True
        if name.endswith("_id") and not within:
            abort(404)


def get_owned_or_404(model: type[M], object_id: int) -> M:
    """The signed-in tenant's ``model`` with this id, or 404 (never 403: ids are not disclosed)."""
    obj = db.session.scalar(select(model).where(model.id == object_id, model.tenant_id == current_user.tenant_id))
    if obj is None:
        abort(404)
    return obj


def owned(model: type[M]):
    """A select of ``model`` limited to the signed-in tenant."""
    return select(model).where(model.tenant_id == current_user.tenant_id)
