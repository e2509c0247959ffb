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

import contextlib
import http.client
import logging
import os
import socket
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO
from urllib.parse import quote

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError

from tollgate_client.usage import USAGE_HEADER, BodyUsage, StreamUsage, Usage, usage_from_header

from .routes import Route

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
READ_SIZE = 64 * 1024
# The most of a decompressed chunk read for usage at once.
MAX_USAGE_BODY = 4 * 2**20


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def acknowledge_now(upstream: urllib3.BaseHTTPResponse) -> None:
    """Acknowledge at once what the upstream sent. An upstream that writes its answer's head and
    then each event as small writes without TCP_NODELAY (Python's http.server, say) holds each
    write until the one before is acknowledged, and the kernel delays that acknowledgement by up
    to 40 ms: a stream's first event would wait that long."""
    if _QUICKACK is None:
        return
    sock = getattr(upstream.connection, "sock", None) if upstream.connection is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):  # a socket already closed has nothing to acknowledge
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class PathRefused(ValueError):
    """The path would escape the upstream's base; the message says how."""


class UpstreamUnavailable(Exception):
    """The upstream refused the connection, reset it or broke the protocol."""


class UpstreamTimeout(Exception):
    """The upstream did not answer within the route's timeout."""


def upstream_url(route: Route, path: str, raw_uri: str, query: str) -> str:
    """The upstream URL of a call to ``path`` (decoded) under ``route``.

    ``raw_uri`` is the request target as it was sent (encoded): an encoded slash, backslash,
    dot or NUL, a ``.``/``..`` segment, an empty segment or a scheme is refused.
    """
    raw_path = raw_uri.split("?", 1)[0]
    if raw_path.lower().startswith(("http:", "https:")) or "://" in raw_path:
        raise PathRefused("An absolute URL is not a path under this route")
    lowered = raw_path.lower()
    for encoded, name in (("%2f", "slash"), ("%5c", "backslash"), ("%2e", "dot"), ("%00", "NUL")):
        if encoded in lowered:
            raise PathRefused(f"An encoded {name} is not allowed in a gateway path")
    rest = path[len(route.path) :]
    if "\\" in rest or any(ord(ch) < 32 or ord(ch) == 127 for ch in rest):
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
    incoming = list(incoming)
    connection_named = {
        token.strip().lower() for name, value in incoming if name.lower() == "connection" for token in value.split(",")
    }
    headers: dict[str, str] = {}
    # Names Tollgate sets itself, in any spelling: a caller's own never goes along beside them.
    ours = {"x-request-id", "x-forwarded-proto", "x-forwarded-host"} | {
        name.lower() for name, _ in route.upstream_headers
    }
    forwarded_for = ""
    for name, value in incoming:
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in NOT_FORWARDED
            or lower in connection_named
            or lower in ours
            or lower.startswith("x-tollgate-")
        ):
            continue
        if lower == "x-forwarded-for":
            forwarded_for = value
            continue
        if lower.startswith("x-forwarded-") or lower == "forwarded":
            continue
        headers[name] = value
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


def returned_headers(upstream: urllib3.BaseHTTPResponse) -> list[tuple[str, str]]:
    """The upstream's response headers the caller gets."""
    connection_named = {token.strip().lower() for token in upstream.headers.get("Connection", "").split(",")}
    kept = []
    for name, value in upstream.headers.iteritems():
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in connection_named
            or lower in NOT_RETURNED
            or lower.startswith("x-ratelimit-")
            or lower == "retry-after"
        ):
            continue
        kept.append((name, value))
    return kept


class Upstreams:
    """The connection pools to every upstream, shared by this process's threads."""

    def __init__(self, connections_per_upstream: int = 256) -> None:
        self.pools = urllib3.PoolManager(num_pools=64, maxsize=connections_per_upstream, block=False, retries=False)

    def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | IO[bytes] | None,
        length: int | None,
        timeout: float,
    ) -> urllib3.BaseHTTPResponse:
        """Send the request; the answer's headers have arrived when this returns."""
        if length is not None:
            headers["Content-Length"] = str(length)
        try:
            answer = self.pools.urlopen(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            )
            acknowledge_now(answer)
            return answer
        except (ValueError, UnicodeError) as error:  # a header a route's variable made unsendable
            raise UpstreamUnavailable(f"a header could not be sent: {error}") from error
        except NewConnectionError as error:  # a ConnectTimeoutError to urllib3, but refused here
            raise UpstreamUnavailable(str(error)) from error
        except TimeoutError as error:
            raise UpstreamTimeout(str(error)) from error
        except (HTTPError, OSError) as error:
            raise UpstreamUnavailable(str(error)) from error


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

    def __init__(self, upstream: urllib3.BaseHTTPResponse) -> None:
        self.header_usage = usage_from_header(upstream.headers.get(USAGE_HEADER))
        content_type = upstream.headers.get("Content-Type", "").lower()
        self.body: StreamUsage | BodyUsage | None = None
        if self.header_usage is None:
            if content_type.startswith("text/event-stream"):
                self.body = StreamUsage()
            elif "json" in content_type:
                self.body = BodyUsage()
        encoding = upstream.headers.get("Content-Encoding", "identity").strip().lower()
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


def relay(upstream: urllib3.BaseHTTPResponse, finish: Callable[[Relayed], None]) -> Iterator[bytes]:
    """The answer's body as it arrives; ``finish`` gets the outcome once it is over (read to
    the end, broken off by the upstream, or closed by the caller). The connection goes back to
    the pool only when the answer was read whole; otherwise it is closed."""
    outcome = Relayed(upstream.status, None)
    whole = False
    try:
        reader = _UsageReader(upstream)
        streaming = isinstance(reader.body, StreamUsage) or "chunked" in upstream.headers.get("Transfer-Encoding", "")
        while True:
            try:
                if streaming:
                    acknowledge_now(upstream)
                chunk = upstream.read1(READ_SIZE, decode_content=False)
            except (HTTPError, OSError, http.client.HTTPException) as error:
                outcome.status = 502
                outcome.error = f"the upstream broke off its answer after {outcome.bytes_sent} bytes: {error}"
                log.warning("gateway: %s", outcome.error)
                raise UpstreamUnavailable(outcome.error) from error
            if not chunk:
                break
            reader.feed(chunk)
            outcome.bytes_sent += len(chunk)
            yield chunk
        if upstream.length_remaining:
            outcome.status = 502
            outcome.error = f"the upstream closed its answer {upstream.length_remaining} bytes short"
            raise UpstreamUnavailable(outcome.error)
        whole = True
        outcome.usage = reader.usage
    except GeneratorExit:
        outcome.error = outcome.error or f"the caller closed the connection after {outcome.bytes_sent} bytes"
        raise
    finally:
        if whole:
            upstream.release_conn()
        else:
            upstream.close()
        finish(outcome)


def finish_without_body(upstream: urllib3.BaseHTTPResponse, finish: Callable[[Relayed], None]) -> None:
    """An answer with no body to pass on (HEAD, 1xx, 204, 304): metered at once."""
    outcome = Relayed(upstream.status, usage_from_header(upstream.headers.get(USAGE_HEADER)))
    upstream.close()
    finish(outcome)
