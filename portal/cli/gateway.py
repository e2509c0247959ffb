"""``flask --app wsgi gateway …``: the operator's own API routes behind the plans."""

from __future__ import annotations

import os

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from ..extensions import db
from ..gateway.routes import Route, RouteError, add_route, list_routes, normalized_path, remove_route
from ..gateway.tokens import TokenError, create_service_token, revoke_service_token
from ..models.gateway import DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT_SECONDS
from ..models.usage import OWN_SERVICE
from .audited import operator_event

gateway_group = AppGroup("gateway", help="Routes to the operator's own API, admitted and metered by Tollgate.")


@gateway_group.command("add")
@click.argument("path")
@click.argument("upstream_url")
@click.option("--methods", default="POST", show_default=True, help="comma-separated, e.g. POST,GET")
@click.option("--category", default="", help="the calls' category in the portal, e.g. Chat")
@click.option("--service", default=OWN_SERVICE, show_default=True, help="the service the usage is priced under")
@click.option("--timeout", "timeout_seconds", type=float, default=DEFAULT_TIMEOUT_SECONDS, show_default=True)
@click.option("--plans", default="", help="comma-separated plan codes that may call it (default: every plan)")
@click.option(
    "--upstream-header",
    "upstream_headers",
    multiple=True,
    metavar="NAME=ENVVAR",
    help="a header sent to the upstream, its value read from ENVVAR at each call (repeatable)",
)
@click.option(
    "--max-body-mb",
    type=click.IntRange(min=1, max=16),
    default=DEFAULT_MAX_BODY_BYTES // 2**20,
    show_default=True,
    help="the largest request body passed on",
)
@click.option("--replace", is_flag=True, help="replace the route PATH has, if any")
def add_command(
    path: str,
    upstream_url: str,
    methods: str,
    category: str,
    service: str,
    timeout_seconds: float,
    plans: str,
    upstream_headers: tuple[str, ...],
    max_body_mb: int,
    replace: bool,
) -> None:
    """Route calls to PATH (and below it) to UPSTREAM_URL: PATH/rest?query goes to
    UPSTREAM_URL/rest?query."""
    own_rules = [rule.rule for rule in current_app.url_map.iter_rules()]
    try:
        if replace and any(route.path == normalized_path(path) for route in list_routes()):
            remove_route(path)
            db.session.flush()
        row = add_route(
            path,
            upstream_url,
            own_rules,
            methods=methods,
            category=category,
            service=service,
            timeout_seconds=timeout_seconds,
            plans=plans,
            upstream_headers=upstream_headers,
            max_body_bytes=max_body_mb * 2**20,
        )
        operator_event("gateway_route.added", path=row.path, upstream=row.upstream_url, replaced=replace)
        db.session.commit()
    except RouteError as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from None
    route = Route.from_row(row)
    for _, variable in route.upstream_headers:
        if variable not in os.environ:
            click.echo(f"Warning: {variable} is not set here; set it where Tollgate serves, or calls answer 502.")
    click.echo(f"Added {route.describe()}")


@gateway_group.command("list")
def list_command() -> None:
    """One route a line, its path first."""
    routes = list_routes()
    for route in routes:
        click.echo(route.describe())
    if not routes:
        click.echo("# no routes (flask --app wsgi gateway add PATH UPSTREAM_URL)")


@gateway_group.command("remove")
@click.argument("path")
def remove_command(path: str) -> None:
    """Remove the route for PATH; calls to it are 404 within a second everywhere."""
    try:
        row = remove_route(path)
        operator_event("gateway_route.removed", path=row.path)
        db.session.commit()
    except RouteError as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from None
    click.echo(f"Removed {row.path}")


@click.command("create-service-token")
@with_appcontext
@click.argument("name")
def create_service_token_command(name: str) -> None:
    """Make a token with which a service verifies customer keys (POST /api/v1/verify); prints
    it last (only its hash is kept: it is shown this once)."""
    try:
        row, token = create_service_token(name)
        operator_event("service_token.created", name=row.name, prefix=row.prefix)
        db.session.commit()
    except TokenError as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from None
    click.echo(f"Created service token {row.name!r} ({row.prefix}…). Keep it; it is not shown again:")
    click.echo(token)


@click.command("revoke-service-token")
@with_appcontext
@click.argument("name")
def revoke_service_token_command(name: str) -> None:
    """Revoke a service token; verify calls with it are 401 within about a second."""
    try:
        row = revoke_service_token(name)
        operator_event("service_token.revoked", name=row.name, prefix=row.prefix)
        db.session.commit()
    except TokenError as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from None
    click.echo(f"Revoked service token {row.name!r} ({row.prefix}…)")
