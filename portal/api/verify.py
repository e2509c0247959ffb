"""The verify API: a service in another process (any language) admits its own customers' calls.

With a service token (``flask create-service-token``), ``POST /api/v1/verify`` admits one call
for the customer key it names — the same admission as every protected call: windows, monthly
quota (which always refuses here: the operator's product is not an account endpoint), budget
stops, and, for an endpoint under a gateway route, the route's plans, category and service — and
answers the verdict with the rate-limit headers to send. ``POST
/api/v1/verify/{callId}/complete`` then records how the call ended and what it used, once, and
only with the service token that admitted it. A
call never completed is stored with status 0 after ``USAGE_ABANDON_SECONDS``.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Flask, Response, g, request
from pydantic import Field, field_validator
from redis import RedisError

from ..extensions import csrf
from ..gateway.tokens import TokenCheck
from ..kernel.bodies import Body
from ..metering.admission import WINDOWS, record_age_seconds
from ..metering.stream import pack_outcome, verified_marker
from .gateway import route_for
from .guard import Caller, Protected, add_rate_limit_headers, admit, api_error, gate, rate_limited
from .operations import operation

bp = Blueprint("api_verify", __name__, url_prefix="/api/v1")
EXTENSION_KEY = "tollgate.verify"
WINDOW_NAMES = frozenset(name for name, _ in WINDOWS)
_tokens = TokenCheck()

# A path as a router sees it: segments of URL characters between single slashes, none of them
# "." or "..", no ";" (some servers read "..;" as ".."), no percent-encoding.
ENDPOINT = r"^(/[A-Za-z0-9._~!$&'()*+,=:@-]+)*/?$"
METHODS = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
COUNT = Field(0, strict=True, ge=0, le=10**9)


class VerifyBody(Body):
    key: str = Field(min_length=1, max_length=200, description="the customer's API key")
    endpoint: str = Field(
        "/",
        min_length=1,
        max_length=255,
        pattern=ENDPOINT,
        description="the path being called, as routed: no empty, '.' or '..' segments, no ';', '%', '\\\\' or spaces",
    )
    method: METHODS = "GET"

    @field_validator("endpoint")
    @classmethod
    def _no_dot_segments(cls, endpoint: str) -> str:
        if any(segment in (".", "..") for segment in endpoint.split("/")):
            raise ValueError("a path with '.' or '..' segments is not as routed")
        return endpoint

    units: int = Field(1, strict=True, ge=1, le=1000, description="what the call counts in every window and the quota")
    endUser: str | None = Field(None, max_length=120, description="the customer's end user, as X-End-User")  # noqa: N815


class CompleteBody(Body):
    status_code: int = Field(strict=True, ge=100, le=599)
    duration_ms: int | None = Field(None, strict=True, ge=0, le=86_400_000)
    tokens_in: int = COUNT
    tokens_out: int = COUNT
    cached_tokens: int = COUNT
    model: str = Field("", max_length=120)
    units: int = Field(0, strict=True, ge=0, le=10**9, description="units the service prices, beside tokens")
    error_message: str = Field("", max_length=2000)


@bp.before_request
def require_service_token() -> Response | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return api_error(401, "Missing service token: send Authorization: Bearer <service token>")
    g.service_token_id = _tokens.token_id(token.strip())
    if g.service_token_id is None:
        return api_error(401, "Invalid service token")
    return None


def _headers_of(response: Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("X-RateLimit-")}


@bp.post("/verify")
@operation("Verify a customer's key and admit one call", category="system", tag="verify", body=VerifyBody)
def verify(payload: VerifyBody):
    route = route_for(payload.endpoint)
    target = Protected(
        payload.endpoint,
        route.category if route else "",
        route.service if route else "",
        plans=route.plans if route else frozenset(),
    )
    caller = Caller(payload.key, (payload.endUser or "").strip(), payload.method, request.remote_addr)
    refusal = admit(target, caller, units=payload.units, verified_by=g.service_token_id)
    call = g.pop("api_call", None)  # answered here, completed by its own request
    if refusal is None and call is not None and call.decision is None:
        return api_error(503, "Service temporarily unavailable")
    if refusal is None and call.decision.refused_by in WINDOW_NAMES:
        g.api_call = call
        refusal = rate_limited(call.decision.refused_by)
        del g.api_call
    if refusal is not None:
        code = getattr(refusal, "refusal_code", None)
        if code is None:  # 400 (a bad end user) or 503 (Redis unreachable, set to refuse)
            return refusal
        if call is not None and call.decision is not None:
            add_rate_limit_headers(refusal, call)
        retry = refusal.headers.get("Retry-After")
        return {
            "valid": False,
            "code": code,
            "status": refusal.status_code,
            "detail": refusal.get_json()["detail"],
            "retryAfter": int(retry) if retry else None,
            "headers": _headers_of(refusal),
        }
    shown = Response()
    add_rate_limit_headers(shown, call)
    remaining = shown.headers["X-RateLimit-Remaining"]
    return {
        "valid": True,
        "tenant": call.entry.tenant_slug,
        "keyId": call.entry.key_id,
        "plan": call.entry.limits.plan_code,
        "remaining": None if remaining == "unlimited" else int(remaining),
        "headers": _headers_of(shown),
        "callId": call.record_id,
    }


@bp.post("/verify/<call_id>/complete")
@operation("Record how a verified call ended", category="system", tag="verify", body=CompleteBody)
def complete(call_id: str, payload: CompleteBody):
    state = gate()
    duration = payload.duration_ms
    if duration is None:
        try:
            duration = max(0, int(record_age_seconds(call_id, state.admission.redis.time()[0]) * 1000))
        except (ValueError, IndexError, OverflowError):
            duration = 0
    outcome = pack_outcome(
        payload.tokens_in,
        payload.tokens_out,
        payload.cached_tokens,
        payload.model,
        payload.units,
        payload.error_message,
    )
    try:
        done = state.admission.complete_with_outcome(
            call_id, payload.status_code, duration, outcome, must_end=verified_marker(g.service_token_id)
        )
    except RedisError:
        return api_error(503, "Service temporarily unavailable")
    if not done:
        return api_error(
            409,
            f"Call {call_id[:64]} is not waiting to be completed: completed already, closed unfinished, "
            "or not admitted with this service token",
        )
    return {"completed": True}


def init_app(app: Flask) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
