"""The gateway: the operator's own API routes that Tollgate admits, forwards and meters, and the
service tokens with which services in other processes verify customer keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ._types import JSONType, UTCDateTime, utcnow

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_BODY_BYTES = 10 * 2**20


class GatewayRoute(db.Model):
    """A path of the operator's product: calls to it and below it go to ``upstream_url``."""

    __tablename__ = "gateway_routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    # "/api/chat": takes /api/chat and /api/chat/… (the longest matching route wins).
    path: Mapped[str] = mapped_column(String(255), unique=True)
    upstream_url: Mapped[str] = mapped_column(String(2048))
    # Comma-separated HTTP methods, upper case ("POST,GET").
    methods: Mapped[str] = mapped_column(String(120), default="POST")
    category: Mapped[str] = mapped_column(String(64), default="")
    # The service its usage is priced under ("tollgate": not priced).
    service: Mapped[str] = mapped_column(String(64), default="tollgate")
    timeout_seconds: Mapped[float] = mapped_column(Float, default=DEFAULT_TIMEOUT_SECONDS)
    # Comma-separated plan codes allowed to call it; empty: every plan.
    plans: Mapped[str] = mapped_column(String(255), default="")
    # {"Header-Name": "ENVIRONMENT_VARIABLE"}: credentials read from the environment per call,
    # never stored here.
    upstream_headers: Mapped[dict] = mapped_column(JSONType, default=dict)
    max_body_bytes: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_BODY_BYTES)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<GatewayRoute {self.path} -> {self.upstream_url}>"


class ServiceToken(db.Model):
    """A token a service in another process presents to verify customer keys (only its hash)."""

    __tablename__ = "service_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<ServiceToken {self.name} ({self.prefix})>"
