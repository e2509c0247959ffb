"""``flask billing …``: reconciling closed statements with the records."""

from __future__ import annotations

import re

import click
from flask.cli import AppGroup
from redis import RedisError

from ..billing.reconcile import check_counters, reconcile
from ..models import utcnow
from ..redis_store import get_redis

billing_group = AppGroup("billing", help="Statements and their reconciliation.")


@billing_group.command("reconcile")
@click.option("--period", default=None, help="only this month, YYYY-MM")
def reconcile_command(period: str | None) -> None:
    """Recompute each closed statement from the records still kept (the rollups otherwise), and
    check the open period's quota counters against the calls admitted; print every difference
    and drift; exits 1 if there is one."""
    if period is not None and not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", period):
        raise click.BadParameter("expected YYYY-MM, e.g. 2026-11", param_hint="--period")
    now = utcnow()
    result = reconcile(now, period)
    counters = period is None or period == f"{now:%Y-%m}"
    if counters:
        try:
            check_counters(get_redis(), now, result)
        except RedisError as error:
            counters = False
            click.echo(f"quota counters not checked: Redis is unreachable ({error})")
    for line in result.differences:
        click.echo(f"DIFFERENCE {line}")
    for line in result.drift:
        click.echo(f"DRIFT      {line}")
    for line in result.pending:
        click.echo(f"pending    {line}")
    summary = (
        f"{result.statements} statement(s) reconciled: {len(result.differences)} difference(s), "
        f"{len(result.pending)} pending"
    )
    if counters:
        summary += f"; quota counters: {len(result.drift)} drift(s)"
    click.echo(summary)
    if result.differences or result.drift:
        raise SystemExit(1)
