"""tollgate_client against a live Tollgate server: typed errors, Retry-After-aware retries,
pacing on the remaining headers, paging. Waiting goes through a recording ``sleep``."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from portal.extensions import db
from portal.keys import set_key_active
from portal.metering import store_usage
from portal.models import ApiKey, utcnow
from portal.plans import billing_period
from tollgate_client import (
    ConnectionFailed,
    InactiveApiKey,
    InvalidApiKey,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    RateLimitInfo,
    TollgateClient,
)
from tollgate_client.errors import ServerError, error_for

from .api_helpers import Servers, free_port, make_api_tenant, set_limits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def module_env(app, tmp_path_factory):
    import os

    from .api_helpers import ROOT

    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=app.config["REDIS_URL_RESOLVED"],
        SECRET_KEY="client-test-secret-key",
        TOLLGATE_INSTANCE_PATH=str(tmp_path_factory.mktemp("client")),
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="module")
def server(module_env):
    servers = Servers(module_env, 1)
    yield servers.urls[0]
    servers.stop()


class Sleeps(list):
    """A sleep that records what it was asked to wait, and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def tenant(app):
    return make_api_tenant(app, "Client Co")


def client_for(server, secret, sleeps, **options) -> TollgateClient:
    return TollgateClient(secret, base_url=server, sleep=sleeps, **options)


def clear_of_minute_edge() -> None:
    """Window tests need the whole test inside one minute."""
    second = time.time() % 60
    if second > 52:
        time.sleep(61 - second)


def test_ping_and_rate_limit_info(server, tenant, sleeps):
    client = client_for(server, tenant.secret, sleeps)
    assert client.ping() == {"ok": True}
    info = client.last_rate_limit
    assert (info.minute_limit, info.hour_limit, info.day_limit) == (300, 5000, 50000)
    assert info.minute_remaining == 299
    assert info.month_limit == 100_000
    assert info.month_reset == billing_period(utcnow())[1]
    assert 0 < info.minute_reset <= 60
    assert sleeps == []


def test_unknown_key_raises_invalid_api_key(server, sleeps):
    with pytest.raises(InvalidApiKey) as error:
        client_for(server, "tg_not-a-key", sleeps).ping()
    assert (error.value.status, error.value.detail) == (401, "Invalid API key")
    assert sleeps == []


def test_inactive_key_raises_inactive_api_key(app, server, tenant, sleeps):
    with app.app_context():
        set_key_active(db.session.get(ApiKey, tenant.key_id), False)
        db.session.commit()
    with pytest.raises(InactiveApiKey) as error:
        client_for(server, tenant.secret, sleeps).ping()
    assert error.value.detail == "API key is inactive"


def test_bad_parameter_raises_invalid_request_naming_it(server, tenant, sleeps):
    with pytest.raises(InvalidRequest) as error:
        client_for(server, tenant.secret, sleeps).usage_logs(limit=5000)
    assert error.value.status == 422
    assert "limit" in error.value.detail
    assert sleeps == []


def test_window_429_is_retried_after_retry_after_then_raised(app, server, tenant, sleeps):
    set_limits(app, "starter", per_minute=2)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, sleeps, pace=False, max_retries=3)
    client.ping()
    client.ping()
    with pytest.raises(RateLimited) as error:
        client.ping()
    assert error.value.window == "minute"
    assert error.value.detail.startswith("Rate limit exceeded for minute. Try again in")
    # Three retries, each after the server's Retry-After (no real time passed, so all refused).
    assert len(sleeps) == 3
    assert all(1 <= s <= 60 for s in sleeps)
    assert sleeps[-1] == pytest.approx(error.value.retry_after, abs=1)


def test_monthly_quota_is_not_retried(app, server, tenant, sleeps):
    set_limits(app, "starter", monthly_quota=1)
    client = client_for(server, tenant.secret, sleeps)
    client.ping()
    with pytest.raises(QuotaExceeded) as error:
        client.ping()
    assert sleeps == []
    assert error.value.window == "month"
    assert error.value.resets_at == billing_period(utcnow())[1]
    assert error.value.rate_limit.month_remaining == 0


def test_pacing_waits_for_an_exhausted_window_before_calling(app, server, tenant, sleeps):
    set_limits(app, "starter", per_minute=1)
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, sleeps, max_retries=0)
    client.ping()
    assert client.last_rate_limit.minute_remaining == 0
    reset = client.last_rate_limit.minute_reset
    with pytest.raises(RateLimited):
        client.ping()  # the server still refuses: the recorded sleep did not really wait
    assert sleeps[0] == pytest.approx(reset, abs=1)


def test_iter_usage_logs_pages_through_everything(app, server, tenant, sleeps):
    with app.app_context():
        store_usage(
            [
                {
                    "tenant_id": tenant.tenant_id,
                    "service": "groq",
                    "endpoint": "/v1/chat/completions",
                    "status_code": 200,
                    "occurred_at": datetime.now(UTC),
                    "idempotency_key": uuid.uuid4().hex,
                }
                for _ in range(7)
            ]
        )
        db.session.commit()
    client = client_for(server, tenant.secret, sleeps)
    logs = list(client.iter_usage_logs(service="groq", page_size=3))
    assert len(logs) == 7
    assert len({log["id"] for log in logs}) == 7
    assert client.usage_stats(service="groq", days=1)["stats"]["total_calls"] == 7


def test_every_endpoint_answers_in_the_seed_shape(server, tenant, sleeps):
    client = client_for(server, tenant.secret, sleeps)
    assert client.usage_summary()["success"] is True
    assert client.rate_limits()["rate_limits"] == []
    assert client.account_usage(interval="weekly")["interval"] == "weekly"
    assert client.billing_usage()["usage"]["plan"] == "starter"
    assert client.billing_subscription()["subscription"]["plan"]["code"] == "starter"
    assert "summary" in client.billing_api_usage(days=7)["data"]


def test_unreachable_server_is_retried_with_backoff_then_connection_failed(sleeps):
    client = TollgateClient(
        "tg_x", base_url=f"http://127.0.0.1:{free_port()}", sleep=sleeps, max_retries=3, random_fraction=lambda: 1.0
    )
    with pytest.raises(ConnectionFailed):
        client.ping()
    assert sleeps == [0.5, 1.0, 2.0]


def test_backoff_is_capped_and_jittered():
    client = TollgateClient("tg_x", backoff_base=0.5, backoff_max=4, random_fraction=lambda: 1.0)
    assert [client.backoff_delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4, 4, 4]
    half = TollgateClient("tg_x", backoff_base=0.5, random_fraction=lambda: 0.5)
    assert half.backoff_delay(2) == 1.0


def test_rate_limit_info_parses_headers():
    info = RateLimitInfo.from_headers(
        {
            "X-RateLimit-Minute-Limit": "100",
            "X-RateLimit-Minute-Remaining": "0",
            "X-RateLimit-Minute-Reset": "17",
            "X-RateLimit-Limit": "unlimited",
            "X-RateLimit-Remaining": "unlimited",
            "X-RateLimit-Reset": "2026-12-01T00:00:00Z",
            "Retry-After": "17",
        }
    )
    assert (info.minute_limit, info.minute_remaining, info.minute_reset) == (100, 0, 17)
    assert info.month_unlimited and info.month_limit is None
    assert info.month_reset == datetime(2026, 12, 1, tzinfo=UTC)
    assert info.exhausted_window() == ("minute", 17)


@pytest.mark.parametrize(
    ("status", "detail", "kind"),
    [
        (500, "Internal server error", ServerError),
        (503, "Service temporarily unavailable", ServerError),
        (429, "Monthly quota of 3 requests used up. It resets at 2026-12-01T00:00:00Z", QuotaExceeded),
        (429, "Rate limit exceeded for hour. Try again in 5 seconds", RateLimited),
    ],
)
def test_error_types(status, detail, kind):
    error = error_for(status, detail, RateLimitInfo())
    assert type(error) is kind
    if kind is RateLimited:
        assert error.window == "hour"
