"""Names of Tollgate's Redis keys: every one but the usage stream's and the in-flight hash's
(:mod:`portal.metering.stream`, with the stream's entries), and those Flask-Limiter names itself
(:mod:`portal.limits`).

Most keys carry the tenant's shard as a hash tag (``{u:N}``, N = tenant id mod the number of
shards, 1 on one server), so that all the keys one script touches for a tenant live in one slot
of a Redis Cluster: moving to a cluster is a setting, not a rewrite.
"""

from __future__ import annotations

from datetime import datetime

from .periods import period_bounds

SHARDS = 1

# Bumped after every commit that changes keys, plans or subscriptions (see ``changes``).
CONFIG_VERSION = "tollgate:config-version"
# Bumped when the price catalog changes, so every process reloads it.
PRICES_VERSION = "tollgate:prices-version"
# Held by the retention run and by an alert evaluation while they work.
RETENTION_LOCK = "tollgate:retention:running"
ALERTS_LOCK = "tollgate:alerts:evaluating"


def shard_tag(tenant_id: int) -> str:
    return f"{{u:{tenant_id % SHARDS}}}"


def budget_stops_key(tenant_id: int) -> str:
    """Hash of the tenant's budget hard stops: field ``*`` (the whole tenant), ``svc:NAME``,
    ``key:ID`` or ``user:NAME``; the value says which budget and when it resets."""
    return f"tollgate:{shard_tag(tenant_id)}:stops:{tenant_id}"


def service_window_key(tenant_id: int, service: str, model: str, window: str, bucket: str) -> str:
    """Calls (or quota units) of an outside service in one window bucket."""
    return f"tollgate:{shard_tag(tenant_id)}:svc:{tenant_id}:{service}:{model}:{window}:{bucket}"


def permit_key(tenant_id: int, service: str, permit_id: str) -> str:
    """An acquire's permit: what it counted, so that the event reporting it counts nothing again."""
    return f"tollgate:{shard_tag(tenant_id)}:permit:{tenant_id}:{service}:{permit_id}"


def event_seen_key(tenant_id: int, event_id: str) -> str:
    """Marks an outside-service event id as accepted (retries count once)."""
    return f"tollgate:{shard_tag(tenant_id)}:evt:{tenant_id}:{event_id}"


def quota_key(tenant_id: int, at: datetime | float) -> str:
    """The Redis counter of calls admitted in the billing period containing ``at``."""
    month = period_bounds(at if isinstance(at, float | int) else at.timestamp()).month
    return f"tollgate:q:{tenant_id}:{month}"


def auth_failure_keys(hour_bucket: int, ip: str | None, tenant_id: int | None = None, key_id: int | None = None):
    """The counters of failed API authentications in one hour: per client address, and per
    tenant and key when the key presented is known (the failed-authentication alert reads the
    tenant's)."""
    names = [f"tollgate:authfail:ip:{ip}:{hour_bucket}"]
    if tenant_id is not None:
        names += [auth_failure_key(tenant_id, hour_bucket), f"tollgate:authfail:key:{key_id}:{hour_bucket}"]
    return names


def auth_failure_key(tenant_id: int, hour_bucket: int) -> str:
    """Failed API authentications of a tenant's keys in one hour."""
    return f"tollgate:authfail:tenant:{tenant_id}:{hour_bucket}"


def window_key(tenant_id: int, window: str, bucket: int) -> str:
    """Calls admitted in one bucket of a tenant's minute, hour or day window."""
    return f"tollgate:w:{tenant_id}:{window[0]}:{bucket}"


def once_key(user_id: int, token: str) -> str:
    """Marks a portal form's submission token as used (a reloaded form acts once)."""
    return f"tollgate:once:{user_id}:{token}"


def last_run_key(job: str) -> str:
    """The last finished run of a worker job."""
    return f"tollgate:jobs:last:{job}"


def periodic_key(job: str) -> str:
    """Held while a periodic job's run is due, so one scheduler enqueues it once."""
    return f"tollgate:periodic:{job}"
