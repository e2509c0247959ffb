"""``flask billing …``: reconciling closed statements with the records."""

from __future__ import annotations

import re

import click
from flask.cli import AppGroup

from ..models import utcnow
from .reconcile import reconcile

billing_group = AppGroup("billing", help="Statements and their reconciliation.")


@billing_group.command("reconcile")
@click.option("--period", default=None, help="only this month, YYYY-MM")
def reconcile_command(period: str | None) -> None:
    """Recompute each closed statement from the records still kept (the rollups otherwise) and
    print every difference; exits 1 if there is one."""
    if period is not None and not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", period):
        raise click.BadParameter("expected YYYY-MM, e.g. 2026-11", param_hint="--period")
    result = reconcile(utcnow(), period)
    for line in result.differences:
        click.echo(f"DIFFERENCE {line}")
    for line in result.pending:
        click.echo(f"pending    {line}")
    click.echo(
        f"{result.statements} statement(s) reconciled: {len(result.differences)} difference(s), "
        f"{len(result.pending)} pending adjustment(s)"
    )
    if result.differences:
        raise SystemExit(1)
