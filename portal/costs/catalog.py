"""The price catalog: importing genai-prices' bundled data, listing prices, setting a price."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import insert, or_, select

from ..extensions import db
from ..models import ModelPrice, utcnow
from .prices import SOURCE_PRIORITY, Price

GENAI_SOURCE = "genai-prices"
# A price with no start date in the package has been in force since before Tollgate metered.
GENAI_DEFAULT_FROM = datetime(2023, 1, 1, tzinfo=UTC)
# Tollgate's own prices for services the package lacks (the migrations ship them too):
# service, model, per request, per quota unit.
OWN_PRICES = (
    ("twitter", "", "0.000116", "0"),
    ("youtube", "", "0", "0"),
    ("apify", "", "0", "0.40"),
)
OWN_FROM = datetime(2024, 1, 1, tzinfo=UTC)
PRICE_FIELDS = {
    "input": "input_per_million",
    "output": "output_per_million",
    "cached_input": "cached_input_per_million",
    "per_request": "per_request",
    "per_unit": "per_quota_unit",
}
# FineMoney is NUMERIC(18, 8).
MAX_PRICE = Decimal("1e10")
PLACES = 8


class PriceError(ValueError):
    """A price could not be set as asked."""


@dataclass(frozen=True)
class ImportResult:
    added: int
    unchanged: int
    closed: int
    skipped_models: int
    own_added: int


# --- genai-prices ---------------------------------------------------------------------------------


def match_pattern(clause: Any, model_id: str) -> str | None:
    """A full-match regex for a simple genai-prices match clause (equals, starts_with, or of
    those); None for other clauses or one that only names the model itself."""
    pattern = _clause_regex(clause)
    if pattern is None or pattern == re.escape(model_id.lower()) or len(pattern) > 255:
        return None
    return pattern


def _clause_regex(clause: Any) -> str | None:
    from genai_prices import types

    if isinstance(clause, types.ClauseEquals):
        return re.escape(clause.equals.lower())
    if isinstance(clause, types.ClauseStartsWith):
        return re.escape(clause.starts_with.lower()) + ".*"
    if isinstance(clause, types.ClauseOr):
        parts = [_clause_regex(part) for part in clause.or_]
        if not parts or any(part is None for part in parts):
            return None
        return "(?:" + "|".join(parts) + ")"
    return None


def _price_columns(prices: Any) -> dict[str, Any] | None:
    """Tollgate's columns for one genai-prices ModelPrice; None when it has no token or call price."""
    from genai_prices import types

    values = {k: v for k, v in prices.__dict__.items() if v is not None and not k.startswith("_")}
    token_keys = {"input_mtok": "input", "output_mtok": "output", "cache_read_mtok": "cached"}
    given = {name: values[key] for key, name in token_keys.items() if key in values}
    requests = values.get("requests_kcount")
    if not given and requests is None:
        return None

    def base(value: Any) -> Decimal | None:
        if value is None:
            return None
        return value.base if isinstance(value, types.TieredPrices) else value

    def at_threshold(value: Any, threshold: int) -> Decimal | None:
        if not isinstance(value, types.TieredPrices):
            return value
        rate = value.base
        for tier in value.tiers:
            if tier.start <= threshold:
                rate = tier.price
        return rate

    thresholds = sorted(
        {tier.start for value in given.values() if isinstance(value, types.TieredPrices) for tier in value.tiers}
    )
    tiers = [
        {
            "above_input_tokens": threshold,
            "input_per_million": str(at_threshold(given.get("input"), threshold) or Decimal(0)),
            "output_per_million": str(at_threshold(given.get("output"), threshold) or Decimal(0)),
            "cached_input_per_million": (
                None if "cached" not in given else str(at_threshold(given["cached"], threshold))
            ),
        }
        for threshold in thresholds
    ]
    return {
        "input_per_million": base(given.get("input")) or Decimal(0),
        "output_per_million": base(given.get("output")) or Decimal(0),
        "cached_input_per_million": base(given.get("cached")),
        "per_request": (requests / 1000) if requests is not None else Decimal(0),
        "per_quota_unit": Decimal(0),
        "tiers": tiers or None,
    }


def _versions(model: Any) -> list[tuple[datetime, Any]]:
    """(start, prices) of a model's price versions, oldest first."""
    from genai_prices import types

    if not isinstance(model.prices, list):
        return [(GENAI_DEFAULT_FROM, model.prices)]
    starts: dict[datetime, Any] = {}
    for conditional in model.prices:
        constraint = conditional.constraint
        if constraint is None:
            starts.setdefault(GENAI_DEFAULT_FROM, conditional.prices)
        elif isinstance(constraint, types.StartDateConstraint):
            # Later entries win in the package; the same here.
            starts[datetime.combine(constraint.start_date, time(0), tzinfo=UTC)] = conditional.prices
        # Time-of-day prices (off-peak discounts) do not fit a version: the standard price stands.
    return sorted(starts.items(), key=lambda item: item[0])


def genai_price_rows() -> Iterator[dict[str, Any] | None]:
    """Rows for every price version in the package's bundled data (None for a version with no
    token or call price). Reads the bundled module only: the package's updater is never started."""
    from genai_prices.data import providers

    for provider in providers:
        service = provider.id.lower()
        for model in provider.models:
            pattern = match_pattern(model.match, model.id)
            versions = _versions(model)
            for index, (start, prices) in enumerate(versions):
                columns = _price_columns(prices)
                if columns is None:
                    yield None
                    continue
                end = versions[index + 1][0] if index + 1 < len(versions) else None
                yield {
                    "tenant_id": None,
                    "service": service,
                    "model": model.id,
                    "model_pattern": pattern,
                    "source": GENAI_SOURCE,
                    "effective_from": start,
                    "effective_to": end,
                    **columns,
                }


def import_genai_prices() -> ImportResult:
    """Add the package's price versions not in the catalog yet, and Tollgate's own prices if
    missing. Runs in the caller's transaction; a second run adds nothing."""
    existing = {
        (row.service, row.model, row.effective_from): row
        for row in db.session.scalars(
            select(ModelPrice).where(ModelPrice.source == GENAI_SOURCE, ModelPrice.tenant_id.is_(None))
        )
    }
    new_rows: list[dict[str, Any]] = []
    unchanged = closed = skipped = 0
    for row in genai_price_rows():
        if row is None:
            skipped += 1
            continue
        stored = existing.get((row["service"], row["model"], row["effective_from"]))
        if stored is None:
            new_rows.append(row)
            continue
        unchanged += 1
        # A newer package may start a version after one stored as open-ended: close it there.
        if stored.effective_to is None and row["effective_to"] is not None:
            stored.effective_to = row["effective_to"]
            closed += 1
    if new_rows:
        db.session.execute(insert(ModelPrice), new_rows)
    own_added = _ensure_own_prices()
    db.session.flush()
    return ImportResult(len(new_rows), unchanged, closed, skipped, own_added)


def _ensure_own_prices() -> int:
    have = set(
        db.session.scalars(
            select(ModelPrice.service).where(
                ModelPrice.tenant_id.is_(None),
                ModelPrice.model == "",
                ModelPrice.service.in_([service for service, *_ in OWN_PRICES]),
            )
        )
    )
    added = 0
    for service, model, per_request, per_unit in OWN_PRICES:
        if service in have:
            continue
        db.session.add(
            ModelPrice(
                service=service,
                model=model,
                source="tollgate",
                input_per_million=Decimal(0),
                output_per_million=Decimal(0),
                per_request=Decimal(per_request),
                per_quota_unit=Decimal(per_unit),
                effective_from=OWN_FROM,
            )
        )
        added += 1
    return added


# --- listing --------------------------------------------------------------------------------------


def prices_in_force(at: datetime, service: str | None = None, tenant_id: int | None = None) -> list[Price]:
    """The price each (service, model) has at ``at``: the tenant's own if it has one (with
    ``tenant_id``), else the catalog's strongest source. Sorted by service and model."""
    query = select(ModelPrice).where(
        ModelPrice.effective_from <= at,
        or_(ModelPrice.effective_to.is_(None), ModelPrice.effective_to > at),
    )
    if tenant_id is None:
        query = query.where(ModelPrice.tenant_id.is_(None))
    else:
        query = query.where(or_(ModelPrice.tenant_id.is_(None), ModelPrice.tenant_id == tenant_id))
    if service:
        query = query.where(ModelPrice.service == service.strip().lower())

    def rank(price: Price) -> tuple:
        own = price.tenant_id is not None
        source = SOURCE_PRIORITY.index(price.source) if price.source in SOURCE_PRIORITY else len(SOURCE_PRIORITY)
        return (not own, source if not own else 0, -price.effective_from.timestamp(), -price.id)

    best: dict[tuple[str, str], Price] = {}
    for row in db.session.scalars(query):
        price = Price.from_row(row)
        key = (price.service.lower(), price.model.lower())
        if key not in best or rank(price) < rank(best[key]):
            best[key] = price
    return [best[key] for key in sorted(best)]


# --- setting a price ------------------------------------------------------------------------------


def parse_when(text: str) -> datetime:
    """A date (``YYYY-MM-DD``, midnight UTC) or an ISO datetime (UTC unless it says otherwise)."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise PriceError(f"bad date {text!r}: give YYYY-MM-DD or an ISO datetime") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_price(name: str, text: str | Decimal) -> Decimal:
    """A price given on the command line: a non-negative decimal with at most 8 places."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise PriceError(f"{name} must be a number, not {text!r}") from None
    if not value.is_finite():
        raise PriceError(f"{name} must be a number, not {text!r}")
    if value < 0:
        raise PriceError(f"{name} must not be negative (got {text})")
    if value >= MAX_PRICE:
        raise PriceError(f"{name} is too large (got {text})")
    if value != value.quantize(Decimal(1).scaleb(-PLACES)):
        raise PriceError(f"{name} has more than {PLACES} decimal places (got {text})")
    return value


def set_price(
    service: str,
    model: str,
    prices: dict[str, Decimal | str | None],
    effective_from: datetime | None = None,
    tenant_id: int | None = None,
) -> ModelPrice:
    """Add a price version (an operator's, or a tenant's with ``tenant_id``) in force from
    ``effective_from`` (default now), closing the open version it replaces at that moment.

    ``prices`` maps input, output, cached_input, per_request, per_unit to values; those not
    given are carried over from the price the model has at that time (tiers are not: a price
    set here is flat). Costs already computed never change. Runs in the caller's transaction.
    """
    service = service.strip().lower()
    model = (model or "").strip().lower()
    if not service:
        raise PriceError("service must not be empty")
    unknown = set(prices) - set(PRICE_FIELDS)
    if unknown:
        raise PriceError(f"unknown price fields: {', '.join(sorted(unknown))}")
    given = {PRICE_FIELDS[name]: parse_price(name, value) for name, value in prices.items() if value is not None}
    if not given:
        raise PriceError("give at least one price: --input, --output, --cached-input, --per-request or --per-unit")
    start = effective_from or utcnow()
    if start.tzinfo is None:
        raise PriceError("the start time must carry a time zone")

    base = _price_in_force(service, model, start, tenant_id)
    columns: dict[str, Any] = {
        "input_per_million": Decimal(0),
        "output_per_million": Decimal(0),
        "cached_input_per_million": None,
        "per_request": Decimal(0),
        "per_quota_unit": Decimal(0),
    }
    if base is not None:
        columns = {name: getattr(base, name) for name in columns}
    columns.update(given)

    same = select(ModelPrice).where(
        ModelPrice.service == service,
        ModelPrice.model == model,
        ModelPrice.source == "operator",
        ModelPrice.tenant_id.is_(None) if tenant_id is None else ModelPrice.tenant_id == tenant_id,
    )
    later = None
    for version in db.session.scalars(same):
        if version.effective_from > start:
            later = version.effective_from if later is None else min(later, version.effective_from)
        elif version.effective_to is None or version.effective_to > start:
            version.effective_to = start
    price = ModelPrice(
        tenant_id=tenant_id,
        service=service,
        model=model,
        source="operator",
        effective_from=start,
        effective_to=later,
        **columns,
    )
    db.session.add(price)
    db.session.flush()
    return price


def _price_in_force(service: str, model: str, at: datetime, tenant_id: int | None) -> ModelPrice | None:
    """The version the exact (service, model) has at ``at``: the tenant's own, else the catalog's."""
    rows = db.session.scalars(
        select(ModelPrice).where(
            ModelPrice.service == service,
            ModelPrice.model == model,
            ModelPrice.effective_from <= at,
            or_(ModelPrice.effective_to.is_(None), ModelPrice.effective_to > at),
            ModelPrice.tenant_id.is_(None)
            if tenant_id is None
            else or_(ModelPrice.tenant_id.is_(None), ModelPrice.tenant_id == tenant_id),
        )
    ).all()

    def rank(row: ModelPrice) -> tuple:
        source = SOURCE_PRIORITY.index(row.source) if row.source in SOURCE_PRIORITY else len(SOURCE_PRIORITY)
        return (row.tenant_id is None, source, -row.effective_from.timestamp(), -row.id)

    return min(rows, key=rank) if rows else None
