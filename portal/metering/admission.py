"""Admitting a protected API call: key, plan windows, monthly quota and metering in one Redis call.

One Lua script per call (:data:`ADMIT_SCRIPT`) does, atomically:

* checks that the caller's view of keys and plans is current (a version counter bumped after
  every committed change to keys, plans or subscriptions — so a revoked key or a new plan
  applies to the very next call in every process);
* records the completion (final status, duration) of this process's previous calls;
* checks the minute, hour and day windows and the monthly quota, and increments them only if
  all pass — a refused call consumes nothing;
* for an admitted call, parks its record in the in-flight hash until its completion arrives;
  for a refused call, appends its complete record (429) to the usage stream.

A record in flight whose process died before completing it is moved to the stream by the
worker's janitor (:func:`flush_abandoned`), with an unknown final status: a crash can lose a
status but never a record.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass

from redis import Redis

from ..kernel.periods import period_bounds
from ..kernel.redis_keys import CONFIG_VERSION, budget_stops_key, quota_key, window_key
from ..redis_store import ThreadScript
from .directory import PlanLimits
from .stream import INFLIGHT, LUA_APPEND, STREAM

WINDOWS = (("minute", 60), ("hour", 3600), ("day", 86400))


def window_keys(tenant_id: int, second: int) -> list[str]:
    """The tenant's minute, hour and day window counters at ``second`` (seconds since the epoch)."""
    return [window_key(tenant_id, name, second // span) for name, span in WINDOWS]


QUOTA_KEPT_AFTER_PERIOD = 35 * 86400  # seconds a period's quota counter outlives the period

# Moves finished calls from the in-flight hash to the stream with their status and duration.
COMPLETE_FUNCTION = (
    LUA_APPEND
    + """
local function complete(stream, inflight, done)
  for id, status, duration in string.gmatch(done, '([^,]+),([^,]+),([^,]+)') do
    local record = redis.call('HGET', inflight, id)
    if record then
      redis.call('HDEL', inflight, id)
      append_call(stream, record, status, duration, '1')
    end
  end
end
"""
)

ADMIT_SCRIPT = (
    COMPLETE_FUNCTION
    + """
-- KEYS: version, minute, hour, day, quota, stream, inflight, budget stops
-- Answers 'rebuild' when the period's quota counter is missing: nothing is admitted for the
-- tenant until it is rebuilt from the records (see portal.metering.quota).
-- ARGV: expected version, now (s), limits m h d, quota (-1 = none), quota ttl (set by the rebuild),
--       record id, record, completions as id,status,duration,... (may be empty),
--       the key's field in the stops hash, '1' if a budget's hard stop refuses this call,
--       the service's and the end user's fields in the stops hash ('' for none),
--       '1' if the monthly quota refuses this call (else it is only counted),
--       the units the call counts in every window and the quota (1 but for verified calls)
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
  return {'stale', redis.call('GET', KEYS[1]) or '0'}
end
complete(KEYS[6], KEYS[7], ARGV[10])
local now = tonumber(ARGV[2])
local counts = redis.call('MGET', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if not counts[4] then return {'rebuild'} end
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local spans = {60, 3600, 86400}
for i = 1, 4 do counts[i] = tonumber(counts[i] or '0') end
local quota = tonumber(ARGV[6])
local units = tonumber(ARGV[16])
if ARGV[12] == '1' then
  local stop = redis.call('HMGET', KEYS[8], '*', ARGV[11], ARGV[13], ARGV[14])
  local detail = stop[1] or stop[2] or stop[3] or stop[4]
  if detail then
    append_call(KEYS[6], ARGV[9], '402', '0', '0')
    return {'stopped', 0, counts[1], counts[2], counts[3], counts[4], detail}
  end
end
local refused = 0
for i = 1, 3 do
  if counts[i] + units > limits[i] then refused = i break end
end
if refused == 0 and quota >= 0 and counts[4] + units > quota and ARGV[15] == '1' then refused = 4 end
if refused > 0 then
  append_call(KEYS[6], ARGV[9], '429', '0', '0')
  return {'refused', refused, counts[1], counts[2], counts[3], counts[4]}
end
for i = 1, 3 do
  counts[i] = redis.call('INCRBY', KEYS[i + 1], units)
  if counts[i] == units then redis.call('EXPIRE', KEYS[i + 1], spans[i] - (now % spans[i])) end
end
counts[4] = redis.call('INCRBY', KEYS[5], units)
redis.call('HSET', KEYS[7], ARGV[8], ARGV[9])
return {'admitted', 0, counts[1], counts[2], counts[3], counts[4]}
"""
)

COMPLETE_SCRIPT = (
    COMPLETE_FUNCTION
    + """
-- KEYS: stream, inflight; ARGV: completions as id,status,duration,...
complete(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

# Completes one call at once with its outcome (what it used); answers 0 if it is not in flight.
COMPLETE_OUTCOME_SCRIPT = (
    LUA_APPEND
    + """
-- KEYS: stream, inflight; ARGV: record id, status, duration, outcome (JSON), and the end the
-- record must have ('' for any: a verify completion may complete only its own token's calls)
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return 0 end
if ARGV[5] ~= '' and string.sub(record, -#ARGV[5]) ~= ARGV[5] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
append_outcome(KEYS[1], record, ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)

ABANDON_SCRIPT = (
    LUA_APPEND
    + """
-- KEYS: stream, inflight; ARGV: ids of records to close with an unknown status
local moved = 0
for i = 1, #ARGV do
  local record = redis.call('HGET', KEYS[2], ARGV[i])
  if record then
    redis.call('HDEL', KEYS[2], ARGV[i])
    append_call(KEYS[1], record, '0', '0', '1')
    moved = moved + 1
  end
end
return moved
"""
)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    # "minute", "hour", "day" or "month" when refused by a window, "budget" by a hard stop.
    refused_by: str | None
    minute: int
    hour: int
    day: int
    month: int
    now: float
    # Why a budget's hard stop refused the call.
    stop_detail: str | None = None

    def count(self, window: str) -> int:
        return getattr(self, window)

    def reset_in(self, window: str) -> int:
        """Seconds until ``window`` (minute/hour/day) starts afresh."""
        span = dict(WINDOWS)[window]
        return int(span - (int(self.now) % span))


class QuotaCounterMissing(Exception):
    """The period's quota counter is gone: rebuild it (:mod:`portal.metering.quota`), then admit."""


class StaleConfig(Exception):
    """Keys, plans or subscriptions changed since this process last loaded them."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.version = version


class ProcessIdentity:
    """A record-id generator unique to this process (renewed after a fork)."""

    def __init__(self) -> None:
        self._pid = -1
        self._lock = threading.Lock()

    def next_id(self) -> str:
        pid = os.getpid()
        if pid != self._pid:
            with self._lock:
                if pid != self._pid:
                    self._token = secrets.token_hex(6)
                    self._counter = itertools.count(1)
                    self._pid = pid
        # Milliseconds first: the janitor reads a record's age from its id.
        return f"{int(time.time() * 1000):x}-{self._token}-{next(self._counter):x}"


def record_age_seconds(record_id: str, now: float) -> float:
    return now - int(record_id.split("-", 1)[0], 16) / 1000


class Admission:
    """The admission script bound to one Redis connection, plus this process's completions."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._admit = ThreadScript(redis, ADMIT_SCRIPT)
        self._complete = ThreadScript(redis, COMPLETE_SCRIPT)
        # Through the client's pool: gateway calls complete from many threads, each seldom.
        self._complete_outcome = redis.register_script(COMPLETE_OUTCOME_SCRIPT)
        self._pending: list[str] = []
        self._pending_since = 0.0
        self._lock = threading.Lock()
        self.ids = ProcessIdentity()

    # -- completions ---------------------------------------------------------------------------
    def complete(self, record_id: str, status: int, duration_ms: int) -> None:
        """Remember a call's outcome; it reaches Redis with the next call or the idle flush."""
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(f"{record_id},{status},{duration_ms}")

    def complete_with_outcome(
        self, record_id: str, status: int, duration_ms: int, outcome: str, must_end: str = ""
    ) -> bool:
        """Complete a call at once with its outcome (:func:`portal.metering.stream.pack_outcome`);
        False when it is not in flight (completed already, or closed by the janitor), or its
        packed record does not end with ``must_end``."""
        return bool(
            self._complete_outcome(keys=[STREAM, INFLIGHT], args=[record_id, status, duration_ms, outcome, must_end])
        )

    def _take_pending(self) -> str:
        with self._lock:
            if not self._pending:
                return ""
            done = ",".join(self._pending)
            self._pending = []
            return done

    def _give_back(self, done: str) -> None:
        if done:
            with self._lock:
                self._pending.insert(0, done)

    def flush_if_idle(self, idle_seconds: float) -> bool:
        """Send completions that have waited ``idle_seconds`` for a next call."""
        with self._lock:
            due = self._pending and time.monotonic() - self._pending_since >= idle_seconds
        if not due:
            return False
        done = self._take_pending()
        try:
            self._complete(keys=[STREAM, INFLIGHT], args=[done])
        except Exception:
            self._give_back(done)
            raise
        return True

    # -- admission -----------------------------------------------------------------------------
    def admit(
        self,
        version: str,
        tenant_id: int,
        limits: PlanLimits,
        record_id: str,
        record: str,
        now: float | None = None,
        key_id: int = 0,
        budget_applies: bool = True,
        service: str = "",
        end_user: str = "",
        quota_refuses: bool = True,
        units: int = 1,
    ) -> Decision:
        """Check and count one call; raises :class:`StaleConfig` when ``version`` is old.

        With ``budget_applies``, the hard stop of a tenant-wide budget, or of one on this key,
        on ``service`` (a gateway route's) or on ``end_user`` refuses the call (metered as 402,
        nothing counted). Without ``quota_refuses`` the call counts toward the monthly quota
        but is not refused by it (the endpoints that manage the account). ``units`` is what the
        call counts in every window and the quota (its record says so too: ``pack_call``)."""
        now = time.time() if now is None else now
        period = period_bounds(now)
        second = int(now)
        keys = [
            CONFIG_VERSION,
            *window_keys(tenant_id, second),
            quota_key(tenant_id, now),
            STREAM,
            INFLIGHT,
            budget_stops_key(tenant_id),
        ]
        quota = -1 if limits.quota is None else limits.quota
        # The quota counter outlives its period by 35 days: closing the period bills what it counted.
        quota_ttl = int(period.end - now) + QUOTA_KEPT_AFTER_PERIOD
        done = self._take_pending()
        try:
            reply = self._admit(
                keys=keys,
                args=[
                    version,
                    second,
                    limits.per_minute,
                    limits.per_hour,
                    limits.per_day,
                    quota,
                    quota_ttl,
                    record_id,
                    record,
                    done,
                    f"key:{key_id}",
                    "1" if budget_applies else "0",
                    f"svc:{service}" if service else "",
                    f"user:{end_user}" if end_user else "",
                    "1" if quota_refuses else "0",
                    units,
                ],
            )
        except Exception:
            self._give_back(done)
            raise
        outcome = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if outcome == "rebuild":
            self._give_back(done)
            raise QuotaCounterMissing()
        if outcome == "stale":
            self._give_back(done)
            version_now = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise StaleConfig(version_now)
        if outcome == "stopped":
            detail = reply[6].decode() if isinstance(reply[6], bytes) else reply[6]
            return Decision(False, "budget", *(int(c) for c in reply[2:6]), now=now, stop_detail=detail)
        refused = int(reply[1])
        return Decision(
            admitted=outcome == "admitted",
            refused_by=(None, "minute", "hour", "day", "month")[refused],
            minute=int(reply[2]),
            hour=int(reply[3]),
            day=int(reply[4]),
            month=int(reply[5]),
            now=now,
        )


def flush_abandoned(redis: Redis, older_than_seconds: float, now: float | None = None) -> int:
    """Move in-flight records older than ``older_than_seconds`` to the stream (status unknown)."""
    now = time.time() if now is None else now
    stale = [
        field.decode()
        for field in redis.hkeys(INFLIGHT)
        if record_age_seconds(field.decode(), now) >= older_than_seconds
    ]
    if not stale:
        return 0
    script = redis.register_script(ABANDON_SCRIPT)
    return int(script(keys=[STREAM, INFLIGHT], args=stale))
