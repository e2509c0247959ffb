"""Tollgate's couplings to Flask-Limiter's and limits' private parts hold on the installed
releases, and start-up stops with a message on a release they were not checked against."""

from __future__ import annotations

import flask_limiter
import flask_limiter._limits
import limits
import pytest
from flask import Blueprint, Flask
from limits.storage import MemoryStorage

from portal import create_app
from portal.limits import compat


def test_the_installed_releases_are_the_checked_ones():
    compat.check_versions()  # raises on any other release


@pytest.mark.parametrize(
    ("installed", "named"),
    [
        ({"Flask-Limiter": "5.0.0", "limits": "5.8.0"}, "Flask-Limiter 5.0.0"),
        ({"Flask-Limiter": "4.1.1", "limits": "6.1"}, "limits 6.1"),
        ({"Flask-Limiter": "3.12", "limits": "5.8.0"}, "Flask-Limiter 3.12"),
    ],
)
def test_another_release_stops_start_up_with_a_message(installed, named):
    with pytest.raises(compat.UnsupportedRelease) as stopped:
        compat.check_versions(installed)
    assert str(stopped.value).startswith("Tollgate cannot start: it relies on private parts of")
    assert f"this is {named}." in str(stopped.value)


def test_create_app_stops_on_an_unchecked_flask_limiter(monkeypatch, tmp_path):
    monkeypatch.setattr(compat, "version", lambda name: "9.0.0" if name == "Flask-Limiter" else "5.8.0")
    with pytest.raises(SystemExit, match="this is Flask-Limiter 9.0.0"):
        create_app({"INSTANCE_PATH": str(tmp_path), "TESTING": True})


def test_flask_limiter_parses_a_callable_limit_through_the_remembering_parser():
    compat.remember_parsed_limits()
    assert flask_limiter._limits.parse_many is compat.cached_parse_many
    app = Flask(__name__)
    app.config["RATELIMIT_STORAGE_URI"] = "memory://"
    limiter = flask_limiter.Limiter(key_func=lambda: "one-client")
    api = Blueprint("api", __name__)

    @api.get("/a")
    def a():
        return "a"

    limiter.shared_limit(lambda: "2/minute;7/hour", scope="api")(api)
    limiter.init_app(app)
    app.register_blueprint(api)
    client = app.test_client()
    before = compat.cached_parse_many.cache_info()
    assert [client.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    after = compat.cached_parse_many.cache_info()
    assert after.hits + after.misses - before.hits - before.misses >= 3  # asked on every request
    assert compat.cached_parse_many("2/minute;7/hour") == limits.parse_many("2/minute;7/hour")


@pytest.mark.parametrize(
    ("limit", "expected"),
    [("3/minute", (3, "minute")), ("1000/hour", (1000, "hour")), ("2000000/day", (2000000, "day"))],
)
def test_the_window_is_read_from_the_key_limits_builds(limit, expected):
    item = limits.parse(limit)
    key = item.key_for("api", "tenant:42")
    assert compat.window_of(key) == expected
    # And the keys Flask-Limiter's own strategy writes for a blueprint's shared limit.
    storage = MemoryStorage()
    limits.strategies.FixedWindowRateLimiter(storage).hit(item, "LIMITER", "api/tenant:42", "api")
    [written] = [k for k in storage.storage if "tenant:42" in k]
    assert compat.window_of(written) == expected
