"""tollgate_client against a live Tollgate server (gunicorn, the test database and Redis): typed
errors, Retry-After-aware retries, the monthly quota, pacing, paging, failures; then the backoff
schedule, header parsing and error classification on their own.

Waiting goes through a recording ``sleep`` that returns at once: no test waits for a window.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import ApiKey
from portal.tenancy.keys import set_key_active
from tests.api_helpers import ROOT, Servers, free_port, set_limits
from tests.factories import new_tenant
from tollgate_client import (
    AuthenticationError,
    ConnectionFailed,
    InactiveApiKey,
    InvalidApiKey,
    InvalidRequest,
    MissingApiKey,
    NotFound,
    QuotaExceeded,
    RateLimited,
    RateLimitInfo,
    ServerError,
    TollgateClient,
    TollgateError,
    full_jitter,
)
from tollgate_client.errors import error_for

live = pytest.mark.slow  # starts a gunicorn

# -- live server ------------------------------------------------------------------------------


def live_env(app, instance_path: str, **overrides: str) -> dict[str, str]:
    """The environment of a live server on the test database and Redis (as ``server_env``)."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=app.config["REDIS_URL_RESOLVED"],
        SECRET_KEY="client-test-secret-key",
        TOLLGATE_INSTANCE_PATH=instance_path,
        USAGE_CLAIM_IDLE_MS="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def server(app, tmp_path_factory) -> Iterator[str]:
    """One gunicorn for the module (a test's tenant and key are new, so nothing carries over)."""
    servers = Servers(live_env(app, str(tmp_path_factory.mktemp("client-server"))), 1)
    yield servers.urls[0]
    servers.stop()


@pytest.fixture
def redis_down_server(app, tmp_path) -> Iterator[str]:
    """A live server whose Redis is unreachable and which is told to refuse then: every API
    call is a real ``503 Service temporarily unavailable`` with ``Retry-After: 5``."""
    env = live_env(app, str(tmp_path), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", API_WHEN_REDIS_DOWN="refuse")
    servers = Servers(env, 1)
    yield servers.urls[0]
    servers.stop()


class Recorder:
    """Stands in for ``time.sleep`` (records the seconds, returns at once) and sees every HTTP
    response through a ``requests`` response hook, in one ordered list of events."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.sessions: list[requests.Session] = []

    def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))

    def _hook(self, response: requests.Response, *args, **kwargs) -> None:
        self.events.append(("response", response.status_code, response.headers.get("Retry-After"), response.url))

    def session(self) -> requests.Session:
        session = requests.Session()
        session.hooks["response"].append(self._hook)
        self.sessions.append(session)
        return session

    def clear(self) -> None:
        self.events.clear()

    @property
    def sleeps(self) -> list[float]:
        return [event[1] for event in self.events if event[0] == "sleep"]

    @property
    def responses(self) -> list[tuple]:
        return [event for event in self.events if event[0] == "response"]

    @property
    def statuses(self) -> list[int]:
        return [event[1] for event in self.responses]

    @property
    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    for session in recorder.sessions:
        session.close()


def client_for(url: str, secret: str, rec: Recorder, **options) -> TollgateClient:
    return TollgateClient(secret, base_url=url, sleep=rec.sleep, session=rec.session(), **options)


def clear_of_minute_edge(margin: float = 3.0) -> None:
    """A window test runs in well under a second; make sure the minute does not turn meanwhile."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.1)


def first_of_next_month(now: datetime) -> datetime:
    return (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# -- calls that succeed -------------------------------------------------------------------------


@live
def test_ping_and_the_rate_limit_headers(server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    assert client.ping() == {"ok": True}
    info = client.last_rate_limit
    assert (info.minute_limit, info.hour_limit, info.day_limit) == (300, 5_000, 50_000)
    assert (info.minute_remaining, info.hour_remaining, info.day_remaining) == (299, 4_999, 49_999)
    assert 0 < info.minute_reset <= 60 and 0 < info.hour_reset <= 3_600 and 0 < info.day_reset <= 86_400
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(info.day_reset - (midnight - now).total_seconds()) < 3
    assert (info.monthly_limit, info.monthly_remaining, info.monthly_unlimited) == (100_000, 99_999, False)
    assert info.monthly_reset == first_of_next_month(now)
    assert info.monthly_reset.utcoffset() == timedelta(0)
    assert info.retry_after is None
    assert rec.statuses == [200] and rec.sleeps == []
    # Calls left: no pacing before the next call.
    client.ping()
    assert client.last_rate_limit.minute_remaining == 298
    assert rec.sleeps == []


@live
def test_an_unlimited_monthly_quota_reads_as_none(app, server, rec):
    big = new_tenant(app, "Big Co", plan="enterprise", key=True)
    client = client_for(server, big.secret, rec)
    client.ping()
    info = client.last_rate_limit
    assert (info.monthly_limit, info.monthly_remaining, info.monthly_unlimited) == (None, None, True)
    assert info.minute_limit == 5_000


@live
def test_every_endpoint_answers_in_the_seed_shape(app, server, tenant, rec):
    # Every tenant has seed 002's limits on outside services (groq 30 a minute...).
    client = client_for(server, tenant.secret, rec)
    assert client.usage_stats(service="groq", days=7)["stats"]["total_calls"] == 0
    assert client.usage_logs() == {"success": True, "logs": [], "total": 0, "limit": 50, "offset": 0}
    summary = client.usage_summary()["summary"]
    assert summary["groq_limits"]["per_minute"]["limit_value"] == 30
    limit, _ = client.rate_limits(service="groq")["rate_limits"]
    assert (limit["service_name"], limit["limit_type"], limit["limit_value"]) == ("groq", "minute", 30)
    check = client.rate_limit("groq", limit_type="minute")
    assert (check["can_call"], check["limit_value"], check["remaining"]) == (True, 30, 30)
    today = datetime.now(UTC).date()
    usage = client.account_usage(today - timedelta(days=14), today, interval="weekly")
    assert (usage["startDate"], usage["endDate"], usage["interval"]) == (
        (today - timedelta(days=14)).isoformat(),
        today.isoformat(),
        "weekly",
    )
    assert client.billing_usage()["usage"]["plan"] == "starter"
    assert client.billing_subscription()["subscription"]["plan"]["code"] == "starter"
    assert "summary" in client.billing_api_usage(days=7)["data"]
    assert set(rec.statuses) == {200}
    assert rec.sleeps == []


@live
def test_parameters_that_are_none_are_not_sent(server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    client.usage_stats()
    client.account_usage(start_date=datetime(2026, 11, 1, 15, 30, tzinfo=UTC), end_date=date(2026, 11, 2))
    client.rate_limits()
    stats, account, limits = (query_of(event[3]) for event in rec.responses)
    assert stats == {"days": ["30"]}
    assert account == {"startDate": ["2026-11-01"], "endDate": ["2026-11-02"], "interval": ["daily"]}
    assert limits == {}


@live
def test_iter_usage_logs_follows_offset_and_total(app, server, tenant, rec):
    now = datetime.now(UTC)
    records = [
        {
            "tenant_id": tenant.tenant_id,
            "service": service,
            "endpoint": "/v1/chat/completions",
            "status_code": 200,
            "occurred_at": now - timedelta(seconds=n),
            "idempotency_key": uuid.uuid4().hex,
        }
        for n, service in enumerate(["groq"] * 7 + ["openai"] * 2)
    ]
    with app.app_context():
        assert store_usage(records) == 9
        db.session.commit()
        db.session.remove()
    client = client_for(server, tenant.secret, rec)

    groq = list(client.iter_usage_logs(service="groq", page_size=3))
    expected = [r["idempotency_key"] for r in records if r["service"] == "groq"]  # newest first
    assert [log["id"] for log in groq] == expected
    pages = [query_of(event[3]) for event in rec.responses]
    assert [(p["offset"], p["limit"], p["service"]) for p in pages] == [
        (["0"], ["3"], ["groq"]),
        (["3"], ["3"], ["groq"]),
        (["6"], ["3"], ["groq"]),
    ]

    rec.clear()
    everything = list(client.iter_usage_logs(page_size=4))
    assert len(everything) == len({log["id"] for log in everything}) == 9
    assert len(rec.responses) == 3  # 4 + 4 + 1
    assert list(client.iter_usage_logs(service="youtube")) == []


# -- errors that are not retried ------------------------------------------------------------------


@live
def test_an_unknown_key_raises_invalid_api_key(server, rec):
    with pytest.raises(InvalidApiKey) as raised:
        client_for(server, "tg_not-a-real-key", rec).ping()
    error = raised.value
    assert isinstance(error, AuthenticationError)
    assert (error.status, error.detail) == (401, "Invalid API key")
    assert isinstance(error.rate_limit, RateLimitInfo)
    assert rec.statuses == [401] and rec.sleeps == []


@live
def test_no_key_raises_missing_api_key(server, rec):
    with pytest.raises(MissingApiKey) as raised:
        client_for(server, "", rec).ping()
    assert isinstance(raised.value, AuthenticationError)
    assert (raised.value.status, raised.value.detail) == (401, "Missing API key")


@live
def test_an_inactive_key_raises_inactive_api_key(app, server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    client.ping()
    with app.app_context():
        set_key_active(db.session.get(ApiKey, tenant.key_id), False)
        db.session.commit()
        db.session.remove()
    with pytest.raises(InactiveApiKey) as raised:
        client.ping()
    assert (raised.value.status, raised.value.detail) == (403, "API key is inactive")
    assert rec.statuses == [200, 403] and rec.sleeps == []


@live
def test_a_bad_parameter_raises_invalid_request_naming_it(server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    with pytest.raises(InvalidRequest) as raised:
        client.usage_logs(limit=5_000)
    assert raised.value.status == 422
    assert raised.value.detail.startswith("limit:")
    with pytest.raises(InvalidRequest) as raised:
        client.account_usage(start_date=date(2026, 11, 20), end_date=date(2026, 11, 1))
    assert "startDate" in raised.value.detail
    with pytest.raises(InvalidRequest) as raised:
        client.account_usage(interval="yearly")
    assert raised.value.detail.startswith("interval:")
    assert rec.statuses == [422, 422, 422] and rec.sleeps == []


@live
def test_an_unknown_service_limit_raises_not_found(server, tenant, rec):
    with pytest.raises(NotFound) as raised:
        client_for(server, tenant.secret, rec).rate_limit("no-such-service", limit_type="day")
    assert raised.value.status == 404
    assert raised.value.detail == "No day limit is set for service 'no-such-service'"
    # A name no service can have (a space) is quoted in the path, and names nothing.
    with pytest.raises(NotFound):
        client_for(server, tenant.secret, rec).rate_limit("no such service", limit_type="day")
    assert rec.statuses == [404, 404]
    assert urlsplit(rec.responses[1][3]).path.endswith("/usage/rate-limits/no%20such%20service")


# -- 429s -----------------------------------------------------------------------------------------


@live
def test_a_window_429_is_retried_after_retry_after_then_raised(app, server, tenant, rec):
    set_limits(app, "starter", per_minute=2)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec, pace=False, max_retries=3)
    client.ping()
    client.ping()
    rec.clear()
    with pytest.raises(RateLimited) as raised:
        client.ping()
    # max_retries + 1 attempts, each refused (the recorded sleeps let no real time pass), and
    # before each retry exactly the Retry-After the server had just sent.
    assert rec.kinds == ["response", "sleep"] * 3 + ["response"]
    assert rec.statuses == [429] * 4
    retry_afters = [int(event[2]) for event in rec.responses]
    assert rec.sleeps == retry_afters[:3]
    assert all(1 <= seconds <= 60 for seconds in retry_afters)
    error = raised.value
    assert not isinstance(error, QuotaExceeded)
    assert (error.status, error.window, error.retry_after) == (429, "minute", retry_afters[-1])
    assert error.detail == f"Rate limit exceeded for minute. Try again in {retry_afters[-1]} seconds"
    assert error.rate_limit.minute_remaining == 0
    assert client.last_rate_limit == error.rate_limit


@live
def test_retry_after_is_capped_by_backoff_max(app, server, tenant, rec):
    set_limits(app, "starter", per_minute=1)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec, pace=False, max_retries=2, backoff_max=0.25)
    client.ping()
    with pytest.raises(RateLimited):
        client.ping()
    assert rec.sleeps == [0.25, 0.25]


@live
def test_the_monthly_quota_429_is_raised_at_once(app, server, tenant, rec):
    set_limits(app, "starter", monthly_quota=1)
    client = client_for(server, tenant.secret, rec, max_retries=3)
    client.ping()
    assert client.last_rate_limit.monthly_remaining == 0
    rec.clear()
    with pytest.raises(QuotaExceeded) as raised:
        client.ping()
    assert rec.statuses == [429] and rec.sleeps == []  # one attempt, no waiting
    error = raised.value
    assert isinstance(error, RateLimited)
    now = datetime.now(UTC)
    assert error.resets_at == first_of_next_month(now)
    assert error.resets_at.tzinfo is not None
    assert error.window == "month"
    assert error.detail.startswith("Monthly quota of 1 ")
    assert abs(error.retry_after - (error.resets_at - now).total_seconds()) < 5
    assert error.rate_limit.monthly_remaining == 0
    assert error.rate_limit.monthly_reset == error.resets_at


# -- pacing ---------------------------------------------------------------------------------------


@live
def test_pacing_waits_for_the_reset_of_an_exhausted_window_before_calling(app, server, tenant, rec):
    set_limits(app, "starter", per_minute=2)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec, max_retries=0)
    client.ping()
    assert rec.sleeps == []  # one call left: no waiting
    client.ping()
    info = client.last_rate_limit
    assert info.minute_remaining == 0
    rec.clear()
    with pytest.raises(RateLimited):
        client.ping()  # the server still refuses: the recorded sleep let no time pass
    # The wait came first, then the call: the Reset seconds, less the few ms since the response.
    assert rec.kinds == ["sleep", "response"]
    assert info.minute_reset - 1 < rec.sleeps[0] <= info.minute_reset


@live
def test_pacing_and_retry_after_do_not_add_up(app, server, tenant, rec):
    set_limits(app, "starter", per_minute=1)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec, max_retries=2)
    client.ping()
    rec.clear()
    with pytest.raises(RateLimited):
        client.ping()
    # One pacing wait, then each refusal's Retry-After once: no second wait for the same reset.
    assert rec.kinds == ["sleep", "response", "sleep", "response", "sleep", "response"]
    assert rec.sleeps[1:] == [int(event[2]) for event in rec.responses[:2]]


@live
def test_without_pacing_the_call_goes_out_at_once(app, server, tenant, rec):
    set_limits(app, "starter", per_minute=1)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec, pace=False, max_retries=0)
    client.ping()
    rec.clear()
    with pytest.raises(RateLimited):
        client.ping()
    assert rec.kinds == ["response"]


# -- server errors and network failures -------------------------------------------------------


@live
def test_server_errors_are_retried_then_raised(app, redis_down_server, rec):
    acme = new_tenant(app, "Outage Co", key=True)
    client = client_for(redis_down_server, acme.secret, rec, max_retries=3, jitter=lambda: 1.0)
    with pytest.raises(ServerError) as raised:
        client.ping()
    assert (raised.value.status, raised.value.detail) == (503, "Service temporarily unavailable")
    assert rec.statuses == [503] * 4
    # The jittered backoff (0.5, 1, 2) never retries sooner than the server's Retry-After: 5.
    assert rec.sleeps == [5, 5, 5]
    rec.clear()
    capped = client_for(redis_down_server, acme.secret, rec, max_retries=2, backoff_max=1.5, jitter=lambda: 1.0)
    with pytest.raises(ServerError):
        capped.usage_logs()
    assert rec.sleeps == [1.5, 1.5]


def test_connection_refused_is_retried_with_exponential_backoff(rec):
    closed = f"http://127.0.0.1:{free_port()}"
    client = TollgateClient("tg_x", base_url=closed, sleep=rec.sleep, max_retries=4, jitter=lambda: 1.0)
    with pytest.raises(ConnectionFailed) as raised:
        client.ping()
    assert rec.sleeps == [0.5, 1.0, 2.0, 4.0]
    error = raised.value
    assert error.status is None
    assert not isinstance(error, requests.RequestException)
    assert isinstance(error.__cause__, requests.ConnectionError)
    assert "5 attempt(s)" in error.detail

    rec.clear()
    jittered = TollgateClient("tg_x", base_url=closed, sleep=rec.sleep, max_retries=3, backoff_max=1.5)
    with pytest.raises(ConnectionFailed):
        jittered.ping()
    assert len(rec.sleeps) == 3
    assert all(0 <= slept <= ceiling for slept, ceiling in zip(rec.sleeps, [0.5, 1.0, 1.5], strict=True))

    rec.clear()
    with pytest.raises(ConnectionFailed):
        TollgateClient("tg_x", base_url=closed, sleep=rec.sleep, max_retries=0).ping()
    assert rec.sleeps == []


def test_a_server_that_does_not_answer_times_out_into_connection_failed(rec):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = TollgateClient("tg_x", base_url=url, sleep=rec.sleep, timeout=0.2, max_retries=1, jitter=lambda: 1.0)
        with pytest.raises(ConnectionFailed) as raised:
            client.ping()
    assert isinstance(raised.value.__cause__, requests.Timeout)
    assert rec.sleeps == [0.5]


# -- units: backoff, headers, error types, retry policy -----------------------------------------


def test_the_backoff_schedule_doubles_up_to_the_cap_with_full_jitter():
    assert [full_jitter(n, 0.5, 60, lambda: 1.0) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert full_jitter(3, 0.5, 60, lambda: 0.0) == 0
    assert full_jitter(3, 0.5, 60, lambda: 0.25) == 1.0
    assert full_jitter(100_000, 0.5, 60, lambda: 1.0) == 60  # no overflow on a long outage
    draws = random.Random(7)
    samples = [full_jitter(4, 0.5, 60, draws.random) for _ in range(2_000)]
    assert all(0 <= s <= 8 for s in samples)
    assert 3.5 < sum(samples) / len(samples) < 4.5  # uniform over [0, 8]
    client = TollgateClient("tg_x", backoff_base=0.1, backoff_max=1, jitter=lambda: 1.0)
    assert [client.backoff_delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1, 1]


def test_rate_limit_info_from_a_plain_dict_of_headers():
    headers = {
        "X-RateLimit-Minute-Limit": "100",
        "X-RateLimit-Minute-Remaining": "0",
        "X-RateLimit-Minute-Reset": "17",
        "X-RateLimit-Hour-Limit": "1000",
        "X-RateLimit-Hour-Remaining": "950",
        "X-RateLimit-Hour-Reset": "1217",
        "X-RateLimit-Day-Limit": "10000",
        "X-RateLimit-Day-Remaining": "9950",
        "X-RateLimit-Day-Reset": "84017",
        "X-RateLimit-Limit": "10000",
        "X-RateLimit-Remaining": "9950",
        "X-RateLimit-Reset": "2026-12-01T00:00:00Z",
        "Retry-After": "17",
    }
    info = RateLimitInfo.from_headers(headers)
    assert info.window("minute") == (100, 0, 17)
    assert info.window("hour") == (1_000, 950, 1_217)
    assert info.window("day") == (10_000, 9_950, 84_017)
    assert (info.monthly_limit, info.monthly_remaining, info.monthly_unlimited) == (10_000, 9_950, False)
    assert info.monthly_reset == datetime(2026, 12, 1, tzinfo=UTC)
    assert info.retry_after == 17
    assert info.exhausted_windows() == [("minute", 17)]
    # Header names are case-insensitive, whatever the mapping.
    assert RateLimitInfo.from_headers({name.lower(): value for name, value in headers.items()}) == info

    unlimited = RateLimitInfo.from_headers({"X-RateLimit-Limit": "unlimited", "X-RateLimit-Remaining": "unlimited"})
    assert (unlimited.monthly_limit, unlimited.monthly_remaining, unlimited.monthly_unlimited) == (None, None, True)
    assert RateLimitInfo.from_headers({}) == RateLimitInfo()
    garbled = RateLimitInfo.from_headers({"X-RateLimit-Minute-Limit": "lots", "X-RateLimit-Reset": "soon"})
    assert (garbled.minute_limit, garbled.monthly_reset) == (None, None)
    http_date = RateLimitInfo.from_headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert http_date.retry_after == 0  # a date in the past: go ahead


def test_seconds_until_allowed_deducts_the_time_since_the_response():
    info = RateLimitInfo(minute_remaining=0, minute_reset=17, hour_remaining=5, hour_reset=900, received_at=100.0)
    assert info.seconds_until_allowed(now=100.0) == 17
    assert info.seconds_until_allowed(now=105.5) == 11.5
    assert info.seconds_until_allowed(now=130.0) == 0
    both = RateLimitInfo(minute_remaining=0, minute_reset=17, hour_remaining=0, hour_reset=900, received_at=0.0)
    assert both.seconds_until_allowed(now=0.0) == 900  # every exhausted window must reset
    assert RateLimitInfo(minute_remaining=3, minute_reset=17).seconds_until_allowed() == 0


@pytest.mark.parametrize(
    ("status", "detail", "kind", "window"),
    [
        (401, "Missing API key", MissingApiKey, None),
        (401, "Invalid API key", InvalidApiKey, None),
        (403, "API key is inactive", InactiveApiKey, None),
        (404, "Not found", NotFound, None),
        (400, "bad request", InvalidRequest, None),
        (422, "days: Input should be less than or equal to 366", InvalidRequest, None),
        (429, "Rate limit exceeded for hour. Try again in 5 seconds", RateLimited, "hour"),
        (429, "Rate limit exceeded for day. Try again in 5 seconds", RateLimited, "day"),
        (429, "Monthly quota of 3 requests used up. It resets at 2026-12-01T00:00:00Z", QuotaExceeded, "month"),
        (500, "Internal server error", ServerError, None),
        (503, "Service temporarily unavailable", ServerError, None),
        (405, "Method not allowed", TollgateError, None),
    ],
)
def test_error_types(status, detail, kind, window):
    error = error_for(status, detail, RateLimitInfo())
    assert type(error) is kind
    assert (error.status, error.detail) == (status, detail)
    assert getattr(error, "window", None) == window
    if kind is QuotaExceeded:
        assert error.resets_at == datetime(2026, 12, 1, tzinfo=UTC)


def test_a_quota_error_takes_its_reset_from_the_headers_when_the_detail_has_none():
    info = RateLimitInfo(monthly_remaining=0, monthly_reset=datetime(2027, 1, 1, tzinfo=UTC), retry_after=99)
    error = error_for(429, "Monthly quota used up", info)
    assert isinstance(error, QuotaExceeded)
    assert (error.resets_at, error.retry_after) == (datetime(2027, 1, 1, tzinfo=UTC), 99)


def test_retry_policy():
    client = TollgateClient("tg_x", max_retries=2, backoff_max=10, jitter=lambda: 1.0)
    window = error_for(429, "Rate limit exceeded for minute. Try again in 30 seconds", RateLimitInfo(retry_after=30))
    assert client._retry_delay(window, 0, True) == 10  # capped
    assert client._retry_delay(window, 0, False) == 10  # a refused call did nothing: any method
    assert client._retry_delay(window, 2, True) is None  # retries used up
    quota = error_for(429, "Monthly quota of 1 requests used up. It resets at 2026-12-01T00:00:00Z", RateLimitInfo())
    assert client._retry_delay(quota, 0, True) is None
    server = error_for(500, "Internal server error", RateLimitInfo())
    assert client._retry_delay(server, 1, True) == 1.0
    assert client._retry_delay(server, 0, False) is None  # a POST is not repeated
    for status, detail in [(401, "Invalid API key"), (403, "API key is inactive"), (404, "x"), (422, "x")]:
        assert client._retry_delay(error_for(status, detail), 0, True) is None


def test_a_bad_base_url_is_refused_up_front():
    with pytest.raises(ValueError, match="base_url"):
        TollgateClient("tg_x", base_url="127.0.0.1:5000")
