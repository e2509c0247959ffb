"""The one interface every channel's sender has, and what an attempt came to.

A sender takes a channel and a delivery and makes one attempt; it never raises for what a
receiver or the network did, it says so in an :class:`Outcome`. Retrying, backoff and
disabling channels are the deliver job's (:mod:`portal.notify.deliver`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import urlsplit

import requests
from requests.exceptions import InvalidSchema, InvalidURL, MissingSchema, RequestException
from requests.models import PreparedRequest

from ..models import NotificationChannel, NotificationDelivery
from .addresses import AddressRefused, InvalidIPAddress, check_address, refusal, tenant_session

# The most of an answer's body kept (for last_error); the rest is never read.
BODY_LIMIT = 4096
# Retry-After is honoured up to a day.
MAX_RETRY_AFTER = 86400.0


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None
    status_code: int | None = None
    # Whether another attempt may succeed (5xx, 429, timeouts); False: a final failure.
    retry: bool = False
    # Seconds the receiver asked us to wait (Retry-After).
    retry_after: float | None = None
    # Set when the receiver says the destination is gone: the channel is turned off.
    disable_reason: str | None = None

    @classmethod
    def sent(cls, status_code: int | None = None) -> Outcome:
        return cls(True, status_code=status_code)

    @classmethod
    def retry_later(cls, error: str, status_code: int | None = None, retry_after: float | None = None) -> Outcome:
        return cls(False, error, status_code, retry=True, retry_after=retry_after)

    @classmethod
    def final(cls, error: str, status_code: int | None = None, disable_reason: str | None = None) -> Outcome:
        return cls(False, error, status_code, retry=False, disable_reason=disable_reason)


class Sender(Protocol):
    kind: str

    def send(self, channel: NotificationChannel, delivery: NotificationDelivery) -> Outcome: ...


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - (time.time() if now is None else now)), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: str
    retry_after: float | None
    location: str | None


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer | Outcome:
    """POST ``body`` to a tenant URL through the hardened session. Returns the receiver's answer,
    or the Outcome of an attempt that got none (refused address, timeout, connection error)."""
    try:
        check_address(url, resolve=False)
    except AddressRefused as refused:
        return Outcome.final(f"not sent: {refused}")
    try:
        with tenant_session() as session:
            response = session.post(url, data=body, headers=headers, stream=True)
            try:
                raw = response.raw.read(BODY_LIMIT, decode_content=True) or b""
            finally:
                response.close()
    except InvalidIPAddress as refused:
        host = urlsplit(url).hostname or url
        return Outcome.final(f"not sent: {refusal(host, refused.args[0])}")
    except requests.Timeout as timeout:
        return Outcome.retry_later(f"timed out: {timeout.__class__.__name__} ({_brief(timeout, url)})")
    except requests.ConnectionError as error:
        return Outcome.retry_later(f"could not connect: {_brief(error, url)}")
    except (InvalidURL, InvalidSchema, MissingSchema) as bad:
        return Outcome.final(f"not sent: the URL is unusable: {_brief(bad, url)}")
    except requests.RequestException as error:
        # A garbled answer (bad header, broken chunking, too many headers): worth another try later.
        return Outcome.retry_later(f"request failed: {error.__class__.__name__}: {_brief(error, url)}")
    return Answer(
        response.status_code,
        raw.decode("utf-8", "replace").strip(),
        retry_after_seconds(response.headers.get("Retry-After")),
        response.headers.get("Location"),
    )


def masked_url(url: str) -> str:
    """A hook URL with only its scheme, host and last four characters: its path and query may be
    a credential (a Slack hook's path is one; a webhook's query often holds a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}/…{url[-4:]}"


_REQUEST_TARGET = re.compile(r"url: /\S*")


def _brief(error: Exception, url: str = "", limit: int = 300) -> str:
    """The error in a line, without the URL's path and query: the delivery log is read by
    members, and a hook's path (Slack) or query (a webhook's token) is a credential."""
    text = str(error) or error.__class__.__name__
    if url:
        # The URL as given and as the HTTP client re-encoded it for the request line.
        prepared = PreparedRequest()
        try:
            prepared.prepare_url(url, None)
            forms = dict.fromkeys((url, prepared.url or url))
        except RequestException:
            forms = dict.fromkeys((url,))
        for form in forms:
            parts = urlsplit(form)
            for secret in (form, parts.path + ("?" + parts.query if parts.query else ""), parts.query, parts.path):
                if len(secret) > 1:
                    text = text.replace(secret, "/…" if secret != form else masked_url(url))
        # urllib3 names the request target after "url:"; whatever form it took, it goes.
        text = _REQUEST_TARGET.sub("url: /…", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answered(service: str, answer: Answer) -> str:
    """``"Slack answered 404 channel_not_found"``: what an unsuccessful answer said."""
    said = " ".join(answer.body.split())[:300]
    return f"{service} answered {answer.status_code}" + (f" {said}" if said else "")


def http_outcome(service: str, answer: Answer, gone: frozenset[int]) -> Outcome:
    """The outcome of an HTTP answer: 2xx sent; 408, 429 and 5xx retried (after Retry-After if
    longer); a redirect and other 4xx final; a status in ``gone`` final and the channel disabled."""
    code = answer.status_code
    if 200 <= code < 300:
        return Outcome.sent(code)
    text = answered(service, answer)
    if code in gone:
        return Outcome.final(text, code, disable_reason=text)
    if code in (408, 429) or code >= 500:
        return Outcome.retry_later(text, code, answer.retry_after)
    if 300 <= code < 400:
        where = f" to {answer.location}" if answer.location else ""
        return Outcome.final(f"{text}: a redirect{where}, which Tollgate does not follow; update the URL", code)
    return Outcome.final(text, code)
