"""Gateway routes: declared by the operator, kept in the database, cached by every process.

A route's path takes itself and everything below it (``/api/chat`` takes ``/api/chat`` and
``/api/chat/stream``); of nested routes the longest wins. A path may not reach into Tollgate's
own (the JSON API, the portal's pages, ``/static``). Every change bumps the configuration
version, and each process looks at that version at most once a second when it matches a path,
so a new or removed route is seen everywhere within a second or so.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis import Redis
from sqlalchemy import func, select

from ..extensions import db
from ..kernel.changes import mark_access_changed
from ..kernel.redis_keys import CONFIG_VERSION
from ..models import GatewayRoute, Plan
from ..models.gateway import DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT_SECONDS
from ..models.usage import OWN_SERVICE

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# Tollgate's own paths besides its URL rules: the JSON API and the static files.
RESERVED_PREFIXES = ("/api/v1", "/static")
MAX_TIMEOUT_SECONDS = 600.0
MAX_BODY_LIMIT = 16 * 2**20
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Headers a route may not set on the upstream request: Tollgate sets or drops them.
FORBIDDEN_UPSTREAM_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "x-request-id", "x-api-key", "cookie"}
)


class RouteError(ValueError):
    """A route cannot be declared (or found) as asked; the message says why."""


@dataclass(frozen=True)
class Route:
    """What a process needs to know of a route to admit and forward a call."""

    path: str
    upstream_url: str
    methods: frozenset[str]
    category: str
    service: str
    timeout_seconds: float
    plans: frozenset[str]
    # (header, environment variable) pairs.
    upstream_headers: tuple[tuple[str, str], ...]
    max_body_bytes: int

    @classmethod
    def from_row(cls, row: GatewayRoute) -> Route:
        return cls(
            path=row.path,
            upstream_url=row.upstream_url,
            methods=frozenset(filter(None, row.methods.split(","))),
            category=row.category,
            service=row.service,
            timeout_seconds=row.timeout_seconds,
            plans=frozenset(filter(None, row.plans.split(","))),
            upstream_headers=tuple(sorted((row.upstream_headers or {}).items())),
            max_body_bytes=row.max_body_bytes,
        )

    def takes(self, path: str) -> bool:
        """Whether a call to ``path`` is this route's, letter case aside (an upstream may not
        care for case: /api/chat/Premium must not slip past /api/chat/premium's plans)."""
        path, mine = path.lower(), self.path.lower()
        return path == mine or path.startswith(mine + "/")

    def describe(self) -> str:
        """One line of ``gateway list``: the path first."""
        plans = ",".join(sorted(self.plans)) or "all plans"
        headers = " ".join(f"{name}=${var}" for name, var in self.upstream_headers)
        parts = [
            self.path,
            self.upstream_url,
            ",".join(sorted(self.methods)),
            f"category={self.category or '-'}",
            f"service={self.service}",
            f"timeout={self.timeout_seconds:g}s",
            f"plans={plans}",
            f"max-body={self.max_body_bytes // 2**20}MiB"
            if self.max_body_bytes % 2**20 == 0
            else f"max-body={self.max_body_bytes}B",
        ]
        if headers:
            parts.append(f"headers: {headers}")
        return "  ".join(parts)


# -- declaring routes --------------------------------------------------------------------------


def normalized_path(path: str) -> str:
    path = path.strip()
    if not path.startswith("/"):
        raise RouteError(f"A route's path starts with '/': {path!r}")
    path = path.rstrip("/")
    if not path:
        raise RouteError("A route's path cannot be '/': it would take every page")
    if len(path) > 255:
        raise RouteError("A route's path may be at most 255 characters")
    for segment in path[1:].split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise RouteError(
                f"A route's path is segments of letters, digits and -._~!$&'()*+,;=:@ between single slashes: {path!r}"
            )
    return path


def _static_part(rule: str) -> str:
    return rule.split("<", 1)[0]


def collision(path: str, own_rules: Iterable[str]) -> str | None:
    """The Tollgate path ``path`` would reach into, or None."""

    def overlaps(own: str) -> bool:
        return own == path or own.startswith(path + "/") or path.startswith(own + "/")

    for prefix in RESERVED_PREFIXES:
        if overlaps(prefix):
            return prefix
    for rule in own_rules:
        static = _static_part(rule)
        if "<" in rule:
            if static.rstrip("/") and (path.startswith(static) or overlaps(static.rstrip("/"))):
                return rule
        elif rule != "/" and overlaps(rule.rstrip("/") or rule):
            return rule
    return None


def normalized_upstream(url: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RouteError(f"The upstream URL is malformed: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise RouteError(f"The upstream URL must be http:// or https://: {url!r}")
    if not parts.hostname:
        raise RouteError(f"The upstream URL has no host: {url!r}")
    if parts.username or parts.password:
        raise RouteError("The upstream URL may not carry credentials: name them with --upstream-header NAME=ENVVAR")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise RouteError("The upstream URL may not have a query or a fragment")
    if any(ch.isspace() or ord(ch) < 32 for ch in url) or "\\" in url:
        raise RouteError(f"The upstream URL is malformed: {url!r}")
    if port == 0:
        raise RouteError("The upstream URL's port must be 1 to 65535")
    if len(url) > 2048:
        raise RouteError("The upstream URL may be at most 2,048 characters")
    return url.rstrip("/")


def parse_upstream_headers(pairs: Iterable[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, variable = pair.partition("=")
        name, variable = name.strip(), variable.strip()
        if not sep or not _HEADER.fullmatch(name) or not _ENV_VAR.fullmatch(variable):
            raise RouteError(
                f"--upstream-header takes NAME=ENVVAR (a header name and an environment variable): {pair!r}"
            )
        if name.lower() in FORBIDDEN_UPSTREAM_HEADERS or name.lower().startswith("x-tollgate-"):
            raise RouteError(f"--upstream-header cannot set {name}: Tollgate sets or drops it")
        headers[name] = variable
    return headers


def _parse_methods(methods: str) -> str:
    names = [m.strip().upper() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        raise RouteError(f"--methods takes a comma-separated list of {', '.join(METHODS)}; got {methods!r}")
    return ",".join(dict.fromkeys(names))


def _parse_plans(plans: str) -> str:
    codes = [p.strip() for p in plans.split(",") if p.strip()]
    known = set(db.session.scalars(select(Plan.code)))
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise RouteError(f"Unknown plan {', '.join(unknown)}; plans are {', '.join(sorted(known))}")
    return ",".join(dict.fromkeys(codes))


def add_route(
    path: str,
    upstream_url: str,
    own_rules: Iterable[str],
    methods: str = "POST",
    category: str = "",
    service: str = OWN_SERVICE,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    plans: str = "",
    upstream_headers: Iterable[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> GatewayRoute:
    """Declare a route (the caller commits). ``own_rules`` are Tollgate's own URL rules."""
    path = normalized_path(path)
    taken = collision(path, own_rules)
    if taken:
        raise RouteError(f"{path} collides with Tollgate's own {taken}; choose a path outside it")
    existing = db.session.scalar(select(GatewayRoute.path).where(func.lower(GatewayRoute.path) == path.lower()))
    if existing is not None:
        # Routes are matched whatever the letter case: /api/Chat is /api/chat.
        raise RouteError(f"A route for {existing} exists already; remove it first (gateway remove {existing})")
    if not _SERVICE.fullmatch(service):
        raise RouteError(f"--service is a service name (letters, digits, . _ -, up to 64): {service!r}")
    if len(category) > 64:
        raise RouteError("--category may be at most 64 characters")
    if not 0 < timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise RouteError(f"--timeout is more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds")
    if not 0 < max_body_bytes <= MAX_BODY_LIMIT:
        raise RouteError(f"A route's body limit is 1 byte to {MAX_BODY_LIMIT // 2**20} MiB")
    row = GatewayRoute(
        path=path,
        upstream_url=normalized_upstream(upstream_url),
        methods=_parse_methods(methods),
        category=category.strip(),
        service=service,
        timeout_seconds=float(timeout_seconds),
        plans=_parse_plans(plans),
        upstream_headers=parse_upstream_headers(upstream_headers),
        max_body_bytes=max_body_bytes,
    )
    db.session.add(row)
    mark_access_changed()
    return row


def remove_route(path: str) -> GatewayRoute:
    """Remove the route for ``path`` (the caller commits)."""
    wanted = path.strip().rstrip("/") or path
    row = db.session.scalar(select(GatewayRoute).where(func.lower(GatewayRoute.path) == wanted.lower()))
    if row is None:
        raise RouteError(f"No route for {path}")
    db.session.delete(row)
    mark_access_changed()
    return row


def list_routes() -> list[Route]:
    return [Route.from_row(row) for row in db.session.scalars(select(GatewayRoute).order_by(GatewayRoute.path))]


# -- finding the route of a call ---------------------------------------------------------------


class RouteTable:
    """This process's copy of the routes, reloaded when the configuration version moves on."""

    def __init__(self, check_every_seconds: float = 1.0) -> None:
        self.check_every = check_every_seconds
        self._routes: tuple[Route, ...] | None = None
        self._version: bytes | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()

    def match(self, path: str, redis: Redis) -> Route | None:
        """The route taking ``path`` (the longest), or None."""
        routes = self._current(redis)
        for route in routes:
            if route.takes(path):
                return route
        return None

    def match_cached(self, path: str) -> Route | None:
        """Like :meth:`match` on the routes as last loaded (Redis is unreachable)."""
        routes = self._routes
        if routes is None:
            routes = self._routes = tuple(sorted(list_routes(), key=lambda r: -len(r.path)))
        return next((route for route in routes if route.takes(path)), None)

    def _current(self, redis: Redis) -> tuple[Route, ...]:
        now = time.monotonic()
        if self._routes is not None and now - self._checked_at < self.check_every:
            return self._routes
        with self._lock:
            if self._routes is not None and now - self._checked_at < self.check_every:
                return self._routes
            version = redis.get(CONFIG_VERSION) or b"0"
            if self._routes is None or version != self._version:
                self._routes = tuple(sorted(list_routes(), key=lambda r: -len(r.path)))
                self._version = version
            self._checked_at = now
            return self._routes

    def forget(self) -> None:
        """Reload at the next match (the configuration changed)."""
        self._routes = None
