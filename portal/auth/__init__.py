"""Signing in and out of the portal."""

from flask import Blueprint, Flask

bp = Blueprint("auth", __name__)


def init_app(app: Flask) -> None:
    from . import account, session, two_factor, views  # noqa: F401 - registers the routes and the user loader

    session.init_app(app)
    app.register_blueprint(bp)
