"""A Python client for the Tollgate API.

    from tollgate_client import TollgateClient, RateLimited

    client = TollgateClient("tg_…", base_url="https://billing.example.com")
    client.ping()                       # {"ok": True}
    stats = client.usage_stats(days=7)  # seed shapes: {"success": True, "stats": {...}}
    print(client.last_rate_limit.minute_remaining)

Errors are typed (:class:`InvalidApiKey`, :class:`RateLimited`, :class:`QuotaExceeded`, ...).
A call refused by a plan window is retried after the server's ``Retry-After``; a used-up
monthly quota is not retried. Server errors and network failures are retried with exponential
backoff and full jitter. When the last response said a window has no calls left, the next call
waits for that window to reset instead of being refused.
"""

from .client import TollgateClient
from .errors import (
    AuthenticationError,
    ConnectionFailed,
    InactiveApiKey,
    InvalidApiKey,
    InvalidRequest,
    MissingApiKey,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServerError,
    TollgateError,
)
from .ratelimit import RateLimitInfo

__all__ = [
    "AuthenticationError",
    "ConnectionFailed",
    "InactiveApiKey",
    "InvalidApiKey",
    "InvalidRequest",
    "MissingApiKey",
    "NotFound",
    "QuotaExceeded",
    "RateLimitInfo",
    "RateLimited",
    "ServerError",
    "TollgateClient",
    "TollgateError",
]
