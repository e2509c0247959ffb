"""``flask --app wsgi usage …``: the usage the worker set aside."""

from __future__ import annotations

import click
from flask.cli import AppGroup
from sqlalchemy import select

from ..extensions import db
from ..kernel.times import iso
from ..metering.dead_letters import waiting_count
from ..models import UsageDeadLetter
from ..redis_store import get_redis
from .audited import operator_event

usage_group = AppGroup("usage", help="The usage pipeline.")
dead_letters_group = AppGroup("dead-letters", help="Usage records the worker could not store.")
usage_group.add_command(dead_letters_group)


@dead_letters_group.command("list")
@click.option("--all", "everything", is_flag=True, help="also those stored since")
def list_command(everything: bool) -> None:
    """One record a line: its id, when it was set aside, the tenant, the stream entry, the
    record's id and the reason. The last line, marked with ``#``, counts those waiting."""
    query = select(UsageDeadLetter).order_by(UsageDeadLetter.id)
    if not everything:
        query = query.where(UsageDeadLetter.stored_at.is_(None))
    for letter in db.session.scalars(query):
        stored = f"  [stored {iso(letter.stored_at)}]" if letter.stored_at else ""
        click.echo(
            f"{letter.id:>6}  {iso(letter.created_at)}  tenant {letter.tenant_id or '?'}  "
            f"entry {letter.stream_entry_id}  id {letter.idempotency_key or '?'}  {letter.reason}{stored}"
        )
    click.echo(f"# {waiting_count()} record(s) set aside and not stored")


@dead_letters_group.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1, max=2**63 - 1))
def retry_command(ids: tuple[int, ...]) -> None:
    """Store the records set aside again (all those waiting, or the IDS given), after the cause
    is fixed; one that fails again keeps waiting with its new reason. Exits 1 if one did."""
    from ..ingest import retry_dead_letters

    result = retry_dead_letters(get_redis(), list(ids) if ids else None)
    operator_event("usage.dead_letters_retried", ids=list(ids) or "all", stored=result.stored, waiting=result.waiting)
    db.session.commit()
    click.echo(f"{result.stored} stored, {result.waiting} still waiting")
    if result.waiting:
        raise SystemExit(1)
