"""Calls a tenant made to outside services, reported through ``POST /api/v1/usage/events``.

No database write on the request path: one Lua script (:data:`EVENTS_SCRIPT`) marks each event id
as seen (an id seen before counts nothing, also when two retries race), adds each new event to
its service's window counters (unless it carries the permit of its acquire, which counted it
already), and appends the batch to the usage stream as one entry. The worker prices and stores
the records (:func:`unpack_events`), exactly once per tenant and id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from ..redis_keys import event_seen_key, permit_key
from .service_limits import COUNTER_GRACE_SECONDS, LimitSpec, counter_for

# An event id is remembered this long in Redis (for its window counters; the database keeps
# records unique per tenant and id for ever).
EVENT_ID_TTL_SECONDS = 86400
# The stream entry's field for a batch of outside-service events.
EVENTS_FIELD = b"x"
# Stored idempotency keys of reported events: "e:" and the event's id (API calls' ids differ).
ID_PREFIX = "e:"

EVENTS_SCRIPT = """
-- KEYS: the usage stream
-- ARGV[1]: {"ttl": s, "events": [{"seen": key, "permit": key or "", "units": n,
--            "counters": [[key, amount, ttl, counts units (1/0)], ...], "record": json}]}
local payload = cjson.decode(ARGV[1])
local accepted = {}
local duplicates = 0
for _, event in ipairs(payload.events) do
  if redis.call('SET', event.seen, '1', 'NX', 'EX', payload.ttl) then
    local permitted = -1
    if event.permit ~= '' then
      local held = redis.call('GET', event.permit)
      if held then
        redis.call('DEL', event.permit)
        permitted = tonumber(held)
      end
    end
    for _, counter in ipairs(event.counters) do
      local amount = counter[2]
      if permitted >= 0 then
        -- counted at the acquire; only units beyond those acquired count now
        if counter[4] == 1 then amount = math.max(0, amount - permitted) else amount = 0 end
      end
      if amount > 0 then
        local value = redis.call('INCRBY', counter[1], amount)
        if value == amount then redis.call('EXPIRE', counter[1], counter[3]) end
      end
    end
    accepted[#accepted + 1] = event.record
  else
    duplicates = duplicates + 1
  end
end
if #accepted > 0 then
  redis.call('XADD', KEYS[1], '*', 'x', '[' .. table.concat(accepted, ',') .. ']')
end
return {#accepted, duplicates}
"""


@dataclass(frozen=True)
class Reported:
    accepted: int
    duplicates: int
    ids: list[str]


def new_event_id() -> str:
    return uuid.uuid4().hex


def _record(tenant_id: int, key_id: int, event: dict[str, Any]) -> str:
    """The stream's form of one event: a usage record, its time as epoch seconds."""
    return json.dumps(
        {
            "tenant_id": tenant_id,
            "api_key_id": key_id,
            "end_user": event["end_user"],
            "service": event["service"],
            "endpoint": event["endpoint"],
            "method": event["method"],
            "category": event["category"],
            "status_code": event["status_code"],
            "duration_ms": event["duration_ms"],
            "tokens_in": event["tokens_in"],
            "tokens_out": event["tokens_out"],
            "cached_tokens": event["cached_tokens"],
            "quota_units": event["quota_units"],
            "model": event["model"],
            "error_message": event["error_message"],
            "meta": event["meta"],
            "occurred_at": event["occurred_at"],
            "idempotency_key": ID_PREFIX + event["id"],
        },
        separators=(",", ":"),
    )


def _counters(tenant_id: int, specs: Sequence[LimitSpec], event: dict[str, Any], now: float) -> list:
    """The window counters an event adds to: those of its service (and model) whose window,
    the one containing the event's time, has not long ended."""
    counters = []
    for spec in specs:
        if spec.service != event["service"] or not spec.applies_to(event["model"]):
            continue
        key, end = counter_for(tenant_id, spec, event["occurred_at"])
        ttl = int(end - now) + COUNTER_GRACE_SECONDS
        if ttl > 0:
            amount = spec.amount(event["quota_units"])
            counters.append([key, amount, ttl, 1 if spec.unit == "quota_units" else 0])
    return counters


def report_events(
    redis: Redis,
    stream: str,
    tenant_id: int,
    key_id: int,
    specs: Sequence[LimitSpec],
    events: Sequence[dict[str, Any]],
    now: float | None = None,
) -> Reported:
    """Count and enqueue validated events (each with every field, ``occurred_at`` in epoch
    seconds; an event without ``id`` gets one). All or nothing: one script call."""
    now = time.time() if now is None else now
    payload = []
    ids = []
    for event in events:
        event_id = event.get("id") or new_event_id()
        event = {**event, "id": event_id}
        ids.append(event_id)
        permit = event.get("permit_id") or ""
        payload.append(
            {
                "seen": event_seen_key(tenant_id, event_id),
                "permit": permit_key(tenant_id, event["service"], permit) if permit else "",
                "counters": _counters(tenant_id, specs, event, now),
                "record": _record(tenant_id, key_id, event),
            }
        )
    script = redis.register_script(EVENTS_SCRIPT)
    document = json.dumps({"ttl": EVENT_ID_TTL_SECONDS, "events": payload}, separators=(",", ":"))
    accepted, duplicates = script(keys=[stream], args=[document])
    return Reported(int(accepted), int(duplicates), ids)


def unpack_events(raw: bytes) -> list[dict[str, Any]]:
    """A stream entry's events as usage records (not yet priced) for the store."""
    records = json.loads(raw)
    for record in records:
        record["source"] = "external"
        record["occurred_at"] = datetime.fromtimestamp(record["occurred_at"], UTC)
    return records
