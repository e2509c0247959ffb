"""The usage stream: metered usage on its way to the database, and both kinds of entry it holds.

Every metered call reaches the database through one Redis stream (:data:`STREAM`), read by the
worker's consumer group (:data:`GROUP`). An admitted API call waits in the in-flight hash
(:data:`INFLIGHT`) until its response is known. The stream holds two kinds of entry:

* **an API call**, appended by the admission scripts, by the failed-authentication path and by the
  spool's replay: ``r`` the call (JSON: ``id``, ``t`` tenant, ``k`` key, ``e`` endpoint, ``m``
  method, ``c`` category, ``at`` epoch seconds; when present: ``u`` the caller's end user, ``sv``
  the service a gateway route prices it under, ``n`` the units it counted when not 1, ``v`` the
  service token that admitted it through the verify API), ``s`` its
  final status (``0``: unknown, the process stopped before responding), ``d`` its duration in
  ms, ``q`` ``1`` when it was counted
  against the monthly quota, else ``0``; and, for a call that reported what it used (a gateway
  route's upstream, a verified call's completion), ``o`` its outcome (JSON: ``tokens_in``,
  ``tokens_out``, ``cached_tokens``, ``model``, ``units``, ``error``). The spool keeps the same
  four fields per line.
* **a batch of outside-service events**, appended by the events script: ``x`` a JSON array of
  usage records (their fields at the store's default left out, ``occurred_at`` in epoch seconds),
  ``t`` the tenant, ``k`` the reporting key (``0``: none).

The Lua scripts append through :data:`LUA_APPEND`, so the format is written here only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from ..models.usage import OWN_SERVICE
from .store import DEFAULTS as STORED_DEFAULTS
from .store import RECORD_FIELDS as STORED_FIELDS

STREAM = "tollgate:usage"
INFLIGHT = "tollgate:inflight"
GROUP = "tollgate-ingest"

# Lua functions the scripts that append to the stream start with.
LUA_APPEND = """
local function append_call(stream, record, status, duration, counted)
  redis.call('XADD', stream, '*', 'r', record, 's', status, 'd', duration, 'q', counted)
end
local function append_outcome(stream, record, status, duration, outcome)
  redis.call('XADD', stream, '*', 'r', record, 's', status, 'd', duration, 'q', '1', 'o', outcome)
end
local function append_events(stream, records, tenant, key)
  redis.call('XADD', stream, '*', 'x', records, 't', tenant, 'k', key)
end
"""

# -- API calls ---------------------------------------------------------------------------------

UNKNOWN_STATUS = 0  # the status of a call whose process stopped before the response


def pack_call(
    record_id: str,
    tenant_id: int,
    key_id: int,
    endpoint: str,
    method: str,
    category: str,
    at: float,
    end_user: str = "",
    service: str = "",
    units: int = 1,
    verified_by: int = 0,
) -> str:
    """The stream's form of a call's admission; status and duration travel beside it."""
    call = {"id": record_id, "t": tenant_id, "k": key_id, "e": endpoint, "m": method, "c": category, "at": at}
    if end_user:
        call["u"] = end_user
    if service:
        call["sv"] = service
    if units != 1:
        call["n"] = units
    if verified_by:
        call["v"] = verified_by  # last: the completion script checks the record ends with it
    return json.dumps(call, separators=(",", ":"))


def verified_marker(token_id: int) -> str:
    """How a packed call admitted through the verify API with token ``token_id`` ends."""
    return f',"v":{token_id}}}'


# What an outcome (``o``) may set on a call's record, and the largest count it may carry.
OUTCOME_COUNTS = ("tokens_in", "tokens_out", "cached_tokens")
MAX_OUTCOME_COUNT = 10**9


def _storable(text: str) -> str:
    """``text`` without NUL and lone surrogates, which no database column stores."""
    return "".join(ch for ch in text if ch != "\x00" and not "\ud800" <= ch <= "\udfff")


def pack_outcome(
    tokens_in: int = 0, tokens_out: int = 0, cached_tokens: int = 0, model: str = "", units: int = 0, error: str = ""
) -> str:
    """A call's outcome beyond its status: what it used, and what went wrong."""
    outcome: dict[str, Any] = {}
    cached_tokens = min(cached_tokens, tokens_in)
    for name, value in (("tokens_in", tokens_in), ("tokens_out", tokens_out), ("cached_tokens", cached_tokens)):
        if value:
            outcome[name] = min(max(int(value), 0), MAX_OUTCOME_COUNT)
    if units:
        outcome["units"] = min(max(int(units), 0), MAX_OUTCOME_COUNT)
    if model:
        outcome["model"] = _storable(model[:120])
    if error:
        outcome["error"] = _storable(error[:2000])
    return json.dumps(outcome, separators=(",", ":"))


def call_entry(record: str, status: int, duration_ms: int, counted: bool) -> dict[str, Any]:
    """The fields of an API call's entry (also one line of the spool)."""
    return {"r": record, "s": status, "d": duration_ms, "q": int(counted)}


def counted_against_quota(fields: dict[bytes, bytes]) -> bool:
    """Whether a stream entry's call was admitted (counted against the monthly quota). Entries
    appended before entries said so count unless refused with 429, as statements counted them."""
    counted = fields.get(b"q")
    if counted is not None:
        return counted == b"1"
    return fields.get(b"s") != b"429"


def unpack_call(fields: dict[bytes, bytes]) -> dict:
    """An API call's entry as a usage record for :func:`portal.metering.store.store_usage`; an
    admitted call carries 1 quota unit (the quota counter is rebuilt from them)."""
    data = json.loads(fields[b"r"])
    status = int(fields[b"s"])
    record = {
        "tenant_id": data["t"],
        "api_key_id": data["k"],
        "end_user": data.get("u", ""),
        "source": "api",
        "service": data.get("sv") or OWN_SERVICE,
        "endpoint": data["e"],
        "method": data["m"],
        "category": data["c"],
        "status_code": status,
        "duration_ms": int(fields[b"d"]),
        "quota_units": int(data.get("n", 1)) if counted_against_quota(fields) else 0,
        "error_message": "final status unknown: the server stopped before responding"
        if status == UNKNOWN_STATUS
        else None,
        "occurred_at": datetime.fromtimestamp(data["at"], UTC),
        "idempotency_key": data["id"],
    }
    outcome = fields.get(b"o")
    if outcome or record["service"] != OWN_SERVICE:
        record.update(tokens_in=0, tokens_out=0, cached_tokens=0, model="")
    if outcome:
        used = json.loads(outcome)
        for name in OUTCOME_COUNTS:
            record[name] = min(max(int(used.get(name, 0)), 0), MAX_OUTCOME_COUNT)
        record["model"] = str(used.get("model", ""))[:120]
        if used.get("units"):
            # Units the service prices (its own quota units); the Tollgate quota counted 1.
            record["meta"] = {"units": min(max(int(used["units"]), 0), MAX_OUTCOME_COUNT)}
        if used.get("error"):
            record["error_message"] = str(used["error"])[:2000]
    return record


def call_units(record: dict[str, Any]) -> int:
    """The units a call's service prices, beside its tokens (see :func:`unpack_call`)."""
    meta = record.get("meta")
    return int(meta.get("units", 0)) if isinstance(meta, dict) else 0


def call_tenant_and_time(record: str | bytes) -> tuple[int, float]:
    """(tenant id, epoch seconds) of a packed call."""
    data = json.loads(record)
    return int(data["t"]), float(data["at"])


# -- outside-service events --------------------------------------------------------------------

EVENTS_FIELD = b"x"
# Stored idempotency keys of reported events: "e:" and the event's id (API calls' ids differ).
EVENT_ID_PREFIX = "e:"
# A record's fields in an events entry (the store's, less those the entry or the worker supplies);
# those at the store's default are left out. Every event states its method.
PER_ENTRY = ("tenant_id", "api_key_id", "source", "cost", "price_id", "occurred_at", "idempotency_key")
EVENT_FIELDS = tuple(name for name in STORED_FIELDS if name not in PER_ENTRY)
EVENT_DEFAULTS = {name: value for name, value in STORED_DEFAULTS.items() if name in EVENT_FIELDS and name != "method"}
_EVENT_DEFAULTS = tuple((name, EVENT_DEFAULTS.get(name, ...)) for name in EVENT_FIELDS)


def is_events(fields: dict[bytes, bytes]) -> bool:
    return EVENTS_FIELD in fields


def pack_event(event: dict[str, Any], event_id: str) -> bytes | str:
    """The stream's form of one event: a usage record, its time as epoch seconds."""
    record = {name: value for name, default in _EVENT_DEFAULTS if (value := event[name]) != default}
    record["occurred_at"] = event["occurred_at"]
    record["idempotency_key"] = EVENT_ID_PREFIX + event_id
    if "meta" not in record:
        # pydantic's encoder is several times faster; metadata (NaN, say) and a lone surrogate
        # keep the standard library's form.
        try:
            return to_json(record)
        except PydanticSerializationError:
            pass
    return json.dumps(record, separators=(",", ":"))


def unpack_events(fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """An events entry as usage records (not yet priced) for the store."""
    tenant_id, key_id = int(fields[b"t"]), int(fields[b"k"]) or None
    records = []
    for record in json.loads(fields[EVENTS_FIELD]):
        record = {**EVENT_DEFAULTS, **record, "tenant_id": tenant_id, "api_key_id": key_id, "source": "external"}
        record["occurred_at"] = datetime.fromtimestamp(record["occurred_at"], UTC)
        records.append(record)
    return records


# -- either kind -------------------------------------------------------------------------------


def entry_times(fields: dict[bytes, bytes]) -> Iterator[tuple[int, float]]:
    """(tenant id, occurred_at as epoch seconds) of each record of a stream entry."""
    if is_events(fields):
        tenant_id = int(fields[b"t"])
        for event in json.loads(fields[EVENTS_FIELD]):
            yield tenant_id, float(event["occurred_at"])
    elif b"r" in fields:
        yield call_tenant_and_time(fields[b"r"])
