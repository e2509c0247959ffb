"""The rate-limit headers of a Tollgate response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

WINDOWS = ("minute", "hour", "day")


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None or value == "unlimited":
        return None
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class RateLimitInfo:
    """Limits, calls left and resets, as the server reported them (None when not sent).

    ``*_reset`` are seconds until the window starts afresh; the monthly quota's limit and
    remaining are None when it is unlimited, and ``month_reset`` is when it resets.
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
    month_limit: int | None = None
    month_remaining: int | None = None
    month_reset: datetime | None = None
    retry_after: int | None = None
    month_unlimited: bool = False

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo:
        values: dict = {}
        for window in WINDOWS:
            title = window.capitalize()
            for field in ("limit", "remaining", "reset"):
                values[f"{window}_{field}"] = _int(headers, f"X-RateLimit-{title}-{field.capitalize()}")
        values["month_limit"] = _int(headers, "X-RateLimit-Limit")
        values["month_remaining"] = _int(headers, "X-RateLimit-Remaining")
        values["month_unlimited"] = headers.get("X-RateLimit-Limit") == "unlimited"
        reset = headers.get("X-RateLimit-Reset")
        if reset:
            try:
                values["month_reset"] = datetime.fromisoformat(reset.replace("Z", "+00:00"))
            except ValueError:
                values["month_reset"] = None
        values["retry_after"] = _int(headers, "Retry-After")
        return cls(**values)

    def exhausted_window(self) -> tuple[str, int] | None:
        """The window with no calls left and the seconds until it resets, if any."""
        for window in WINDOWS:
            remaining = getattr(self, f"{window}_remaining")
            reset = getattr(self, f"{window}_reset")
            if remaining == 0 and reset:
                return window, reset
        return None
