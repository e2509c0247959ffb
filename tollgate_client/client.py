"""The client itself: one method per endpoint, typed errors, careful retries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import requests

from .errors import ConnectionFailed, QuotaExceeded, RateLimited, ServerError, TollgateError, error_for
from .ratelimit import RateLimitInfo


class TollgateClient:
    """A client for one API key.

    ``max_retries`` bounds the retries of one call: after a window's 429 (waiting
    ``Retry-After``), and, for GET requests, after a 5xx or a network failure (waiting
    ``backoff_base * 2**attempt`` seconds at most, with full jitter, capped at ``backoff_max``).
    With ``pace`` on, a call waits for a window's reset when the previous response said it had
    no calls left. ``sleep`` does the waiting (tests pass their own).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = "http://127.0.0.1:5000",
        *,
        timeout: float = 10,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 60,
        pace: bool = True,
        sleep: Callable[[float], Any] = time.sleep,
        session: requests.Session | None = None,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/api/v1"
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.pace = pace
        self.sleep = sleep
        self.random_fraction = random_fraction
        self.session = session or requests.Session()
        self.session.headers["X-API-Key"] = api_key
        self.last_rate_limit = RateLimitInfo()
        self._last_seen = time.monotonic()

    # -- transport -------------------------------------------------------------------------------
    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: a random wait up to ``backoff_base * 2**attempt``, capped."""
        return min(self.backoff_max, self.backoff_base * 2**attempt) * self.random_fraction()

    def _wait_for_exhausted_window(self) -> None:
        exhausted = self.last_rate_limit.exhausted_window()
        if not self.pace or exhausted is None:
            return
        _, reset = exhausted
        remaining = reset - (time.monotonic() - self._last_seen)
        if remaining > 0:
            self.sleep(min(remaining, self.backoff_max))

    def request(self, method: str, path: str, params: dict[str, Any] | None = None) -> dict:
        """Call ``path`` (under ``/api/v1``) and return the JSON body, or raise a typed error."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        idempotent = method.upper() in ("GET", "HEAD")
        attempt = 0
        while True:
            self._wait_for_exhausted_window()
            try:
                response = self.session.request(method, self.base_url + path, params=params, timeout=self.timeout)
            except requests.RequestException as exc:
                if idempotent and attempt < self.max_retries:
                    self.sleep(self.backoff_delay(attempt))
                    attempt += 1
                    continue
                raise ConnectionFailed(f"could not reach {self.base_url}: {exc}") from exc
            self.last_rate_limit = RateLimitInfo.from_headers(response.headers)
            self._last_seen = time.monotonic()
            if response.status_code < 400:
                return response.json()
            error = error_for(response.status_code, _detail(response), self.last_rate_limit)
            if attempt < self.max_retries and self._should_retry(error, idempotent):
                self.sleep(self._retry_delay(error, attempt))
                attempt += 1
                continue
            raise error

    @staticmethod
    def _should_retry(error: TollgateError, idempotent: bool) -> bool:
        if isinstance(error, QuotaExceeded):
            return False  # resets at the next billing period, not in seconds
        if isinstance(error, RateLimited):
            return True
        return isinstance(error, ServerError) and idempotent

    def _retry_delay(self, error: TollgateError, attempt: int) -> float:
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return min(float(error.retry_after), self.backoff_max)
        return self.backoff_delay(attempt)

    # -- endpoints -------------------------------------------------------------------------------
    def ping(self) -> dict:
        return self.request("GET", "/ping")

    def usage_stats(self, service: str | None = None, days: int = 30) -> dict:
        return self.request("GET", "/usage/stats", {"service": service, "days": days})

    def usage_logs(self, service: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        return self.request("GET", "/usage/logs", {"service": service, "limit": limit, "offset": offset})

    def iter_usage_logs(self, service: str | None = None, page_size: int = 100) -> Iterator[dict]:
        """Every log record, newest first, page by page."""
        offset = 0
        while True:
            page = self.usage_logs(service, limit=page_size, offset=offset)
            yield from page["logs"]
            offset += len(page["logs"])
            if not page["logs"] or offset >= page["total"]:
                return

    def usage_summary(self) -> dict:
        return self.request("GET", "/usage/summary")

    def rate_limits(self, service: str | None = None) -> dict:
        return self.request("GET", "/usage/rate-limits", {"service": service})

    def rate_limit(self, service: str, limit_type: str = "minute") -> dict:
        return self.request("GET", f"/usage/rate-limits/{service}", {"limit_type": limit_type})

    def account_usage(
        self,
        start_date: date | None = None,
        end_date: date | None = None,
        interval: str = "daily",
        category: str | None = None,
    ) -> dict:
        return self.request(
            "GET",
            "/account/usage",
            {
                "startDate": start_date.isoformat() if start_date else None,
                "endDate": end_date.isoformat() if end_date else None,
                "interval": interval,
                "category": category,
            },
        )

    def billing_usage(self) -> dict:
        return self.request("GET", "/billing/usage")

    def billing_subscription(self) -> dict:
        return self.request("GET", "/billing/subscription")

    def billing_api_usage(self, days: int = 30) -> dict:
        return self.request("GET", "/billing/api-usage", {"days": days})


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", response.reason))
    except ValueError:
        return response.reason or f"HTTP {response.status_code}"
