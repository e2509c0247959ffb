"""tollgate_client's middleware against a live Tollgate (gunicorn on the test database and Redis):
a small product, wrapped by TollgateMiddleware and served on loopback by werkzeug, has its calls
verified, refused or answered with the rate-limit headers, and completed with its status and
usage; the ASGI middleware is driven by hand with a tiny ASGI app. No part is stood in for: a
``requests`` response hook counts what the middleware asked Tollgate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from portal.extensions import db
from portal.gateway.tokens import create_service_token
from tests.api_helpers import ROOT, Servers, free_port, set_limits
from tests.factories import new_tenant
from tests.gateway.helpers import stored_calls, stored_calls_of_servers
from tollgate_client import (
    ServiceTokenRejected,
    TollgateASGIMiddleware,
    TollgateMiddleware,
    TollgateVerifier,
)

pytestmark = pytest.mark.slow  # starts a gunicorn


# -- Tollgate, the product, and what was asked -------------------------------------------------


@pytest.fixture(scope="module")
def tollgate(app, tmp_path_factory) -> Iterator[str]:
    """One Tollgate server for the module (each test's tenant, key and service token are new)."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=app.config["REDIS_URL_RESOLVED"],
        SECRET_KEY="middleware-test-secret-key",
        TOLLGATE_INSTANCE_PATH=str(tmp_path_factory.mktemp("middleware-server")),
        USAGE_CLAIM_IDLE_MS="0",
        PYTHONPATH=str(ROOT),
    )
    servers = Servers(env, 1)
    yield servers.urls[0]
    servers.stop()


@pytest.fixture
def service_token(app) -> str:
    with app.app_context():
        _, token = create_service_token("product backend")
        db.session.commit()
        db.session.remove()
    return token


class Asked:
    """Every response the verifier got from Tollgate, through a ``requests`` response hook."""

    def __init__(self) -> None:
        self.session = requests.Session()
        self.session.hooks["response"].append(self._hook)
        self.calls: list[tuple[str, int]] = []

    def _hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.calls.append((response.url.split("/api/v1", 1)[1], response.status_code))

    @property
    def verifies(self) -> list[int]:
        return [status for path, status in self.calls if path == "/verify"]

    @property
    def completions(self) -> list[int]:
        return [status for path, status in self.calls if path.endswith("/complete")]


@pytest.fixture
def asked() -> Iterator[Asked]:
    seen = Asked()
    yield seen
    seen.session.close()


@pytest.fixture
def verifier(tollgate, service_token, asked) -> TollgateVerifier:
    return TollgateVerifier(service_token, tollgate, session=asked.session)


class Product:
    """The operator's own product: a few WSGI routes that report their usage as apps would."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        path = environ["PATH_INFO"]
        call = environ.get("tollgate.call")
        self.seen.append({"path": path, "call": call})
        if path == "/api/chat":
            call.record_response(
                {
                    "model": "gpt-4o-mini",
                    "usage": {
                        "prompt_tokens": 12,
                        "completion_tokens": 30,
                        "prompt_tokens_details": {"cached_tokens": 4},
                    },
                }
            )
            body = json.dumps({"reply": "hello", "tenant": call.tenant, "plan": call.plan}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/api/made":
            usage = {"model": "m-header", "tokens_in": 5, "tokens_out": 6, "units": 3}
            start_response("201 Created", [("Content-Type", "text/plain"), ("X-Tollgate-Usage", json.dumps(usage))])
            return [b"made"]
        if path == "/api/stream":
            return self._stream(call, start_response)
        if path == "/api/broken":
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"broken"]
        if path == "/api/raises":
            raise RuntimeError("the product fell over")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"open to all" if call is None else b"metered" if call.metered else b"unmetered"]

    @staticmethod
    def _stream(call: Any, start_response: Callable) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one "
        yield b"two "
        yield b"three"
        call.record(tokens_out=3, model="streamer")  # while the body is still going out


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """Serves a WSGI app on loopback (werkzeug, threaded, as a real server closes responses)."""
    servers = []

    def start(wsgi_app: Any) -> str:
        server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def product() -> Product:
    return Product()


@pytest.fixture
def site(serve, product, verifier) -> str:
    """The product behind the middleware, ``/api`` protected."""
    return serve(TollgateMiddleware(product, verifier=verifier, protect=["/api"]))


def clear_of_minute_edge(margin: float = 3.0) -> None:
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.1)


def unreachable() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- WSGI -------------------------------------------------------------------------------------


def test_an_admitted_call_gets_the_rate_limit_headers_and_is_stored_with_its_usage(app, site, tenant, asked):
    response = requests.post(f"{site}/api/chat", headers={**tenant.headers, "X-End-User": "u-7"}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"reply": "hello", "tenant": tenant.slug, "plan": "starter"}
    assert response.headers["X-RateLimit-Minute-Limit"] == "300"
    assert response.headers["X-RateLimit-Minute-Remaining"] == "299"
    assert response.headers["X-RateLimit-Limit"] == "100000"
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.endpoint, record.method, record.status_code, record.end_user) == ("/api/chat", "POST", 200, "u-7")
    assert (record.tokens_in, record.tokens_out, record.cached_tokens, record.model) == (12, 30, 4, "gpt-4o-mini")
    assert (record.api_key_id, record.quota_units) == (tenant.key_id, 1)
    assert 0 <= record.duration_ms < 10_000
    assert (asked.verifies, asked.completions) == ([200], [200])


def test_a_bearer_key_and_the_usage_header_which_does_not_reach_the_caller(app, site, tenant):
    response = requests.get(f"{site}/api/made", headers={"Authorization": f"Bearer {tenant.secret}"}, timeout=10)
    assert (response.status_code, response.text) == (201, "made")
    assert "X-Tollgate-Usage" not in response.headers
    assert response.headers["X-RateLimit-Minute-Remaining"] == "299"
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.method, record.status_code, record.tokens_in, record.tokens_out, record.model) == (
        "GET",
        201,
        5,
        6,
        "m-header",
    )


def test_usage_recorded_while_the_body_streams_is_completed_when_the_server_closes_it(app, site, tenant):
    response = requests.get(f"{site}/api/stream", headers=tenant.headers, timeout=10)
    assert (response.status_code, response.text) == (200, "one two three")
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.endpoint, record.status_code, record.tokens_out, record.model) == ("/api/stream", 200, 3, "streamer")


def test_a_missing_key_is_refused_without_asking_tollgate(site, product, asked):
    response = requests.post(f"{site}/api/chat", timeout=10)
    assert (response.status_code, response.json()) == (401, {"detail": "Missing API key"})
    assert requests.post(f"{site}/api/chat", headers={"Authorization": "Basic abc"}, timeout=10).status_code == 401
    # Outside the protected prefix ("/apiary" is not under "/api"): the product, no key needed.
    for path in ("/health", "/apiary"):
        assert requests.get(f"{site}{path}", timeout=10).text == "open to all"
    assert asked.calls == []
    assert [seen["path"] for seen in product.seen] == ["/health", "/apiary"]


def test_an_invalid_key_gets_tollgates_answer(site, product, asked, tenant):
    response = requests.get(f"{site}/api/chat", headers={"X-API-Key": "tg_not-a-key"}, timeout=10)
    assert (response.status_code, response.json()) == (401, {"detail": "Invalid API key"})
    assert response.headers["Content-Type"] == "application/json"
    # Longer than any key: refused alike, without asking.
    too_long = requests.get(f"{site}/api/chat", headers={"X-API-Key": "k" * 201}, timeout=10)
    assert (too_long.status_code, too_long.json()) == (401, {"detail": "Invalid API key"})
    over = requests.get(f"{site}/api/chat", headers={**tenant.headers, "X-End-User": "u" * 121}, timeout=10)
    assert (over.status_code, over.json()) == (400, {"detail": "X-End-User may be at most 120 characters"})
    assert asked.verifies == [200]
    assert product.seen == []


def test_over_the_minute_limit_the_third_call_is_refused_with_retry_after(app, site, product, tenant):
    set_limits(app, "starter", per_minute=2)
    clear_of_minute_edge()
    first, second, third = (requests.post(f"{site}/api/chat", headers=tenant.headers, timeout=10) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert second.headers["X-RateLimit-Minute-Remaining"] == "0"
    retry_after = int(third.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert third.json() == {"detail": f"Rate limit exceeded for minute. Try again in {retry_after} seconds"}
    assert third.headers["X-RateLimit-Minute-Limit"] == "2"
    assert third.headers["X-RateLimit-Minute-Remaining"] == "0"
    assert len(product.seen) == 2
    records = stored_calls_of_servers(app, tenant.tenant_id, 3)
    assert sorted(record.status_code for record in records) == [200, 200, 429]


def test_an_app_answering_or_raising_500_is_stored_with_status_500(app, site, tenant):
    assert requests.get(f"{site}/api/broken", headers=tenant.headers, timeout=10).status_code == 500
    assert requests.get(f"{site}/api/raises", headers=tenant.headers, timeout=10).status_code == 500
    records = stored_calls_of_servers(app, tenant.tenant_id, 2)
    assert sorted((record.endpoint, record.status_code) for record in records) == [
        ("/api/broken", 500),
        ("/api/raises", 500),
    ]
    [raised] = [record for record in records if record.endpoint == "/api/raises"]
    assert raised.error_message == "RuntimeError: the product fell over"


def test_a_rejected_service_token_answers_503_even_failing_open(tollgate, serve, product, tenant, caplog):
    caplog.set_level(logging.ERROR, logger="tollgate_client")
    for fail_open in (False, True):
        site = serve(TollgateMiddleware(product, "tgs_not-a-token", tollgate, fail_open=fail_open))
        response = requests.get(f"{site}/api/chat", headers=tenant.headers, timeout=10)
        assert (response.status_code, response.json()) == (503, {"detail": "Usage service unavailable"})
    assert product.seen == []
    assert [r.getMessage() for r in caplog.records if r.name == "tollgate_client"] == [
        "Tollgate rejected the service token (Invalid service token); answering GET /api/chat with 503"
    ] * 2
    with TollgateVerifier("tgs_not-a-token", tollgate) as verifier, pytest.raises(ServiceTokenRejected) as raised:
        verifier.verify(tenant.secret, "/api/chat")
    assert (raised.value.status, raised.value.detail) == (401, "Invalid service token")


def test_an_unreachable_tollgate_answers_503_or_fails_open_unmetered(serve, product, caplog):
    caplog.set_level(logging.WARNING, logger="tollgate_client")
    base = unreachable()
    closed = serve(TollgateMiddleware(product, "tgs_x", base, timeout=2))
    response = requests.get(f"{closed}/api/thing", headers={"X-API-Key": "tg_any"}, timeout=10)
    assert (response.status_code, response.json()) == (503, {"detail": "Usage service unavailable"})
    assert product.seen == []
    caplog.clear()
    open_ = serve(TollgateMiddleware(product, "tgs_x", base, fail_open=True, timeout=2))
    response = requests.get(f"{open_}/api/thing", headers={"X-API-Key": "tg_any"}, timeout=10)
    assert (response.status_code, response.text) == (200, "unmetered")
    assert not any(name.startswith("X-RateLimit") for name in response.headers)
    [warning] = [record for record in caplog.records if record.name == "tollgate_client"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("could not verify GET /api/thing with Tollgate (")
    # Still a missing key is a 401, whether Tollgate is there or not.
    assert requests.get(f"{closed}/api/thing", timeout=10).status_code == 401


def test_a_failed_completion_is_logged_and_the_response_unharmed(app, tollgate, serve, product, tenant, caplog):
    """Tollgate answers the verify and is gone before the completion (its token revoked between)."""
    from portal.gateway.tokens import revoke_service_token

    caplog.set_level(logging.WARNING, logger="tollgate_client")
    with app.app_context():
        _, token = create_service_token("short-lived")
        db.session.commit()
        db.session.remove()

    def revoking(environ: dict, start_response: Callable) -> Any:
        with app.app_context():
            revoke_service_token("short-lived")
            db.session.commit()
            db.session.remove()
        time.sleep(1.2)  # past the second the server remembers a token's verdict
        return product(environ, start_response)

    site = serve(TollgateMiddleware(revoking, token, tollgate))
    response = requests.post(f"{site}/api/chat", headers=tenant.headers, timeout=10)
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.name == "tollgate_client"] and time.monotonic() < deadline:
        time.sleep(0.05)
    [warning] = [record for record in caplog.records if record.name == "tollgate_client"]
    assert warning.getMessage().startswith("could not complete Tollgate call ")
    assert warning.getMessage().endswith("(status 200): 401 Invalid service token")


# -- the verifier on its own ------------------------------------------------------------------


def test_the_verifier_verifies_and_completes_once(app, verifier, tenant):
    verdict = verifier.verify(tenant.secret, "/api/report", method="put", units=2, end_user="u-1")
    # Two units counted: the minute window shows both.
    assert verdict.headers["X-RateLimit-Minute-Remaining"] == str(int(verdict.headers["X-RateLimit-Minute-Limit"]) - 2)
    assert (verdict.valid, verdict.tenant, verdict.key_id, verdict.plan, verdict.remaining) == (
        True,
        tenant.slug,
        tenant.key_id,
        "starter",
        99_998,
    )
    assert verdict.call_id and verdict.headers["X-RateLimit-Minute-Remaining"] == "298"
    assert verifier.complete(verdict.call_id, 202, 17, tokens_in=3, tokens_out=4, model="m") is True
    assert verifier.complete(verdict.call_id, 202, 17) is False
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.endpoint, record.method, record.status_code, record.duration_ms, record.quota_units) == (
        "/api/report",
        "PUT",
        202,
        17,
        2,
    )
    refused = verifier.verify("tg_nope", "/api/report")
    assert (refused.valid, refused.code, refused.status, refused.detail, refused.call_id) == (
        False,
        "INVALID_KEY",
        401,
        "Invalid API key",
        None,
    )


# -- ASGI -------------------------------------------------------------------------------------


def http_scope(path: str, headers: dict[str, str], method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def chat_asgi(scope: dict, receive: Callable, send: Callable) -> None:
    """A tiny ASGI product: reads the body, reports usage, answers in two parts."""
    if scope["type"] == "lifespan":
        message = await receive()
        await send({"type": f"{message['type']}.complete"})
        return
    request = await receive()
    call = scope["tollgate.call"]
    call.record(tokens_in=7, tokens_out=9, model="claude-test")
    scope["seen"].append((request["body"], call.tenant, scope["ticks"]()))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": ', "more_body": True})
    await send({"type": "http.response.body", "body": b"true}", "more_body": False})


async def leaves_asgi(scope: dict, receive: Callable, send: Callable) -> None:
    """Waits for the rest of the body; the client goes away instead."""
    assert (await receive())["more_body"] is True
    assert (await receive())["type"] == "http.disconnect"


def drive(
    asgi: Any, scope: dict[str, Any], body: bytes = b"{}", incoming: list | None = None
) -> tuple[list[dict], int]:
    """One request through ``asgi`` (its body, unless ``incoming``); the messages sent, and how
    often the event loop turned meanwhile. ``scope["ticks"]()`` tells the app how often it had
    turned so far."""
    sent: list[dict] = []
    if incoming is None:
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
    ticks = 0
    scope = {**scope, "ticks": lambda: ticks}

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        nonlocal ticks
        task = asyncio.create_task(asgi(scope, receive, send))
        while not task.done():
            await asyncio.sleep(0)
            ticks += 1
        await task

    asyncio.run(main())
    return sent, ticks


def headers_of(start: dict) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in start["headers"]}


def test_the_asgi_middleware_admits_answers_and_completes(app, verifier, tenant, asked):
    seen: list = []
    asgi = TollgateASGIMiddleware(chat_asgi, verifier=verifier)
    scope = {**http_scope("/api/chat", {"X-API-Key": tenant.secret, "X-End-User": "u-3"}), "seen": seen}
    sent, ticks = drive(asgi, scope, b'{"q": 1}')
    start, first, last = sent
    assert start["status"] == 200
    headers = headers_of(start)
    assert headers["content-type"] == "application/json"
    assert (headers["x-ratelimit-minute-limit"], headers["x-ratelimit-minute-remaining"]) == ("300", "299")
    assert first["body"] + last["body"] == b'{"ok": true}'
    [(body, slug, ticks_before_app)] = seen
    assert (body, slug) == (b'{"q": 1}', tenant.slug)
    # The verify ran in a thread: the event loop went on turning before the app was called.
    assert ticks_before_app > 0 and ticks > ticks_before_app
    assert (asked.verifies, asked.completions) == ([200], [200])
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.endpoint, record.method, record.status_code, record.end_user) == ("/api/chat", "POST", 200, "u-3")
    assert (record.tokens_in, record.tokens_out, record.model) == (7, 9, "claude-test")


def test_the_asgi_middleware_refuses_and_passes_other_scopes_through(app, verifier, tenant, asked):
    asgi = TollgateASGIMiddleware(chat_asgi, verifier=verifier, protect=lambda path: path.startswith("/api/"))
    missing, _ = drive(asgi, http_scope("/api/chat", {}))
    assert missing[0]["status"] == 401 and json.loads(missing[1]["body"]) == {"detail": "Missing API key"}
    assert asked.calls == []
    invalid, _ = drive(asgi, http_scope("/api/chat", {"Authorization": "Bearer tg_wrong"}))
    assert invalid[0]["status"] == 401 and json.loads(invalid[1]["body"]) == {"detail": "Invalid API key"}
    assert headers_of(invalid[0])["content-type"] == "application/json"
    lifespan, _ = drive(asgi, {"type": "lifespan", "asgi": {"version": "3.0"}}, incoming=[{"type": "lifespan.startup"}])
    assert lifespan == [{"type": "lifespan.startup.complete"}]  # the app itself answered
    assert asked.verifies == [200]
    assert stored_calls(app, tenant.tenant_id) == []


def test_a_client_gone_before_the_answer_is_completed_with_499(app, verifier, tenant):
    asgi = TollgateASGIMiddleware(leaves_asgi, verifier=verifier)
    incoming = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    sent, _ = drive(asgi, http_scope("/api/slow", tenant.headers, "GET"), incoming=incoming)
    assert sent == []
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.endpoint, record.status_code) == ("/api/slow", 499)


def test_the_asgi_middleware_fails_closed_or_open_when_tollgate_is_unreachable(caplog):
    caplog.set_level(logging.WARNING, logger="tollgate_client")
    base = unreachable()
    scope = {**http_scope("/api/chat", {"X-API-Key": "tg_any"}), "seen": []}
    closed, _ = drive(TollgateASGIMiddleware(chat_asgi, "tgs_x", base, timeout=2), scope)
    assert closed[0]["status"] == 503 and json.loads(closed[1]["body"]) == {"detail": "Usage service unavailable"}
    opened, _ = drive(TollgateASGIMiddleware(chat_asgi, "tgs_x", base, fail_open=True, timeout=2), scope)
    assert opened[0]["status"] == 200
    assert not any(name.startswith("x-ratelimit") for name in headers_of(opened[0]))
    assert [r.levelname for r in caplog.records if r.name == "tollgate_client"] == ["ERROR", "WARNING"]


def test_a_new_tenant_on_another_plan_sees_its_own_limits(app, site):
    pro = new_tenant(app, "Pro Co", "professional", key=True)
    response = requests.get(f"{site}/api/made", headers=pro.headers, timeout=10)
    assert response.status_code == 201
    assert int(response.headers["X-RateLimit-Minute-Limit"]) > 300
    assert len(stored_calls_of_servers(app, pro.tenant_id, 1)) == 1
