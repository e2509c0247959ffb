"""RQ job functions. They run inside the application context the worker pushes, take plain
values (never model objects) and return plain dictionaries for the job result."""

from __future__ import annotations

from dataclasses import asdict

from flask import current_app

from portal.alerts.evaluate import evaluate_alerts as evaluate_alert_rules
from portal.billing.statements import close_periods as close_billing_periods
from portal.costs import recompute
from portal.ingest import ingest_usage
from portal.metering.retention import delete_expired_usage
from portal.models import utcnow
from portal.notify.deliver import deliver_due
from portal.redis_store import get_redis
from portal.tenancy.sessions import delete_expired_sessions


def cleanup() -> dict:
    """Delete usage data past each tenant's retention, and portal sessions past their expiry."""
    now = utcnow()
    result = asdict(delete_expired_usage(now))
    result["expired_sessions"] = delete_expired_sessions(now)
    return result


def ingest() -> dict:
    """Store the metered calls waiting in the usage stream."""
    config = current_app.config
    result = ingest_usage(
        get_redis(),
        claim_idle_ms=config["USAGE_CLAIM_IDLE_MS"],
        abandon_after_seconds=config["USAGE_ABANDON_SECONDS"],
    )
    return asdict(result)


def recompute_costs() -> dict:
    """Price the outside calls stored without a price, now that one exists."""
    return recompute.recompute_costs(utcnow())


def evaluate_alerts() -> dict:
    """Evaluate every tenant's alert rules and write the notifications of what changed."""
    return evaluate_alert_rules(get_redis(), utcnow()).as_dict()


def deliver_notifications() -> dict:
    """Send the notifications waiting in the outbox whose time has come."""
    return deliver_due(utcnow())


def close_periods() -> dict:
    """Close every billing period that has ended into its statement."""
    return close_billing_periods(utcnow())
