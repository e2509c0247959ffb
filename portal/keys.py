"""API keys: creation, lookup by secret, and revocation. Only a hash of a secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import or_, select

from .extensions import db
from .models import ApiKey, Tenant, utcnow

SECRET_PREFIX = "tg_"
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
) -> tuple[ApiKey, str]:
    """A new key for ``tenant``; returns it with its secret, which is never stored."""
    name = name.strip()
    if not name:
        raise ValueError("the key needs a name")
    secret = new_secret()
    key = ApiKey(
        tenant=tenant,
        name=name,
        description=description.strip(),
        prefix=secret[:PREFIX_LENGTH],
        key_hash=hash_secret(secret),
        expires_at=expires_at,
        created_by_id=created_by_id,
    )
    db.session.add(key)
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
    key.revoked_at = now or utcnow()
    key.is_active = False
    return key
