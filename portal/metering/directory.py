"""What admission knows of an API key and its tenant's plan, cached per process.

Every process keeps a directory of key entries valid for one configuration version (bumped after
each committed change to keys, plans or subscriptions): a revoked key or a new plan is seen by
the next call in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR

from sqlalchemy import select

from ..extensions import db
from ..kernel.redis_keys import CONFIG_VERSION
from ..models import ApiKey, Plan, Subscription, Tenant


@dataclass(frozen=True)
class PlanLimits:
    """What the admission script needs to know about a tenant's plan."""

    plan_code: str
    per_minute: int
    per_hour: int
    per_day: int
    # Calls a period may admit (quota plus any overage allowance); None = no limit.
    quota: int | None
    # The plan's quota shown in headers; None = unlimited.
    shown_quota: int | None

    @property
    def limit_string(self) -> str:
        return f"{self.per_minute}/minute;{self.per_hour}/hour;{self.per_day}/day"


def plan_limits(plan: Plan, subscription: Subscription) -> PlanLimits:
    """The windows and the number of calls a period may admit under this subscription.

    With overage allowed on a paid plan, calls go on past the quota: without a cap, without
    limit; with a cap, until the overage would cost more than the cap.
    """
    admitted = plan.monthly_quota
    if admitted is not None and subscription.allow_overage and plan.overage_price_per_1000:
        if subscription.overage_cap is None:
            admitted = None
        else:
            extra = (subscription.overage_cap / plan.overage_price_per_1000 * 1000).to_integral_value(ROUND_FLOOR)
            admitted += int(extra)
    return PlanLimits(plan.code, plan.per_minute, plan.per_hour, plan.per_day, admitted, plan.monthly_quota)


@dataclass(frozen=True)
class KeyEntry:
    """What the API needs to know about a key, cached per process."""

    key_id: int
    tenant_id: int
    is_active: bool
    revoked: bool
    expires_at: float | None  # epoch seconds
    limits: PlanLimits
    scope: str = "usage"
    # When the tenant was made (epoch seconds): no usage of it can be older.
    tenant_since: float = 0.0
    tenant_slug: str = ""

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def usable(self, now: float) -> bool:
        if self.revoked or not self.is_active:
            return False
        return self.expires_at is None or now < self.expires_at


def load_key_entry(key_hash: str) -> KeyEntry | None:
    """The key with this hash, its tenant's plan limits and overage allowance, or None."""
    row = db.session.execute(
        select(ApiKey, Subscription, Plan, Tenant.created_at, Tenant.slug)
        .join(Subscription, (Subscription.tenant_id == ApiKey.tenant_id) & Subscription.ended_at.is_(None))
        .join(Plan, Plan.id == Subscription.plan_id)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == key_hash, Tenant.is_active.is_(True))
        .order_by(Subscription.started_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    key, subscription, plan, tenant_since, tenant_slug = row
    return KeyEntry(
        key_id=key.id,
        tenant_id=key.tenant_id,
        is_active=key.is_active,
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        limits=plan_limits(plan, subscription),
        scope=key.scope,
        tenant_since=tenant_since.timestamp(),
        tenant_slug=tenant_slug,
    )


class KeyDirectory:
    """Per-process cache of key entries, valid for one configuration version.

    Unknown hashes are cached too (a new key bumps the version), bounded in number.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.version = ""
        self.max_entries = max_entries
        self._entries: dict[str, KeyEntry | None] = {}

    def lookup(self, key_hash: str) -> KeyEntry | None:
        try:
            return self._entries[key_hash]
        except KeyError:
            pass
        entry = load_key_entry(key_hash)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = entry
        return entry

    def lookup_current(self, key_hash: str, redis) -> KeyEntry | None:
        """Like :meth:`lookup`, after dropping the cache if the configuration version moved on."""
        version = (redis.get(CONFIG_VERSION) or b"0").decode()
        if version != self.version:
            self.reset(version)
        return self.lookup(key_hash)

    def reset(self, version: str) -> None:
        self._entries = {}
        self.version = version
