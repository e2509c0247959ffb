"""A scripted upstream on loopback for the gateway client's tests: real sockets, answers written
byte for byte (``Scripted``), with the fixtures ``scripted`` (start servers, stopped after the
test) and ``pool`` (a fresh ``portal.gateway.client.Pool``, emptied after the test)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from portal.gateway.client import Pool

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class Scripted:
    """A loopback server: ``answer(n, head)`` gives the bytes for the n-th request (over all
    connections) and whether the connection closes after them (``None``: close without
    answering). Records each connection's request heads."""

    def __init__(self, answer: Callable[[int, bytes], tuple[bytes | None, bool]]) -> None:
        self.answer = answer
        self.connections: list[list[bytes]] = []
        self.bodies: list[bytes] = []
        self._count = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
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
            heads: list[bytes] = []
            with self._lock:
                self.connections.append(heads)
            threading.Thread(target=self._serve, args=(conn, heads), daemon=True).start()

    def _serve(self, conn: socket.socket, heads: list[bytes]) -> None:
        conn.settimeout(5)
        pending = b""
        with conn:
            while True:
                try:
                    while b"\r\n\r\n" not in pending:
                        data = conn.recv(65536)
                        if not data:
                            return
                        pending += data
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    length = _content_length(head)
                    while len(pending) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        pending += data
                    body, pending = pending[:length], pending[length:]
                except OSError:
                    return
                with self._lock:
                    heads.append(head)
                    self.bodies.append(body)
                    number = self._count
                    self._count += 1
                reply, close = self.answer(number, head)
                if reply is None:
                    return
                try:
                    conn.sendall(reply)
                except OSError:
                    return
                if close:
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Callable[[int, bytes], tuple[bytes | None, bool]]) -> Scripted:
        server = Scripted(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pool() -> Iterator[Pool]:
    pool = Pool()
    yield pool
    pool.clear()


def body_of(answer) -> bytes:
    parts = []
    while chunk := answer.read():
        parts.append(chunk)
    answer.release()
    return b"".join(parts)
