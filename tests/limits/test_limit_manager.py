"""Flask-Limiter over the remembering limit manager gives Flask-Limiter's answers."""

from __future__ import annotations

import flask_limiter
import pytest
from flask import Blueprint, Flask

from portal.limits.limit_manager import MAX_REMEMBERED, Limiter, RememberingLimitManager


def build(limiter_class, limits: dict[str, str]) -> tuple[Flask, flask_limiter.Limiter]:
    """An app with a blueprint whose shared limit is read from ``limits`` on every request."""
    app = Flask(__name__)
    app.config["RATELIMIT_STORAGE_URI"] = "memory://"
    limiter = limiter_class(key_func=lambda: "one-client", default_limits=["2/minute"])
    api = Blueprint("api", __name__, url_prefix="/api")
    other = Blueprint("other", __name__, url_prefix="/other")

    @api.get("/a")
    def a():
        return "a"

    @api.get("/b")
    def b():
        return "b"

    @other.get("/c")
    def c():
        return "c"

    limiter.shared_limit(lambda: limits["api"], scope="api")(api)
    limiter.init_app(app)
    app.register_blueprint(api)
    app.register_blueprint(other)
    return app, limiter


def statuses(client, path: str, calls: int) -> list[int]:
    return [client.get(path).status_code for _ in range(calls)]


@pytest.mark.parametrize("limiter_class", [flask_limiter.Limiter, Limiter], ids=["flask-limiter", "remembering"])
def test_the_same_answers_as_flask_limiter(limiter_class):
    limits = {"api": "3/minute"}
    app, limiter = build(limiter_class, limits)
    client = app.test_client()
    # One bucket shared by both endpoints of the blueprint.
    assert statuses(client, "/api/a", 2) + statuses(client, "/api/b", 2) == [200, 200, 200, 429]
    # The limit's value changes: the next call is held to the new one (a new counter: the
    # storage key of a limit names its amount).
    limits["api"] = "5/minute"
    assert statuses(client, "/api/a", 6) == [200] * 5 + [429]
    # Another blueprint has the default limit.
    assert statuses(client, "/other/c", 3) == [200, 200, 429]
    # An exemption declared while the app runs applies at once.
    limiter.exempt(app.view_functions["other.c"])
    assert statuses(client, "/other/c", 3) == [200, 200, 200]
    assert statuses(client, "/api/b", 1) == [429]


def test_the_tollgate_limiter_uses_the_remembering_manager():
    assert isinstance(Limiter(key_func=lambda: "k").limit_manager, RememberingLimitManager)


def test_what_is_remembered_stays_bounded():
    limits = {"api": "1000/minute"}
    app, limiter = build(Limiter, limits)
    client = app.test_client()
    for n in range(MAX_REMEMBERED + 50):
        limits["api"] = f"{1000 + n}/minute"
        assert client.get("/api/a").status_code == 200
    assert len(limiter.limit_manager._remembered[app]) <= MAX_REMEMBERED + 1
