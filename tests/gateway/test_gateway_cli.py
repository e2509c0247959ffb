"""flask gateway add / list / remove: what the operator types, and what it refuses."""

from __future__ import annotations

import pytest


def run(app, *args):
    return app.test_cli_runner().invoke(args=["gateway", *args])


def test_add_list_and_remove_a_route(app):
    added = run(
        app,
        "add",
        "/api/chat",
        "http://127.0.0.1:5055/api/chat",
        "--methods",
        "post,GET",
        "--category",
        "Chat",
        "--service",
        "chatbot",
        "--timeout",
        "12.5",
        "--plans",
        "starter,professional",
        "--upstream-header",
        "X-Chatbot-Token=CHATBOT_TOKEN_FOR_TESTS",
    )
    assert added.exit_code == 0, added.output
    assert "Warning: CHATBOT_TOKEN_FOR_TESTS is not set here" in added.output
    listed = run(app, "list")
    [line] = listed.output.strip().splitlines()
    assert line.startswith("/api/chat  http://127.0.0.1:5055/api/chat  GET,POST  category=Chat  service=chatbot")
    assert "timeout=12.5s  plans=professional,starter" in line
    assert "headers: X-Chatbot-Token=$CHATBOT_TOKEN_FOR_TESTS" in line
    replaced = run(app, "add", "/api/chat/", "http://127.0.0.1:6000", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert run(app, "list").output.startswith("/api/chat  http://127.0.0.1:6000  POST")
    removed = run(app, "remove", "/api/chat")
    assert (removed.exit_code, removed.output.strip()) == (0, "Removed /api/chat")
    assert run(app, "list").output.startswith("# no routes")


@pytest.mark.parametrize(
    ("path", "url", "message"),
    [
        ("/api/v1/chat", "http://up", "/api/v1/chat collides with Tollgate's own /api/v1"),
        ("/dashboard", "http://up", "/dashboard collides with Tollgate's own /dashboard"),
        ("/keys/extra", "http://up", "collides with Tollgate's own /keys"),
        ("/static", "http://up", "collides with Tollgate's own /static"),
        ("/", "http://up", "cannot be '/'"),
        ("chat", "http://up", "starts with '/'"),
        ("/a/../b", "http://up", "segments"),
        ("/chat", "ftp://up", "must be http:// or https://"),
        ("/chat", "http://up:99999", "malformed"),
        ("/chat", "http://user:pw@up", "may not carry credentials"),
        ("/chat", "http://up/base?x=1", "may not have a query"),
        ("/chat", "http:///nohost", "has no host"),
    ],
)
def test_add_refuses_a_collision_or_a_malformed_upstream(app, path, url, message):
    result = run(app, "add", path, url)
    assert result.exit_code == 1
    assert message in result.output


def test_add_refuses_bad_options(app):
    assert "Unknown plan gold" in run(app, "add", "/chat", "http://up", "--plans", "gold").output
    assert "--methods takes" in run(app, "add", "/chat", "http://up", "--methods", "FETCH").output
    assert "--timeout is more than 0" in run(app, "add", "/chat", "http://up", "--timeout", "0").output
    assert "NAME=ENVVAR" in run(app, "add", "/chat", "http://up", "--upstream-header", "X-Token").output
    assert "cannot set X-API-Key" in run(app, "add", "/chat", "http://up", "--upstream-header", "X-API-Key=K").output
    assert run(app, "add", "/chat", "http://up").exit_code == 0
    assert "exists already" in run(app, "add", "/chat", "http://up").output
    assert "No route for /nothing" in run(app, "remove", "/nothing").output
