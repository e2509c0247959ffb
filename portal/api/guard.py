"""The hot path of a protected API call, as Flask request hooks.

Before the view: the key is resolved (from ``X-API-Key`` or ``Authorization: Bearer``, never
from the session cookie), then one admission script call checks and counts the plan windows and
the monthly quota and records the call. Flask-Limiter's own check runs next and enforces the
windows from that decision (see :mod:`portal.limits.limiter_storage`). After the view: rate-limit
headers, and the call's final status and duration go to the admission's completion buffer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, Response, current_app, g, jsonify, request
from redis import Redis, RedisError

from ..costs.service_limits import LimitCache
from ..kernel import clock
from ..kernel.periods import billing_period, period_bounds
from ..kernel.redis_keys import auth_failure_keys
from ..kernel.times import iso
from ..metering.admission import Admission, Decision, QuotaCounterMissing, StaleConfig
from ..metering.directory import KeyDirectory, KeyEntry
from ..metering.quota import rebuild_quota_counter
from ..metering.spool import Spool
from ..metering.stream import STREAM, call_entry, pack_call, pack_outcome
from ..product import ProductBlueprint
from ..redis_store import get_redis
from ..tenancy.keys import hash_secret
from .operations import manages_account

log = logging.getLogger("tollgate.api")
EXTENSION_KEY = "tollgate.admission"
IDLE_FLUSH_SECONDS = 1.0
AUTH_FAILURE_TTL = 2 * 86400


@dataclass
class ApiCall:
    """What the hooks and views know about the call in progress (kept on ``flask.g``)."""

    entry: KeyEntry
    record_id: str
    started: float
    # None when the call was served without Redis (see ``Gate.when_redis_down``).
    decision: Decision | None = None
    record: str = ""
    # Completed by whoever streams the response (a gateway route), not when the view returns.
    deferred: bool = False
    end_user: str = ""

    @property
    def tenant_key(self) -> str:
        return str(self.entry.tenant_id)

    @property
    def limit_string(self) -> str:
        return self.entry.limits.limit_string


class Gate:
    """Per-process state of the hot path: the admission script, the key cache, the idle flush."""

    def __init__(self, redis: Redis, spool_folder: Path, when_redis_down: str = "serve") -> None:
        self.redis = redis
        # "serve": answer unlimited and spool usage locally; "refuse": 503 until Redis is back.
        self.when_redis_down = when_redis_down
        self.spool = Spool(spool_folder)
        self.admission = Admission(redis)
        self.keys = KeyDirectory()
        # Each tenant's outside-service limits, under the same configuration version as the keys.
        self.limits = LimitCache()
        self._flusher_pid = 0
        self._lock = threading.Lock()

    def ensure_flusher(self) -> None:
        """Start (once per process, after any fork) the thread that flushes idle completions."""
        pid = os.getpid()
        if self._flusher_pid == pid:
            return
        with self._lock:
            if self._flusher_pid == pid:
                return
            self._flusher_pid = pid
            threading.Thread(target=self._flush_loop, name="tollgate-completions", daemon=True).start()

    def flush_now(self) -> None:
        """Send the completions this process holds (a server stopping: gunicorn.conf.py)."""
        try:
            self.admission.flush_if_idle(0)
        except RedisError:
            log.warning("Redis unreachable: calls in flight wait for the worker's janitor to close them")

    def _flush_loop(self) -> None:
        while True:
            time.sleep(IDLE_FLUSH_SECONDS / 2)
            try:
                self.admission.flush_if_idle(IDLE_FLUSH_SECONDS)
                if self.spool.pending_files():
                    self.spool.replay(self.redis)
            except RedisError:
                log.warning("Redis unreachable: completions and spooled calls wait", exc_info=True)
            except Exception:  # the spool's folder unreadable, say: keep the thread, try again
                log.exception("flushing completions or replaying the spool failed; trying again")


def gate(app: Flask | None = None) -> Gate:
    return (app or current_app).extensions[EXTENSION_KEY]


def api_error(status: int, detail: str) -> Response:
    response = jsonify(detail=detail)
    response.status_code = status
    return response


@dataclass(frozen=True)
class Caller:
    """Who makes the call: the key presented, the end user named, the method, the address."""

    secret: str | None
    end_user: str
    method: str
    address: str | None


def caller_from_request() -> Caller:
    return Caller(
        presented_secret(), request.headers.get("X-End-User", "").strip(), request.method, request.remote_addr
    )


def refused(status: int, detail: str, code: str) -> Response:
    """A refusal of a protected call; ``code`` names the reason for the verify API."""
    response = api_error(status, detail)
    response.refusal_code = code
    return response


def presented_secret() -> str | None:
    secret = request.headers.get("X-API-Key")
    if secret:
        return secret.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _hour_bucket(now: float) -> int:
    return int(now) // 3600


def record_auth_failure(
    redis: Redis, now: float, entry: KeyEntry | None, endpoint: str, status: int, caller: Caller, category: str
) -> None:
    """Count a failed authentication per address (and per tenant and key when the key is known);
    a known key's refused call is also metered."""
    bucket = _hour_bucket(now)
    pipe = redis.pipeline(transaction=False)
    if entry is None:
        names = auth_failure_keys(bucket, caller.address)
    else:
        names = auth_failure_keys(bucket, caller.address, entry.tenant_id, entry.key_id)
        record_id = gate().admission.ids.next_id()
        record = pack_call(record_id, entry.tenant_id, entry.key_id, endpoint, caller.method, category, now)
        pipe.xadd(STREAM, call_entry(record, status, 0, counted=False))
    for name in names:
        pipe.incr(name)
        pipe.expire(name, AUTH_FAILURE_TTL)
    pipe.execute()


def _view():
    return current_app.view_functions.get(request.endpoint or "")


def category() -> str:
    return getattr(_view(), "usage_category", "")


def budget_applies() -> bool:
    """Whether a budget's hard stop refuses this call (reporting events never is refused)."""
    return not getattr(_view(), "budget_exempt", False)


def endpoint_name() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else request.path[:255]


@dataclass(frozen=True)
class Protected:
    """What admission needs to know of the call: where it goes and what may refuse it."""

    endpoint: str
    category: str = ""
    # The service a gateway route prices the call under ("": Tollgate's own API).
    service: str = ""
    # Whether a budget's hard stop refuses it (reporting events never is refused).
    budget_applies: bool = True
    # The plans that may make it (empty: every plan).
    plans: frozenset[str] = frozenset()
    # Whether a used-up monthly quota refuses it (else it is only counted).
    quota_refuses: bool = True


MAX_END_USER = 120


def admit_api_call() -> Response | None:
    """Authenticate and admit a call to the API blueprint (runs before Flask-Limiter's check),
    or to an operator's product blueprint."""
    if request.blueprint != "api":
        # The nearest product blueprint of the view, nested ones (blueprints inside it) included.
        for name in request.blueprints:
            product = current_app.blueprints.get(name)
            if isinstance(product, ProductBlueprint):
                return admit_product_call(product)
        return None
    return admit(
        Protected(
            endpoint_name(),
            category(),
            budget_applies=budget_applies(),
            quota_refuses=not manages_account(request.path),
        )
    )


def admit_product_call(product: ProductBlueprint) -> Response | None:
    """A call to one of the operator's product views: admitted as every protected call."""
    view = _view()
    refusal = admit(
        Protected(
            request.path[:255],
            getattr(view, "usage_category", product.usage_category),
            product.usage_service,
            plans=product.plans,
        )
    )
    call = g.get("api_call")
    if refusal is None and call is not None and call.decision is not None and call.decision.refused_by:
        return rate_limited(call.decision.refused_by)
    return refusal


def admit(target: Protected, caller: Caller | None = None, units: int = 1, verified_by: int = 0) -> Response | None:
    """Authenticate and admit a protected call (made by ``caller``, by default the request's):
    ``None`` to go on (``g.api_call`` says whether a window refused it), or the response that
    refuses it."""
    started = time.perf_counter()
    state = gate()
    now = clock.seconds()
    caller = caller or caller_from_request()
    secret = caller.secret
    if not secret:
        return refused(401, "Missing API key", "INVALID_KEY")
    state.ensure_flusher()
    key_hash = hash_secret(secret)
    entry = state.keys.lookup(key_hash)
    if entry is None or not entry.usable(now):
        # Refusing on what this process cached: make sure nothing changed since (a new key, a
        # reactivation). The admission script checks this for keys that pass.
        with suppress(RedisError):
            entry = state.keys.lookup_current(key_hash, state.redis)
    endpoint = target.endpoint
    if entry is None or not entry.usable(now):
        return refuse_key(state, now, entry, endpoint, caller, target.category)
    end_user = caller.end_user
    if len(end_user) > MAX_END_USER:
        return api_error(400, f"X-End-User may be at most {MAX_END_USER} characters")
    record_id = state.admission.ids.next_id()

    def packed() -> str:
        return pack_call(
            record_id, entry.tenant_id, entry.key_id, endpoint, caller.method, target.category, now,
            end_user=end_user, service=target.service, units=units, verified_by=verified_by,
        )  # fmt: skip

    if target.plans and entry.limits.plan_code not in target.plans:
        return refuse_plan(state, packed(), endpoint)
    try:
        stale_retries = rebuilds = 0
        while True:
            record = packed()
            try:
                decision = state.admission.admit(
                    state.keys.version,
                    entry.tenant_id,
                    entry.limits,
                    record_id,
                    record,
                    now,
                    key_id=entry.key_id,
                    budget_applies=target.budget_applies,
                    service=target.service,
                    end_user=end_user,
                    quota_refuses=target.quota_refuses,
                    units=units,
                )
                break
            except StaleConfig as stale:
                # Keys or plans changed: reload this key under the new version and decide again.
                stale_retries += 1
                if stale_retries == 2:
                    raise
                state.keys.reset(stale.version)
                entry = state.keys.lookup(key_hash)
                if entry is None or not entry.usable(now):
                    return refuse_key(state, now, entry, endpoint, caller, target.category)
                if target.plans and entry.limits.plan_code not in target.plans:
                    return refuse_plan(state, packed(), endpoint)
            except QuotaCounterMissing:
                # A new period, or Redis lost the counter: count it again from the records.
                rebuilds += 1
                if rebuilds == 3:
                    raise RedisError("the quota counter could not be rebuilt") from None
                rebuild_quota_counter(state.redis, entry.tenant_id, now)
    except RedisError:
        return serve_without_redis(state, entry, record_id, record, started)
    g.api_call = ApiCall(entry=entry, record_id=record_id, started=started, decision=decision, end_user=end_user)
    if decision.refused_by == "month":
        return quota_exhausted(decision)
    if decision.refused_by == "budget":
        return refused(402, decision.stop_detail or "A budget's hard stop refuses calls", "BUDGET_EXCEEDED")
    return None


def refuse_plan(state: Gate, record: str, endpoint: str) -> Response:
    """The tenant's plan does not include this route: 403, metered as refused, nothing counted."""
    detail = f"Your plan does not include {endpoint}"
    try:
        state.redis.xadd(STREAM, call_entry(record, 403, 0, counted=False))
    except RedisError:
        log.warning("Redis unreachable: a refused call goes to the local spool", exc_info=True)
        state.spool.append(record, 403, 0, admitted=False)
    return refused(403, detail, "PLAN_EXCLUDES")


def serve_without_redis(state: Gate, entry: KeyEntry, record_id: str, record: str, started: float) -> Response | None:
    """Redis is unreachable: refuse (503), or serve the call unlimited and spool its record."""
    log.warning("Redis unreachable during admission; policy: %s", state.when_redis_down, exc_info=True)
    if state.when_redis_down == "refuse":
        response = api_error(503, "Service temporarily unavailable")
        response.headers["Retry-After"] = "5"
        return response
    g.api_call = ApiCall(entry=entry, record_id=record_id, started=started, decision=None, record=record)
    return None


def refuse_key(
    state: Gate, now: float, entry: KeyEntry | None, endpoint: str, caller: Caller, category: str
) -> Response:
    status, detail = (401, "Invalid API key") if entry is None else (403, "API key is inactive")
    try:
        record_auth_failure(state.redis, now, entry, endpoint, status, caller, category)
    except RedisError:
        log.warning("Redis unreachable: a refused call goes to the local spool", exc_info=True)
        if entry is not None:
            record_id = state.admission.ids.next_id()
            record = pack_call(record_id, entry.tenant_id, entry.key_id, endpoint, caller.method, category, now)
            state.spool.append(record, status, 0, admitted=False)
    return refused(status, detail, "INVALID_KEY" if entry is None else "INACTIVE_KEY")


def quota_exhausted(decision: Decision) -> Response:
    _, period_end = billing_period(datetime.fromtimestamp(decision.now, UTC))
    call = g.api_call
    quota = call.entry.limits.shown_quota
    response = refused(
        429,
        f"Monthly quota of {quota:,} requests used up. It resets at {iso(period_end)}",
        "QUOTA_EXCEEDED",
    )
    response.headers["Retry-After"] = str(max(1, int(period_end.timestamp() - decision.now)))
    return response


def rate_limited(window: str) -> Response:
    decision = g.api_call.decision
    wait = decision.reset_in(window)
    response = refused(429, f"Rate limit exceeded for {window}. Try again in {wait} seconds", "RATE_LIMITED")
    response.headers["Retry-After"] = str(wait)
    return response


def add_rate_limit_headers(response: Response, call: ApiCall) -> None:
    decision = call.decision
    limits = call.entry.limits
    now = int(decision.now)
    period_end = period_bounds(decision.now).end_iso
    if limits.shown_quota is None:
        quota = remaining = "unlimited"
    else:
        quota, remaining = str(limits.shown_quota), str(max(0, limits.shown_quota - decision.month))
    # Headers.add appends; the response has none of these yet.
    add = response.headers.add
    for title, span, limit, used in (
        ("Minute", 60, limits.per_minute, decision.minute),
        ("Hour", 3600, limits.per_hour, decision.hour),
        ("Day", 86400, limits.per_day, decision.day),
    ):
        add(f"X-RateLimit-{title}-Limit", str(limit))
        add(f"X-RateLimit-{title}-Remaining", str(max(0, limit - used)))
        add(f"X-RateLimit-{title}-Reset", str(span - now % span))
    add("X-RateLimit-Limit", quota)
    add("X-RateLimit-Remaining", remaining)
    add("X-RateLimit-Reset", period_end)


def finish_api_call(response: Response) -> Response:
    call = g.get("api_call")
    if call is None:
        return response
    if call.decision is not None:
        add_rate_limit_headers(response, call)
    if not call.deferred:
        usage = g.pop("call_usage", None)
        complete_call(gate(), call, response.status_code, pack_outcome(**usage) if usage else "")
    return response


def complete_call(state: Gate, call: ApiCall, status: int, outcome: str = "") -> None:
    """Record an admitted call's final status and duration (and its outcome: what it used)."""
    duration_ms = int((time.perf_counter() - call.started) * 1000)
    if call.decision is None:  # served without Redis
        state.spool.append(call.record, status, duration_ms)
    elif call.decision.admitted:
        if outcome:
            state.admission.complete_with_outcome(call.record_id, status, duration_ms, outcome)
        else:
            state.admission.complete(call.record_id, status, duration_ms)


def init_app(app: Flask) -> None:
    """Register the hooks; call before the API limiter's ``init_app`` so admission runs first."""
    app.extensions[EXTENSION_KEY] = Gate(
        get_redis(app), Path(app.instance_path) / "spool", app.config["API_WHEN_REDIS_DOWN"]
    )
    app.before_request(admit_api_call)
    app.after_request(finish_api_call)
