"""API keys: creation, lookup by secret, and revocation. Only a hash of a secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import or_, select

from ..extensions import db
from ..kernel.changes import mark_access_changed
from ..models import ApiKey, Tenant, utcnow

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


def rotate_api_key(key: ApiKey, by_user_id: int | None) -> str:
    """Give ``key`` a new secret; the old secret stops working. Returns the new secret. Whoever
    rotates it holds the secret from now on, so the key is theirs: it does no more than they may,
    and it is revoked with them when they leave the team."""
    if key.revoked_at is not None:
        raise ValueError("a revoked key cannot be rotated; create a new one")
    key.created_by_id = by_user_id
    secret = new_secret()
    key.prefix = secret[:PREFIX_LENGTH]
    key.key_hash = hash_secret(secret)
    mark_access_changed()
    return secret
