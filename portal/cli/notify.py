"""``flask --app wsgi add-channel``: an operator adds a tenant's notification channel."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ..extensions import db
from ..models.alerts import CHANNEL_KINDS, SEVERITIES
from ..notify.channels import ChannelError, create_channel, shown_target
from ..tenancy.accounts import AccountError, get_tenant
from .audited import by_operator


@click.command("add-channel")
@with_appcontext
@click.argument("tenant_slug")
@click.argument("kind", type=click.Choice(CHANNEL_KINDS))
@click.argument("target")
@click.option("--secret", default=None, help="a webhook's Standard Webhooks secret (whsec_...); generated if absent")
@click.option(
    "--min-severity",
    type=click.Choice(SEVERITIES),
    default="warning",
    show_default=True,
    help="the least severe alerts the channel is told about",
)
@click.option("--name", default=None, help="what the portal calls the channel")
def add_channel_command(
    tenant_slug: str, kind: str, target: str, secret: str | None, min_severity: str, name: str | None
) -> None:
    """Add a notification channel: an e-mail address, a Slack incoming webhook or a signed webhook.
    For a webhook without --secret, the generated secret is printed last (shown only this once)."""
    try:
        tenant = get_tenant(tenant_slug)
        by_operator()  # the channel's audit event is the operator's
        channel, signing_secret = create_channel(
            tenant.id, kind, target, name=name, secret=secret, min_severity=min_severity
        )
        db.session.commit()
    except (AccountError, ChannelError) as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    told = "critical alerts only" if min_severity == "critical" else "warning and critical alerts"
    where = shown_target(channel, full=True)  # the operator typed it
    click.echo(f"Added {kind} channel {channel.id} ({channel.name!r}) for {tenant.slug}: {where}, {told}.")
    if kind == "webhook" and secret is None:
        click.echo("Its signing secret; keep it, it is not shown again:")
        click.echo(signing_secret)
