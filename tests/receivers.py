"""Real receivers on 127.0.0.1 for the notification tests: an SMTP sink (aiosmtpd), a webhook
endpoint that checks Standard Webhooks signatures and drops repeated ids, a Slack-shaped
incoming webhook that answers as told, and a server that never answers."""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- SMTP -----------------------------------------------------------------------------------------
class SmtpSink:
    """An SMTP server that keeps every message it accepts; ``refuse(n, reply)`` makes it answer
    the next n messages' DATA with ``reply`` instead (e.g. ``451 4.3.0 Try again later``)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        # Message-IDs of every message offered, accepted or not.
        self.offered: list[str] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._refusals: deque[str] = deque()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def refuse(self, times: int, reply: str = "451 4.3.0 Try again later") -> None:
        self._refusals.extend([reply] * times)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.offered.append(message["Message-ID"])
        if self._refusals:
            return self._refusals.popleft()
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


# -- HTTP -----------------------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


@dataclass
class Answer:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class HttpReceiver:
    """An HTTP server in a thread that records every POST and answers from a script (then
    ``default``)."""

    default = Answer(200, "ok")

    def __init__(self, *answers: Answer) -> None:
        self.received: list[Received] = []
        self.script: deque[Answer] = deque(answers)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with receiver._lock:
                    receiver.received.append(request)
                    answer = receiver.answer(request)
                body = answer.body.encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, request: Received) -> Answer:
        return self.script.popleft() if self.script else self.default

    def then(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebhookReceiver(HttpReceiver):
    """Verifies each request's Standard Webhooks signature (401 if it fails) and processes each
    webhook-id once: a repeat is acknowledged (200) and dropped, as the specification advises."""

    def __init__(self, secret: str, *answers: Answer) -> None:
        super().__init__(*answers)
        self.secret = secret
        self.accepted: list[dict] = []
        self.seen: set[str] = set()
        self.repeats: list[str] = []
        self.rejected: list[str] = []

    @property
    def ids(self) -> list[str]:
        return [r.headers.get("webhook-id", "") for r in self.received]

    def answer(self, request: Received) -> Answer:
        try:
            payload = Webhook(self.secret).verify(request.body, request.headers)
        except WebhookVerificationError as error:
            self.rejected.append(str(error))
            return Answer(401, f"signature refused: {error}")
        if self.script:
            return self.script.popleft()
        message_id = request.headers["webhook-id"]
        if message_id in self.seen:
            self.repeats.append(message_id)
            return Answer(200, "already processed")
        self.seen.add(message_id)
        self.accepted.append(payload)
        return Answer(204)


class SlackReceiver(HttpReceiver):
    """Answers like a Slack incoming webhook, as told: ``ok``, ``rate_limited(seconds)``,
    ``error`` (500), ``channel_not_found`` (404), ``archived`` (410), ``invalid_payload`` (400)."""

    OK = Answer(200, "ok")
    ERROR = Answer(500, "internal_error")
    CHANNEL_NOT_FOUND = Answer(404, "channel_not_found")
    ARCHIVED = Answer(410, "channel_is_archived")
    INVALID_PAYLOAD = Answer(400, "invalid_payload")

    @staticmethod
    def rate_limited(seconds: int) -> Answer:
        return Answer(429, "rate_limited", {"Retry-After": str(seconds)})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/XXXXXXXX"

    @property
    def messages(self) -> list[dict]:
        return [r.json for r in self.received]


class SilentReceiver:
    """Accepts connections and never answers (until stopped): a receiver that times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def __enter__(self) -> SilentReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        for conn in self.connections:
            conn.close()
        self.sock.close()
