"""The gateway's HTTP/1.1 client: kept-alive connections to each upstream, answers read by llhttp.

A routed call pays for its round trip to the upstream on top of everything a protected call
costs, so the round trip is kept to what it needs: the request's head written in one ``send``
(with a small body in the same one), the answer's head and body parsed by llhttp, Node.js's HTTP
parser, through ``httptools`` (C), and the connection kept for the next call when the answer
was read whole and the upstream keeps it alive. ``urllib3`` did the same at about three times the
CPU: ``http.client`` parses every answer's head through the ``email`` package.

What it does not do, on purpose: follow redirects, retry a call the upstream may have acted on
(a request is sent again only when a kept-alive connection turns out closed before any of the
answer came back, and then only when the request could not have reached the upstream or its
method is idempotent), decode a content encoding, or speak HTTP/2.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import IO
from urllib.parse import urlsplit

import httptools

READ_SIZE = 64 * 1024
# A body this small goes out in the same ``send`` as the head.
INLINE_BODY = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_INTERIM = 10
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


class UpstreamUnavailable(Exception):
    """The upstream refused the connection, reset it or broke the protocol."""


class UpstreamTimeout(Exception):
    """The upstream did not answer within the route's timeout."""


class _Stale(Exception):
    """A kept-alive connection was closed by the upstream before any of the answer came."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    host_header: str


@lru_cache(maxsize=1024)
def origin_of(prefix: str) -> Origin:
    parts = urlsplit(prefix)
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return Origin(parts.scheme, host, port, shown if port == default else f"{shown}:{port}")


def split_url(url: str) -> tuple[Origin, str]:
    """The origin and the request target (path and query) of an absolute http(s) URL."""
    start = url.index("://") + 3
    slash = url.find("/", start)
    query = url.find("?", start)
    cut = min(i for i in (slash, query, len(url)) if i >= 0)
    target = url[cut:]
    if not target.startswith("/"):
        target = "/" + target
    return origin_of(url[:cut]), target


def request_head(method: str, target: str, origin: Origin, headers: dict[str, str]) -> bytes:
    """The request's head; raises UpstreamUnavailable for a header that cannot be sent."""
    if _UNSAFE_TARGET.search(target):
        raise UpstreamUnavailable("the request target holds a space or a control character")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise UpstreamUnavailable(f"a header could not be sent: {name!r} is not a header name")
        if "\r" in value or "\n" in value or "\0" in value:
            raise UpstreamUnavailable(f"a header could not be sent: {name} holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as error:
        raise UpstreamUnavailable(f"a header could not be sent: {error}") from error


class Connection:
    """One connection to an origin."""

    __slots__ = ("origin", "sock", "used")

    def __init__(self, origin: Origin, connect_timeout: float, contexts: TLSContexts) -> None:
        self.origin = origin
        self.used = False
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=connect_timeout)
        except TimeoutError as error:
            raise UpstreamTimeout(
                f"connecting to {origin.host_header} took longer than {connect_timeout:g}s"
            ) from error
        except OSError as error:
            raise UpstreamUnavailable(f"could not connect to {origin.host_header}: {error}") from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.scheme == "https":
            try:
                sock = contexts.client().wrap_socket(sock, server_hostname=origin.host)
            except (OSError, ssl.SSLError) as error:
                sock.close()
                raise UpstreamUnavailable(f"TLS with {origin.host_header} failed: {error}") from error
        self.sock = sock

    def dropped(self) -> bool:
        """Whether the upstream closed this idle connection (or sent something unasked)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class TLSContexts:
    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None

    def client(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = ssl.create_default_context()
        return self._context


class Answer:
    """An upstream's answer: its status and headers once :meth:`Pool.send` returns, its body
    read as it arrives."""

    __slots__ = (
        "status",
        "headers",
        "_names",
        "_pool",
        "_conn",
        "_parser",
        "_chunks",
        "_head_done",
        "complete",
        "_keep_alive",
        "_framed",
        "_head_bytes",
        "_header_bytes",
        "_received",
        "_final",
        "_trailing",
        "_interim",
    )

    def __init__(self, pool: Pool, conn: Connection) -> None:
        self._pool = pool
        self._conn = conn
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._head_done = False
        self.complete = False
        self._keep_alive = False
        self._framed = False
        self._head_bytes = 0
        self._header_bytes = 0
        self._received = False
        # The final answer (not a 1xx) is complete: anything after it is not ours to read.
        self._final = False
        self._trailing = False
        self._interim = 0
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self._names: dict[str, str] | None = None

    # -- llhttp's callbacks
    def on_message_begin(self) -> None:
        if self._final:
            # A second answer the upstream sent unasked (pipelined, or smuggled in a body that
            # outran its length): never read, and the connection is not used again.
            self._trailing = True
            return
        # After an interim answer (100 Continue, 103 Early Hints): the real one.
        self._head_done = False
        self.complete = False
        self.headers = []
        self._names = None
        self._chunks = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done or self._trailing:  # a trailer, or a header of an unasked answer
            return
        self._header_bytes += len(name) + len(value) + 4
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._trailing:
            return
        self._head_done = True
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if body and not self._trailing:
            self._chunks.append(bytes(body))

    def on_message_complete(self) -> None:
        if self._trailing:
            return
        self.complete = True
        if not 100 <= self.status < 200:
            self._final = True

    # --
    @property
    def sock(self) -> socket.socket:
        return self._conn.sock

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (any letter case)."""
        if self._names is None:
            names: dict[str, str] = {}
            for key, value in self.headers:
                names.setdefault(key.lower(), value)
            self._names = names
        return self._names.get(name.lower(), default)

    def _receive(self) -> bool:
        """Feed what the upstream sent next; False at the end of the connection."""
        try:
            data = self._conn.sock.recv(READ_SIZE)
        except TimeoutError:
            raise
        except OSError as error:
            if not self._received and self._conn.used:
                raise _Stale(str(error)) from error
            raise UpstreamUnavailable(f"the connection broke: {error}") from error
        if not data:
            if not self._received and self._conn.used:
                raise _Stale("closed")
            return False
        self._received = True
        if not self._head_done:
            # What llhttp buffers of an unfinished head counts too (one endless header).
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as error:
            raise UpstreamUnavailable("the upstream switched protocols") from error
        except httptools.HttpParserError as error:
            raise UpstreamUnavailable(f"the upstream's answer is not valid HTTP/1.1: {error}") from error
        if (not self._head_done and self._head_bytes > MAX_HEAD_BYTES) or self._header_bytes > MAX_HEAD_BYTES:
            raise UpstreamUnavailable(f"the upstream's answer head is over {MAX_HEAD_BYTES // 1024} KiB")
        return True

    def read_head(self, deadline: float) -> None:
        """Read up to the final answer's head, by ``deadline`` (``time.monotonic``) however the
        upstream dribbles it; interim answers (100 Continue, 103 Early Hints) are passed over."""
        sock = self._conn.sock
        while not self._head_done or (100 <= self.status < 200 and self.status != 101):
            if self._head_done and self.complete:
                self._interim += 1
                if self._interim > MAX_INTERIM:
                    raise UpstreamUnavailable(f"the upstream sent more than {MAX_INTERIM} interim answers")
                self._head_bytes = self._header_bytes = 0
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the answer's head did not arrive in time")
            sock.settimeout(left)
            if not self._receive():
                raise UpstreamUnavailable("the upstream closed the connection before answering")
        if not 100 <= self.status <= 599:
            raise UpstreamUnavailable(f"the upstream answered with status {self.status:03d}, which HTTP does not have")
        # Framed by its length or chunked (the last coding); anything else runs to the close.
        coding = self.header("Transfer-Encoding")
        if coding:
            self._framed = coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
        else:
            self._framed = bool(self.header("Content-Length"))
        if not self._framed:
            self._keep_alive = False

    def read(self) -> bytes:
        """The body's next bytes as they arrive; ``b""`` once it is over. Raises
        UpstreamUnavailable when the upstream breaks it off."""
        while not self._chunks and not self.complete:
            if not self._receive():
                if self._framed:
                    raise UpstreamUnavailable("the upstream closed its answer before its end")
                self.complete = True  # an answer read until the connection closes
                self._keep_alive = False
        chunks, self._chunks = self._chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if it can be used again."""
        if self.complete and self._keep_alive and not self._chunks and not self._trailing:
            self._pool.put(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        self._conn.close()


class Pool:
    """Kept-alive connections to every upstream, shared by this process's threads."""

    def __init__(self, connections_per_origin: int = 256) -> None:
        self.limit = connections_per_origin
        self._idle: dict[Origin, list[Connection]] = {}
        self._lock = threading.Lock()
        self._tls = TLSContexts()

    def _take(self, origin: Origin) -> Connection | None:
        with self._lock:
            idle = self._idle.get(origin)
            conn = idle.pop() if idle else None
        return conn

    def put(self, conn: Connection) -> None:
        conn.used = True
        with self._lock:
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < self.limit:
                idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for conn in connections:
                conn.close()

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | IO[bytes] | None,
        length: int | None,
        timeout: float,
    ) -> Answer:
        """Send the request; the answer's head has arrived when this returns."""
        origin, target = split_url(url)
        if length is not None:
            headers["Content-Length"] = str(length)
        head = request_head(method, target, origin, headers)
        replayable = body is None or isinstance(body, bytes)
        deadline = time.monotonic() + timeout
        conn = self._take(origin)
        while conn is not None and conn.dropped():
            conn.close()
            conn = self._take(origin)
        if conn is None:
            conn = Connection(origin, min(timeout, 10.0), self._tls)
        try:
            return self._exchange(conn, method, head, body, length, timeout, deadline)
        except _Stale as stale:
            conn.close()
            # Sent again once, on a new connection, and only what may be sent twice: a request
            # none of which left, or an idempotent one.
            if not (replayable and (method in IDEMPOTENT or stale.args[0] == "unsent")):
                raise UpstreamUnavailable(f"the upstream closed a kept-alive connection: {stale}") from None
        except BaseException:
            conn.close()
            raise
        conn = Connection(origin, min(timeout, 10.0), self._tls)
        try:
            return self._exchange(conn, method, head, body, length, timeout, deadline)
        except BaseException:
            conn.close()
            raise

    def _exchange(
        self,
        conn: Connection,
        method: str,
        head: bytes,
        body: bytes | IO[bytes] | None,
        length: int | None,
        timeout: float,
        deadline: float,
    ) -> Answer:
        sock = conn.sock
        sock.settimeout(timeout)
        first = True
        try:
            if isinstance(body, bytes) and len(body) <= INLINE_BODY:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                first = False
                if isinstance(body, bytes):
                    sock.sendall(body)
                elif body is not None:
                    for chunk in _pieces(body, length):
                        sock.sendall(chunk)
        except TimeoutError as error:
            raise UpstreamTimeout(f"sending to {conn.origin.host_header} took longer than {timeout:g}s") from error
        except OSError as error:
            if conn.used:
                # Failing on the first write, nothing reached the upstream's application.
                raise _Stale("unsent" if first else "partly sent") from error
            raise UpstreamUnavailable(f"sending to {conn.origin.host_header} failed: {error}") from error
        answer = Answer(self, conn)
        try:
            answer.read_head(deadline)
        except TimeoutError as error:
            raise UpstreamTimeout(f"{conn.origin.host_header} did not answer within {timeout:g}s") from error
        # The body is read with the route's timeout for each wait (a stream may last long).
        sock.settimeout(timeout)
        if _QUICKACK is not None:
            acknowledge(sock)
        return answer


def _pieces(stream: IO[bytes], length: int | None) -> Iterator[bytes]:
    remaining = length
    while remaining is None or remaining > 0:
        chunk = stream.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
        if not chunk:
            if remaining:
                raise UpstreamUnavailable(f"the caller's body ended {remaining} bytes short")
            return
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


def acknowledge(sock: socket.socket) -> None:
    """Acknowledge at once what the upstream sent. An upstream that writes its answer's head and
    then each event as small writes without TCP_NODELAY (Python's http.server, say) holds each
    write until the one before is acknowledged, and the kernel delays that acknowledgement by up
    to 40 ms: a stream's first event would wait that long."""
    if _QUICKACK is None:
        return
    with contextlib.suppress(OSError, ValueError):  # a socket already closed has nothing to acknowledge
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
