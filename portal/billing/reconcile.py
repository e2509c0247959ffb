"""Reconciling closed statements with the records they were made from.

For each closed statement, the figures are worked out again — the plan fee from the
subscription history, the overage from the calls the statement counted, and each outside
service's cost and unpriced calls from the raw records while the plan keeps them (from the
rollups otherwise) — and every difference is reported. Usage of the period billed later, as
an adjustment on a following statement, counts as billed; late usage waiting for the next
statement is reported apart, as pending, not as a difference.

The open period's quota counters are checked too: each against the calls the records (and the
usage stream, for those not stored yet) say were admitted. A counter that differs is a drift;
one that Redis lost is pending (it is rebuilt before the tenant's next call).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from ..extensions import db
from ..kernel.periods import billing_period
from ..metering.quota import counter_drift
from ..models import Plan, Statement, StatementLine, Subscription, Tenant, UsageRecord
from ..models.usage import priced_calls
from .statements import ZERO, fee_lines, outside_costs, overage_line, period_label, to_cent


@dataclass
class Reconciliation:
    statements: int = 0
    differences: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)


def _period_bounds(period: str) -> tuple[datetime, datetime]:
    year, month = (int(part) for part in period.split("-"))
    return billing_period(datetime(year, month, 1, tzinfo=UTC))


def _from_records(tenant_ids: list[int], start: datetime, end: datetime) -> dict:
    rows = db.session.execute(
        select(
            UsageRecord.tenant_id,
            UsageRecord.service,
            UsageRecord.model,
            func.coalesce(func.sum(UsageRecord.cost), 0),
            func.count().filter(UsageRecord.cost.is_(None)),
            func.min(UsageRecord.occurred_at),
        )
        .where(
            UsageRecord.tenant_id.in_(tenant_ids),
            priced_calls(UsageRecord),
            UsageRecord.occurred_at >= start,
            UsageRecord.occurred_at < end,
        )
        .group_by(UsageRecord.tenant_id, UsageRecord.service, UsageRecord.model)
    )
    return {(t, s, m): (Decimal(cost), int(unpriced)) for t, s, m, cost, unpriced, _ in rows}


def _from_rollups(tenant_ids: list[int], start: datetime, end: datetime) -> dict:
    return {
        (tenant_id, row.service, row.model): (Decimal(row.cost or 0), int(row.unpriced or 0))
        for tenant_id, rows in outside_costs(tenant_ids, start, end).items()
        for row in rows
    }


def _raw_kept_since(tenant_ids: list[int], now: datetime) -> dict[int, datetime]:
    """From when each tenant's raw records are kept (its plan's retention)."""
    rows = db.session.execute(
        select(Subscription.tenant_id, Plan.retention_days)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(Subscription.tenant_id.in_(tenant_ids), Subscription.ended_at.is_(None))
    )
    return {tenant_id: now - timedelta(days=days) for tenant_id, days in rows}


def check_counters(redis: Redis, now: datetime, result: Reconciliation) -> None:
    """Compare the open period's quota counters with the calls admitted."""
    tenants = dict(
        db.session.execute(
            select(Tenant.id, Tenant.slug)
            .join(Subscription, Subscription.tenant_id == Tenant.id)
            .where(Subscription.ended_at.is_(None))
            .order_by(Tenant.id)
        ).all()
    )
    month = period_label(billing_period(now)[0])
    for drift in counter_drift(redis, list(tenants), now):
        label = f"{tenants[drift.tenant_id]} {month}"
        if drift.counter is None:
            result.pending.append(
                f"{label}: no quota counter in Redis ({drift.records:,} calls admitted); it is rebuilt "
                "before the next call"
            )
        else:
            result.drift.append(
                f"{label}: the quota counter says {drift.counter:,} calls, the records and the usage "
                f"stream {drift.records:,}"
            )


def reconcile(now: datetime, period: str | None = None) -> Reconciliation:
    query = (
        select(Statement).options(selectinload(Statement.lines)).order_by(Statement.period_start, Statement.tenant_id)
    )
    if period:
        start, _ = _period_bounds(period)
        query = query.where(Statement.period_start == start)
    statements = list(db.session.scalars(query))
    result = Reconciliation(statements=len(statements))
    if not statements:
        return result
    slugs = dict(db.session.execute(select(Tenant.id, Tenant.slug)).all())
    # Adjustments on later statements that bill each (tenant, period, service, model).
    adjusted: dict[tuple, Decimal] = defaultdict(Decimal)
    for row in db.session.execute(
        select(
            Statement.tenant_id,
            StatementLine.reference_period,
            StatementLine.service,
            StatementLine.model,
            StatementLine.exact_amount,
        )
        .join(StatementLine, StatementLine.statement_id == Statement.id)
        .where(StatementLine.kind == "adjustment")
    ):
        adjusted[(row[0], row[1], row[2] or "", row[3] or "")] += row[4] or ZERO

    by_period: dict[datetime, list[Statement]] = defaultdict(list)
    for statement in statements:
        by_period[statement.period_start].append(statement)
    for start, group in by_period.items():
        end = group[0].period_end
        ids = [s.tenant_id for s in group]
        kept = _raw_kept_since(ids, now)
        records = _from_records(ids, start, end)
        rollups = _from_rollups(ids, start, end)
        segments = defaultdict(list)
        for subscription, plan in db.session.execute(
            select(Subscription, Plan)
            .join(Plan, Plan.id == Subscription.plan_id)
            .where(
                Subscription.tenant_id.in_(ids),
                Subscription.started_at < end,
                (Subscription.ended_at.is_(None)) | (Subscription.ended_at > start),
            )
            .order_by(Subscription.started_at)
        ):
            segments[subscription.tenant_id].append((subscription, plan))
        for statement in group:
            label = f"{slugs.get(statement.tenant_id, statement.tenant_id)} {period_label(start)}"
            _check_statement(statement, label, segments[statement.tenant_id], result)
            raw = kept.get(statement.tenant_id) is not None and kept[statement.tenant_id] <= start
            _check_costs(statement, label, records if raw else None, rollups, adjusted, result)
    return result


def _check_statement(statement: Statement, label: str, segments: list, result: Reconciliation) -> None:
    start, end = statement.period_start, statement.period_end
    fee = sum((line.amount for line in fee_lines(segments, start, end)), ZERO)
    if fee != statement.plan_fee:
        result.differences.append(f"{label}: plan fee ${statement.plan_fee} on the statement, ${fee} from the plans")
    if segments:
        subscription, plan = segments[-1]
        _, line = overage_line(plan, subscription, statement.requests)
        overage = ZERO if line is None else line.amount
        if overage != statement.overage_amount:
            result.differences.append(
                f"{label}: overage ${statement.overage_amount} on the statement, ${overage} for "
                f"{statement.requests:,} calls"
            )
    lines_total = sum((line.amount for line in statement.lines if line.amount is not None), ZERO)
    if lines_total != statement.total:
        result.differences.append(f"{label}: total ${statement.total}, its lines add up to ${lines_total}")
    for line in statement.lines:
        if line.exact_amount is not None and line.amount != to_cent(line.exact_amount):
            result.differences.append(
                f"{label}: line {line.position} is ${line.amount}, rounds to ${to_cent(line.exact_amount)}"
            )


def _check_costs(
    statement: Statement, label: str, records: dict | None, rollups: dict, adjusted: dict, result: Reconciliation
) -> None:
    """Each service and model: the raw records (while kept) against the rollups the statement
    was made from, and the rollups against what was billed for the period so far."""
    tenant_id = statement.tenant_id
    month = period_label(statement.period_start)
    billed: dict[tuple, Decimal] = defaultdict(Decimal)
    listed: dict[tuple, int] = defaultdict(int)
    for line in statement.lines:
        key = (line.service or "", line.model or "")
        if line.kind in ("tokens", "service"):
            billed[key] += line.exact_amount or ZERO
        elif line.kind == "unpriced":
            listed[key] += line.quantity
    keys = {(s, m) for (t, s, m) in rollups if t == tenant_id} | set(billed) | set(listed)
    if records is not None:
        keys |= {(s, m) for (t, s, m) in records if t == tenant_id}
    for service, model in sorted(keys):
        name = f"{service} {model}".strip()
        rolled_cost, rolled_unpriced = rollups.get((tenant_id, service, model), (ZERO, 0))
        if records is not None:
            raw_cost, raw_unpriced = records.get((tenant_id, service, model), (ZERO, 0))
            if (raw_cost, raw_unpriced) != (rolled_cost, rolled_unpriced):
                result.differences.append(
                    f"{label} {name}: the records hold ${raw_cost:.8f} and {raw_unpriced} unpriced calls, the "
                    f"rollups billed from ${rolled_cost:.8f} and {rolled_unpriced}"
                )
                continue
        already = billed.get((service, model), ZERO) + adjusted.get((tenant_id, month, service, model), ZERO)
        if rolled_cost != already:
            result.pending.append(
                f"{label} {name}: ${to_cent(rolled_cost - already):+.2f} of late usage, billed on the next statement"
            )
        elif rolled_unpriced > listed.get((service, model), 0) and rolled_cost == already:
            result.pending.append(f"{label} {name}: calls still unpriced since the statement")
