"""Calls a tenant made to outside services, reported through ``POST /api/v1/usage/events``.

No database write on the request path: one Lua script (:data:`EVENTS_SCRIPT`) marks each event id
as seen (an id seen before counts nothing, also when two retries race), adds each new event to
its service's window counters (unless it carries the permit of its acquire, which counted it
already), and appends the batch to the usage stream as one entry. The worker prices and stores
the records (:func:`portal.metering.stream.unpack_events`), exactly once per tenant and id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from ..kernel.redis_keys import event_seen_key, permit_key
from ..metering.stream import LUA_APPEND, pack_event
from .service_limits import COUNTER_GRACE_SECONDS, LimitSpec, counter_for

# An event id is remembered this long in Redis (for its window counters; the database keeps
# records unique per tenant and id for ever).
EVENT_ID_TTL_SECONDS = 86400

EVENTS_SCRIPT = (
    LUA_APPEND
    + """
-- KEYS: the usage stream
-- ARGV: seconds an id is remembered, tenant id, key id, m, then m counters as key, ttl, counts
--       units; then per event: its seen-id key, its permit key or '', its record (JSON), n, and
--       n of the counters it adds to as the counter's number (1..m) and amount
local ttl = tonumber(ARGV[1])
local m = tonumber(ARGV[4])
local sums = {}
for c = 1, m do sums[c] = 0 end
local accepted = {}
local duplicates = 0
local i = 5 + 3 * m
while i <= #ARGV do
  local seen, permit, record, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local first = i + 4
  i = first + 2 * n
  if redis.call('SET', seen, '1', 'NX', 'EX', ttl) then
    local permitted = -1
    if permit ~= '' then
      local held = redis.call('GET', permit)
      if held then
        redis.call('DEL', permit)
        permitted = tonumber(held)
      end
    end
    for c = first, i - 1, 2 do
      local counter = tonumber(ARGV[c])
      local amount = tonumber(ARGV[c + 1])
      if permitted >= 0 then
        -- counted at the acquire; only units beyond those acquired count now
        if ARGV[3 * counter + 4] == '1' then amount = math.max(0, amount - permitted) else amount = 0 end
      end
      sums[counter] = sums[counter] + amount
    end
    accepted[#accepted + 1] = record
  else
    duplicates = duplicates + 1
  end
end
-- each counter once, with what the batch's new events add to it
for c = 1, m do
  local amount = sums[c]
  if amount > 0 then
    local key = ARGV[3 * c + 2]
    local value = redis.call('INCRBY', key, amount)
    if value == amount then redis.call('EXPIRE', key, tonumber(ARGV[3 * c + 3])) end
  end
end
if #accepted > 0 then
  append_events(KEYS[1], '[' .. table.concat(accepted, ',') .. ']', ARGV[2], ARGV[3])
end
return {#accepted, duplicates}
"""
)


@dataclass(frozen=True)
class Reported:
    accepted: int
    duplicates: int
    ids: list[str]


def new_event_id() -> str:
    return uuid.uuid4().hex


class _Counters:
    """The window counters events add to: those of the event's service (and model) whose window,
    the one containing the event's time, has not long ended. Windows are worked out once per
    batch (a batch's events mostly share their minute), and each counter is named to the script
    once, events referring to it by its number."""

    def __init__(self, tenant_id: int, specs: Sequence[LimitSpec], now: float) -> None:
        self.tenant_id = tenant_id
        self.specs = specs
        self.now = now
        self._windows: dict[tuple[LimitSpec, int], tuple[int, int]] = {}
        self._numbers: dict[str, int] = {}
        # The script's counter arguments: key, ttl, counts units, for counter 1, 2...
        self.table: list = []

    def args(self, event: dict[str, Any]) -> list:
        """``n`` and the event's counters as the script's arguments: counter number, amount."""
        if not self.specs:
            return [0]
        found: list = []
        at = event["occurred_at"]
        for spec in self.specs:
            if spec.service != event["service"] or not spec.applies_to(event["model"]):
                continue
            memo = (spec, int(at) // 60)
            window = self._windows.get(memo)
            if window is None:
                key, end = counter_for(self.tenant_id, spec, at)
                ttl = int(end - self.now) + COUNTER_GRACE_SECONDS
                number = self._numbers.get(key, 0)
                if not number and ttl > 0:
                    number = self._numbers[key] = len(self._numbers) + 1
                    self.table += [key, ttl, 1 if spec.unit == "quota_units" else 0]
                window = self._windows[memo] = (number, ttl)
            number, ttl = window
            if ttl > 0:
                found += [number, spec.amount(event["quota_units"])]
        return [len(found) // 2, *found]


def report_events(
    redis: Redis,
    stream: str,
    tenant_id: int,
    key_id: int | None,
    specs: Sequence[LimitSpec],
    events: Sequence[dict[str, Any]],
    now: float | None = None,
) -> Reported:
    """Count and enqueue validated events (each with every field, ``occurred_at`` in epoch
    seconds; an event without ``id`` gets one). All or nothing: one script call."""
    now = time.time() if now is None else now
    counters = _Counters(tenant_id, specs, now)
    args: list = []
    ids = []
    seen_prefix = event_seen_key(tenant_id, "")  # the id ends the key
    for event in events:
        event_id = event.get("id") or new_event_id()
        ids.append(event_id)
        permit = event.get("permit_id")
        args += [
            seen_prefix + event_id,
            permit_key(tenant_id, event["service"], permit) if permit else "",
            pack_event(event, event_id),
        ]
        args += counters.args(event)
    table = counters.table
    args = [EVENT_ID_TTL_SECONDS, tenant_id, key_id or 0, len(table) // 3, *table, *args]
    accepted, duplicates = redis.register_script(EVENTS_SCRIPT)(keys=[stream], args=args)
    return Reported(int(accepted), int(duplicates), ids)
