"""The gateway under gunicorn, as it is run: slow upstreams starve nothing, streams pass
through as they arrive, and the JSON API and the gateway share one exact bucket across two
server processes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.api_helpers import Servers, set_limits
from tests.factories import new_tenant
from tests.gateway.helpers import add_test_route, stored_calls_of_servers
from tests.gateway.upstreams import Upstream

pytestmark = pytest.mark.slow


def seconds_to_next_hour() -> float:
    return 3600 - time.time() % 3600


@pytest.fixture
def server(server_env):
    # The threads gunicorn.conf.py gives every worker (the test servers otherwise run 8).
    servers = Servers(server_env, 1, extra_args=("--threads", "256"))
    yield servers.urls[0]
    servers.stop()


def test_two_hundred_calls_to_a_slow_upstream_all_complete_and_starve_nothing(app, server, upstream: Upstream):
    add_test_route(app, "/api/slow", upstream.url, methods="GET")
    tenant = new_tenant(app, "Patient Co", "professional", key=True)
    finished: list[float] = []
    lock = threading.Lock()

    def slow_call(_: int) -> int:
        response = requests.get(f"{server}/api/slow/slow?seconds=2", headers=tenant.headers, timeout=30)
        with lock:
            finished.append(time.monotonic())
        return response.status_code

    with ThreadPoolExecutor(max_workers=200) as pool:
        slow = [pool.submit(slow_call, i) for i in range(200)]
        # Wait until all 200 are at the upstream, then ask for a ping and a portal page.
        deadline = time.monotonic() + 20
        while len(upstream.requests) < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(upstream.requests) == 200
        ping = requests.get(f"{server}/api/v1/ping", headers=tenant.headers, timeout=10)
        page = requests.get(f"{server}/login", timeout=10)
        answered = time.monotonic()
        assert (ping.status_code, ping.json()) == (200, {"ok": True})
        assert page.status_code == 200
        statuses = [future.result() for future in slow]
    assert Counter(statuses) == {200: 200}
    # The ping and the page were answered while every slow call was still waiting.
    assert min(finished) > answered
    records = stored_calls_of_servers(app, tenant.tenant_id, 201)
    assert Counter(r.endpoint for r in records) == {"/api/slow/slow": 200, "/api/v1/ping": 1}
    assert min(r.duration_ms for r in records if r.endpoint == "/api/slow/slow") >= 2000


def test_a_stream_passes_through_event_by_event(app, server, upstream: Upstream):
    add_test_route(app, "/api/openai", upstream.url, methods="GET", service="openai")
    tenant = new_tenant(app, "Streaming Co", key=True)
    arrived: list[tuple[float, bytes]] = []
    with requests.get(
        f"{server}/api/openai/stream?events=5&interval=0.3&usage=openai",
        headers=tenant.headers,
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-RateLimit-Minute-Remaining"] == "299"
        for chunk in response.iter_content(chunk_size=None):
            arrived.append((time.perf_counter(), chunk))
    body = b"".join(chunk for _, chunk in arrived)
    assert body == b"".join(chunk for _, chunk in upstream.sent)
    # The first event reached the caller before the upstream had sent the second.
    assert arrived[0][0] < upstream.sent[1][0]
    assert len(arrived) >= 5
    [record] = stored_calls_of_servers(app, tenant.tenant_id, 1)
    assert (record.tokens_in, record.tokens_out, record.model) == (11, 7, "gpt-4o-mini")


def test_the_gateway_and_the_json_api_share_one_exact_bucket_across_two_processes(app, server_env, upstream):
    limit = 25
    add_test_route(app, "/api/chat", upstream.url, methods="POST")
    tenant = new_tenant(app, "Shared Bucket Co", key=True)
    # The hour window binds (minute and day are far above it); keep clear of the hour's end.
    set_limits(app, "starter", per_minute=10_000, per_hour=limit, per_day=1_000_000)
    if seconds_to_next_hour() < 20:
        time.sleep(seconds_to_next_hour() + 1)
    servers = Servers(server_env, 2)
    try:
        calls = [
            (servers.urls[i % 2], "POST" if i % 4 < 2 else "GET", "/api/chat/echo" if i % 4 < 2 else "/api/v1/ping")
            for i in range(4 * limit)
        ]
        with ThreadPoolExecutor(max_workers=32) as pool, requests.Session() as session:
            statuses = list(
                pool.map(
                    lambda c: session.request(c[1], c[0] + c[2], headers=tenant.headers, timeout=30).status_code, calls
                )
            )
    finally:
        servers.stop()
    assert Counter(statuses) == {200: limit, 429: 3 * limit}
    forwarded = len(upstream.requests)
    records = stored_calls_of_servers(app, tenant.tenant_id, 4 * limit)
    assert len(records) == 4 * limit
    admitted = [r for r in records if r.quota_units == 1]
    assert len(admitted) == limit
    assert sum(1 for r in admitted if r.endpoint == "/api/chat/echo") == forwarded


def _status_within(url: str, headers: dict, wanted: int, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while True:
        status = requests.post(url, headers=headers, timeout=10).status_code
        if status == wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_a_route_added_or_removed_is_seen_by_a_running_server_within_seconds(app, server, upstream: Upstream):
    from tests.gateway.helpers import remove_test_route

    tenant = new_tenant(app, "Late Route Co", key=True)
    url = f"{server}/api/late/echo"
    assert requests.post(url, headers=tenant.headers, timeout=10).status_code == 404
    added = time.monotonic()
    add_test_route(app, "/api/late", upstream.url)
    assert _status_within(url, tenant.headers, 200) == 200
    assert time.monotonic() - added < 5
    remove_test_route(app, "/api/late")
    assert _status_within(url, tenant.headers, 404) == 404


def test_a_chunked_body_is_passed_on_whole_and_one_over_the_limit_counts_nothing(app, server, upstream: Upstream):
    add_test_route(app, "/api/small", upstream.url, max_body_bytes=1024)
    tenant = new_tenant(app, "Chunked Co", key=True)

    def body(size: int):
        yield b"x" * (size // 2)
        yield b"y" * (size - size // 2)

    fits = requests.post(f"{server}/api/small/echo", data=body(1000), headers=tenant.headers, timeout=10)
    assert fits.status_code == 200
    assert fits.json()["body"] == "x" * 500 + "y" * 500
    too_big = requests.post(f"{server}/api/small/echo", data=body(2000), headers=tenant.headers, timeout=10)
    assert (too_big.status_code, too_big.json()) == (
        413,
        {"detail": "Request too large: a body to /api/small may be at most 1,024 bytes"},
    )
    ping = requests.get(f"{server}/api/v1/ping", headers=tenant.headers, timeout=10)
    assert ping.headers["X-RateLimit-Remaining"] == "99998"  # the echo and the ping: not the refused body
    assert len(upstream.requests) == 1
