"""The JSON API, v1: authenticated by API key only, limited by the tenant's plan, metered."""

from __future__ import annotations

from flask import Blueprint, Flask, g
from werkzeug.routing import BaseConverter

from ..extensions import csrf, limiter

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# Public documents of the API (no key needed): the OpenAPI description.
docs_bp = Blueprint("api_docs", __name__, url_prefix="/api/v1")


def _tenant_bucket() -> str:
    return g.api_call.tenant_key


def _plan_windows() -> str:
    return g.api_call.limit_string


class ServiceName(BaseConverter):
    """An outside service's name in a path: what the API's bodies accept as one."""

    regex = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class RecordId(BaseConverter):
    """A record's id in a path (an id no row can have matches no route: 404)."""

    regex = r"[0-9]{1,10}"


def init_app(app: Flask) -> None:
    app.url_map.converters["service"] = ServiceName
    app.url_map.converters["record_id"] = RecordId
    from . import alerts, billing, costs, gateway, guard, notify, verify, views  # noqa: F401 - registers the routes

    guard.init_app(app)  # before the limiter: admission decides first
    gateway.init_app(app)
    # The plan's windows, one bucket per tenant shared by all its keys and endpoints; the
    # limiter's storage answers from the admission decision (limiter_storage).
    limiter.shared_limit(_plan_windows, scope="api", key_func=_tenant_bucket)(bp)
    csrf.exempt(bp)
    app.register_blueprint(bp)
    app.register_blueprint(docs_bp)
    verify.init_app(app)
