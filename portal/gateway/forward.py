"""Forwarding a call to its route's upstream, and streaming the answer back as it arrives.

The upstream gets the method, the rest of the path below the route, the query and the body;
hop-by-hop headers, the caller's credentials (``X-API-Key``, ``Authorization``) and cookies (the
portal's session lives on the same host) are dropped, Tollgate's ``X-Tollgate-*`` and
``X-Request-Id`` added, and a route's credentials read from the environment at each call. No
redirect is followed: a 3xx goes back to the caller as it came.

The answer is passed through chunk by chunk while its usage is read on the way: an OpenAI- or
Anthropic-style ``usage`` in a JSON body or in a server-sent-event stream, or an
``X-Tollgate-Usage`` header (:mod:`tollgate_client.usage`, the reader the Python client uses).
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

from tollgate_client.usage import USAGE_HEADER, BodyUsage, StreamUsage, Usage, usage_from_header

from .client import Answer, Pool, UpstreamTimeout, UpstreamUnavailable, acknowledge
from .routes import Route

__all__ = ["Pool", "UpstreamTimeout", "UpstreamUnavailable"]

log = logging.getLogger("tollgate.gateway")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never passed on to the upstream (Tollgate sets its own ``Host`` and length).
NOT_FORWARDED = frozenset(
    {
        "x-api-key",
        "authorization",
        "cookie",
        "host",
        "content-length",
        "x-end-user",
        "expect",
        # Tollgate asks for the answer uncompressed, to read its usage.
        "accept-encoding",
        # Headers some servers take to change the method or the path, or the client's address.
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-cluster-client-ip",
    }
)
# Never passed back to the caller: Tollgate sets the rate-limit headers, and the usage header
# is meant for Tollgate.
NOT_RETURNED = frozenset({USAGE_HEADER.lower(), "set-cookie"})
# The most of a decompressed chunk read for usage at once.
MAX_USAGE_BODY = 4 * 2**20


class PathRefused(ValueError):
    """The path would escape the upstream's base; the message says how."""


_UNSAFE_IN_PATH = re.compile(r"[\x00-\x1f\x7f\\]")
_ENCODED_NAMES = {"%2f": "slash", "%5c": "backslash", "%2e": "dot", "%00": "NUL"}
_ENCODED = re.compile("|".join(_ENCODED_NAMES), re.IGNORECASE)


def upstream_url(route: Route, path: str, raw_uri: str, query: str) -> str:
    """The upstream URL of a call to ``path`` (decoded) under ``route``.

    ``raw_uri`` is the request target as it was sent (encoded): an encoded slash, backslash,
    dot or NUL, a ``.``/``..`` segment, an empty segment or a scheme is refused.
    """
    raw_path = raw_uri.split("?", 1)[0]
    if not raw_path.startswith("/") or "://" in raw_path:
        raise PathRefused("An absolute URL is not a path under this route")
    encoded = _ENCODED.search(raw_path)
    if encoded:
        raise PathRefused(f"An encoded {_ENCODED_NAMES[encoded.group().lower()]} is not allowed in a gateway path")
    rest = path[len(route.path) :]
    if _UNSAFE_IN_PATH.search(rest):
        raise PathRefused("The path holds a backslash or a control character")
    if ";" in rest:
        # Some servers read "..;" as ".." and drop ";params": it would escape the base.
        raise PathRefused("A ';' is not allowed in a gateway path")
    segments = rest.split("/")[1:]
    if any(segment in ("", ".", "..") for segment in segments) and rest not in ("", "/"):
        raise PathRefused("The path may not hold '.' or '..' segments or empty ones ('//')")
    url = route.upstream_url + quote(rest, safe="/:@!$&'()*+,;=-._~")
    if query:
        url += "?" + query
    return url


# Names Tollgate sets itself or drops, in any spelling: a caller's own never goes along.
_NOT_PASSED_ON = HOP_BY_HOP | NOT_FORWARDED | {"x-request-id", "x-forwarded-proto", "x-forwarded-host", "forwarded"}
_NOT_PASSED_BACK = HOP_BY_HOP | NOT_RETURNED | {"retry-after"}


def environ_headers(environ: dict) -> Iterator[tuple[str, str]]:
    """A WSGI request's headers, as the caller named them (in Werkzeug's spelling)."""
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            yield key[5:].replace("_", "-").title(), value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            yield key.replace("_", "-").title(), value


def upstream_headers(
    route: Route,
    incoming: Iterable[tuple[str, str]],
    *,
    tenant: str,
    key_id: int,
    end_user: str,
    request_id: str,
    client_address: str | None,
    scheme: str,
    host: str,
) -> dict[str, str]:
    """The headers the upstream gets; raises KeyError naming a route's unset variable."""
    headers: dict[str, str] = {}
    route_named = {name.lower() for name, _ in route.upstream_headers} if route.upstream_headers else ()
    forwarded_for = ""
    connection = ""
    for name, value in incoming:
        lower = name.lower()
        if lower in _NOT_PASSED_ON or lower.startswith(("x-tollgate-", "x-forwarded-")) or lower in route_named:
            if lower == "x-forwarded-for":
                forwarded_for = value
            elif lower == "connection":
                connection = value
            continue
        headers[name] = value
    if connection:  # and the headers it names, which are this hop's only
        named = {token.strip().lower() for token in connection.split(",")}
        headers = {name: value for name, value in headers.items() if name.lower() not in named}
    headers["X-Tollgate-Tenant"] = tenant
    headers["X-Tollgate-Key-Id"] = str(key_id)
    if end_user:
        headers["X-Tollgate-End-User"] = end_user
    headers["X-Request-Id"] = request_id
    if client_address:
        headers["X-Forwarded-For"] = f"{forwarded_for}, {client_address}" if forwarded_for else client_address
    headers["Accept-Encoding"] = "identity"
    headers["X-Forwarded-Proto"] = scheme
    headers["X-Forwarded-Host"] = host
    for name, variable in route.upstream_headers:
        headers[name] = os.environ[variable]
    return headers


def returned_headers(upstream: Answer) -> list[tuple[str, str]]:
    """The upstream's response headers the caller gets."""
    connection = upstream.header("Connection")
    named = {token.strip().lower() for token in connection.split(",")} if connection else ()
    kept = []
    for name, value in upstream.headers:
        lower = name.lower()
        if lower in _NOT_PASSED_BACK or lower.startswith("x-ratelimit-") or lower in named:
            continue
        kept.append((name, value))
    return kept


@dataclass
class Relayed:
    """What a relayed answer came to: the status the call is metered with, and why."""

    status: int
    usage: Usage | None
    error: str = ""
    bytes_sent: int = 0


class _UsageReader:
    """What the answer says it used: its usage header, or its body (an event stream or JSON),
    read from a decompressed copy when the upstream compressed it anyway."""

    def __init__(self, upstream: Answer) -> None:
        self.header_usage = usage_from_header(upstream.header(USAGE_HEADER) or None)
        content_type = upstream.header("Content-Type").lower()
        self.body: StreamUsage | BodyUsage | None = None
        if self.header_usage is None:
            if content_type.startswith("text/event-stream"):
                self.body = StreamUsage()
            elif "json" in content_type:
                self.body = BodyUsage()
        encoding = upstream.header("Content-Encoding", "identity").strip().lower()
        self.inflate = None
        if self.body is not None and encoding in ("gzip", "x-gzip", "deflate"):
            # gzip or zlib, told apart by the header (wbits 32 + 15).
            self.inflate = zlib.decompressobj(47)
        elif self.body is not None and encoding not in ("", "identity"):
            log.warning("gateway: an answer in %s encoding is passed on without reading its usage", encoding)
            self.body = None

    def feed(self, chunk: bytes) -> None:
        if self.body is None:
            return
        if self.inflate is not None:
            try:
                chunk = self.inflate.decompress(chunk, MAX_USAGE_BODY)
            except zlib.error:
                log.warning("gateway: a compressed answer could not be read for its usage")
                self.body = None
                return
        self.body.feed(chunk)

    @property
    def usage(self) -> Usage | None:
        return self.header_usage if self.body is None else self.body.usage or self.header_usage


def relay(upstream: Answer, finish: Callable[[Relayed], None]) -> Iterator[bytes]:
    """The answer's body as it arrives; ``finish`` gets the outcome once it is over (read to
    the end, broken off by the upstream, or closed by the caller). The connection goes back to
    the pool only when the answer was read whole; otherwise it is closed."""
    outcome = Relayed(upstream.status, None)
    whole = False
    try:
        reader = _UsageReader(upstream)
        streaming = isinstance(reader.body, StreamUsage) or "chunked" in upstream.header("Transfer-Encoding")
        while True:
            try:
                if streaming:
                    acknowledge(upstream.sock)
                chunk = upstream.read()
            except (UpstreamUnavailable, OSError) as error:
                outcome.status = 502
                outcome.error = f"the upstream broke off its answer after {outcome.bytes_sent} bytes: {error}"
                log.warning("gateway: %s", outcome.error)
                raise UpstreamUnavailable(outcome.error) from error
            if not chunk:
                break
            reader.feed(chunk)
            outcome.bytes_sent += len(chunk)
            yield chunk
        whole = True
        outcome.usage = reader.usage
    except GeneratorExit:
        outcome.error = outcome.error or f"the caller closed the connection after {outcome.bytes_sent} bytes"
        raise
    finally:
        if whole:
            upstream.release()
        else:
            upstream.close()
        finish(outcome)


def without_body(upstream: Answer) -> Usage | None:
    """What an answer with no body to pass on (HEAD, 1xx, 204, 304) says it used."""
    upstream.close()
    return usage_from_header(upstream.header(USAGE_HEADER) or None)


def whole_body(upstream: Answer) -> tuple[bytes, Usage | None] | None:
    """The body of an answer that came whole with its head (a small one) and its usage, passed
    on in one piece; ``None`` while more of it is to come (then it is relayed)."""
    if not upstream.complete:
        return None
    body = upstream.read()
    reader = _UsageReader(upstream)
    reader.feed(body)
    upstream.release()
    return body, reader.usage
