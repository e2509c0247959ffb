"""Service-limit acquires against live servers: exact across two processes, and the tenant's
choice between failing open and failing closed when Redis is unreachable."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.api_helpers import Servers, add_key, free_port
from tests.factories import new_tenant

pytestmark = pytest.mark.slow


@pytest.fixture
def two_servers(server_env):
    servers = Servers(server_env, 2)
    yield servers
    servers.stop()


@pytest.fixture
def redis_down_server(server_env):
    env = {**server_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "API_WHEN_REDIS_DOWN": "serve"}
    servers = Servers(env, 1)
    yield servers.urls[0]
    servers.stop()


def test_acquires_of_units_are_exact_across_two_processes(app, two_servers):
    tenant = new_tenant(app, "Concurrent Units Co", plan="enterprise", key=True)
    if 86400 - time.time() % 86400 < 30:  # keep clear of the day window's end
        time.sleep(86400 - time.time() % 86400 + 1)
    # YouTube: 10,000 quota units a day; 40 acquires of 700 units, 20 through each process.
    urls = [f"{two_servers.urls[n % 2]}/api/v1/usage/rate-limits/youtube/acquire" for n in range(40)]
    with ThreadPoolExecutor(max_workers=16) as pool, requests.Session() as session:
        answers = list(
            pool.map(lambda url: session.post(url, json={"units": 700}, headers=tenant.headers, timeout=30), urls)
        )
    assert Counter(a.status_code for a in answers) == {200: 14, 429: 26}
    assert len({a.json()["permit_id"] for a in answers if a.status_code == 200}) == 14
    status = requests.get(
        f"{two_servers.urls[0]}/api/v1/usage/rate-limits/youtube?limit_type=day", headers=tenant.headers, timeout=10
    ).json()
    assert (status["current_count"], status["remaining"]) == (9_800, 200)


def test_with_redis_unreachable_acquires_fail_open_or_closed_as_the_tenant_chose(app, redis_down_server):
    tenant = new_tenant(app, "Best Effort Co", key=True)
    _, admin = add_key(app, tenant.tenant_id, "admin", scope="admin")
    acquire = f"{redis_down_server}/api/v1/usage/rate-limits/groq/acquire"
    opened = requests.post(acquire, json={}, headers=tenant.headers, timeout=10)
    assert opened.status_code == 200  # open by default: seed 000's "best effort"
    assert opened.json()["can_call"] is True and opened.json()["degraded"] is True
    assert opened.json()["permit_id"] is None
    closed = {"limits_when_redis_down": "closed"}
    change = requests.put(
        f"{redis_down_server}/api/v1/account/settings", json=closed, headers={"X-API-Key": admin}, timeout=10
    )
    assert change.status_code == 200
    refused = requests.post(acquire, json={}, headers=tenant.headers, timeout=10)
    assert refused.status_code == 503
    assert "fails closed" in refused.json()["detail"] and refused.headers["Retry-After"] == "5"
