"""The errors a Tollgate call raises. Each carries ``status`` (None when no response came),
the server's ``detail`` and the response's :class:`RateLimitInfo` as ``rate_limit``."""

from __future__ import annotations

import re
from datetime import datetime

from .ratelimit import WINDOWS, RateLimitInfo, parse_datetime

_WINDOW_IN_DETAIL = re.compile(r"exceeded for (minute|hour|day)\b", re.IGNORECASE)
_RESET_IN_DETAIL = re.compile(r"resets at (\S+)", re.IGNORECASE)


class TollgateError(Exception):
    """Base class of every error the client raises."""

    def __init__(self, detail: str, status: int | None = None, rate_limit: RateLimitInfo | None = None) -> None:
        super().__init__(detail if status is None else f"{status} {detail}")
        self.detail = detail
        self.status = status
        self.rate_limit = rate_limit if rate_limit is not None else RateLimitInfo()


class ConnectionFailed(TollgateError):
    """No response: the server could not be reached, or timed out (after the retries)."""


class AuthenticationError(TollgateError):
    """401: the key is missing or unknown."""


class MissingApiKey(AuthenticationError):
    """401 ``Missing API key``."""


class InvalidApiKey(AuthenticationError):
    """401 ``Invalid API key``."""


class InactiveApiKey(TollgateError):
    """403 ``API key is inactive``: deactivated, revoked or expired."""


class NotFound(TollgateError):
    """404."""


class InvalidRequest(TollgateError):
    """400/422: the detail names the bad parameter."""


class ServerError(TollgateError):
    """5xx (after the retries, for GET requests)."""


class RateLimited(TollgateError):
    """429 for a plan window. ``window`` is "minute", "hour" or "day" (None if the server did
    not say); ``retry_after`` is the seconds the server asked to wait."""

    def __init__(self, detail: str, status: int | None = 429, rate_limit: RateLimitInfo | None = None) -> None:
        super().__init__(detail, status, rate_limit)
        self.retry_after: int | None = self.rate_limit.retry_after
        self.window: str | None = _refused_window(detail, self.rate_limit)


class QuotaExceeded(RateLimited):
    """429 for the monthly quota (``window`` is "month"). Never retried: it resets at
    ``resets_at`` (an aware UTC datetime), at the start of the next billing period."""

    def __init__(self, detail: str, status: int | None = 429, rate_limit: RateLimitInfo | None = None) -> None:
        super().__init__(detail, status, rate_limit)
        self.window = "month"
        match = _RESET_IN_DETAIL.search(detail)
        resets_at: datetime | None = parse_datetime(match.group(1).rstrip(".")) if match else None
        self.resets_at = resets_at or self.rate_limit.monthly_reset


class ServiceLimitExceeded(RateLimited):
    """429 from an acquire: a limit on an outside service (``service``) refused the call.
    ``limits`` are the service's windows as the server reported them; ``window`` is the first
    one that refused."""

    def __init__(
        self,
        detail: str,
        status: int | None = 429,
        rate_limit: RateLimitInfo | None = None,
        *,
        service: str = "",
        retry_after: int | None = None,
        limits: list[dict] | None = None,
    ) -> None:
        super().__init__(detail, status, rate_limit)
        self.service = service
        self.limits = list(limits or [])
        if retry_after is not None:
            self.retry_after = retry_after
        refused = [limit.get("limit_type") for limit in self.limits if limit.get("can_call") is False]
        self.window = refused[0] if refused else None


class BudgetExceeded(TollgateError):
    """402: a budget's hard stop refuses the call; the detail names the budget and its reset."""


def _refused_window(detail: str, info: RateLimitInfo) -> str | None:
    match = _WINDOW_IN_DETAIL.search(detail)
    if match:
        return match.group(1).lower()
    exhausted = [name for name, _ in info.exhausted_windows()]
    return exhausted[0] if exhausted else None


def _is_quota(detail: str) -> bool:
    lowered = detail.lower()
    return "quota" in lowered and not any(f"exceeded for {w}" in lowered for w in WINDOWS)


def error_for(status: int, detail: str, rate_limit: RateLimitInfo | None = None) -> TollgateError:
    """The typed error for an error response's status and detail."""
    kind: type[TollgateError]
    if status == 401:
        kind = MissingApiKey if detail.lower().startswith("missing") else InvalidApiKey
    elif status == 403:
        kind = InactiveApiKey
    elif status == 402:
        kind = BudgetExceeded
    elif status == 404:
        kind = NotFound
    elif status in (400, 422):
        kind = InvalidRequest
    elif status == 429:
        kind = QuotaExceeded if _is_quota(detail) else RateLimited
    elif status >= 500:
        kind = ServerError
    else:
        kind = TollgateError
    return kind(detail, status, rate_limit)
