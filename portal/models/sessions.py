"""Portal sign-in sessions, kept on the server so that signing out ends them there."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ._types import UTCDateTime, utcnow


class UserSession(db.Model):
    """One signed-in browser. Its key travels in the session and remember cookies; only a
    hash of it is kept, and a cookie whose session row is gone or expired opens nothing."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 of the session key; the key itself lives only in the browser's cookies.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Signed in with "keep me signed in": the remember cookie may bring this session back.
    remember: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Absolute: a session ends at this time however busy it is, and the user signs in again.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    def __repr__(self) -> str:
        return f"<UserSession {self.id} of user {self.user_id}>"
