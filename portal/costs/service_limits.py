"""Limits on outside services: per tenant, service (optionally one model of it) and window.

A window's use is a Redis counter per window bucket (minute, hour, day, calendar month), fed by
acquires (:func:`acquire`, which checks every window of the service and consumes only if all
pass, atomically) and by reported events (:mod:`portal.costs.events`), except an event that
carries the permit of its acquire: that call was counted when it was acquired.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from sqlalchemy import select

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.changes import mark_access_changed
from ..kernel.periods import billing_period
from ..kernel.redis_keys import budget_stops_key, permit_key, service_window_key
from ..kernel.times import iso
from ..models import ServiceLimit, Tenant
from ..models.pricing import LIMIT_UNITS, WINDOWS

# Seed 002's free-tier defaults, given to every new tenant (existing ones got them in 0002).
DEFAULT_SERVICE_LIMITS = (
    ("groq", "minute", 30, "requests"),
    ("groq", "day", 14_400, "requests"),
    ("twitter", "month", 1_500, "requests"),
    ("youtube", "day", 10_000, "quota_units"),
)
SPANS = {"minute": 60, "hour": 3600, "day": 86400}
WINDOW_ORDER = {window: n for n, window in enumerate(WINDOWS)}
# A permit is good for reporting its call this long after the acquire.
PERMIT_TTL_SECONDS = 3600
# A counter outlives its window by this much (late events of the window still land in it).
COUNTER_GRACE_SECONDS = 120

ACQUIRE_SCRIPT = """
-- KEYS: n window counters, the permit, the tenant's budget stops
-- ARGV: n, then per counter: limit, amount, ttl; then permit units, permit ttl,
--       then the stop fields to look at
local n = tonumber(ARGV[1])
local stops_at = 2 + 3 * n + 2
local fields = {}
for i = stops_at, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then
  local stop = redis.call('HMGET', KEYS[n + 2], unpack(fields))
  for i = 1, #stop do
    if stop[i] then return {'stopped', stop[i]} end
  end
end
local counts = {}
local refused = 0
for i = 1, n do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  local limit = tonumber(ARGV[2 + 3 * (i - 1)])
  local amount = tonumber(ARGV[3 + 3 * (i - 1)])
  if counts[i] + amount > limit then refused = 1 end
end
if refused == 1 then return {'refused', unpack(counts)} end
for i = 1, n do
  local amount = tonumber(ARGV[3 + 3 * (i - 1)])
  counts[i] = redis.call('INCRBY', KEYS[i], amount)
  if counts[i] == amount then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4 + 3 * (i - 1)])) end
end
redis.call('SET', KEYS[n + 1], ARGV[2 + 3 * n], 'EX', tonumber(ARGV[3 + 3 * n]))
return {'ok', unpack(counts)}
"""


class LimitError(ValueError):
    """A limit could not be set as asked."""


def add_default_limits(tenant: Tenant) -> None:
    for service, window, value, unit in DEFAULT_SERVICE_LIMITS:
        db.session.add(
            ServiceLimit(tenant=tenant, service=service, model="", window=window, limit_value=value, unit=unit)
        )


def list_limits(tenant_id: int, service: str | None = None, window: str | None = None) -> list[ServiceLimit]:
    query = select(ServiceLimit).where(ServiceLimit.tenant_id == tenant_id)
    if service:
        query = query.where(ServiceLimit.service == service)
    if window:
        query = query.where(ServiceLimit.window == window)
    return sorted(db.session.scalars(query), key=lambda lim: (lim.service, lim.model, WINDOW_ORDER[lim.window]))


def set_limit(
    tenant_id: int, service: str, window: str, limit_value: int, unit: str, model: str = "", ip_address=None
) -> ServiceLimit:
    """Create or change one limit (audited); acquires use it from the next call on."""
    if window not in WINDOWS:
        raise LimitError(f"limit_type must be one of {', '.join(WINDOWS)}")
    if unit not in LIMIT_UNITS:
        raise LimitError(f"unit must be one of {', '.join(LIMIT_UNITS)}")
    if limit_value < 1:
        raise LimitError("limit_value must be at least 1")
    limit = _find_limit(tenant_id, service, window, model)
    if limit is None:
        limit = ServiceLimit(tenant_id=tenant_id, service=service, model=model, window=window)
        db.session.add(limit)
    limit.limit_value = limit_value
    limit.unit = unit
    record_event(
        "service_limit.set",
        tenant_id,
        None,
        ip_address,
        service=service,
        model=model,
        limit_type=window,
        limit_value=limit_value,
        unit=unit,
    )
    mark_access_changed()  # the API's cached limits reload
    return limit


def _find_limit(tenant_id: int, service: str, window: str, model: str) -> ServiceLimit | None:
    return db.session.scalar(
        select(ServiceLimit).where(
            ServiceLimit.tenant_id == tenant_id,
            ServiceLimit.service == service,
            ServiceLimit.model == model,
            ServiceLimit.window == window,
        )
    )


def delete_limit(tenant_id: int, service: str, window: str, model: str = "", ip_address=None) -> bool:
    """Remove one limit (audited); False when there is none."""
    limit = _find_limit(tenant_id, service, window, model)
    if limit is None:
        return False
    db.session.delete(limit)
    record_event("service_limit.removed", tenant_id, None, ip_address, service=service, model=model, limit_type=window)
    mark_access_changed()
    return True


@dataclass(frozen=True)
class LimitSpec:
    """A limit as the API's hot paths need it (plain values, cached per process)."""

    service: str
    model: str
    window: str
    limit_value: int
    unit: str

    def applies_to(self, model: str) -> bool:
        return self.model == "" or self.model == model

    def amount(self, units: int) -> int:
        """What one call of ``units`` quota units uses of this limit."""
        return units if self.unit == "quota_units" else 1


def limit_specs(tenant_id: int) -> tuple[LimitSpec, ...]:
    return tuple(
        LimitSpec(lim.service, lim.model, lim.window, lim.limit_value, lim.unit) for lim in list_limits(tenant_id)
    )


class LimitCache:
    """Each tenant's limits, per process, valid for one configuration version."""

    def __init__(self) -> None:
        self.version = ""
        self._specs: dict[int, tuple[LimitSpec, ...]] = {}

    def get(self, tenant_id: int, version: str) -> tuple[LimitSpec, ...]:
        if version != self.version:
            self._specs, self.version = {}, version
        specs = self._specs.get(tenant_id)
        if specs is None:
            specs = self._specs[tenant_id] = limit_specs(tenant_id)
        return specs


def window_bounds(window: str, at: float) -> tuple[float, float, str]:
    """The window containing epoch time ``at``: start, end and the bucket's name."""
    if window == "month":
        start, end = billing_period(datetime.fromtimestamp(at, UTC))
        return start.timestamp(), end.timestamp(), f"{start:%Y%m}"
    span = SPANS[window]
    start = int(at) // span * span
    return float(start), float(start + span), str(start // span)


def counter_for(tenant_id: int, spec: LimitSpec, at: float) -> tuple[str, float]:
    """The counter of ``spec``'s window containing ``at``, and when that window ends."""
    _, end, bucket = window_bounds(spec.window, at)
    return service_window_key(tenant_id, spec.service, spec.model, spec.window, bucket), end


def window_status(spec: LimitSpec, current: int, now: float) -> dict:
    _, end, _ = window_bounds(spec.window, now)
    return {
        "service_name": spec.service,
        "model": spec.model or None,
        "limit_type": spec.window,
        "unit": spec.unit,
        "current_count": current,
        "limit_value": spec.limit_value,
        "remaining": max(0, spec.limit_value - current),
        "reset_at": iso(end),
        "percentage_used": round(current / spec.limit_value * 100, 2),
        "can_call": current < spec.limit_value,
    }


def current_counts(redis: Redis, tenant_id: int, specs: list[LimitSpec], now: float) -> list[int]:
    if not specs:
        return []
    values = redis.mget([counter_for(tenant_id, spec, now)[0] for spec in specs])
    return [int(v or 0) for v in values]


def statuses(redis: Redis, tenant_id: int, specs: list[LimitSpec], now: float) -> list[dict]:
    """Seed 002's rate-limit entries: each limit's use in its current window."""
    return [
        window_status(spec, count, now)
        for spec, count in zip(specs, current_counts(redis, tenant_id, specs, now), strict=True)
    ]


@dataclass(frozen=True)
class AcquireResult:
    granted: bool
    permit_id: str | None
    windows: list[dict]
    # Seconds until every refusing window has reset (when refused).
    retry_after: int = 0
    refused: list[str] | None = None
    stop_detail: str | None = None


class UnitsTooLarge(ValueError):
    """More units than a window allows at all: no wait makes the acquire pass."""


def acquire(
    redis: Redis,
    tenant_id: int,
    specs: tuple[LimitSpec, ...],
    service: str,
    units: int = 1,
    model: str = "",
    key_id: int = 0,
    end_user: str = "",
    now: float | None = None,
) -> AcquireResult:
    """Check every window of ``service`` (and of ``model``) and consume ``units`` only if all
    pass; a budget's hard stop on the tenant, the service, the key or the end user refuses it."""
    now = time.time() if now is None else now
    chosen = [spec for spec in specs if spec.service == service and spec.applies_to(model)]
    for spec in chosen:
        if spec.amount(units) > spec.limit_value:
            label = f"{service} {spec.model + ' ' if spec.model else ''}{spec.window}"
            raise UnitsTooLarge(f"units ({units}) exceed the {label} limit of {spec.limit_value} {spec.unit}")
    keys, args = [], [len(chosen)]
    for spec in chosen:
        key, end = counter_for(tenant_id, spec, now)
        keys.append(key)
        args += [spec.limit_value, spec.amount(units), int(end - now) + COUNTER_GRACE_SECONDS]
    permit_id = secrets.token_hex(12)
    keys += [permit_key(tenant_id, service, permit_id), budget_stops_key(tenant_id)]
    args += [units, PERMIT_TTL_SECONDS, "*", f"svc:{service}", f"key:{key_id}"]
    if end_user:
        args.append(f"user:{end_user}")
    reply = redis.register_script(ACQUIRE_SCRIPT)(keys=keys, args=args)
    outcome = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    if outcome == "stopped":
        detail = reply[1].decode() if isinstance(reply[1], bytes) else reply[1]
        return AcquireResult(False, None, [], stop_detail=detail)
    counts = [int(c) for c in reply[1:]]
    windows = [window_status(spec, count, now) for spec, count in zip(chosen, counts, strict=True)]
    if outcome == "ok":
        return AcquireResult(True, permit_id, windows)
    refusing = [
        (spec, status)
        for spec, count, status in zip(chosen, counts, windows, strict=True)
        if count + spec.amount(units) > spec.limit_value
    ]
    wait = max(window_bounds(spec.window, now)[1] - now for spec, _ in refusing)
    return AcquireResult(
        False, None, windows, retry_after=max(1, int(wait + 0.999)), refused=[s.window for s, _ in refusing]
    )
