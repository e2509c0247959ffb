"""The errors a Tollgate call can raise; each carries the status, the server's detail and the
rate-limit headers of the response."""

from __future__ import annotations

import re
from datetime import datetime

from .ratelimit import RateLimitInfo


class TollgateError(Exception):
    def __init__(self, detail: str, status: int | None = None, rate_limit: RateLimitInfo | None = None) -> None:
        super().__init__(detail if status is None else f"{status}: {detail}")
        self.detail = detail
        self.status = status
        self.rate_limit = rate_limit or RateLimitInfo()


class ConnectionFailed(TollgateError):
    """The server could not be reached (after the retries)."""


class AuthenticationError(TollgateError):
    """401: the key is missing or unknown."""


class MissingApiKey(AuthenticationError):
    pass


class InvalidApiKey(AuthenticationError):
    pass


class InactiveApiKey(TollgateError):
    """403: the key was deactivated, revoked or has expired."""


class NotFound(TollgateError):
    pass


class InvalidRequest(TollgateError):
    """400/422: the detail names the bad parameter."""


class ServerError(TollgateError):
    """5xx, after the retries."""


class RateLimited(TollgateError):
    """429 for a plan window: ``window`` is minute, hour or day; ``retry_after`` in seconds."""

    def __init__(self, detail: str, status: int = 429, rate_limit: RateLimitInfo | None = None) -> None:
        super().__init__(detail, status, rate_limit)
        match = re.search(r"exceeded for (\w+)", detail)
        self.window = match.group(1) if match else None
        self.retry_after = self.rate_limit.retry_after


class QuotaExceeded(RateLimited):
    """429 for the monthly quota; ``resets_at`` is when it resets. Not retried."""

    def __init__(self, detail: str, status: int = 429, rate_limit: RateLimitInfo | None = None) -> None:
        super().__init__(detail, status, rate_limit)
        self.window = "month"
        match = re.search(r"resets at (\S+)", detail)
        self.resets_at = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")) if match else None


def error_for(status: int, detail: str, rate_limit: RateLimitInfo) -> TollgateError:
    """The typed error for an error response."""
    if status == 401:
        kind = MissingApiKey if detail == "Missing API key" else InvalidApiKey
    elif status == 403:
        kind = InactiveApiKey
    elif status == 404:
        kind = NotFound
    elif status in (400, 422):
        kind = InvalidRequest
    elif status == 429:
        kind = QuotaExceeded if detail.startswith("Monthly quota") else RateLimited
    elif status >= 500:
        kind = ServerError
    else:
        kind = TollgateError
    return kind(detail, status, rate_limit)
