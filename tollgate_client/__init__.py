"""A Python client for the Tollgate API (``/api/v1``), for API customers.

    from datetime import date

    from tollgate_client import QuotaExceeded, RateLimited, TollgateClient

    with TollgateClient("tg_...", base_url="https://tollgate.example") as client:
        client.ping()                                   # {"ok": True}
        print(client.last_rate_limit.minute_remaining)  # from the X-RateLimit-* headers
        for record in client.iter_usage_logs(service="groq"):
            print(record["created_at"], record["endpoint"], record["status_code"])
        try:
            client.account_usage(date(2026, 11, 1), date(2026, 11, 30), interval="weekly")
        except QuotaExceeded as error:      # the monthly quota: not retried
            print("quota used up until", error.resets_at)
        except RateLimited as error:        # a window, still refused after the retries
            print(error.window, "limit; retry in", error.retry_after, "s")

Every failure is a :class:`TollgateError` subclass carrying ``status``, ``detail`` and the
response's :class:`RateLimitInfo`. A 429 for a plan window is retried after ``Retry-After``;
the monthly quota's 429 is not. 5xx and network failures of GET calls are retried with
exponential backoff and full jitter. When the last response said a window had no calls left,
the next call waits for its reset first (``pace=False`` turns that off).
"""

from .backoff import full_jitter
from .client import VERSION, TollgateClient
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

__version__ = VERSION

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
    "full_jitter",
]
