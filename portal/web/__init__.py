"""The tenant admin portal's pages: one module per section, thin views over the domain packages."""

from flask import Blueprint, Flask

bp = Blueprint("web", __name__)

# Each module registers its routes on ``bp`` when imported.
PAGE_MODULES = (
    "views",
    "keys",
    "explorer",
    "logs",
    "costs",
    "alerts",
    "alert_rules",
    "notifications",
    "billing",
    "team",
)


def init_app(app: Flask) -> None:
    from importlib import import_module

    from . import filters, nav, once, security, tenancy  # noqa: F401 - tenancy checks ids in URLs

    for name in PAGE_MODULES:
        import_module(f"{__name__}.{name}")
    filters.init_app(app)
    nav.init_app(app)
    once.init_app(app)
    security.init_app(app)
    app.register_blueprint(bp)
