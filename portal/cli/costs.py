"""``flask --app wsgi prices ...``: the price catalog for operators."""

from __future__ import annotations

from decimal import Decimal

import click
import redis as redis_lib
from flask.cli import AppGroup

from ..costs.catalog import PriceError, import_genai_prices, parse_when, prices_in_force, set_price
from ..costs.prices import Price, bump_prices_version
from ..extensions import db
from ..models import utcnow
from ..redis_store import get_redis
from ..tenancy.accounts import AccountError, get_tenant
from .audited import operator_event

prices_group = AppGroup("prices", help="Prices of outside services' models.")


def _announce_change() -> None:
    """Tell every process to reload its prices (after the commit)."""
    try:
        bump_prices_version(get_redis())
    except redis_lib.RedisError as exc:
        # The prices are stored; processes pick them up when they restart.
        click.echo(f"warning: prices stored, but Redis could not be told ({exc}); restart the workers", err=True)


def _amount(value: Decimal | None) -> str:
    if value is None:
        return "-"
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _line(price: Price) -> str:
    source = "tenant" if price.tenant_id is not None else price.source
    tiers = " +tiers" if price.tiers else ""
    return (
        f"{price.service:<14} {price.model or '*':<40} {_amount(price.input_per_million):>10} "
        f"{_amount(price.output_per_million):>10} {_amount(price.cached_input_per_million):>10} "
        f"{_amount(price.per_request):>10} {_amount(price.per_quota_unit):>10} {source:<12} "
        f"{price.effective_from:%Y-%m-%d %H:%M}{tiers}"
    )


@prices_group.command("list")
@click.option("--service", default=None, help="only this service")
@click.option("--tenant", "tenant_slug", default=None, help="what this tenant pays (its own prices first)")
def prices_list(service: str | None, tenant_slug: str | None) -> None:
    """Print the prices in force now (per 1M tokens, per request, per unit)."""
    tenant_id = None
    if tenant_slug:
        try:
            tenant_id = get_tenant(tenant_slug).id
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
    prices = prices_in_force(utcnow(), service, tenant_id)
    if not prices:
        raise click.ClickException(f"no prices in force for service {service!r}" if service else "no prices in force")
    click.echo(
        f"{'service':<14} {'model':<40} {'input/1M':>10} {'output/1M':>10} {'cached/1M':>10} "
        f"{'request':>10} {'unit':>10} {'source':<12} since (UTC)"
    )
    for price in prices:
        click.echo(_line(price))


@prices_group.command("set")
@click.argument("service")
@click.argument("model")
@click.option("--input", "input_", default=None, help="per 1M input tokens")
@click.option("--output", default=None, help="per 1M output tokens")
@click.option("--cached-input", default=None, help="per 1M input tokens read from cache")
@click.option("--per-request", default=None, help="per call")
@click.option("--per-unit", default=None, help="per quota or compute unit")
@click.option("--from", "from_", default=None, help="YYYY-MM-DD or ISO datetime, UTC (default: now)")
@click.option("--tenant", "tenant_slug", default=None, help="a tenant's negotiated price")
def prices_set(
    service: str,
    model: str,
    input_: str | None,
    output: str | None,
    cached_input: str | None,
    per_request: str | None,
    per_unit: str | None,
    from_: str | None,
    tenant_slug: str | None,
) -> None:
    """Add a price version for SERVICE MODEL ('' for every model of the service).

    Prices not given are kept from the price in force then. Costs already computed never change.
    """
    given = {
        "input": input_,
        "output": output,
        "cached_input": cached_input,
        "per_request": per_request,
        "per_unit": per_unit,
    }
    try:
        tenant = get_tenant(tenant_slug) if tenant_slug else None
        start = parse_when(from_) if from_ else None
        price = set_price(service, model, given, start, tenant.id if tenant else None)
        db.session.flush()
        operator_event(
            "price.set",
            tenant.id if tenant else None,
            price_id=price.id,
            service=price.service,
            model=price.model,
            **{name: value for name, value in given.items() if value is not None},
        )
        db.session.commit()
    except (PriceError, AccountError) as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    _announce_change()
    owner = f" for {tenant.slug}" if tenant else ""
    until = f" until {price.effective_to:%Y-%m-%d %H:%M}" if price.effective_to else ""
    click.echo(
        f"Price of {price.service}/{price.model or '*'}{owner} from {price.effective_from:%Y-%m-%d %H:%M} UTC{until}: "
        f"input {_amount(price.input_per_million)}, output {_amount(price.output_per_million)}, "
        f"cached input {_amount(price.cached_input_per_million)} per 1M; "
        f"{_amount(price.per_request)} per request; {_amount(price.per_quota_unit)} per unit (price {price.id})."
    )


@prices_group.command("import")
def prices_import() -> None:
    """Fill the catalog from the genai-prices package's bundled data (offline)."""
    from importlib.metadata import version

    result = import_genai_prices()
    operator_event("prices.imported", added=result.added, closed=result.closed, own_added=result.own_added)
    db.session.commit()
    if result.added or result.closed or result.own_added:
        _announce_change()
    click.echo(
        f"genai-prices {version('genai-prices')}: {result.added} price versions added, {result.unchanged} unchanged, "
        f"{result.closed} closed; {result.skipped_models} without token prices skipped; "
        f"{result.own_added} of Tollgate's own prices added."
    )
