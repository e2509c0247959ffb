"""The JSON API, v1: authenticated by API key only, limited by the tenant's plan, metered."""

from __future__ import annotations

from flask import Blueprint, Flask
from flask_limiter import Limiter

from .. import limiter_storage
from ..extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api/v1")
# Public documents of the API (no key needed): the OpenAPI description.
docs_bp = Blueprint("api_docs", __name__, url_prefix="/api/v1")


def _tenant_bucket() -> str:
    from flask import g

    return g.api_call.tenant_key


def _plan_windows() -> str:
    from flask import g

    return g.api_call.limit_string


# Flask-Limiter declares and enforces the plan windows: one bucket per tenant, shared by all of
# its keys and endpoints. Its storage answers from the admission decision (limiter_storage).
api_limiter = Limiter(
    key_func=_tenant_bucket,
    storage_uri=f"{limiter_storage.SCHEME}://",
    strategy="fixed-window",
    headers_enabled=False,
    key_prefix="api",
)


def init_app(app: Flask) -> None:
    from . import guard, views  # noqa: F401 - registers the routes

    guard.init_app(app)  # before the limiter: admission decides first
    api_limiter.shared_limit(_plan_windows, scope="api")(bp)
    api_limiter.init_app(app)
    csrf.exempt(bp)
    app.register_blueprint(bp)
    app.register_blueprint(docs_bp)
