"""Prices of outside services' models, versioned by time, and the cost of a call.

A call is priced by one price version, chosen in this order:

1. The model's catalog entry: its exact name; else a row whose ``model_pattern`` matches the
   whole name; else its family (the name without a date or ``-latest`` suffix, then the longest
   entry that is a prefix of it followed by ``-``).
2. For that entry, the tenant's own price wins, then the tenant's service-wide price, then the
   catalog's by source (operator > genai-prices > tollgate), then the catalog's service-wide price.
   Within one source, the version in force at the call's time with the latest start.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import redis as redis_lib
from sqlalchemy import select

from ..extensions import db
from ..kernel.redis_keys import PRICES_VERSION
from ..models import ModelPrice

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.00000001")
# Catalog sources, strongest first (a tenant's own price beats them all).
SOURCE_PRIORITY = ("operator", "genai-prices", "tollgate")
# Other spellings of a service the catalog knows under its provider id.
SERVICE_ALIASES = {"xai": "x-ai"}
# Suffixes that date a model name or point at its newest version.
_VERSION_SUFFIXES = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|@\d{8}|[-@]latest)$")
_RESOLVED_CACHE_LIMIT = 20_000
log = logging.getLogger("tollgate.costs")
# No one call costs more: a higher figure is a price or a count gone wrong, and the call is left
# unpriced (shown as such, and logged) rather than billed. It also keeps every sum of costs (a
# day's rollup, a month's statement) inside its column.
MAX_CALL_COST = Decimal(1_000_000)


@dataclass(frozen=True)
class Tier:
    """Prices for a whole request whose input exceeds ``above_input_tokens``."""

    above_input_tokens: int
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None


@dataclass(frozen=True)
class Price:
    """One price version, detached from the session (a PriceBook outlives it)."""

    id: int
    tenant_id: int | None
    service: str
    model: str
    model_pattern: str | None
    source: str
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None
    per_request: Decimal
    per_quota_unit: Decimal
    tiers: tuple[Tier, ...]
    effective_from: datetime
    effective_to: datetime | None

    @classmethod
    def from_row(cls, row: ModelPrice) -> Price:
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            service=row.service,
            model=row.model or "",
            model_pattern=row.model_pattern,
            source=row.source or "operator",
            input_per_million=_decimal(row.input_per_million),
            output_per_million=_decimal(row.output_per_million),
            cached_input_per_million=None
            if row.cached_input_per_million is None
            else _decimal(row.cached_input_per_million),
            per_request=_decimal(row.per_request),
            per_quota_unit=_decimal(row.per_quota_unit),
            tiers=parse_tiers(row.tiers),
            effective_from=row.effective_from,
            effective_to=row.effective_to,
        )

    def in_force(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)

    def cost(self, tokens_in: int = 0, tokens_out: int = 0, cached_tokens: int = 0, quota_units: int = 0) -> Decimal:
        """The cost of one call at this price, to 8 places."""
        input_rate, output_rate, cached_rate = (
            self.input_per_million,
            self.output_per_million,
            self.cached_input_per_million,
        )
        # The highest tier the request's input passes prices the whole request.
        for tier in reversed(self.tiers):
            if tokens_in > tier.above_input_tokens:
                input_rate, output_rate = tier.input_per_million, tier.output_per_million
                cached_rate = tier.cached_input_per_million
                break
        if cached_rate is None:
            cached_rate = input_rate
        # Cached tokens are part of tokens_in; they are priced once, at the cached price.
        cached = min(max(cached_tokens, 0), max(tokens_in, 0))
        token_cost = (
            Decimal(max(tokens_in, 0) - cached) * input_rate
            + Decimal(cached) * cached_rate
            + Decimal(max(tokens_out, 0)) * output_rate
        ) / MILLION
        cost = token_cost + self.per_request + Decimal(max(quota_units, 0)) * self.per_quota_unit
        return cost.quantize(COST_QUANTUM)


@dataclass(frozen=True)
class Quote:
    cost: Decimal
    price_id: int


def _decimal(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(str(value))


def parse_tiers(raw: list | None) -> tuple[Tier, ...]:
    """Tiers stored as JSON (amounts as strings), ascending by threshold."""
    if not raw:
        return ()
    tiers = []
    for item in raw:
        cached = item.get("cached_input_per_million")
        tiers.append(
            Tier(
                above_input_tokens=int(item["above_input_tokens"]),
                input_per_million=_decimal(item.get("input_per_million")),
                output_per_million=_decimal(item.get("output_per_million")),
                cached_input_per_million=None if cached is None else _decimal(cached),
            )
        )
    return tuple(sorted(tiers, key=lambda t: t.above_input_tokens))


def family_name(model: str) -> str:
    """The model's name without its date or ``-latest`` suffixes (``gpt-4o-2024-08-06`` -> ``gpt-4o``)."""
    name = model
    while True:
        stripped = _VERSION_SUFFIXES.sub("", name)
        if stripped == name or not stripped:
            return name
        name = stripped


def _latest_in_force(versions: Iterable[Price], at: datetime) -> Price | None:
    best = None
    for price in versions:
        if price.in_force(at) and (best is None or (price.effective_from, price.id) > (best.effective_from, best.id)):
            best = price
    return best


class _Scope:
    """The rows of one service for one owner (the catalog, or one tenant)."""

    def __init__(self) -> None:
        self.by_model: dict[str, list[Price]] = {}
        self.patterns: list[tuple[re.Pattern[str], str, int]] = []

    def add(self, price: Price) -> None:
        key = price.model.lower()
        self.by_model.setdefault(key, []).append(price)
        if price.model_pattern and key:
            try:
                pattern = re.compile(price.model_pattern, re.IGNORECASE)
            except re.error:
                return  # a broken pattern only loses its pattern match, not the price
            self.patterns.append((pattern, key, price.id))

    def finish(self) -> None:
        # Patterns are tried in catalog order (the import keeps the package's order, first match wins).
        seen: dict[str, tuple[re.Pattern[str], str, int]] = {}
        for entry in sorted(self.patterns, key=lambda e: e[2]):
            seen.setdefault(entry[1], entry)
        self.patterns = list(seen.values())


class PriceBook:
    """Every price version, loaded once, answering "what did this call cost at that time"."""

    def __init__(self, prices: Iterable[ModelPrice | Price]) -> None:
        self._catalog: dict[str, _Scope] = {}
        self._tenants: dict[tuple[int, str], _Scope] = {}
        for row in prices:
            price = row if isinstance(row, Price) else Price.from_row(row)
            service = price.service.lower()
            if price.tenant_id is None:
                scope = self._catalog.setdefault(service, _Scope())
            else:
                scope = self._tenants.setdefault((price.tenant_id, service), _Scope())
            scope.add(price)
        for scope in (*self._catalog.values(), *self._tenants.values()):
            scope.finish()
        self._resolved: dict[tuple[int | None, str, str], str | None] = {}

    @classmethod
    def load(cls) -> PriceBook:
        return cls(db.session.scalars(select(ModelPrice).order_by(ModelPrice.id)))

    def _service(self, service: str) -> str:
        service = service.lower()
        if service not in self._catalog and service in SERVICE_ALIASES:
            return SERVICE_ALIASES[service]
        return service

    def _entry(self, scopes: list[_Scope], owner: int | None, service: str, model: str) -> str | None:
        """The catalog entry (model key) a model name prices as, or None."""
        cache_key = (owner, service, model)
        if cache_key in self._resolved:
            return self._resolved[cache_key]
        keys = {key for scope in scopes for key in scope.by_model if key}
        patterns = [entry for scope in scopes for entry in scope.patterns]
        found = None
        family = family_name(model)
        if model in keys:
            found = model
        else:
            found = next((key for pattern, key, _ in patterns if pattern.fullmatch(model)), None)
        if found is None and family in keys:
            found = family
        if found is None:
            prefixes = [key for key in keys if family.startswith(key + "-")]
            found = max(prefixes, key=len) if prefixes else None
        if len(self._resolved) >= _RESOLVED_CACHE_LIMIT:
            self._resolved.clear()  # model names come from tenants' reports: keep the cache bounded
        self._resolved[cache_key] = found
        return found

    def price_at(self, service: str, model: str, at: datetime, tenant_id: int | None = None) -> Price | None:
        """The price version a call to ``service``/``model`` at ``at`` is priced with, or None."""
        service = self._service(service)
        model = (model or "").strip().lower()
        catalog = self._catalog.get(service)
        own = self._tenants.get((tenant_id, service)) if tenant_id is not None else None
        scopes = [scope for scope in (own, catalog) if scope is not None]
        if not scopes:
            return None
        entry = self._entry(scopes, tenant_id if own is not None else None, service, model) if model else None
        if own is not None:
            for key in (entry, ""):
                if key is not None and (price := _latest_in_force(own.by_model.get(key, ()), at)):
                    return price
        if catalog is not None:
            for key in (entry, ""):
                if key is None:
                    continue
                versions = catalog.by_model.get(key, ())
                for source in SOURCE_PRIORITY:
                    if price := _latest_in_force((p for p in versions if p.source == source), at):
                        return price
        return None

    def quote(
        self,
        tenant_id: int | None,
        service: str,
        model: str,
        at: datetime,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cached_tokens: int = 0,
        quota_units: int = 0,
    ) -> Quote | None:
        """The cost of one call and the price version behind it, or None when no price is known."""
        price = self.price_at(service, model, at, tenant_id)
        if price is None:
            return None
        cost = price.cost(tokens_in, tokens_out, cached_tokens, quota_units)
        if cost > MAX_CALL_COST:
            log.warning(
                "a %s %s call of %s would cost $%s, more than $%s: left unpriced (check the price and the counts)",
                service,
                model,
                at,
                cost,
                MAX_CALL_COST,
            )
            return None
        return Quote(cost, price.id)

    def cost(
        self,
        service: str,
        model: str,
        at: datetime,
        tokens_in: int = 0,
        tokens_out: int = 0,
        quota_units: int = 0,
        cached_tokens: int = 0,
        tenant_id: int | None = None,
    ) -> Decimal | None:
        """The cost of one call, or None when no price is known for it."""
        quote = self.quote(tenant_id, service, model, at, tokens_in, tokens_out, cached_tokens, quota_units)
        return None if quote is None else quote.cost


# --- telling every process that prices changed --------------------------------------------------

# Sets the version to max(previous + 1, now in µs): it keeps growing even after a Redis that
# lost the last bump (a failover, a flush), so a process never mistakes new prices for old.
_BUMP_SCRIPT = """
local previous = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local version = tonumber(ARGV[1])
if version <= previous then version = previous + 1 end
local text = string.format('%.0f', version)
redis.call('SET', KEYS[1], text)
return text
"""


def bump_prices_version(redis: redis_lib.Redis) -> str:
    """Mark the prices as changed (call after the commit); returns the new version."""
    seconds, microseconds = redis.time()
    version = redis.eval(_BUMP_SCRIPT, 1, PRICES_VERSION, int(seconds) * 1_000_000 + int(microseconds))
    return version.decode() if isinstance(version, bytes) else str(version)


def prices_version(redis: redis_lib.Redis) -> str:
    """The current prices version ("0" before any change)."""
    value = redis.get(PRICES_VERSION)
    if value is None:
        return "0"
    return value.decode() if isinstance(value, bytes) else str(value)


_cache_lock = threading.Lock()
_cache: tuple[str, PriceBook] | None = None


def current_price_book(redis: redis_lib.Redis) -> PriceBook:
    """This process's PriceBook, reloaded when the prices version changed."""
    global _cache
    try:
        version = prices_version(redis)
    except redis_lib.RedisError as exc:
        # Without Redis the last book loaded is still the best answer; a first one is loaded.
        log.warning("prices version unreadable (%s); using the price book this process has", exc)
        with _cache_lock:
            if _cache is not None:
                return _cache[1]
        return PriceBook.load()
    with _cache_lock:
        if _cache is not None and _cache[0] == version:
            return _cache[1]
    book = PriceBook.load()
    with _cache_lock:
        _cache = (version, book)
    return book


def forget_price_book() -> None:
    """Drop this process's cached PriceBook (the next call loads it again)."""
    global _cache
    with _cache_lock:
        _cache = None
