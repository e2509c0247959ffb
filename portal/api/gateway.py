"""Calls to the operator's gateway routes: admitted like every protected call, then forwarded.

A request that matches none of Tollgate's own URL rules but falls under a route (see
:mod:`portal.gateway.routes`) is handled here, before any view: the method and the body's size
are checked (nothing is counted for a call refused so), the key is admitted against the plan's
windows, the quota and budget stops — one bucket per tenant shared with the JSON API — and the
call is forwarded (:mod:`portal.gateway.forward`). The answer streams back with the
rate-limit headers added and the call is metered once it has been passed on whole, with the
status the caller saw, the time it took and what the upstream says it used.
"""

from __future__ import annotations

import logging
from typing import IO

from flask import Flask, Response, current_app, g, request
from redis import RedisError

from tollgate_client.usage import Usage

from ..extensions import db
from ..gateway.forward import (
    PathRefused,
    Pool,
    Relayed,
    UpstreamTimeout,
    UpstreamUnavailable,
    environ_headers,
    relay,
    returned_headers,
    upstream_headers,
    upstream_url,
    whole_body,
    without_body,
)
from ..gateway.routes import Route, RouteTable
from ..metering.admission import WINDOWS
from ..metering.stream import pack_outcome
from .guard import ApiCall, Gate, Protected, admit, api_error, complete_call, gate, rate_limited

log = logging.getLogger("tollgate.gateway")
EXTENSION_KEY = "tollgate.gateway"
WINDOW_NAMES = frozenset(name for name, _ in WINDOWS)


class GatewayState:
    def __init__(self) -> None:
        self.routes = RouteTable()
        self.upstreams = Pool()


def state(app: Flask | None = None) -> GatewayState:
    return (app or current_app).extensions[EXTENSION_KEY]


def route_for(path: str) -> Route | None:
    try:
        return state().routes.match(path, gate().redis)
    except RedisError:
        log.warning("Redis unreachable: gateway routes are matched as last loaded", exc_info=True)
        return state().routes.match_cached(path)


def gateway_call() -> Response | None:
    """Handle a call to a gateway route (``None`` for every other request)."""
    if request.url_rule is not None:
        return None
    path = request.path
    route = route_for(path)
    if route is None:
        return None
    environ = request.environ
    if request.method not in route.methods:
        response = api_error(405, f"{route.path} takes {', '.join(sorted(route.methods))}")
        response.headers["Allow"] = ", ".join(sorted(route.methods))
        return response
    try:
        target = upstream_url(route, path, environ.get("RAW_URI") or request.full_path, environ.get("QUERY_STRING", ""))
    except PathRefused as refused:
        return api_error(400, str(refused))
    length = request.content_length
    if length is not None and length > route.max_body_bytes:
        return body_too_large(route)
    body: bytes | IO[bytes] | None = request.stream if length is not None else None
    if length is None and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        # Read it first (up to the limit): a body too large is refused before anything counts
        # and never reaches the upstream.
        body = request.stream.read(route.max_body_bytes + 1)
        if len(body) > route.max_body_bytes:
            return body_too_large(route)
        length = len(body)
    refusal = admit(Protected(path[:255], route.category, route.service, plans=route.plans))
    if refusal is not None:
        return refusal
    call: ApiCall = g.api_call
    if call.decision is not None and call.decision.refused_by in WINDOW_NAMES:
        return rate_limited(call.decision.refused_by)
    return forward(route, call, target, body, length)


def body_too_large(route: Route) -> Response:
    limit = route.max_body_bytes
    size = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"
    return api_error(413, f"Request too large: a body to {route.path} may be at most {size}")


class GatewayResponse(Response):
    """An upstream's answer: only the headers it came with (no content type of Tollgate's)."""

    default_mimetype = None


def forward(route: Route, call: ApiCall, target: str, body: bytes | IO[bytes] | None, length: int | None) -> Response:
    environ = request.environ
    try:
        headers = upstream_headers(
            route,
            environ_headers(environ),
            tenant=call.entry.tenant_slug,
            key_id=call.entry.key_id,
            end_user=environ.get("HTTP_X_END_USER", "").strip(),
            request_id=call.record_id,
            client_address=request.remote_addr,
            scheme=request.scheme,
            host=request.host,
        )
    except KeyError as missing:
        log.error("gateway route %s: environment variable %s is not set", route.path, missing)
        return api_error(502, "Upstream unavailable")
    # No database connection is held while the upstream takes its time.
    if db.session.registry.has():
        db.session.remove()
    try:
        upstream = state().upstreams.send(request.method, target, headers, body, length, route.timeout_seconds)
    except UpstreamTimeout:
        log.warning("gateway route %s: %s took longer than %gs", route.path, target, route.timeout_seconds)
        return api_error(504, f"Upstream timed out after {route.timeout_seconds:g} seconds")
    except UpstreamUnavailable as error:
        log.warning("gateway route %s: %s unavailable: %s", route.path, target, error)
        return api_error(502, "Upstream unavailable")
    passed_back = returned_headers(upstream)
    passed_back.append(("X-Request-Id", call.record_id))
    # The answer is served from the portal's origin: a browser runs none of its scripts there.
    passed_back.append(("Content-Security-Policy", "sandbox"))
    if request.method == "HEAD" or upstream.status < 200 or upstream.status in (204, 304):
        # No body will be sent (Werkzeug drops it): metered now, as a call answered by a view.
        _report(without_body(upstream))
        return GatewayResponse(status=upstream.status, headers=passed_back)
    whole = whole_body(upstream)
    if whole is not None:
        answer, usage = whole
        _report(usage)
        return GatewayResponse(answer, status=upstream.status, headers=passed_back)
    # Metered once the relay is over: with the status the caller saw and what was used.
    call.deferred = True
    return GatewayResponse(
        relay(upstream, _finisher(gate(), call)), status=upstream.status, headers=passed_back, direct_passthrough=True
    )


def _report(usage: Usage | None) -> None:
    """What the upstream says a call used, completed with the call (guard.finish_api_call)."""
    if usage is not None:
        g.call_usage = {
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
            "cached_tokens": usage.cached_tokens,
            "model": usage.model,
            "units": usage.units,
        }


def _finisher(state: Gate, call: ApiCall):
    def finish(relayed: Relayed) -> None:
        usage = relayed.usage
        outcome = pack_outcome(
            tokens_in=usage.tokens_in if usage else 0,
            tokens_out=usage.tokens_out if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            model=usage.model if usage else "",
            units=usage.units if usage else 0,
            error=relayed.error,
        )
        try:
            complete_call(state, call, relayed.status, outcome if outcome != "{}" else "")
        except RedisError:
            log.warning("Redis unreachable: call %s stays in flight until the janitor closes it", call.record_id)

    return finish


def init_app(app: Flask) -> None:
    """Register the gateway's hook (after the API's admission hook, before any limiter)."""
    app.extensions[EXTENSION_KEY] = GatewayState()
    app.before_request(gateway_call)
