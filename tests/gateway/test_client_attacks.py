"""An attack round on the gateway's HTTP/1.1 client (``portal.gateway.client``) and the forwarding
around it: headers that would split a request, answers that would carry bytes into the next
caller's answer, framings llhttp might read otherwise than the upstream meant, upstreams that
dribble, pools under many threads, retries that would send a call twice.

Each test documents a defence. Twelve of them first failed: a route's timeout that was only a
per-read one, an endless header buffered past the head limit, a call sent again once per idle
connection, a POST sent twice when its head had left, a query string or a header name that could
split the request, a pipelined answer taken for the real one, trailers read as headers, statuses
HTTP does not have, and answers read to the close taken for broken ones. All are fixed.

Everything runs on 127.0.0.1; every server and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from portal.api.gateway import state
from portal.gateway.client import Pool, UpstreamTimeout, UpstreamUnavailable
from tests.gateway.helpers import add_test_route, stored_calls
from tests.gateway.scripted import OK, body_of
from tests.gateway.upstreams import Upstream

HI = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"


# -- a raw loopback server: one handler per connection, written byte for byte --------------------


class Raw:
    """A loopback server whose ``handler(conn, number)`` scripts each whole connection (number:
    the connection's rank). Each handler runs in its own thread with a 5 s socket timeout."""

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._count = 0
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                number = self._count
                self._count += 1
                self._open.append(conn)
            threading.Thread(target=self._run, args=(conn, number), daemon=True).start()

    def _run(self, conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError), conn:
            self.handler(conn, number)

    def read_head(self, conn: socket.socket, pending: bytes = b"") -> tuple[bytes, bytes]:
        """The next request head on ``conn`` (recorded) and what came after it."""
        while b"\r\n\r\n" not in pending:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("closed")
            pending += data
        head, rest = pending.split(b"\r\n\r\n", 1)
        with self.lock:
            self.heads.append(head)
        return head, rest

    @property
    def connections(self) -> int:
        return self._count

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self.lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Callable[[socket.socket, int], None]], Raw]]:
    servers: list[Raw] = []

    def start(handler: Callable[[socket.socket, int], None]) -> Raw:
        server = Raw(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# -- routes through the real app -----------------------------------------------------------------


@pytest.fixture
def route(app):
    """Declare ``/api/raw`` for an upstream URL; the app's pool is emptied after the test."""
    declared: list[str] = []

    def declare(url: str, path: str = "/api/raw", **options) -> str:
        options.setdefault("methods", "GET,POST,HEAD,DELETE,PUT")
        add_test_route(app, path, url, **options)
        declared.append(path)
        return path

    yield declare
    state(app).upstreams.clear()


def assert_json_error(response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    assert response.is_json and "detail" in response.json


# ================================================================================================
# 1. Request splitting through what the caller or the route controls
# ================================================================================================


@pytest.mark.parametrize(
    "value",
    ["a\r\nX-Evil: 1", "a\nX-Evil: 1", "a\rX-Evil: 1", "a\x00b", "a\r\n\tfolded", "a\r\n\r\nGET /smuggled HTTP/1.1"],
    ids=["crlf", "lf", "cr", "nul", "obs-fold", "double-crlf"],
)
def test_a_callers_header_value_with_a_line_break_never_reaches_the_upstream(client, route, acme, scripted, value):
    # A WSGI server that lets such a value through (the test client refuses to build it).
    server = scripted(lambda n, head: (OK, False))
    path = route(server.url)
    response = client.get(f"{path}/x", headers=acme.headers, environ_overrides={"HTTP_X_INJECT": value})
    assert_json_error(response, 502)
    assert server.connections == []


@pytest.mark.parametrize(
    "value", ["tok\r\nX-Evil: 1", "tok\rX", "tok\n\tfold", "clé ☃"], ids=["crlf", "cr", "fold", "utf8"]
)
def test_a_route_credential_that_would_split_the_request_is_never_sent(
    client, route, acme, scripted, monkeypatch, value
):
    monkeypatch.setenv("ATTACK_ROUTE_TOKEN", value)
    server = scripted(lambda n, head: (OK, False))
    path = route(server.url, upstream_headers=["X-Route-Token=ATTACK_ROUTE_TOKEN"])
    assert_json_error(client.get(f"{path}/x", headers=acme.headers), 502)
    assert server.connections == []


def test_a_path_with_encoded_line_breaks_is_quoted_or_refused(client, route, acme, scripted):
    server = scripted(lambda n, head: (OK, False))
    path = route(server.url)
    for target in (f"{path}/a%0d%0aX-Evil:%201", f"{path}/a%20HTTP/1.1%0d%0a", f"{path}/a%00"):
        response = client.get(target, headers=acme.headers)
        assert response.status_code in (200, 400), target
    for connection in server.connections:
        for head in connection:
            assert b"X-Evil:" not in head.replace(b"X-Evil%3A", b"")
            assert head.split(b"\r\n", 1)[0].count(b" ") == 2


def test_a_query_string_with_a_line_break_never_splits_the_request(client, route, acme, scripted):
    server = scripted(lambda n, head: (OK, False))
    path = route(server.url)
    smuggled = "a=1 HTTP/1.1\r\nX-Evil: 1\r\n\r\nDELETE /smuggled?b=2"
    response = client.get(f"{path}/x", headers=acme.headers, environ_overrides={"QUERY_STRING": smuggled})
    seen = [head for connection in server.connections for head in connection]
    # Either refused (400/502) before anything is sent, or sent as one single request line.
    assert response.status_code in (400, 502) and seen == [], (response.status_code, seen)


def test_a_header_name_with_a_line_break_never_reaches_the_upstream(client, route, acme, scripted):
    server = scripted(lambda n, head: (OK, False))
    path = route(server.url)
    response = client.get(f"{path}/x", headers=acme.headers, environ_overrides={"HTTP_X_A:_B\r\nX_EVIL": "1"})
    seen = b"".join(head for connection in server.connections for head in connection)
    assert b"\r\nX-Evil" not in seen and b"\r\nx-evil" not in seen.lower(), seen
    assert response.status_code in (400, 502)


def test_request_head_refuses_line_breaks_directly() -> None:
    from portal.gateway.client import origin_of, request_head

    origin = origin_of("http://127.0.0.1:1")
    for value in ("a\rb", "a\nb", "a\0b", "snow ☃"):
        with pytest.raises(UpstreamUnavailable):
            request_head("GET", "/", origin, {"X-A": value})


# ================================================================================================
# 2. Credentials of the caller never reach the upstream
# ================================================================================================


def test_the_callers_credentials_never_reach_the_upstream_in_any_spelling(app, client, route, acme, upstream: Upstream):
    path = route(upstream.url)
    headers = {
        **acme.headers,
        "authorization": "Bearer caller-secret",
        "COOKIE": "session=portal",
        "Proxy-Authorization": "Basic cHJveHk=",
        "Connection": "X-Tollgate-Tenant, X-Request-Id",
        "X-Tollgate-Tenant": "someone-else",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=1.2.3.4;host=evil",
    }
    response = client.get(f"{path}/echo", headers=headers, buffered=True)
    assert response.status_code == 200
    seen = upstream.requests[-1]
    for never in ("X-API-Key", "Authorization", "Cookie", "Proxy-Authorization", "Forwarded", "Connection"):
        assert seen.header(never) is None, never
    assert acme.secret not in str(seen.headers) and "caller-secret" not in str(seen.headers)
    assert seen.header("X-Tollgate-Tenant") == acme.slug
    assert seen.header("X-Forwarded-Host") != "evil.example"
    assert seen.header("X-Request-Id") == response.headers["X-Request-Id"]


def test_a_kept_alive_connection_shared_by_two_tenants_carries_only_each_ones_headers(
    app, client, route, acme, upstream
):
    from tests.factories import new_tenant

    other = new_tenant(app, "Other Co", key=True)
    path = route(upstream.url)
    assert (
        client.get(f"{path}/echo", headers={**acme.headers, "X-Private": "acme-only"}, buffered=True).status_code == 200
    )
    answer = client.get(f"{path}/echo", headers=other.headers, buffered=True)
    assert answer.status_code == 200
    first, second = upstream.requests[-2:]
    assert second.header("X-Private") is None
    assert second.header("X-Tollgate-Tenant") == other.slug and first.header("X-Tollgate-Tenant") == acme.slug
    assert acme.slug not in str(answer.json) and acme.secret not in str(second.headers)


# ================================================================================================
# 3. Bytes an upstream sends past its answer never reach the next caller
# ================================================================================================


def test_a_second_answer_pipelined_after_the_first_is_never_taken_for_it(scripted, pool: Pool) -> None:
    forged = b"HTTP/1.1 201 Created\r\nX-Forged: yes\r\nContent-Length: 4\r\n\r\nevil"
    server = scripted(lambda n, head: (HI + forged if n == 0 else OK, False))
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    status, forged_header, body = answer.status, answer.header("X-Forged"), body_of(answer)
    assert (status, forged_header, body) == (200, "", b"hi")
    # And the connection that carried the extra bytes is not used again.
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    assert len(server.connections) == 2


def test_a_body_longer_than_its_content_length_never_reaches_the_next_caller(scripted, pool: Pool) -> None:
    # The first answer says 2 bytes and sends 12 in the same write: the rest is no HTTP.
    server = scripted(lambda n, head: (HI + b"LEAKEDBYTES" if n == 0 else OK, False))
    with contextlib.suppress(UpstreamUnavailable):
        body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    assert (answer.status, body_of(answer)) == (200, b'{"ok":true}')


def test_extra_bytes_arriving_while_the_connection_is_idle_are_never_read_as_an_answer(raw, pool: Pool) -> None:
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED"

    def handler(conn: socket.socket, number: int) -> None:
        head, rest = server.read_head(conn)
        if number == 0:
            conn.sendall(HI)
            time.sleep(0.1)
            conn.sendall(forged)  # unasked, while the connection sits in the pool
            time.sleep(2)
            return
        conn.sendall(OK)
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                head, rest = server.read_head(conn, rest)
                conn.sendall(OK)

    server = raw(handler)
    assert body_of(pool.send("GET", server.url + "/", {}, None, None, 5)) == b"hi"
    time.sleep(0.4)
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    assert body_of(answer) == b'{"ok":true}'
    assert server.connections == 2


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodyless_status_sent_with_a_body_never_dirties_the_pool(client, route, acme, scripted, status):
    reason = b"No Content" if status == 204 else b"Not Modified"
    bad = b"HTTP/1.1 %d %s\r\nContent-Length: 5\r\n\r\nEVIL!" % (status, reason)
    server = scripted(lambda n, head: (bad if n == 0 else OK, False))
    path = route(server.url)
    first = client.get(f"{path}/x", headers=acme.headers, buffered=True)
    assert first.status_code in (status, 502)
    if first.status_code == 502:
        assert_json_error(first, 502)
    second = client.get(f"{path}/x", headers=acme.headers, buffered=True)
    assert (second.status_code, second.get_data()) == (200, b'{"ok":true}')


def test_a_head_answer_with_a_length_and_no_body_is_not_waited_for(client, route, acme, scripted):
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    server = scripted(lambda n, head: (head_answer if head.startswith(b"HEAD") else OK, False))
    path = route(server.url, timeout_seconds=3)
    started = time.monotonic()
    response = client.head(f"{path}/x", headers=acme.headers)
    assert response.status_code == 200 and time.monotonic() - started < 2
    # The next call gets its own answer, not a body the HEAD's parser was waiting for.
    assert client.get(f"{path}/x", headers=acme.headers, buffered=True).get_data() == b'{"ok":true}'


def test_a_head_answer_sent_with_a_body_never_reaches_the_next_caller(client, route, acme, scripted):
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nLEAKED"
    server = scripted(lambda n, head: (head_answer if head.startswith(b"HEAD") else OK, False))
    path = route(server.url)
    assert client.head(f"{path}/x", headers=acme.headers).status_code == 200
    for _ in range(2):
        assert client.get(f"{path}/x", headers=acme.headers, buffered=True).get_data() == b'{"ok":true}'


def test_interim_answers_with_headers_never_leak_theirs_into_the_final_one(scripted, pool: Pool) -> None:
    interim = b'HTTP/1.1 100 Continue\r\nX-Tollgate-Usage: {"tokens_in": 999}\r\n\r\n' * 50
    interim += b"HTTP/1.1 103 Early Hints\r\nSet-Cookie: a=b\r\n\r\n"
    server = scripted(lambda n, head: (interim + HI, False))
    answer = pool.send("GET", server.url + "/", {}, None, None, 5)
    assert answer.status == 200 and answer.header("X-Tollgate-Usage") == "" and answer.header("Set-Cookie") == ""
    assert body_of(answer) == b"hi"


def test_a_101_answer_is_unavailable_not_relayed(client, route, acme, scripted):
    for reply in (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
    ):
        server = scripted(lambda n, head, reply=reply: (reply, False))
        path = route(server.url, path=f"/api/up{len(reply)}")
        assert_json_error(client.get(f"{path}/x", headers=acme.headers), 502)


# ================================================================================================
# 4. Framings llhttp could read otherwise than the upstream meant
# ================================================================================================


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=\nb\r\nhi\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nContent-Length: 9\r\n\r\n",
        b"hi there, no status line",
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "two-lengths",
        "length-list",
        "signed-length",
        "space-before-colon",
        "bad-chunk-size",
        "negative-chunk-size",
        "chunk-size-overflow",
        "bare-lf-in-chunk-ext",
        "obs-fold",
        "bare-lf-head",
        "bare-cr-in-value",
        "nul-in-value",
        "length-as-trailer",
        "http-0.9",
    ],
)
def test_an_ambiguous_or_broken_framing_is_502_and_the_connection_dropped(client, route, acme, scripted, reply):
    server = scripted(lambda n, head: (reply if n == 0 else OK, False))
    path = route(server.url)
    assert_json_error(client.get(f"{path}/x", headers=acme.headers, buffered=True), 502)
    second = client.get(f"{path}/x", headers=acme.headers, buffered=True)
    assert (second.status_code, second.get_data()) == (200, b'{"ok":true}')
    assert len(server.connections) == 2


def test_chunk_extensions_are_read_past_and_the_connection_kept(scripted, pool: Pool) -> None:
    reply = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;name="v;a"\r\nhi\r\n1;x\r\n!\r\n0;end\r\n\r\n'
    server = scripted(lambda n, head: (reply, False))
    for _ in range(2):
        assert body_of(pool.send("GET", server.url + "/", {}, None, None, 5)) == b"hi!"
    assert len(server.connections) == 1


def test_transfer_encoding_other_than_chunked_last_is_read_to_the_close_and_never_pooled(scripted, pool: Pool) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw bytes"
    server = scripted(lambda n, head: (reply, True))
    assert body_of(pool.send("GET", server.url + "/", {}, None, None, 5)) == b"raw bytes"
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    assert len(server.connections) == 2


def test_trailers_never_become_headers_of_the_answer(client, route, acme, scripted):
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nX-Trailer-Injected: yes\r\nContent-Type: text/html\r\n\r\n"
    )
    server = scripted(lambda n, head: (reply, False))
    path = route(server.url)
    response = client.get(f"{path}/x", headers=acme.headers, buffered=True)
    assert response.status_code == 200 and response.get_data() == b"hi"
    assert "X-Trailer-Injected" not in response.headers
    assert response.headers.getlist("Content-Type") == ["text/plain"]


def test_an_answer_written_one_byte_at_a_time_is_read_whole(raw, pool: Pool) -> None:
    reply = (
        b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Tollgate-Usage: {"tokens_in": 3}\r\n'
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;e=1\r\n!\r\n0\r\n\r\n"
    )

    def handler(conn: socket.socket, number: int) -> None:
        rest = b""
        for _ in range(2):
            _, rest = server.read_head(conn, rest)
            for i in range(len(reply)):
                conn.sendall(reply[i : i + 1])
                time.sleep(0.0005)
        time.sleep(1)

    server = raw(handler)
    for _ in range(2):
        answer = pool.send("GET", server.url + "/", {}, None, None, 5)
        assert answer.status == 200 and answer.header("x-tollgate-usage") == '{"tokens_in": 3}'
        assert body_of(answer) == b"hello!"
    assert server.connections == 1


def test_an_invalid_status_code_is_never_relayed_to_the_caller(client, route, acme, scripted):
    results = {}
    for status in (b"000", b"042", b"099", b"999"):
        reply = b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nhi"
        server = scripted(lambda n, head, reply=reply: (reply, False))
        path = route(server.url, path=f"/api/status{int(status)}")
        response = client.get(f"{path}/x", headers=acme.headers, buffered=True)
        results[status] = response.status_code
    # 999 is at least a three-digit code; 0-99 are no HTTP status at all.
    assert all(code in (502, 999) for code in results.values()), results


# ================================================================================================
# 5. Heads too large, too many headers, dribbled heads and the route's timeout
# ================================================================================================


def test_a_huge_number_of_headers_is_refused_or_passed_without_a_500(client, route, acme, scripted):
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20_000)) + b"Content-Length: 2\r\n\r\nhi"
    server = scripted(lambda n, head: (many if n == 0 else OK, False))
    path = route(server.url)
    started = time.monotonic()
    assert_json_error(client.get(f"{path}/x", headers=acme.headers, buffered=True), 502)
    assert time.monotonic() - started < 3
    assert client.get(f"{path}/x", headers=acme.headers, buffered=True).get_data() == b'{"ok":true}'


def test_a_single_endless_header_value_is_refused_at_the_head_limit(raw, pool: Pool) -> None:
    sent = []

    def handler(conn: socket.socket, number: int) -> None:
        server.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: ")
        piece = b"a" * 65536
        deadline = time.monotonic() + 2.5
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                conn.sendall(piece)
                sent.append(len(piece))
        time.sleep(1)

    server = raw(handler)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="64 KiB"):
        pool.send("GET", server.url + "/", {}, None, None, 2)
    # Refused within the first few reads, not after megabytes.
    assert sum(sent) < 4 * 2**20 and time.monotonic() - started < 1.5, (sum(sent), time.monotonic() - started)


def test_a_dribbled_head_is_cut_off_at_the_routes_timeout(raw, pool: Pool) -> None:
    def handler(conn: socket.socket, number: int) -> None:
        server.read_head(conn)
        deadline = time.monotonic() + 3
        head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 200
        for i in range(len(head)):
            if time.monotonic() > deadline:
                break
            conn.sendall(head[i : i + 1])
            time.sleep(0.15)

    server = raw(handler)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        pool.send("GET", server.url + "/", {}, None, None, 0.5)
    assert time.monotonic() - started < 1.5, time.monotonic() - started


def test_endless_interim_answers_are_cut_off_at_the_routes_timeout(raw, pool: Pool) -> None:
    def handler(conn: socket.socket, number: int) -> None:
        server.read_head(conn)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.1)

    server = raw(handler)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        pool.send("GET", server.url + "/", {}, None, None, 0.5)
    assert time.monotonic() - started < 1.5, time.monotonic() - started


def test_a_silent_upstream_through_the_app_is_504_json(client, route, acme, raw):
    release = threading.Event()

    def handler(conn: socket.socket, number: int) -> None:
        server.read_head(conn)
        release.wait(5)

    server = raw(handler)
    path = route(server.url, timeout_seconds=0.3)
    started = time.monotonic()
    assert_json_error(client.get(f"{path}/x", headers=acme.headers), 504)
    assert time.monotonic() - started < 2
    release.set()


def test_a_body_stalled_mid_stream_ends_the_relay_without_a_500(app, client, route, acme, raw):
    def handler(conn: socket.socket, number: int) -> None:
        server.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nfirst")
        time.sleep(2)

    server = raw(handler)
    path = route(server.url, timeout_seconds=0.3)
    response = client.get(f"{path}/x", headers=acme.headers)
    assert response.status_code == 200
    with pytest.raises(Exception):  # noqa: B017, PT011 - the relay breaks off: the WSGI server drops the connection
        response.get_data()
    response.close()
    [record] = stored_calls(app, acme.tenant_id)
    assert record.status_code == 502


# ================================================================================================
# 6. Stale connections and requests sent twice
# ================================================================================================


def _fill_pool(pool: Pool, url: str, count: int) -> None:
    """``count`` idle kept-alive connections to ``url`` in the pool."""
    answers = [pool.send("GET", url + "/", {}, None, None, 5) for _ in range(count)]
    for answer in answers:
        body_of(answer)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_call_is_sent_again_at_most_once(scripted, pool: Pool, method) -> None:
    idle = 8
    server = scripted(lambda n, head: (OK, False) if n < idle else (None, True))
    _fill_pool(pool, server.url, idle)
    assert len(server.connections) == idle
    with pytest.raises(UpstreamUnavailable):
        pool.send(method, server.url + "/act", {}, None, None, 5)
    sent = [head for connection in server.connections for head in connection if b"/act" in head]
    assert len(sent) <= 2, len(sent)


def test_a_post_on_a_connection_closed_after_the_request_is_never_sent_twice(raw, pool: Pool) -> None:
    # The upstream reads the POST whole, then resets the connection without an answer.
    def handler(conn: socket.socket, number: int) -> None:
        _, rest = server.read_head(conn)
        conn.sendall(OK)
        head, rest = server.read_head(conn, rest)
        time.sleep(0.05)
        reset(conn)

    server = raw(handler)
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    with pytest.raises(UpstreamUnavailable):
        pool.send("POST", server.url + "/charge", {}, b"x" * 1000, 1000, 5)
    assert sum(b"/charge" in head for head in server.heads) == 1


def test_a_post_whose_head_reached_the_upstream_is_never_sent_twice(raw, pool: Pool) -> None:
    def handler(conn: socket.socket, number: int) -> None:
        _, rest = server.read_head(conn)
        if b"/charge" in server.heads[-1]:
            # The upstream has the POST's head: it acts on it (or refuses it) and resets.
            time.sleep(0.1)
            reset(conn)
            return
        conn.sendall(OK)
        with contextlib.suppress(ConnectionError):
            server.read_head(conn, rest)
            time.sleep(0.1)
            reset(conn)

    server = raw(handler)
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    big = b"x" * (32 * 2**20)  # far past what the socket buffers take before the reset
    with contextlib.suppress(UpstreamUnavailable, UpstreamTimeout):
        pool.send("POST", server.url + "/charge", {}, big, len(big), 5)
    assert sum(b"/charge" in head for head in server.heads) == 1, server.heads


def test_a_streamed_post_body_is_never_sent_twice(raw, pool: Pool) -> None:
    def handler(conn: socket.socket, number: int) -> None:
        _, rest = server.read_head(conn)
        conn.sendall(OK)
        server.read_head(conn, rest)
        time.sleep(0.1)
        reset(conn)

    server = raw(handler)
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    big = b"y" * (8 * 2**20)
    with contextlib.suppress(UpstreamUnavailable, UpstreamTimeout):
        pool.send("POST", server.url + "/upload", {}, io.BytesIO(big), len(big), 5)
    assert sum(b"/upload" in head for head in server.heads) == 1


def test_a_connection_reset_while_idle_is_replaced_and_the_post_sent_once(raw, pool: Pool) -> None:
    def handler(conn: socket.socket, number: int) -> None:
        _, rest = server.read_head(conn)
        conn.sendall(OK)
        if number == 0:
            time.sleep(0.05)
            reset(conn)  # its keep-alive timeout, abruptly
            return
        with contextlib.suppress(ConnectionError):
            while True:
                _, rest = server.read_head(conn, rest)
                conn.sendall(OK)

    server = raw(handler)
    body_of(pool.send("GET", server.url + "/", {}, None, None, 5))
    time.sleep(0.3)
    answer = pool.send("POST", server.url + "/charge", {}, b"one", 3, 5)
    assert body_of(answer) == b'{"ok":true}'
    assert sum(b"/charge" in head for head in server.heads) == 1 and server.connections == 2


# ================================================================================================
# 7. Usage a malicious upstream would inject
# ================================================================================================


def test_the_usage_header_and_rate_limit_headers_never_reach_the_caller(app, client, route, acme, scripted):
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        b'x-tollgate-usage: {"tokens_in": 5, "tokens_out": 6}\r\n'
        b'X-TOLLGATE-USAGE: {"tokens_in": 999999999999}\r\n'
        b"X-RateLimit-Remaining: 999999\r\nRetry-After: 0\r\nSet-Cookie: session=stolen\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    server = scripted(lambda n, head: (reply, False))
    path = route(server.url)
    response = client.get(f"{path}/x", headers=acme.headers, buffered=True)
    assert response.status_code == 200
    lowered = {name.lower() for name, _ in response.headers.items()}
    assert "x-tollgate-usage" not in lowered and "set-cookie" not in lowered and "retry-after" not in lowered
    assert response.headers["X-RateLimit-Remaining"] != "999999"
    [record] = stored_calls(app, acme.tenant_id)
    # The first usage header counts; nothing beyond the clamp.
    assert (record.tokens_in, record.tokens_out) == (5, 6)


def test_usage_with_negative_or_absurd_counts_is_clamped(app, client, route, acme, scripted):
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    body = b'{"model": "m\\u0000", "usage": {"prompt_tokens": -500, "completion_tokens": 1e300}}'
    server = scripted(lambda n, head: (reply % (len(body), body), False))
    path = route(server.url)
    assert client.get(f"{path}/x", headers=acme.headers, buffered=True).status_code == 200
    [record] = stored_calls(app, acme.tenant_id)
    assert record.tokens_in == 0 and 0 <= record.tokens_out <= 10**9 and "\x00" not in record.model


# ================================================================================================
# 8. The pool under many threads
# ================================================================================================


def test_fifty_threads_on_one_pool_each_get_their_own_answer(upstream: Upstream, pool: Pool) -> None:
    errors: list[str] = []
    deadline = time.monotonic() + 30

    def worker(number: int) -> None:
        for call in range(10):
            if time.monotonic() > deadline:
                errors.append("deadline")
                return
            mark = f"t{number}-c{call}"
            try:
                answer = pool.send("GET", f"{upstream.url}/echo/{mark}?m={mark}", {"X-Mark": mark}, None, None, 10)
                import json

                seen = json.loads(body_of(answer))
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{mark}: {error!r}")
                continue
            if seen["path"] != f"/echo/{mark}" or seen["query"] != f"m={mark}":
                errors.append(f"{mark} got {seen['path']}?{seen['query']}")
            marks = [value for name, value in seen["headers"].items() if name.lower() == "x-mark"]
            if marks != [mark]:
                errors.append(f"{mark} got header {marks}")

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sum(len(v) for v in pool._idle.values()) <= 50


def test_fifty_threads_on_one_pool_with_an_upstream_closing_at_random_never_cross_answers(raw, pool: Pool) -> None:
    """Every third answer closes its connection; answers carry the request's own mark back."""

    def handler(conn: socket.socket, number: int) -> None:
        rest = b""
        with contextlib.suppress(ConnectionError):
            for served in range(3):
                head, rest = server.read_head(conn, rest)
                mark = head.split(b" ", 2)[1]
                close = served == 2
                extra = b"Connection: close\r\n" if close else b""
                conn.sendall(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(mark), mark))
                if close:
                    return

    server = raw(handler)
    errors: list[str] = []
    deadline = time.monotonic() + 30

    def worker(number: int) -> None:
        for call in range(10):
            if time.monotonic() > deadline:
                return
            mark = f"/t{number}-c{call}"
            try:
                got = body_of(pool.send("GET", server.url + mark, {}, None, None, 10)).decode()
            except Exception as error:  # noqa: BLE001
                errors.append(f"{mark}: {error!r}")
                continue
            if got != mark:
                errors.append(f"{mark} got {got}")

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    assert errors == []


# ================================================================================================
# 9. Errors are 502/504 JSON, never a 500
# ================================================================================================


@pytest.mark.parametrize(
    "behaviour",
    ["reset-before-answer", "close-before-answer", "close-mid-head", "garbage", "close-mid-chunk-size"],
)
def test_every_upstream_failure_before_the_body_is_json_not_500(client, route, acme, raw, behaviour):
    def handler(conn: socket.socket, number: int) -> None:
        server.read_head(conn)
        if behaviour == "reset-before-answer":
            reset(conn)
        elif behaviour == "close-mid-head":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
        elif behaviour == "garbage":
            conn.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)))
        elif behaviour == "close-mid-chunk-size":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")

    server = raw(handler)
    path = route(server.url)
    response = client.get(f"{path}/x", headers=acme.headers)
    if behaviour == "close-mid-chunk-size":
        assert response.status_code == 200  # the head came: the relay breaks off
        with pytest.raises(Exception):  # noqa: B017, PT011
            response.get_data()
        response.close()
    else:
        assert_json_error(response, 502)


def test_an_upstream_header_value_with_latin1_bytes_passes_without_a_500(client, route, acme, scripted):
    reply = b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9 \xff\r\nContent-Length: 2\r\n\r\nhi"
    server = scripted(lambda n, head: (reply, False))
    path = route(server.url)
    response = client.get(f"{path}/x", headers=acme.headers, buffered=True)
    assert response.status_code == 200 and response.get_data() == b"hi"
