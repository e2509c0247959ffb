"""The client: one method per endpoint, typed errors, Retry-After-aware retries and pacing."""

from __future__ import annotations

import json as jsonlib
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

import requests

from .backoff import full_jitter
from .costs import EVENTS_PER_REQUEST, Permit, prepared_event
from .errors import (
    ConnectionFailed,
    QuotaExceeded,
    RateLimited,
    ServerError,
    ServiceLimitExceeded,
    TollgateError,
    error_for,
)
from .ratelimit import RateLimitInfo, parse_retry_after

VERSION = "0.1.0"
DEFAULT_BASE_URL = "http://127.0.0.1:5000"
# Methods a client may repeat after a 5xx or a lost connection without doing the work twice.
REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS"})
# Network failures worth another try (a certificate problem is not one).
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)

JSON = dict[str, Any]


class TollgateClient:
    """A client of the Tollgate API for one API key.

    Retries (at most ``max_retries`` per call):

    * a 429 for a plan window: after the server's ``Retry-After`` (capped at ``backoff_max``);
    * a 429 for the monthly quota: never, :class:`QuotaExceeded` is raised at once;
    * a 5xx or a network failure of a GET: after ``full_jitter(attempt)`` — a random wait up to
      ``min(backoff_max, backoff_base * 2**attempt)`` — but no sooner than a ``Retry-After``
      the server sent (capped at ``backoff_max``);
    * any other 4xx: never.

    With ``pace`` on, a call whose previous response said a window had no calls left first waits
    for that window to reset (at most ``backoff_max``) instead of being refused. All waiting
    goes through ``sleep``; ``jitter`` returns a number in [0, 1] (tests pass a constant).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float | tuple[float, float] = 10,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 60,
        pace: bool = True,
        sleep: Callable[[float], object] = time.sleep,
        session: requests.Session | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + "/api/v1"
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.pace = pace
        self.sleep = sleep
        self.jitter = jitter
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        # Sent with each request (a caller's session is left as it was).
        self._headers = {
            "X-API-Key": api_key,
            "Accept": "application/json",
            "User-Agent": f"tollgate-client/{VERSION}",
        }
        #: The rate-limit headers of the latest response (all None before the first one).
        self.last_rate_limit = RateLimitInfo()
        # time.monotonic() before which pacing holds the next call back.
        self._not_before: float | None = None

    def __repr__(self) -> str:
        return f"TollgateClient({self.base_url!r})"  # never the key

    def close(self) -> None:
        """Close the HTTP session, unless the caller passed it in."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> TollgateClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt + 1`` after a 5xx or a network failure."""
        return full_jitter(attempt, self.backoff_base, self.backoff_max, self.jitter)

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        *,
        idempotent: bool = False,
    ) -> JSON:
        """Call ``path`` (relative to ``/api/v1``) and return the JSON body, or raise a
        :class:`TollgateError`. Parameters whose value is None are not sent. ``idempotent``
        lets a 5xx or a lost connection of another method be retried like a GET's."""
        response = self._send(method, path, params, json, idempotent=idempotent)
        return _json_body(response, self.last_rate_limit)

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        *,
        idempotent: bool = False,
        keep: Callable[[requests.Response], bool] | None = None,
    ) -> requests.Response:
        """The response of a call, after the retries: a success, or an error response ``keep``
        accepts (the caller handles it); any other error is raised."""
        method = method.upper()
        url = f"{self.api_url}/{path.lstrip('/')}"
        query = {name: _query_value(value) for name, value in (params or {}).items() if value is not None}
        repeatable = idempotent or method in REPEATABLE
        attempt = 0
        while True:
            if self.pace:
                self._wait_for_windows()
            try:
                response = self.session.request(
                    method, url, params=query, json=json, headers=self._headers, timeout=self.timeout
                )
            except requests.RequestException as exc:
                transient = isinstance(exc, TRANSIENT) and not isinstance(exc, requests.exceptions.SSLError)
                if repeatable and transient and attempt < self.max_retries:
                    self.sleep(self.backoff_delay(attempt))
                    attempt += 1
                    continue
                raise ConnectionFailed(f"{method} {url} failed after {attempt + 1} attempt(s): {exc}") from exc
            info = self._note_rate_limit(response)
            if response.status_code < 400 or (keep is not None and keep(response)):
                return response
            error = error_for(response.status_code, _detail(response), info)
            delay = self._retry_delay(error, attempt, repeatable)
            if delay is None:
                raise error
            self.sleep(delay)
            self._not_before = None  # that wait was for this very refusal
            attempt += 1

    def _note_rate_limit(self, response: requests.Response) -> RateLimitInfo:
        info = RateLimitInfo.from_headers(response.headers, received_at=time.monotonic())
        self.last_rate_limit = info
        wait = info.seconds_until_allowed(info.received_at)
        self._not_before = info.received_at + wait if wait > 0 and info.received_at is not None else None
        return info

    def _wait_for_windows(self) -> None:
        """Pacing: hold the call back until the windows the last response exhausted reset."""
        if self._not_before is None:
            return
        wait = self._not_before - time.monotonic()
        self._not_before = None
        if wait > 0:
            self.sleep(min(wait, self.backoff_max))

    def _retry_delay(self, error: TollgateError, attempt: int, repeatable: bool) -> float | None:
        """Seconds to wait before retrying after ``error``, or None not to retry."""
        if attempt >= self.max_retries or isinstance(error, QuotaExceeded):
            return None
        server_asked = error.rate_limit.retry_after
        if isinstance(error, RateLimited):
            if server_asked is None:
                fallback = error.rate_limit.seconds_until_allowed(error.rate_limit.received_at)
                return min(fallback, self.backoff_max) if fallback > 0 else self.backoff_delay(attempt)
            return min(float(server_asked), self.backoff_max)
        if isinstance(error, ServerError) and repeatable:
            delay = self.backoff_delay(attempt)
            if server_asked is not None:
                delay = max(delay, min(float(server_asked), self.backoff_max))
            return delay
        return None

    # -- endpoints -----------------------------------------------------------------------------

    def ping(self) -> JSON:
        """``GET /ping``: check the key; ``{"ok": True}``."""
        return self.request("GET", "/ping")

    def usage_stats(self, service: str | None = None, days: int = 30) -> JSON:
        """``GET /usage/stats``: totals by service and by day."""
        return self.request("GET", "/usage/stats", {"service": service, "days": days})

    def usage_logs(self, service: str | None = None, limit: int = 50, offset: int = 0) -> JSON:
        """``GET /usage/logs``: one page of metered calls, newest first, with ``total``."""
        return self.request("GET", "/usage/logs", {"service": service, "limit": limit, "offset": offset})

    def iter_usage_logs(self, service: str | None = None, page_size: int = 100) -> Iterator[JSON]:
        """Every log record, newest first, fetched ``page_size`` at a time.

        Records stored while paging push older ones to later offsets; a record already yielded
        is not yielded again.
        """
        offset = 0
        seen: set[Any] = set()
        while True:
            page = self.usage_logs(service, limit=page_size, offset=offset)
            logs = page.get("logs") or []
            for log in logs:
                if log.get("id") is None or log["id"] not in seen:
                    seen.add(log.get("id"))
                    yield log
            offset += len(logs)
            if not logs or offset >= int(page.get("total", 0)):
                return

    def usage_summary(self) -> JSON:
        """``GET /usage/summary``: today, this month, and the outside services' limits."""
        return self.request("GET", "/usage/summary")

    def rate_limits(self, service: str | None = None) -> JSON:
        """``GET /usage/rate-limits``: every limit on an outside service and its use."""
        return self.request("GET", "/usage/rate-limits", {"service": service})

    def rate_limit(self, service: str, limit_type: str = "minute") -> JSON:
        """``GET /usage/rate-limits/{service}``: whether the service may be called now."""
        return self.request("GET", f"/usage/rate-limits/{quote(service, safe='')}", {"limit_type": limit_type})

    def account_usage(
        self,
        start_date: date | str | None = None,
        end_date: date | str | None = None,
        interval: str = "daily",
        category: str | None = None,
    ) -> JSON:
        """``GET /account/usage``: API requests per interval (hourly, daily, weekly, monthly)."""
        params = {
            "startDate": _date_param(start_date),
            "endDate": _date_param(end_date),
            "interval": interval,
            "category": category,
        }
        return self.request("GET", "/account/usage", params)

    def billing_usage(self) -> JSON:
        """``GET /billing/usage``: use of each plan limit this billing period."""
        return self.request("GET", "/billing/usage")

    def billing_subscription(self) -> JSON:
        """``GET /billing/subscription``: the subscription, its plan and period."""
        return self.request("GET", "/billing/subscription")

    def billing_api_usage(self, days: int = 30) -> JSON:
        """``GET /billing/api-usage``: analytics of the API's use over ``days``."""
        return self.request("GET", "/billing/api-usage", {"days": days})

    # -- outside services ----------------------------------------------------------------------

    def report_event(
        self,
        service: str,
        *,
        endpoint: str = "",
        method: str = "POST",
        status_code: int = 200,
        duration_ms: int = 0,
        user_id: str | None = None,
        tokens_used: int | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        cached_tokens: int | None = None,
        units: int | None = None,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        occurred_at: datetime | str | None = None,
        id: str | None = None,
        permit_id: str | None = None,
        category: str | None = None,
        error_message: str | None = None,
    ) -> JSON:
        """``POST /usage/events``: report one call to an outside service.

        The event gets a fresh ``id`` when none is given, so a retry (5xx, lost connection, a
        window's 429) counts it once. ``tokens_in`` includes ``cached_tokens``; give it or
        ``tokens_used``. ``occurred_at`` must be aware. Returns ``{"accepted", "duplicates", "ids"}``.
        """
        event = {
            "id": id,
            "service": service,
            "endpoint": endpoint,
            "method": method,
            "status_code": status_code,
            "duration_ms": duration_ms,
            "user_id": user_id,
            "tokens_used": tokens_used,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cached_tokens": cached_tokens,
            "units": units,
            "model": model,
            "category": category,
            "error_message": error_message,
            "metadata": dict(metadata) if metadata is not None else None,
            "occurred_at": occurred_at,
            "permit_id": permit_id,
        }
        return self.request("POST", "/usage/events", json=prepared_event(event), idempotent=True)

    def report_events(self, events: Iterable[Mapping[str, Any]]) -> JSON:
        """``POST /usage/events`` in batches of 1,000: each event (the fields of
        :meth:`report_event`) gets an ``id`` if it has none. The caller's dicts are not changed.
        Returns the combined ``{"accepted", "duplicates", "ids"}``; a failed batch raises (the
        batches before it are stored; resending them with the same ids counts them once)."""
        total: JSON = {"accepted": 0, "duplicates": 0, "ids": []}
        batch: list[dict[str, Any]] = []
        for event in events:
            batch.append(prepared_event(event))
            if len(batch) == EVENTS_PER_REQUEST:
                self._report_batch(batch, total)
                batch = []
        if batch:
            self._report_batch(batch, total)
        return total

    def _report_batch(self, batch: list[dict[str, Any]], total: JSON) -> None:
        body = self.request("POST", "/usage/events", json={"events": batch}, idempotent=True)
        total["accepted"] += int(body.get("accepted", 0))
        total["duplicates"] += int(body.get("duplicates", 0))
        total["ids"].extend(body.get("ids") or [event["id"] for event in batch])

    def acquire(
        self,
        service: str,
        units: int = 1,
        *,
        model: str | None = None,
        user_id: str | None = None,
        wait: bool = True,
        max_wait: float | None = None,
    ) -> Permit:
        """``POST /usage/rate-limits/{service}/acquire``: a :class:`Permit` for one call.

        When a service window refuses (429), waits its ``Retry-After`` (capped at
        ``backoff_max``) and asks again, at most ``max_retries`` times and ``max_wait`` seconds
        in all; then (or at once with ``wait=False``) raises :class:`ServiceLimitExceeded`.
        A budget's hard stop raises :class:`BudgetExceeded`.
        """
        path = f"/usage/rate-limits/{quote(service, safe='')}/acquire"
        asked = {"units": units, "model": model, "user_id": user_id}
        body = {name: value for name, value in asked.items() if value is not None}
        waited = 0.0
        attempt = 0
        while True:
            response = self._send("POST", path, json=body, keep=_is_service_refusal)
            if response.status_code < 400:
                granted = _json_body(response, self.last_rate_limit)
                return Permit(
                    self,
                    granted.get("permit_id"),
                    granted.get("service_name") or service.lower(),
                    int(granted.get("units") or units),
                    granted.get("limits") or [],
                    model=model,
                    user_id=user_id,
                    degraded=bool(granted.get("degraded")),
                )
            refused = response.json()
            error = ServiceLimitExceeded(
                str(refused.get("detail") or f"Rate limit exceeded for {service}"),
                response.status_code,
                self.last_rate_limit,
                service=str(refused.get("service_name") or service.lower()),
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                limits=refused.get("limits") or [],
            )
            if not wait or attempt >= self.max_retries:
                raise error
            delay = min(float(error.retry_after), self.backoff_max) if error.retry_after is not None else None
            if delay is None:
                delay = self.backoff_delay(attempt)
            if max_wait is not None and waited + delay > max_wait:
                raise error
            self.sleep(delay)
            self._not_before = None
            waited += delay
            attempt += 1


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _date_param(value: date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        value = value.date()
    return value.isoformat()


def _is_service_refusal(response: requests.Response) -> bool:
    """A 429 of an acquire (a service window refused; the body says ``can_call``), not a
    429 of the plan's own limits."""
    if response.status_code != 429:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("can_call") is False


def _detail(response: requests.Response) -> str:
    """The ``detail`` of an error body, or the reason phrase when the body is not ours."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else jsonlib.dumps(detail)
    return response.reason or f"HTTP {response.status_code}"


def _json_body(response: requests.Response, info: RateLimitInfo) -> JSON:
    if response.status_code == 204 or not response.content:
        return {}
    try:
        body = response.json()
    except ValueError as exc:
        kind = response.headers.get("Content-Type", "no content type")
        raise TollgateError(f"expected a JSON response, got {kind}", response.status_code, info) from exc
    if not isinstance(body, dict):
        raise TollgateError("expected a JSON object", response.status_code, info)
    return body
