"""Deleting usage data past its plan's retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from ..extensions import db
from ..models import Plan, Subscription, UsageRecord, UsageRollup

# Daily rollups outlive raw rows: statements and year-over-year charts read them.
DAILY_ROLLUP_RETENTION_DAYS = 730


@dataclass
class Deleted:
    records: int = 0
    hourly_rollups: int = 0
    daily_rollups: int = 0


def delete_expired_usage(now: datetime) -> Deleted:
    """Delete raw records and hourly rollups older than each tenant's plan keeps them."""
    deleted = Deleted()
    tenants = db.session.execute(
        select(Subscription.tenant_id, Plan.retention_days)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(Subscription.ended_at.is_(None))
    ).all()
    for tenant_id, retention_days in tenants:
        cutoff = now - timedelta(days=retention_days)
        deleted.records += db.session.execute(
            delete(UsageRecord).where(UsageRecord.tenant_id == tenant_id, UsageRecord.occurred_at < cutoff)
        ).rowcount
        deleted.hourly_rollups += db.session.execute(
            delete(UsageRollup).where(
                UsageRollup.tenant_id == tenant_id,
                UsageRollup.granularity == "hour",
                UsageRollup.bucket_start < cutoff,
            )
        ).rowcount
        db.session.commit()
    deleted.daily_rollups = db.session.execute(
        delete(UsageRollup).where(
            UsageRollup.granularity == "day",
            UsageRollup.bucket_start < now - timedelta(days=DAILY_ROLLUP_RETENTION_DAYS),
        )
    ).rowcount
    db.session.commit()
    return deleted
