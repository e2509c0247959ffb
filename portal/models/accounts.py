"""One-time links about a user's own account: a password reset, a change of e-mail address.

Only a hash of a link's token is kept; the token itself travels in the e-mail alone. A link works
once, until it expires, and a newer link of the same purpose, or a change of password, voids it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import UTCDateTime, utcnow
from .tenancy import User

PASSWORD_RESET = "password_reset"
EMAIL_CHANGE = "email_change"
PURPOSES = (PASSWORD_RESET, EMAIL_CHANGE)


class AccountToken(db.Model):
    __tablename__ = "account_tokens"
    __table_args__ = (Index("ix_account_tokens_user_purpose", "user_id", "purpose"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(16))
    # sha256 of the link's token.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The address an e-mail change goes to (confirmed by opening the link sent there).
    new_email: Mapped[str | None] = mapped_column(String(254))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set when the link is used, or voided by a newer one or a password change.
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requested_from: Mapped[str | None] = mapped_column(String(45))

    user: Mapped[User] = relationship()

    def usable(self, now: datetime) -> bool:
        return self.ended_at is None and self.expires_at > now

    def __repr__(self) -> str:
        return f"<AccountToken {self.id} {self.purpose} of user {self.user_id}>"


class RecoveryCode(db.Model):
    """One of a user's ten single-use codes for signing in without the authenticator app."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 of the code (50 random bits, shown once when the codes are made).
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<RecoveryCode {self.id} of user {self.user_id}>"


class TrustedDevice(db.Model):
    """A browser where the user ticked "remember this device": its cookie skips the second
    factor after the password until ``expires_at`` (30 days at most)."""

    __tablename__ = "trusted_devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 of the random token the device's cookie carries.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    browser: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<TrustedDevice {self.id} of user {self.user_id}>"
