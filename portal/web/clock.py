"""The portal's clock: the same one the API reads, so tests move both together."""

from __future__ import annotations

from datetime import UTC, datetime

from ..api.guard import gate


def now() -> datetime:
    """The current time, UTC."""
    return datetime.fromtimestamp(gate().clock(), UTC)
