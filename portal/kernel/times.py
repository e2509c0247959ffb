"""The one way Tollgate writes a moment as text: ISO 8601 in UTC to the second, ``Z`` for the
zone (``2026-11-25T12:30:00Z``), in API answers, audit details, e-mails and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@overload
def iso(at: datetime | float) -> str: ...
@overload
def iso(at: None) -> None: ...


def iso(at: datetime | float | None) -> str | None:
    """``at`` (a UTC datetime or epoch seconds) as ISO 8601 text; None stays None."""
    if at is None:
        return None
    if isinstance(at, int | float):
        at = datetime.fromtimestamp(at, UTC)
    return at.strftime(ISO_FORMAT)
