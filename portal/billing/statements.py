"""Closing billing periods into statements, and the period so far.

A statement's lines, each rounded once to the cent (half up), the total their sum:

* **plan** — one line per plan the tenant was on during the period, its monthly price prorated
  by the share of the period spent on it (a plan change mid-period splits the fee);
* **overage** — admitted calls beyond the quota, at the plan's price per 1,000, when the tenant
  allowed overage, up to its cap;
* **tokens** / **service** — outside-service costs by service and model (``tokens`` when the
  calls were priced by tokens, ``service`` per call or unit), from the daily rollups;
* **unpriced** — outside calls with no price yet, listed with no amount (never billed as $0);
* **adjustment** — late usage of an earlier, closed period (an event dated in it that arrived
  after it closed, or a call priced since): what the records of that period add up to now,
  less what its statement and earlier adjustments billed, named by period. A closed statement
  never changes.

Calls admitted are counted from the stored records (each admitted API call carries one quota
unit, a refused one none), never from the quota counter in Redis, which is only a cache of them
(see :mod:`portal.metering.quota`; ``billing reconcile`` reports where the two differ).

Closing is idempotent: one statement per tenant and period (a unique key; a second closer's
insert does nothing), and the subscription's period is set to the one after — not advanced —
so running it twice, or on two workers at once, makes one statement.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..kernel.changes import mark_access_changed
from ..kernel.periods import billing_period
from ..metering.quota import quota_rollups
from ..models import Plan, Statement, StatementLine, Subscription, Tenant, UsageRollup
from ..models.usage import priced_calls

log = logging.getLogger("tollgate.billing")
CENT = Decimal("0.01")
ZERO = Decimal(0)
# Adjustments look this far back for late usage of closed periods.
ADJUSTMENT_MONTHS = 12
CHUNK = 500  # tenants closed per transaction


def to_cent(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def period_label(start: datetime) -> str:
    return f"{start:%Y-%m}"


@dataclass
class Line:
    kind: str
    description: str
    quantity: int = 1
    unit_price: Decimal | None = None
    exact: Decimal | None = None
    service: str | None = None
    model: str | None = None
    reference_period: str | None = None

    @property
    def amount(self) -> Decimal | None:
        return None if self.exact is None else to_cent(self.exact)


@dataclass
class Draft:
    """A statement before it is stored (also the period so far)."""

    tenant_id: int
    period_start: datetime
    period_end: datetime
    plan_code: str
    requests: int
    included_requests: int | None
    overage_requests: int
    lines: list[Line] = field(default_factory=list)

    def total_of(self, *kinds: str) -> Decimal:
        return sum((line.amount for line in self.lines if line.kind in kinds and line.amount is not None), ZERO)

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines if line.amount is not None), ZERO)

    @property
    def unpriced_calls(self) -> int:
        return sum(line.quantity for line in self.lines if line.kind == "unpriced")


# -- reading what a period holds, for many tenants at once ---------------------------------------
def _segments(tenant_ids: list[int], start: datetime, end: datetime) -> dict[int, list[tuple[Subscription, Plan]]]:
    """Each tenant's subscriptions overlapping [start, end), oldest first."""
    rows = db.session.execute(
        select(Subscription, Plan)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(
            Subscription.tenant_id.in_(tenant_ids),
            Subscription.started_at < end,
            (Subscription.ended_at.is_(None)) | (Subscription.ended_at > start),
        )
        .order_by(Subscription.tenant_id, Subscription.started_at)
    )
    found: dict[int, list] = defaultdict(list)
    for subscription, plan in rows:
        found[subscription.tenant_id].append((subscription, plan))
    return found


def _outside_rollups(tenant_ids: list[int], start: datetime, end: datetime) -> tuple:
    """The daily rollups of outside-service calls of ``tenant_ids`` in [start, end)."""
    return (
        UsageRollup.tenant_id.in_(tenant_ids),
        UsageRollup.granularity == "day",
        priced_calls(UsageRollup),
        UsageRollup.bucket_start >= start,
        UsageRollup.bucket_start < end,
    )


def outside_costs(tenant_ids: list[int], start: datetime, end: datetime) -> dict[int, list]:
    """Outside-service calls, tokens, cost and unpriced calls by service and model."""
    rows = db.session.execute(
        select(
            UsageRollup.tenant_id,
            UsageRollup.service,
            UsageRollup.model,
            func.sum(UsageRollup.calls).label("calls"),
            func.sum(UsageRollup.tokens_in + UsageRollup.tokens_out).label("tokens"),
            func.sum(UsageRollup.cost).label("cost"),
            func.sum(UsageRollup.unpriced).label("unpriced"),
        )
        .where(*_outside_rollups(tenant_ids, start, end))
        .group_by(UsageRollup.tenant_id, UsageRollup.service, UsageRollup.model)
        .order_by(UsageRollup.tenant_id, UsageRollup.service, UsageRollup.model)
    )
    found: dict[int, list] = defaultdict(list)
    for row in rows:
        found[row.tenant_id].append(row)
    return found


def admitted_calls(tenant_ids: list[int], start: datetime, end: datetime) -> dict[int, int]:
    """Calls admitted in [start, end), as the stored records count them against the quota."""
    counted = dict.fromkeys(tenant_ids, 0)
    if not tenant_ids:
        return counted
    rows = db.session.execute(
        select(UsageRollup.tenant_id, func.sum(UsageRollup.quota_units))
        .where(UsageRollup.tenant_id.in_(tenant_ids), *quota_rollups(start, end))
        .group_by(UsageRollup.tenant_id)
    )
    counted.update({tenant_id: int(calls or 0) for tenant_id, calls in rows})
    return counted


def _billed_before(tenant_ids: list[int], since: datetime, before: datetime) -> dict:
    """What was billed for each (tenant, period, service, model) of the closed periods in
    [since, before): their statements' cost lines plus every adjustment naming them."""
    billed: dict[tuple[int, str, str, str], Decimal] = defaultdict(Decimal)
    closed: dict[int, set[str]] = defaultdict(set)
    rows = db.session.execute(
        select(
            Statement.tenant_id,
            Statement.period_start,
            StatementLine.kind,
            StatementLine.service,
            StatementLine.model,
            StatementLine.reference_period,
            StatementLine.exact_amount,
        )
        .join(StatementLine, StatementLine.statement_id == Statement.id, isouter=True)
        .where(Statement.tenant_id.in_(tenant_ids), Statement.period_start >= since, Statement.period_start < before)
    )
    for row in rows:
        own = period_label(row.period_start)
        closed[row.tenant_id].add(own)
        if row.kind in ("tokens", "service"):
            billed[(row.tenant_id, own, row.service or "", row.model or "")] += row.exact_amount or ZERO
        elif row.kind == "adjustment":
            key = (row.tenant_id, row.reference_period, row.service or "", row.model or "")
            billed[key] += row.exact_amount or ZERO
    return {"billed": billed, "closed": closed}


def _costs_by_month(tenant_ids: list[int], since: datetime, before: datetime) -> dict:
    """Outside-service cost by (tenant, month, service, model) from the daily rollups."""
    month = func.strftime("%Y-%m", UsageRollup.bucket_start)
    if db.session.get_bind().dialect.name == "postgresql":
        month = func.to_char(func.timezone("UTC", UsageRollup.bucket_start), "YYYY-MM")
    rows = db.session.execute(
        select(
            UsageRollup.tenant_id,
            month.label("month"),
            UsageRollup.service,
            UsageRollup.model,
            func.sum(UsageRollup.cost).label("cost"),
        )
        .where(*_outside_rollups(tenant_ids, since, before))
        .group_by(UsageRollup.tenant_id, month, UsageRollup.service, UsageRollup.model)
    )
    return {(r.tenant_id, r.month, r.service, r.model): Decimal(r.cost or 0) for r in rows}


# -- the lines ----------------------------------------------------------------------------------
def _day(at: datetime) -> str:
    return f"{at:%b} {at.day}"


def fee_lines(segments: list[tuple[Subscription, Plan]], start: datetime, end: datetime) -> list[Line]:
    span = (end - start).total_seconds()
    lines = []
    for subscription, plan in segments:
        begin = max(subscription.started_at, start)
        finish = min(subscription.ended_at or end, end)
        seconds = (finish - begin).total_seconds()
        if seconds <= 0:
            continue
        share = Decimal(seconds) / Decimal(span)
        whole = begin == start and finish == end
        days = Decimal(seconds) / 86400
        when = (
            ""
            if whole
            else f", {_day(begin)}–{_day(finish - timedelta(seconds=1))} ({days:.1f} of {span / 86400:.0f} days)"
        )
        lines.append(
            Line(
                "plan",
                f"{plan.name} plan{when}",
                unit_price=plan.monthly_price,
                exact=plan.monthly_price * share,
            )
        )
    return lines


def overage_line(plan: Plan, subscription: Subscription, requests: int) -> tuple[int, Line | None]:
    if plan.monthly_quota is None or not subscription.allow_overage or plan.overage_price_per_1000 is None:
        return 0, None
    beyond = max(0, requests - plan.monthly_quota)
    if beyond == 0:
        return 0, None
    exact = Decimal(beyond) * plan.overage_price_per_1000 / 1000
    description = (
        f"{beyond:,} calls beyond the {plan.monthly_quota:,} included, at ${plan.overage_price_per_1000} per 1,000"
    )
    if subscription.overage_cap is not None and exact > subscription.overage_cap:
        exact = subscription.overage_cap
        description += f" (capped at ${subscription.overage_cap})"
    return beyond, Line(
        "overage", description, quantity=beyond, unit_price=plan.overage_price_per_1000 / 1000, exact=exact
    )


def outside_lines(rows: list) -> list[Line]:
    lines = []
    for row in rows:
        name = f"{row.service} {row.model}".strip() if row.model else row.service
        priced = int(row.calls or 0) - int(row.unpriced or 0)
        cost = Decimal(row.cost or 0)
        if priced > 0:
            kind = "tokens" if int(row.tokens or 0) > 0 else "service"
            what = f"{int(row.tokens):,} tokens in {priced:,} calls" if kind == "tokens" else f"{priced:,} calls"
            lines.append(
                Line(kind, f"{name}: {what}", quantity=priced, exact=cost, service=row.service, model=row.model)
            )
        if int(row.unpriced or 0) > 0:
            lines.append(
                Line(
                    "unpriced",
                    f"{name}: {int(row.unpriced):,} calls with no price yet (billed once priced)",
                    quantity=int(row.unpriced),
                    service=row.service,
                    model=row.model,
                )
            )
    return lines


def adjustment_lines(tenant_id: int, current: dict, billed: dict, closed: set[str]) -> list[Line]:
    lines = []
    keys = {k for k in current if k[0] == tenant_id} | {k for k in billed if k[0] == tenant_id}
    for key in sorted(keys, key=lambda k: (k[1], k[2], k[3])):
        _, month, service, model = key
        if month not in closed:
            continue
        difference = current.get(key, ZERO) - billed.get(key, ZERO)
        if difference == 0:
            continue
        name = f"{service} {model}".strip() if model else service
        lines.append(
            Line(
                "adjustment",
                f"Late usage from {month}: {name}",
                exact=difference,
                service=service,
                model=model or None,
                reference_period=month,
            )
        )
    return lines


# -- closing -------------------------------------------------------------------------------------
@dataclass
class Closed:
    statements: int = 0
    skipped: int = 0  # closed already (by another run)
    tenants: int = 0

    def as_dict(self) -> dict:
        return {"statements": self.statements, "skipped": self.skipped, "tenants": self.tenants}


def draft_statements(tenant_ids: list[int], start: datetime, end: datetime, upto: datetime):
    """The statements of [start, end) for ``tenant_ids`` with usage up to ``upto`` (the end, when
    closing; now, for the period so far)."""
    segments = _segments(tenant_ids, start, end)
    costs = outside_costs(tenant_ids, start, min(end, upto + timedelta(days=1)))
    calls = admitted_calls(tenant_ids, start, end)
    since = (start - timedelta(days=31 * ADJUSTMENT_MONTHS)).replace(day=1)
    history = _billed_before(tenant_ids, since, start)
    current = _costs_by_month(tenant_ids, since, start) if any(history["closed"].values()) else {}
    drafts = []
    for tenant_id in tenant_ids:
        held = segments.get(tenant_id)
        if not held:
            continue
        last_subscription, last_plan = held[-1]
        requests = calls.get(tenant_id, 0)
        draft = Draft(tenant_id, start, end, last_plan.code, requests, last_plan.monthly_quota, 0)
        draft.lines += fee_lines(held, start, end)
        beyond, overage = overage_line(last_plan, last_subscription, requests)
        draft.overage_requests = beyond
        if overage is not None:
            draft.lines.append(overage)
        draft.lines += outside_lines(costs.get(tenant_id, []))
        draft.lines += adjustment_lines(tenant_id, current, history["billed"], history["closed"].get(tenant_id, set()))
        drafts.append(draft)
    return drafts


def _store(drafts: list[Draft], now: datetime) -> tuple[int, int]:
    """Add the statements not stored yet; returns (added, skipped). The unique key on tenant and
    period refuses a statement another closer stored meanwhile (the caller's commit fails)."""
    if not drafts:
        return 0, 0
    start = drafts[0].period_start
    stored_already = set(
        db.session.scalars(
            select(Statement.tenant_id).where(
                Statement.tenant_id.in_([d.tenant_id for d in drafts]), Statement.period_start == start
            )
        )
    )
    added = 0
    for draft in drafts:
        if draft.tenant_id in stored_already:
            continue
        statement = Statement(
            tenant_id=draft.tenant_id,
            period_start=draft.period_start,
            period_end=draft.period_end,
            plan_code=draft.plan_code,
            requests=draft.requests,
            included_requests=draft.included_requests,
            overage_requests=draft.overage_requests,
            plan_fee=draft.total_of("plan"),
            overage_amount=draft.total_of("overage"),
            token_cost=draft.total_of("tokens"),
            service_cost=draft.total_of("service"),
            adjustments=draft.total_of("adjustment"),
            unpriced_calls=draft.unpriced_calls,
            total=draft.total,
            closed_at=now,
        )
        statement.lines = [
            StatementLine(
                position=i,
                kind=line.kind,
                description=line.description[:200],
                quantity=line.quantity,
                unit_price=line.unit_price,
                amount=line.amount,
                exact_amount=line.exact,
                service=line.service,
                model=line.model,
                reference_period=line.reference_period,
            )
            for i, line in enumerate(draft.lines)
        ]
        db.session.add(statement)
        added += 1
    return added, len(drafts) - added


def _roll_over(tenant_ids: list[int], start: datetime, end: datetime) -> None:
    """Move each tenant's subscription to the period after [start, end); a scheduled downgrade
    starts then."""
    following_start, following_end = billing_period(end)
    rows = db.session.scalars(
        select(Subscription).where(
            Subscription.tenant_id.in_(tenant_ids),
            Subscription.ended_at.is_(None),
            Subscription.current_period_start == start,
        )
    )
    changed_plans = False
    for subscription in rows:
        if subscription.scheduled_plan_id is not None and subscription.scheduled_plan_id != subscription.plan_id:
            subscription.ended_at = end
            subscription.status = "ended"
            db.session.add(
                Subscription(
                    tenant_id=subscription.tenant_id,
                    plan_id=subscription.scheduled_plan_id,
                    status="active",
                    current_period_start=following_start,
                    current_period_end=following_end,
                    started_at=end,
                    # Overage needs a paid plan with a quota; a downgrade keeps the choice if it can.
                    allow_overage=False,
                )
            )
            subscription.scheduled_plan_id = None
            changed_plans = True
        else:
            subscription.current_period_start = following_start
            subscription.current_period_end = following_end
    if changed_plans:
        mark_access_changed()


def close_periods(now: datetime) -> dict:
    """Close every billing period that has ended: one statement per tenant and period."""
    result = Closed()
    while True:
        due = db.session.execute(
            select(Subscription.current_period_start, Subscription.tenant_id)
            .join(Tenant, Tenant.id == Subscription.tenant_id)
            .where(Subscription.ended_at.is_(None), Subscription.current_period_end <= now)
            .order_by(Subscription.current_period_start, Subscription.tenant_id)
        ).all()
        if not due:
            return result.as_dict()
        by_period: dict[datetime, list[int]] = defaultdict(list)
        for start, tenant_id in due:
            by_period[start].append(tenant_id)
        # The oldest open period first; a tenant several periods behind closes one a round.
        start = min(by_period)
        tenant_ids = by_period[start]
        _, end = billing_period(start)
        for i in range(0, len(tenant_ids), CHUNK):
            chunk = tenant_ids[i : i + CHUNK]
            try:
                drafts = draft_statements(chunk, start, end, end)
                stored, skipped = _store(drafts, now)
                _roll_over(chunk, start, end)
                db.session.commit()
            except IntegrityError:
                # Another closer stored some of these first: look again at what is still due.
                db.session.rollback()
                result.skipped += len(chunk)
                break
            result.statements += stored
            result.skipped += skipped
            result.tenants += len(chunk)
        log.info("closed %s for %d tenants", period_label(start), len(tenant_ids))


def tenant_statements(tenant_id: int) -> list[Statement]:
    return list(
        db.session.scalars(
            select(Statement).where(Statement.tenant_id == tenant_id).order_by(Statement.period_start.desc())
        )
    )


def get_statement(tenant_id: int, statement_id: int) -> Statement | None:
    return db.session.scalar(select(Statement).where(Statement.tenant_id == tenant_id, Statement.id == statement_id))
