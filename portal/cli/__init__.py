"""``flask --app wsgi ...`` commands for operators."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from ..billing.plans import UnknownPlan, update_plan_limits
from ..extensions import db
from ..models import utcnow
from ..onboarding import create_tenant
from ..tenancy.accounts import AccountError, get_tenant
from ..tenancy.keys import SCOPES, ApiKeyNotFound, create_api_key, find_tenant_key, revoke_api_key
from .audited import operator_event
from .backup import BACKUP_COMMANDS
from .billing import billing_group
from .costs import prices_group
from .gateway import create_service_token_command, gateway_group, revoke_service_token_command
from .metering import usage_group
from .notify import add_channel_command


def _fail(error: Exception) -> click.ClickException:
    db.session.rollback()
    return click.ClickException(str(error))


@click.command("create-tenant")
@with_appcontext
@click.argument("name")
@click.option("--plan", "plan_code", required=True, help="free, starter, professional or enterprise")
@click.option("--admin-email", required=True)
@click.option("--password", required=True, help="the owner's: at least 12 characters, and not easy to guess")
def create_tenant_command(name: str, plan_code: str, admin_email: str, password: str) -> None:
    """Create a tenant with its owner account; prints the tenant's slug last."""
    try:
        tenant = create_tenant(name, plan_code, admin_email, password)
        db.session.flush()
        operator_event("tenant.created", tenant.id, slug=tenant.slug, plan=plan_code, owner=admin_email)
        db.session.commit()
    except (AccountError, UnknownPlan) as exc:
        raise _fail(exc) from None
    click.echo(f"Created tenant {tenant.name!r} on the {plan_code} plan; owner {admin_email}.")
    click.echo(tenant.slug)


@click.command("create-api-key")
@with_appcontext
@click.argument("tenant_slug")
@click.option("--name", required=True)
@click.option("--description", default="")
@click.option("--expires-in-days", type=click.IntRange(min=1), default=None)
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default="usage",
    show_default=True,
    help="usage: call, report, acquire, read; admin: also change budgets, limits, settings",
)
def create_api_key_command(
    tenant_slug: str, name: str, description: str, expires_in_days: int | None, scope: str
) -> None:
    """Create an API key; prints its secret last (it is shown only this once)."""
    try:
        tenant = get_tenant(tenant_slug)
        expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        key, secret = create_api_key(tenant, name, description, expires_at, scope=scope)
        db.session.flush()
        operator_event("api_key.created", tenant.id, key_id=key.id, prefix=key.prefix, name=key.name, scope=scope)
        db.session.commit()
    except (AccountError, ValueError) as exc:
        raise _fail(exc) from None
    click.echo(
        f"Created {scope} key {key.name!r} ({key.prefix}) for {tenant.slug}. Keep the secret; it is not shown again:"
    )
    click.echo(secret)


@click.command("revoke-api-key")
@with_appcontext
@click.argument("tenant_slug")
@click.argument("name_or_prefix")
def revoke_api_key_command(tenant_slug: str, name_or_prefix: str) -> None:
    """Revoke a tenant's key, found by its name or its prefix."""
    try:
        tenant = get_tenant(tenant_slug)
        key = revoke_api_key(find_tenant_key(tenant, name_or_prefix))
        operator_event("api_key.revoked", tenant.id, key_id=key.id, prefix=key.prefix, name=key.name)
        db.session.commit()
    except (AccountError, ApiKeyNotFound, ValueError) as exc:
        raise _fail(exc) from None
    click.echo(f"Revoked key {key.name!r} ({key.prefix}) of {tenant.slug}.")


@click.command("set-plan")
@with_appcontext
@click.argument("code")
@click.option("--monthly-quota", type=int, default=None)
@click.option("--unlimited", is_flag=True, help="remove the monthly quota")
@click.option("--per-minute", type=int, default=None)
@click.option("--per-hour", type=int, default=None)
@click.option("--per-day", type=int, default=None)
def set_plan_command(code, monthly_quota, unlimited, per_minute, per_hour, per_day) -> None:
    """Change a plan's quota and windows; tenants on it get them on their next call."""
    try:
        plan = update_plan_limits(code, monthly_quota, per_minute, per_hour, per_day, unlimited_quota=unlimited)
        operator_event(
            "plan.limits_changed",
            plan=plan.code,
            monthly_quota=plan.monthly_quota,
            per_minute=plan.per_minute,
            per_hour=plan.per_hour,
            per_day=plan.per_day,
        )
        db.session.commit()
    except (UnknownPlan, ValueError) as exc:
        raise _fail(exc) from None
    quota = "unlimited" if plan.monthly_quota is None else f"{plan.monthly_quota:,}"
    click.echo(
        f"{plan.code}: {quota} requests/month, {plan.per_minute:,}/minute, {plan.per_hour:,}/hour, {plan.per_day:,}/day"
    )


@click.command("seed-demo")
@with_appcontext
@click.option("--days", type=click.IntRange(min=1, max=400), default=90, show_default=True)
@click.option("--password", default=None, help="the demo admin's password (default: a random one)")
@click.option(
    "--quick-start-key",
    is_flag=True,
    help="also make a fresh usage key (revoking the last one) and print it with a first call to /api/chat",
)
def seed_demo_command(days: int, password: str | None, quick_start_key: bool) -> None:
    """Create the demo tenant with realistic history and print how to sign in."""
    from ..costs.prices import bump_prices_version
    from ..demo import ensure_chat_price, seed_demo
    from ..demo import quick_start_key as make_key
    from ..redis_store import get_redis

    try:  # a --password the policy refuses, before any work
        with click.progressbar(length=days * 950, label="Generating usage", show_pos=True) as bar:
            result = seed_demo(days=days, password=password, progress=bar.update)
    except AccountError as exc:
        raise _fail(exc) from None
    if result.created:
        click.echo(f"Demo tenant {result.tenant.name!r} ({result.tenant.slug}) with {result.records:,} usage records.")
    else:
        click.echo(f"Demo tenant {result.tenant.name!r} already exists; its admin password was reset.")
    click.echo(f"Sign in at {current_app.config['PORTAL_BASE_URL']}/login")
    click.echo(f"  e-mail:   {result.email}")
    click.echo(f"  password: {result.password}")
    if ensure_chat_price():
        db.session.commit()
        bump_prices_version(get_redis())
    if quick_start_key:
        secret = make_key(result.tenant)
        db.session.commit()
        base = current_app.config["PORTAL_BASE_URL"]
        click.echo(f"API key of {result.tenant.slug} (usage scope, shown once): {secret}")
        click.echo(
            f"  curl -i -X POST {base}/api/chat -H 'X-API-Key: {secret}' -H 'Content-Type: application/json' "
            """-d '{"message": "Hello", "botId": "test"}'"""
        )


@click.command("generate-usage")
@with_appcontext
@click.option("--tenant", "tenant_slug", default=None, help="add to this existing tenant")
@click.option("--tenants", type=click.IntRange(min=1), default=None, help="or spread over this many new tenants")
@click.option("--records", type=click.IntRange(min=1), required=True)
@click.option("--days", type=click.IntRange(min=1), required=True)
@click.option("--seed", type=int, default=None, help="random seed, for repeatable data")
@click.option(
    "--writers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="processes writing at once, each its own tenants (PostgreSQL; at most one per tenant)",
)
def generate_usage_command(tenant_slug, tenants, records, days, seed, writers) -> None:
    """Add synthetic usage records (and their rollups), for benchmarks."""
    from sqlalchemy import select

    from ..demo import bench_tenants, store_synthetic
    from ..models import ApiKey

    if (tenant_slug is None) == (tenants is None):
        raise click.UsageError("give exactly one of --tenant SLUG or --tenants M")
    try:
        targets = [get_tenant(tenant_slug)] if tenant_slug else bench_tenants(tenants)
    except AccountError as exc:
        raise _fail(exc) from None
    ids = [t.id for t in targets]
    keys: dict[int, list[int]] = {}
    for tenant_id, key_id in db.session.execute(select(ApiKey.tenant_id, ApiKey.id).where(ApiKey.tenant_id.in_(ids))):
        keys.setdefault(tenant_id, []).append(key_id)
    slugs = [t.slug for t in targets[:10]]
    with click.progressbar(length=records, label="Storing usage", show_pos=True) as bar:
        stored = store_synthetic(ids, keys, records, days, utcnow(), seed, writers, progress=bar.update)
    click.echo(f"Stored {stored:,} records for {len(ids)} tenant(s): {', '.join(slugs)}")


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="do all queued work, then exit")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="INFO logs every job run (the usage stream is read every 2 seconds)",
)
def worker_command(burst: bool, log_level: str) -> None:
    """Run the RQ worker (with its scheduler and the periodic jobs)."""
    from worker.runner import run_worker

    run_worker(current_app._get_current_object(), burst=burst, log_level=log_level.upper())


jobs_group = AppGroup("jobs", help="The periodic jobs.")


@jobs_group.command("list")
def jobs_list() -> None:
    """Name the periodic jobs, how often they run and how their last run went; then RQ's failed jobs.

    One line per job, its name first: the interval, the last run's start (UTC), outcome and
    duration ("never" if it never ran), its description, and a failed run's error. Then two lines
    marked with ``#``: each queue's failed jobs with the latest one named, and the usage records
    the worker set aside (``usage dead-letters``).
    """
    from worker import history, queues
    from worker.schedule import PERIODIC_JOBS

    from ..metering.dead_letters import waiting_count
    from ..redis_store import get_redis

    redis = get_redis()
    runs = history.last_runs(redis, [job.name for job in PERIODIC_JOBS])
    for job in PERIODIC_JOBS:
        run = runs[job.name]
        if run is None:
            last = f"{'never':<20}  {'':<6}  {'':>9}"
        else:
            last = f"{run.started_at:<20}  {run.outcome:<6}  {f'{run.duration_ms:,} ms':>9}"
        line = f"{job.name:<22} every {job.every_seconds:>5}s  {last}  {job.description}"
        if run is not None and run.outcome == "failed":
            line += f"  [error: {run.summary}]"
        if run is not None and run.running_since:
            line += f"  [running since {run.running_since}]"
        click.echo(line)
    failed = []
    for queue in history.failed_jobs(redis, queues.ALL):
        text = f"{queue.queue} {queue.count}"
        if queue.last_job_id:
            text += f" (latest {queue.last_job_id}: {queue.last_error or 'no error recorded'})"
        failed.append(text)
    click.echo(f"# failed jobs: {'; '.join(failed)}")
    click.echo(f"# usage set aside: {waiting_count()} record(s) not stored (flask --app wsgi usage dead-letters list)")


@jobs_group.command("run")
@click.argument("name")
def jobs_run(name: str) -> None:
    """Run one periodic job now, in the foreground."""
    from worker.history import run_recorded
    from worker.schedule import find

    from ..redis_store import get_redis

    try:
        job = find(name)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    # Recorded as the worker records it: `jobs list` shows this run too, a failure included.
    result = run_recorded(get_redis(), job.name, job.func)
    click.echo(f"{job.name}: {result}")


def init_app(app: Flask) -> None:
    for command in (
        create_tenant_command,
        create_api_key_command,
        revoke_api_key_command,
        set_plan_command,
        seed_demo_command,
        generate_usage_command,
        worker_command,
        add_channel_command,
        create_service_token_command,
        revoke_service_token_command,
        *BACKUP_COMMANDS,
    ):
        app.cli.add_command(command)
    app.cli.add_command(jobs_group)
    app.cli.add_command(prices_group)
    app.cli.add_command(billing_group)
    app.cli.add_command(usage_group)
    app.cli.add_command(gateway_group)
