"""Real upstream HTTP servers on 127.0.0.1 for the gateway tests.

``Upstream`` is a threaded HTTP/1.1 server (keep-alive, chunked responses, 250+ concurrent
connections) that plays an operator's API. Every request is recorded in ``up.requests`` as a
``Seen``; request bodies are read by ``Content-Length`` or decoded from chunked
``Transfer-Encoding``.

Dispatch: the request path (without its query) is split into segments and the first segment that
names a behaviour decides; segments before it are a base and ignored (``/echo/x``,
``/base/echo/x`` and ``/v1/echo/x`` are all echo), segments after it are its arguments. Any
method is accepted for every behaviour.

- ``echo[/...]``: 200 JSON ``{"method", "path", "query", "headers", "body"}`` of the request
  (``path`` is the whole path as received, without the query).
- ``slow?seconds=2``: sleeps that long (float), then 200 ``{"ok": true}``.
- ``stream?events=5&interval=0.05&usage=openai|anthropic|none``: server-sent events, each its
  own chunk, ``interval`` seconds apart, each chunk's send time in ``up.sent``.
  ``openai`` / ``none``: ``data: {"delta": "word N"}`` events, for ``openai`` then a last event
  with ``model`` and ``usage`` (11 prompt, 7 completion tokens), then ``data: [DONE]``.
  ``anthropic``: ``message_start`` (11 input tokens), ``content_block_delta`` events,
  ``message_delta`` (7 output tokens), ``message_stop``.
- ``chunked?parts=3``: text/plain ``part 0\\n``, ``part 1\\n``... each its own chunk, 0.05 s apart.
- ``status/NNN``: status NNN (200-599), JSON ``{"error": "upstream says NNN"}``,
  header ``X-Upstream-Error: yes``.
- ``close-mid-body``: 200 with ``Content-Length: 1000``, 10 bytes, then the connection closes.
- ``usage/openai``, ``usage/anthropic``: a chat completion / message body with that vendor's usage.
- ``usage/header``: 200 ``ok`` with an ``X-Tollgate-Usage`` JSON header.
- ``usage/gzip``: the OpenAI body gzip-compressed (``Content-Encoding: gzip``) whatever was asked;
  ``usage/large?bytes=N``: an N-byte JSON answer with its usage at the end; ``usage/nested``: a
  usage nested 100,000 deep (body and header), ``usage/nested-stream`` the same in an event;
  ``usage/bad-model``: a model name with a NUL and a lone surrogate.
- ``redirect``: 302 to ``/base/echo/redirected``.
- ``big?bytes=N``: N bytes of application/octet-stream, written in 64 KiB pieces.
- anything else: 404 ``{"error": "no such upstream path"}``.

Also ``refusing_url()`` (nothing listens there), ``ResettingUpstream`` (reads the request head,
then resets the connection) and the fixtures ``upstream`` and ``resetting_upstream``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

BEHAVIOURS = (
    "echo",
    "slow",
    "stream",
    "chunked",
    "status",
    "close-mid-body",
    "usage",
    "redirect",
    "big",
)

OPENAI_USAGE_BODY = {
    "id": "chatcmpl-1",
    "model": "gpt-4o-mini",
    "choices": [{"message": {"role": "assistant", "content": "hi"}}],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 200},
    },
}
ANTHROPIC_USAGE_BODY = {
    "id": "msg_1",
    "type": "message",
    "model": "claude-3-5-haiku-20241022",
    "content": [{"type": "text", "text": "hi"}],
    "usage": {
        "input_tokens": 1000,
        "output_tokens": 250,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
    },
}
HEADER_USAGE = {"model": "chatbot-mini", "tokens_in": 40, "tokens_out": 60, "cached_tokens": 0, "units": 2}
STREAM_OPENAI_USAGE = {
    "model": "gpt-4o-mini",
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}
STREAM_ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
BIG_PIECE = 64 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refusing_url() -> str:
    """An ``http://127.0.0.1:PORT`` where nothing listens, so connecting is refused."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Seen:
    """One request an upstream received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """The header's value, looked up without regard to case; None if absent."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def json(self):
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 60
    upstream: Upstream  # set on the per-server subclass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        pass

    def setup(self) -> None:
        super().setup()
        self.upstream._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.upstream._untrack(self.connection)

    # -- reading ----------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self.rfile.readline(65537)
            if not size_line:
                raise ConnectionError("request body ended inside a chunk size line")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            self.rfile.readline(65537)  # the CRLF after the chunk
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts)

    # -- writing ----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", content_type: str | None = None, **headers: str) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        no_body = status in (204, 304)
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not no_body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: object, **headers: str) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", **headers)

    def _start_chunked(self, content_type: str, **headers: str) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        frame = f"{len(data):X}\r\n".encode() + data + b"\r\n" if self._chunked else data
        self.wfile.write(frame)
        self.wfile.flush()

    def _end_chunked(self) -> None:
        if self._chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # -- dispatch ---------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        target = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send_json(400, {"error": "malformed request body framing"}, Connection="close")
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        seen = Seen(self.command, target.path, target.query, headers, body)
        self.upstream._record(seen)

        segments = [s for s in target.path.split("/") if s]
        index = next((i for i, s in enumerate(segments) if s in BEHAVIOURS), None)
        if index is None:
            self._send_json(404, {"error": "no such upstream path"})
            return
        name, args = segments[index], segments[index + 1 :]
        query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        handler: Callable[[Seen, list[str], dict[str, str]], None] = getattr(self, "_do_" + name.replace("-", "_"))
        try:
            handler(seen, args, query)
        except (BrokenPipeError, ConnectionResetError):
            self.upstream._aborted(seen.path)
            self.close_connection = True
        except ValueError as exc:
            self._send_json(400, {"error": f"bad upstream arguments: {exc}"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch  # noqa: N815

    # -- behaviours -------------------------------------------------------------------------------
    def _do_echo(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        self._send_json(
            200,
            {
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "headers": seen.headers,
                "body": seen.body.decode("utf-8", "replace"),
            },
        )

    def _do_slow(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        time.sleep(float(query.get("seconds", "2")))
        self._send_json(200, {"ok": True})

    def _do_stream(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        events = int(query.get("events", "5"))
        interval = float(query.get("interval", "0.05"))
        usage = query.get("usage", "openai")
        if usage not in ("openai", "anthropic", "none"):
            raise ValueError("usage must be openai, anthropic or none")

        def sse(data: object, event: str | None = None) -> bytes:
            text = data if isinstance(data, str) else json.dumps(data)
            return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()

        chunks: list[bytes] = []
        if usage == "anthropic":
            chunks.append(
                sse(
                    {
                        "type": "message_start",
                        "message": {"model": STREAM_ANTHROPIC_MODEL, "usage": {"input_tokens": 11, "output_tokens": 1}},
                    },
                    "message_start",
                )
            )
            for n in range(events):
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"word {n}"},
                }
                chunks.append(sse(delta, "content_block_delta"))
            chunks.append(sse({"type": "message_delta", "usage": {"output_tokens": 7}}, "message_delta"))
            chunks.append(sse({"type": "message_stop"}, "message_stop"))
        else:
            chunks.extend(sse({"delta": f"word {n}"}) for n in range(events))
            if usage == "openai":
                chunks.append(sse(STREAM_OPENAI_USAGE))
            chunks.append(sse("[DONE]"))

        self._start_chunked("text/event-stream", Cache_Control="no-cache")
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(interval)
            self._chunk(chunk)
            self.upstream._sent(chunk)
        self._end_chunked()

    def _do_chunked(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        parts = int(query.get("parts", "3"))
        self._start_chunked("text/plain; charset=utf-8")
        for n in range(parts):
            if n:
                time.sleep(0.05)
            self._chunk(f"part {n}\n".encode())
        self._end_chunked()

    def _do_status(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        code = int(args[0]) if args else 0
        if not 200 <= code <= 599:
            raise ValueError("status must be 200-599")
        self._send_json(code, {"error": f"upstream says {code}"}, X_Upstream_Error="yes")

    def _do_close_mid_body(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _do_usage(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        kind = args[0] if args else ""
        if kind == "openai":
            self._send_json(200, OPENAI_USAGE_BODY)
        elif kind == "anthropic":
            self._send_json(200, ANTHROPIC_USAGE_BODY)
        elif kind == "header":
            self._send(200, b"ok", "text/plain", X_Tollgate_Usage=json.dumps(HEADER_USAGE))
        elif kind == "gzip":
            # Compressed whatever the request asked for, as some servers do.
            body = gzip.compress(json.dumps(OPENAI_USAGE_BODY).encode())
            self._send(200, body, "application/json", Content_Encoding="gzip")
        elif kind == "large":
            # An embeddings-style answer of query["bytes"] bytes, its usage at the end.
            size = int(query.get("bytes", str(6 * 2**20)))
            data = [0.125] * (size // 7)
            self._send_json(200, {"object": "list", "data": data, **OPENAI_USAGE_BODY})
        elif kind == "nested":
            deep = "[" * 100_000 + "]" * 100_000
            # Nested well past the JSON reader's recursion limit, and still a header line http.client reads.
            header = "[" * 10_000 + "]" * 10_000
            self._send(200, f'{{"usage": {deep}}}'.encode(), "application/json", X_Tollgate_Usage=header)
        elif kind == "nested-stream":
            body = b'data: {"delta": "a"}\n\n' + b'data: {"usage": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n\n"
            self._send(200, body, "text/event-stream")
        elif kind == "bad-model":
            self._send_json(200, {"model": "gpt\u0000x\ud800", "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
        else:
            self._send_json(404, {"error": "no such upstream path"})

    def _do_redirect(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        self._send(302, b"", None, Location="/base/echo/redirected")

    def _do_big(self, seen: Seen, args: list[str], query: dict[str, str]) -> None:
        size = int(query.get("bytes", str(1024 * 1024)))
        if size < 0:
            raise ValueError("bytes must be >= 0")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        piece = b"\xab" * BIG_PIECE
        left = size
        while left > 0:
            self.wfile.write(piece[: min(left, BIG_PIECE)])
            left -= BIG_PIECE
        self.wfile.flush()


class Upstream:
    """A real HTTP/1.1 upstream on 127.0.0.1 (see the module docstring); a context manager."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.sent: list[tuple[float, bytes]] = []
        # Paths whose response the peer stopped reading (broken pipe or reset while writing).
        self.aborted: list[str] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        handler = type("UpstreamHandler", (_Handler,), {"upstream": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _sent(self, chunk: bytes) -> None:
        stamp = time.perf_counter()
        with self._lock:
            self.sent.append((stamp, chunk))

    def _aborted(self, path: str) -> None:
        with self._lock:
            self.aborted.append(path)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def start(self) -> Upstream:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="upstream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ResettingUpstream:
    """Accepts connections, reads each request head, then resets the connection without answering."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Every request head received, in order.
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="resetting-upstream", daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._reset, args=(conn,), daemon=True).start()

    def _reset(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    break
                head += data
        except OSError:
            pass
        with self._lock:
            self.heads.append(head.split(b"\r\n\r\n", 1)[0])
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def __enter__(self) -> ResettingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A started ``Upstream``, stopped after the test."""
    with Upstream() as up:
        yield up


@pytest.fixture
def resetting_upstream() -> Iterator[ResettingUpstream]:
    """A started ``ResettingUpstream``, stopped after the test."""
    with ResettingUpstream() as up:
        yield up
