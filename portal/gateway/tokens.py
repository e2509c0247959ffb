"""Service tokens: what a service in another process presents to verify customer keys.

A token is ``tgs_`` and 256 random bits; only its SHA-256 is kept, and it is shown once. A
customer key is never a service token (they live in different tables), so neither opens the
other's door. Each process remembers a token's verdict for a second: a revoked token stops
working everywhere within about a second.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from sqlalchemy import select

from ..extensions import db
from ..models import ServiceToken, utcnow

TOKEN_PREFIX = "tgs_"
PREFIX_LENGTH = 12
REMEMBER_SECONDS = 1.0


class TokenError(ValueError):
    """A token cannot be made or found as asked; the message says why."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_service_token(name: str) -> tuple[ServiceToken, str]:
    """A new token named ``name`` and its secret (the caller commits; the secret is not kept)."""
    name = name.strip()
    if not name or len(name) > 120:
        raise TokenError("A service token's name is 1 to 120 characters")
    if db.session.scalar(select(ServiceToken.id).where(ServiceToken.name == name)) is not None:
        raise TokenError(f"A service token named {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ServiceToken(name=name, prefix=token[:PREFIX_LENGTH], token_hash=hash_token(token))
    db.session.add(row)
    return row, token


def revoke_service_token(name: str) -> ServiceToken:
    row = db.session.scalar(select(ServiceToken).where(ServiceToken.name == name.strip()))
    if row is None:
        raise TokenError(f"No service token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def list_service_tokens() -> list[ServiceToken]:
    return list(db.session.scalars(select(ServiceToken).order_by(ServiceToken.name)))


class TokenCheck:
    """This process's recent verdicts on presented tokens (a second each, bounded in number)."""

    def __init__(self, max_entries: int = 1000) -> None:
        self._verdicts: dict[str, tuple[int | None, float]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def valid(self, token: str) -> bool:
        return self.token_id(token) is not None

    def token_id(self, token: str) -> int | None:
        """The id of the unrevoked token presented, or None."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = hash_token(token)
        now = time.monotonic()
        known = self._verdicts.get(digest)
        if known is not None and now - known[1] < REMEMBER_SECONDS:
            return known[0]
        found = db.session.scalar(
            select(ServiceToken.id).where(ServiceToken.token_hash == digest, ServiceToken.revoked_at.is_(None))
        )
        with self._lock:
            if len(self._verdicts) >= self.max_entries:
                self._verdicts.clear()
            self._verdicts[digest] = (found, now)
        return found
