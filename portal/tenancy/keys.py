"""API keys: creation, lookup by secret, and revocation. Only a hash of a secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select

from ..billing.plans import PlanLimits, plan_limits
from ..extensions import db
from ..models import ApiKey, Plan, Subscription, Tenant, utcnow
from .changes import CONFIG_VERSION, mark_access_changed

SECRET_PREFIX = "tg_"
# usage: call, report events, acquire, read; admin: also change budgets, limits and settings.
SCOPES = ("usage", "admin")
PREFIX_LENGTH = 11  # "tg_" and eight characters


class ApiKeyNotFound(LookupError):
    """No such key, or more than one matches."""


def hash_secret(secret: str) -> str:
    # Secrets are 256 bits of randomness, so a fast hash is enough (no KDF needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def create_api_key(
    tenant: Tenant,
    name: str,
    description: str = "",
    expires_at: datetime | None = None,
    created_by_id: int | None = None,
    scope: str = "usage",
) -> tuple[ApiKey, str]:
    """A new key for ``tenant``; returns it with its secret, which is never stored."""
    name = name.strip()
    if not name:
        raise ValueError("the key needs a name")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}")
    secret = new_secret()
    key = ApiKey(
        tenant=tenant,
        name=name,
        description=description.strip(),
        prefix=secret[:PREFIX_LENGTH],
        key_hash=hash_secret(secret),
        expires_at=expires_at,
        created_by_id=created_by_id,
        scope=scope,
    )
    db.session.add(key)
    mark_access_changed()
    return key, secret


def find_tenant_key(tenant: Tenant, name_or_prefix: str) -> ApiKey:
    """The tenant's unrevoked key with this name or prefix."""
    matches = list(
        db.session.scalars(
            select(ApiKey).where(
                ApiKey.tenant_id == tenant.id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.name == name_or_prefix, ApiKey.prefix == name_or_prefix),
            )
        )
    )
    if not matches:
        raise ApiKeyNotFound(f"tenant {tenant.slug} has no active key named or prefixed {name_or_prefix!r}")
    if len(matches) > 1:
        prefixes = ", ".join(k.prefix for k in matches)
        raise ApiKeyNotFound(f"{len(matches)} keys match {name_or_prefix!r} ({prefixes}); give the prefix")
    return matches[0]


def revoke_api_key(key: ApiKey, now: datetime | None = None) -> ApiKey:
    """Revoke ``key`` for good; it stops working on the next call everywhere."""
    if key.revoked_at is not None:
        raise ValueError("the key is already revoked")
    key.revoked_at = now or utcnow()
    key.is_active = False
    mark_access_changed()
    return key


def set_key_active(key: ApiKey, active: bool) -> ApiKey:
    """Deactivate or reactivate a key (a revoked key stays revoked)."""
    if key.revoked_at is not None:
        raise ValueError(
            "a revoked key cannot be reactivated; create a new one" if active else "the key is already revoked"
        )
    key.is_active = active
    mark_access_changed()
    return key


def rotate_api_key(key: ApiKey) -> str:
    """Give ``key`` a new secret; the old secret stops working. Returns the new secret."""
    if key.revoked_at is not None:
        raise ValueError("a revoked key cannot be rotated; create a new one")
    secret = new_secret()
    key.prefix = secret[:PREFIX_LENGTH]
    key.key_hash = hash_secret(secret)
    mark_access_changed()
    return secret


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
        select(ApiKey, Subscription, Plan, Tenant.created_at)
        .join(Subscription, (Subscription.tenant_id == ApiKey.tenant_id) & Subscription.ended_at.is_(None))
        .join(Plan, Plan.id == Subscription.plan_id)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == key_hash, Tenant.is_active.is_(True))
        .order_by(Subscription.started_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    key, subscription, plan, tenant_since = row
    return KeyEntry(
        key_id=key.id,
        tenant_id=key.tenant_id,
        is_active=key.is_active,
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at.timestamp() if key.expires_at else None,
        limits=plan_limits(plan, subscription),
        scope=key.scope,
        tenant_since=tenant_since.timestamp(),
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
