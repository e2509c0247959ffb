"""The tenant admin portal's pages."""

from flask import Blueprint, Flask

bp = Blueprint("web", __name__)


def init_app(app: Flask) -> None:
    from . import filters, keys, once, views  # noqa: F401 - registers the routes

    filters.init_app(app)
    once.init_app(app)
    app.register_blueprint(bp)
