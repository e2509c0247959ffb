"""The rate-limit headers of a Tollgate response, parsed into :class:`RateLimitInfo`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

WINDOWS = ("minute", "hour", "day")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names are case-insensitive; a plain dict is not."""
    return {str(name).lower(): str(value).strip() for name, value in headers.items()}


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_datetime(value: str | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime (UTC when the value names no offset)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """``Retry-After`` in seconds: either delay-seconds or an HTTP date (RFC 9110)."""
    seconds = _int(value)
    if seconds is not None:
        return max(0, seconds)
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int((when - (now or datetime.now(UTC))).total_seconds() + 0.999))


@dataclass(frozen=True)
class RateLimitInfo:
    """The limits a response reported; a field is None when its header was not sent.

    ``minute_*``, ``hour_*`` and ``day_*`` are the plan's windows: the limit, the calls left and
    the seconds until the window starts afresh. ``monthly_limit``/``monthly_remaining`` are the
    monthly quota, None when it is unlimited (``monthly_unlimited`` is then True), and
    ``monthly_reset`` is when it resets (an aware UTC datetime). ``retry_after`` is the 429's
    ``Retry-After`` in seconds. ``received_at`` is the ``time.monotonic()`` of the response.
    """

    minute_limit: int | None = None
    minute_remaining: int | None = None
    minute_reset: int | None = None
    hour_limit: int | None = None
    hour_remaining: int | None = None
    hour_reset: int | None = None
    day_limit: int | None = None
    day_remaining: int | None = None
    day_reset: int | None = None
    monthly_limit: int | None = None
    monthly_remaining: int | None = None
    monthly_reset: datetime | None = None
    monthly_unlimited: bool = False
    retry_after: int | None = None
    received_at: float | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], received_at: float | None = None) -> RateLimitInfo:
        """Parse a response's headers (a ``requests`` header mapping or a plain dict)."""
        h = _lower(headers)
        values: dict = {}
        for window in WINDOWS:
            for part in ("limit", "remaining", "reset"):
                values[f"{window}_{part}"] = _int(h.get(f"x-ratelimit-{window}-{part}"))
        values["monthly_limit"] = _int(h.get("x-ratelimit-limit"))
        values["monthly_remaining"] = _int(h.get("x-ratelimit-remaining"))
        values["monthly_unlimited"] = h.get("x-ratelimit-limit", "").lower() == "unlimited"
        values["monthly_reset"] = parse_datetime(h.get("x-ratelimit-reset"))
        values["retry_after"] = parse_retry_after(h.get("retry-after"))
        return cls(**values, received_at=received_at)

    def window(self, name: str) -> tuple[int | None, int | None, int | None]:
        """``(limit, remaining, reset seconds)`` of the minute, hour or day window."""
        return getattr(self, f"{name}_limit"), getattr(self, f"{name}_remaining"), getattr(self, f"{name}_reset")

    def exhausted_windows(self) -> list[tuple[str, int]]:
        """The windows that had no calls left, with their reset in seconds (as received)."""
        exhausted = []
        for name in WINDOWS:
            _, remaining, reset = self.window(name)
            if remaining == 0 and reset is not None:
                exhausted.append((name, reset))
        return exhausted

    def seconds_until_allowed(self, now: float | None = None) -> float:
        """How long a call must wait for every exhausted window to reset (0: go ahead).

        ``now`` is a ``time.monotonic()`` reading; the time since ``received_at`` is deducted.
        """
        resets = [reset for _, reset in self.exhausted_windows()]
        if not resets:
            return 0.0
        elapsed = 0.0
        if self.received_at is not None:
            elapsed = max(0.0, (time.monotonic() if now is None else now) - self.received_at)
        return max(0.0, max(resets) - elapsed)
