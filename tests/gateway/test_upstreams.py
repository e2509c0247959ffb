"""The loopback upstreams the gateway tests use behave as their docstring says."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from tests.gateway.upstreams import ResettingUpstream, Upstream


def test_echo_returns_the_request(upstream: Upstream) -> None:
    response = requests.post(
        f"{upstream.url}/base/echo/a/b?x=1&y=two", data=b'{"hi": 1}', headers={"X-Custom-Thing": "v"}, timeout=5
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    echoed = response.json()
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/base/echo/a/b"
    assert echoed["query"] == "x=1&y=two"
    assert echoed["headers"]["X-Custom-Thing"] == "v"
    assert echoed["body"] == '{"hi": 1}'
    seen = upstream.requests[-1]
    assert (seen.method, seen.path, seen.query, seen.body) == ("POST", "/base/echo/a/b", "x=1&y=two", b'{"hi": 1}')
    assert seen.header("x-custom-thing") == "v"
    assert "X-Custom-Thing" in seen.headers


def test_echo_decodes_a_chunked_request_body(upstream: Upstream) -> None:
    def parts():
        yield b"hello "
        yield b"chunked "
        yield b"world"

    response = requests.put(f"{upstream.url}/echo", data=parts(), timeout=5)
    assert response.json()["body"] == "hello chunked world"
    assert upstream.requests[-1].header("Transfer-Encoding") == "chunked"
    assert upstream.requests[-1].body == b"hello chunked world"


def test_keep_alive_serves_several_requests_on_one_connection(upstream: Upstream) -> None:
    with requests.Session() as session:
        for n in range(3):
            assert session.get(f"{upstream.url}/echo/{n}", timeout=5).json()["path"] == f"/echo/{n}"
    assert len(upstream.requests) == 3


def test_stream_arrives_in_chunks_and_ends_with_usage(upstream: Upstream) -> None:
    with requests.get(f"{upstream.url}/base/stream?events=5&interval=0.05", stream=True, timeout=5) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Transfer-Encoding"] == "chunked"
        arrivals = [(time.perf_counter(), chunk) for chunk in response.iter_content(None)]
    assert len(arrivals) >= 5
    assert arrivals[-1][0] - arrivals[0][0] >= 0.2  # not buffered into one piece
    events = b"".join(chunk for _, chunk in arrivals).decode().split("\n\n")
    data = [e.removeprefix("data: ") for e in events if e]
    assert data[0] == '{"delta": "word 0"}'
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert len(upstream.sent) == 7
    assert [t for t, _ in upstream.sent] == sorted(t for t, _ in upstream.sent)


def test_stream_anthropic_style(upstream: Upstream) -> None:
    body = requests.get(f"{upstream.url}/stream?events=2&interval=0&usage=anthropic", timeout=5).text
    events = [e for e in body.split("\n\n") if e]
    assert events[0].startswith("event: message_start\ndata: ")
    assert json.loads(events[0].split("data: ", 1)[1])["message"]["usage"] == {"input_tokens": 11, "output_tokens": 1}
    assert events[-2] == 'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": 7}}'
    assert events[-1] == 'event: message_stop\ndata: {"type": "message_stop"}'
    assert len(events) == 5


def test_chunked_parts(upstream: Upstream) -> None:
    with requests.get(f"{upstream.url}/chunked?parts=3", stream=True, timeout=5) as response:
        chunks = list(response.iter_content(None))
    assert b"".join(chunks) == b"part 0\npart 1\npart 2\n"
    assert len(chunks) == 3


def test_status_usage_redirect_big_and_unknown(upstream: Upstream) -> None:
    failed = requests.get(f"{upstream.url}/base/status/503", timeout=5)
    assert failed.status_code == 503
    assert failed.json() == {"error": "upstream says 503"}
    assert failed.headers["X-Upstream-Error"] == "yes"

    assert requests.post(f"{upstream.url}/usage/openai", timeout=5).json()["usage"]["total_tokens"] == 1500
    assert requests.post(f"{upstream.url}/usage/anthropic", timeout=5).json()["usage"]["cache_read_input_tokens"] == 100
    header = requests.get(f"{upstream.url}/usage/header", timeout=5)
    assert header.text == "ok"
    assert json.loads(header.headers["X-Tollgate-Usage"])["units"] == 2

    redirect = requests.get(f"{upstream.url}/base/redirect", allow_redirects=False, timeout=5)
    assert redirect.status_code == 302
    assert redirect.headers["Location"] == "/base/echo/redirected"
    assert redirect.content == b""

    big = requests.get(f"{upstream.url}/big?bytes=200000", timeout=5)
    assert big.headers["Content-Length"] == "200000"
    assert len(big.content) == 200000

    missing = requests.get(f"{upstream.url}/base/nothing", timeout=5)
    assert missing.status_code == 404
    assert missing.json() == {"error": "no such upstream path"}


def test_slow_waits(upstream: Upstream) -> None:
    started = time.perf_counter()
    assert requests.get(f"{upstream.url}/slow?seconds=0.3", timeout=5).json() == {"ok": True}
    assert time.perf_counter() - started >= 0.3


def test_close_mid_body_breaks_the_read(upstream: Upstream) -> None:
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(f"{upstream.url}/close-mid-body", timeout=5).content  # noqa: B018


def test_refusing_url_refuses() -> None:
    from tests.gateway.upstreams import refusing_url

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{refusing_url()}/echo", timeout=5)


def test_resetting_upstream_resets(resetting_upstream: ResettingUpstream) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{resetting_upstream.url}/echo", timeout=5)
    assert resetting_upstream.heads[0].startswith(b"GET /echo HTTP/1.1")

    with socket.create_connection(("127.0.0.1", resetting_upstream.port), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)


def test_250_concurrent_slow_calls(upstream: Upstream) -> None:
    def call(_: int) -> int:
        return requests.get(f"{upstream.url}/slow?seconds=1", timeout=10).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=250) as pool:
        codes = list(pool.map(call, range(250)))
    elapsed = time.perf_counter() - started
    assert codes == [200] * 250
    assert elapsed < 5, elapsed
