"""The gateway's HTTP/1.1 client against scripted upstreams on loopback: real sockets, answers
written byte for byte, so that every framing an upstream may send, and every way a kept-alive
connection may end, is met as it comes."""

from __future__ import annotations

import threading
import time

import pytest

from portal.gateway.client import Pool, UpstreamTimeout, UpstreamUnavailable
from tests.gateway.scripted import OK, body_of


def test_kept_alive_connection_serves_the_next_calls(scripted, pool: Pool) -> None:
    server = scripted(lambda n, head: (OK, False))
    for _ in range(3):
        answer = pool.send("GET", f"{server.url}/v1/ping?x=1", {"Accept": "*/*"}, None, None, 5)
        assert (answer.status, answer.header("content-type")) == (200, "application/json")
        assert body_of(answer) == b'{"ok":true}'
    assert len(server.connections) == 1
    assert server.connections[0][0].startswith(b"GET /v1/ping?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")


def test_request_head_and_body_arrive_as_sent(scripted, pool: Pool) -> None:
    server = scripted(lambda n, head: (OK, False))
    body_of(pool.send("POST", f"{server.url}/chat", {"X-Tollgate-Tenant": "acme"}, b'{"q": 1}', 8, 5))
    head = server.connections[0][0].decode()
    assert "X-Tollgate-Tenant: acme\r\n" in head and "Content-Length: 8" in head
    assert server.bodies == [b'{"q": 1}']


def test_connection_close_answer_is_not_reused(scripted, pool: Pool) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    server = scripted(lambda n, head: (closing, True))
    for _ in range(2):
        assert body_of(pool.send("GET", server.url + "/", {}, None, None, 5)) == b"hi"
    assert len(server.connections) == 2


def test_idle_connection_the_upstream_closed_is_replaced(scripted, pool: Pool) -> None:
    # The upstream answers and then closes the connection (its keep-alive timeout, say).
    server = scripted(lambda n, head: (OK, True))
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    assert answer.status == 200 and body_of(answer) == b'{"ok":true}'
    assert len(server.connections) == 2


def test_get_on_a_connection_closed_mid_exchange_is_sent_again(scripted, pool: Pool) -> None:
    # The second request reaches a connection the upstream then closes without answering: a
    # GET is sent again on a new connection.
    server = scripted(lambda n, head: (None, True) if n == 1 else (OK, False))
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    assert answer.status == 200 and body_of(answer) == b'{"ok":true}'
    assert [len(heads) for heads in server.connections] == [2, 1]


def test_post_on_a_connection_closed_mid_exchange_is_never_sent_twice(scripted, pool: Pool) -> None:
    server = scripted(lambda n, head: (None, True) if n == 1 else (OK, False))
    body_of(pool.send("POST", server.url + "/chat", {}, b"one", 3, 5))
    with pytest.raises(UpstreamUnavailable, match="closed a kept-alive connection"):
        pool.send("POST", server.url + "/chat", {}, b"two", 3, 5)
    # A repeated POST would have been sent before send() gave up.
    assert server.bodies == [b"one", b"two"]


def test_interim_answers_are_passed_over(scripted, pool: Pool) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    server = scripted(lambda n, head: (hints + b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone", False))
    answer = pool.send("POST", server.url + "/", {}, b"", 0, 5)
    assert answer.status == 201 and answer.header("Link") == ""
    assert body_of(answer) == b"done"


def test_answer_read_until_the_connection_closes(scripted, pool: Pool) -> None:
    server = scripted(lambda n, head: (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", True))
    assert body_of(pool.send("GET", server.url + "/", {}, None, None, 5)) == b"all of it"
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    assert len(server.connections) == 2


def test_chunked_answer_is_decoded_and_the_connection_kept(scripted, pool: Pool) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n4\r\n one\r\n0\r\n\r\n"
    server = scripted(lambda n, head: (chunked, False))
    for _ in range(2):
        assert body_of(pool.send("GET", server.url + "/", {}, None, None, 5)) == b"part one"
    assert len(server.connections) == 1


def test_answer_cut_short_is_an_error(scripted, pool: Pool) -> None:
    server = scripted(lambda n, head: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", True))
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    assert answer.read() == b"only ten b"
    with pytest.raises(UpstreamUnavailable, match="before its end"):
        answer.read()
    answer.close()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "not valid HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "head is over 64 KiB"),
        (b"", "closed the connection before answering"),
    ],
    ids=["not-http", "huge-head", "nothing"],
)
def test_broken_answers_are_unavailable(scripted, pool: Pool, reply: bytes, message: str) -> None:
    server = scripted(lambda n, head: (reply, True))
    with pytest.raises(UpstreamUnavailable, match=message):
        pool.send("GET", server.url + "/", {}, None, None, 5)


def test_header_that_would_split_the_request_is_never_sent(scripted, pool: Pool) -> None:
    server = scripted(lambda n, head: (OK, False))
    with pytest.raises(UpstreamUnavailable, match="line break"):
        pool.send("GET", server.url + "/", {"X-Key": "secret\r\nX-Injected: yes"}, None, None, 5)
    with pytest.raises(UpstreamUnavailable, match="could not be sent"):
        pool.send("GET", server.url + "/", {"X-Key": "clé ☃"}, None, None, 5)
    assert server.connections == []


def test_upstream_silent_past_the_timeout(scripted, pool: Pool) -> None:
    silent = threading.Event()

    def never(number: int, head: bytes) -> tuple[None, bool]:
        silent.wait(5)
        return None, True

    server = scripted(never)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="did not answer within 0.3s"):
        pool.send("GET", server.url + "/", {}, None, None, 0.3)
    assert time.monotonic() - started < 3
    silent.set()


def test_refused_connection_is_unavailable(pool: Pool) -> None:
    from tests.gateway.upstreams import refusing_url

    with pytest.raises(UpstreamUnavailable, match="could not connect"):
        pool.send("GET", refusing_url() + "/", {}, None, None, 5)


def test_streamed_body_is_sent_in_pieces(scripted, pool: Pool) -> None:
    import io

    server = scripted(lambda n, head: (OK, False))
    payload = bytes(range(256)) * 1024  # 256 KiB, past what goes out with the head
    body_of(pool.send("PUT", server.url + "/blob", {}, io.BytesIO(payload), len(payload), 5))
    assert server.bodies == [payload]
    with pytest.raises(UpstreamUnavailable, match="ended 10 bytes short"):
        pool.send("PUT", server.url + "/blob", {}, io.BytesIO(b"x" * 90), 100, 5)
