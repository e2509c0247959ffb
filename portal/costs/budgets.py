"""Budgets: a monthly spending cap per tenant, or per service, key or end user of it.

Spend is the priced outside-service cost of the calendar month (UTC) so far, read from the daily
rollups. :func:`evaluate_budgets` runs after each stored batch of usage (and after a budget
changes): each warning percentage reached is recorded once per period
(:class:`~portal.models.BudgetCrossing`), and a hard-stopped budget whose spend reached its amount
goes into the tenant's stops hash in Redis, which the admission script and acquires read — so a
stop applies within seconds of the event that crossed it, and lifts when the budget is raised,
removed, or the month ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..kernel.audit import record_event
from ..kernel.periods import billing_period
from ..kernel.redis_keys import budget_stops_key
from ..kernel.times import iso
from ..models import ApiKey, Budget, BudgetCrossing, UsageRollup
from ..models.usage import priced_calls

DEFAULT_PERCENTAGES = (50, 80, 100)
MAX_AMOUNT = Decimal("9999999999.99")
log = logging.getLogger("tollgate.budgets")


class BudgetError(ValueError):
    """A budget could not be saved as asked."""


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    spend: Decimal
    period_start: datetime
    period_end: datetime
    crossed: list[int]

    @property
    def fraction(self) -> float:
        return float(self.spend / self.budget.monthly_amount) if self.budget.monthly_amount else 1.0

    @property
    def stopped(self) -> bool:
        return self.budget.hard_stop and self.spend >= self.budget.monthly_amount

    def stop_field(self) -> str:
        return stop_field(self.budget)

    def stop_detail(self) -> str:
        b = self.budget
        return (
            f"Budget {b.name!r} of ${b.monthly_amount:,.2f} a month is used up (${self.spend:,.2f} spent since "
            f"{self.period_start:%Y-%m-%d}); it resets at {iso(self.period_end)}"
        )


def stop_field(budget: Budget) -> str:
    """The budget's field in the stops hash: what its hard stop refuses."""
    if budget.service:
        return f"svc:{budget.service}"
    if budget.api_key_id:
        return f"key:{budget.api_key_id}"
    if budget.end_user:
        return f"user:{budget.end_user}"
    return "*"


def _amount(value) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise BudgetError(f"amount must be a number of dollars; got {value!r}") from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_AMOUNT:
        raise BudgetError("amount must be more than 0 and at most 9,999,999,999.99")
    if amount != amount.quantize(Decimal("0.01")):
        raise BudgetError("amount is in dollars and cents (at most two decimal places)")
    return amount


def _percentages(values: Iterable[int] | None) -> list[int]:
    chosen = sorted(set(DEFAULT_PERCENTAGES if values is None else values))
    if not chosen:
        raise BudgetError("warning_percentages needs at least one percentage")
    if any(p < 1 or p > 1000 for p in chosen):
        raise BudgetError("each warning percentage must be between 1 and 1000")
    return chosen


def _check_scope(tenant_id: int, service: str | None, api_key_id: int | None, end_user: str | None) -> None:
    if sum(1 for scope in (service, api_key_id, end_user) if scope) > 1:
        raise BudgetError("a budget covers the whole tenant or one of service, api_key_id, user_id; not several")
    if (
        api_key_id
        and db.session.scalar(select(ApiKey.id).where(ApiKey.id == api_key_id, ApiKey.tenant_id == tenant_id)) is None
    ):
        raise BudgetError(f"api_key_id: no API key {api_key_id} in this account")


def create_budget(
    tenant_id: int,
    name: str,
    amount,
    *,
    service: str | None = None,
    api_key_id: int | None = None,
    end_user: str | None = None,
    warning_percentages: Iterable[int] | None = None,
    hard_stop: bool = False,
) -> Budget:
    if not name:
        raise BudgetError("name: the budget needs a name")
    _check_scope(tenant_id, service, api_key_id, end_user)
    budget = Budget(
        tenant_id=tenant_id,
        name=name,
        monthly_amount=_amount(amount),
        service=service or None,
        api_key_id=api_key_id or None,
        end_user=end_user or None,
        warning_percentages=_percentages(warning_percentages),
        hard_stop=hard_stop,
    )
    db.session.add(budget)
    return budget


def record_budget_change(
    action: str,
    budget: Budget,
    user_id: int | None = None,
    ip_address: str | None = None,
    api_key_id: int | None = None,
) -> None:
    """The audit event of a budget created, updated or deleted by a user, or through the API
    with the key ``api_key_id`` (the budget's own key, if it covers one, is ``budget_key_id``);
    the caller's commit stores it."""
    details = {
        "budget_id": budget.id,
        "name": budget.name,
        "amount": f"{budget.monthly_amount:.2f}",
        "service": budget.service,
        "budget_key_id": budget.api_key_id,
        "end_user": budget.end_user,
        "warning_percentages": budget.warning_percentages,
        "hard_stop": budget.hard_stop,
    }
    if api_key_id is not None:
        details["api_key_id"] = api_key_id
    record_event(action, budget.tenant_id, user_id, ip_address, **details)


UPDATABLE = ("name", "amount", "service", "api_key_id", "end_user", "warning_percentages", "hard_stop")


SCOPES = ("service", "api_key_id", "end_user")


def update_budget(budget: Budget, changes: dict) -> Budget:
    """Apply the given fields (only those present); everything is checked before anything changes.
    A budget has one scope at most: a new one replaces the old."""
    unknown = set(changes) - set(UPDATABLE)
    if unknown:
        raise BudgetError(f"unknown fields: {', '.join(sorted(unknown))}")
    if any(changes.get(scope) for scope in SCOPES):
        changes = {**dict.fromkeys(SCOPES), **changes}
    name = changes.get("name", budget.name)
    if not name:
        raise BudgetError("name: the budget needs a name")
    amount = _amount(changes["amount"]) if "amount" in changes else budget.monthly_amount
    service = changes.get("service", budget.service) or None
    api_key_id = changes.get("api_key_id", budget.api_key_id) or None
    end_user = changes.get("end_user", budget.end_user) or None
    _check_scope(budget.tenant_id, service, api_key_id, end_user)
    percentages = (
        _percentages(changes["warning_percentages"]) if "warning_percentages" in changes else budget.warning_percentages
    )
    budget.name = name
    budget.monthly_amount = amount
    budget.service, budget.api_key_id, budget.end_user = service, api_key_id, end_user
    budget.warning_percentages = percentages
    budget.hard_stop = bool(changes.get("hard_stop", budget.hard_stop))
    return budget


@dataclass(frozen=True)
class Actor:
    """Who changes a budget, for its audit event: a signed-in user, or an API key (no user)."""

    user_id: int | None = None
    ip_address: str | None = None
    api_key_id: int | None = None


def _settle(action: str, budget: Budget, actor: Actor, redis: Redis, now: datetime, deleting: bool = False) -> None:
    """Audit the change, apply or lift the tenant's stops at once, and commit."""
    db.session.flush()
    record_budget_change(action, budget, actor.user_id, actor.ip_address, actor.api_key_id)
    if deleting:
        db.session.delete(budget)
        db.session.flush()
    evaluate_budgets(redis, {budget.tenant_id}, now)
    db.session.commit()


def add_budget(tenant_id: int, name: str, amount, actor: Actor, redis: Redis, now: datetime, **fields) -> Budget:
    """Create a budget (fields as :func:`create_budget` takes them), audited, its stop in force
    at once; committed. Raises BudgetError, nothing kept, when refused."""
    try:
        budget = create_budget(tenant_id, name, amount, **fields)
    except BudgetError:
        db.session.rollback()
        raise
    _settle("budget.created", budget, actor, redis, now)
    return budget


def change_budget(budget: Budget, changes: dict, actor: Actor, redis: Redis, now: datetime) -> Budget:
    """:func:`update_budget`, audited, a stop applied or lifted at once; committed. Raises
    BudgetError, nothing changed, when refused."""
    try:
        update_budget(budget, changes)
    except BudgetError:
        db.session.rollback()
        raise
    _settle("budget.updated", budget, actor, redis, now)
    return budget


def delete_budget(budget: Budget, actor: Actor, redis: Redis, now: datetime) -> None:
    """Delete a budget, audited; any stop it held lifts at once. Committed."""
    _settle("budget.deleted", budget, actor, redis, now, deleting=True)


def tenant_budgets(tenant_id: int) -> list[Budget]:
    return list(db.session.scalars(select(Budget).where(Budget.tenant_id == tenant_id).order_by(Budget.id)))


def get_budget(tenant_id: int, budget_id: int) -> Budget | None:
    return db.session.scalar(select(Budget).where(Budget.id == budget_id, Budget.tenant_id == tenant_id))


def _spends(budgets: list[Budget], start: datetime, end: datetime) -> dict[int, Decimal]:
    """Each budget's spend over [start, end): one grouped query per tenant's budgets."""
    if not budgets:
        return {}
    tenant_ids = {b.tenant_id for b in budgets}
    rows = db.session.execute(
        select(
            UsageRollup.tenant_id,
            UsageRollup.service,
            UsageRollup.api_key_id,
            UsageRollup.end_user,
            func.sum(UsageRollup.cost),
        )
        .where(
            UsageRollup.tenant_id.in_(tenant_ids),
            UsageRollup.granularity == "day",
            UsageRollup.bucket_start >= start,
            UsageRollup.bucket_start < end,
            priced_calls(UsageRollup),
        )
        .group_by(UsageRollup.tenant_id, UsageRollup.service, UsageRollup.api_key_id, UsageRollup.end_user)
    ).all()
    spends = {}
    for budget in budgets:
        total = Decimal(0)
        for tenant_id, service, key_id, end_user, cost in rows:
            if tenant_id != budget.tenant_id:
                continue
            if budget.service and service != budget.service:
                continue
            if budget.api_key_id and key_id != budget.api_key_id:
                continue
            if budget.end_user and end_user != budget.end_user:
                continue
            total += Decimal(cost or 0)
        spends[budget.id] = total
    return spends


def budget_statuses(budgets: list[Budget], now: datetime) -> list[BudgetStatus]:
    start, end = billing_period(now)
    spends = _spends(budgets, start, end)
    crossed: dict[int, list[int]] = {}
    if budgets:
        for budget_id, percentage in db.session.execute(
            select(BudgetCrossing.budget_id, BudgetCrossing.percentage).where(
                BudgetCrossing.budget_id.in_([b.id for b in budgets]), BudgetCrossing.period_start == start
            )
        ):
            crossed.setdefault(budget_id, []).append(percentage)
    return [BudgetStatus(b, spends[b.id], start, end, sorted(crossed.get(b.id, []))) for b in budgets]


def _insert(table):
    dialect = db.session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def evaluate_budgets(redis: Redis, tenant_ids: Iterable[int], now: datetime) -> list[BudgetCrossing]:
    """Record new threshold crossings and refresh the tenants' hard stops; the caller commits
    the crossings (stops are written to Redis at once). Returns the crossings new this time."""
    tenant_ids = set(tenant_ids)
    if not tenant_ids:
        return []
    budgets = list(db.session.scalars(select(Budget).where(Budget.tenant_id.in_(tenant_ids))))
    statuses = budget_statuses(budgets, now)
    new: list[BudgetCrossing] = []
    rows = []
    for status in statuses:
        budget = status.budget
        for percentage in budget.warning_percentages:
            if percentage in status.crossed or status.spend * 100 < budget.monthly_amount * percentage:
                continue
            rows.append(
                {
                    "tenant_id": budget.tenant_id,
                    "budget_id": budget.id,
                    "period_start": status.period_start,
                    "percentage": percentage,
                    "spend": status.spend,
                    "amount": budget.monthly_amount,
                    "crossed_at": now,
                }
            )
    statement = (
        _insert(BudgetCrossing.__table__)
        .on_conflict_do_nothing(index_elements=["budget_id", "period_start", "percentage"])
        .returning(BudgetCrossing.__table__.c.id)
    )
    # A crossing another worker recorded first inserts nothing here: once per period each.
    ids = [i for i in (db.session.execute(statement, row).scalar() for row in rows) if i is not None]
    if ids:
        new = list(db.session.scalars(select(BudgetCrossing).where(BudgetCrossing.id.in_(ids))))
        for crossing in new:
            log.warning(
                "budget %s of tenant %s reached %s%% (%s of %s)",
                crossing.budget_id,
                crossing.tenant_id,
                crossing.percentage,
                crossing.spend,
                crossing.amount,
            )
    write_stops(redis, tenant_ids, statuses, now)
    return new


def write_stops(redis: Redis, tenant_ids: set[int], statuses: list[BudgetStatus], now: datetime) -> None:
    """Replace each tenant's stops hash with its budgets' current hard stops."""
    stops: dict[int, dict[str, str]] = {tenant_id: {} for tenant_id in tenant_ids}
    ends: dict[int, datetime] = {}
    for status in statuses:
        if status.stopped:
            stops[status.budget.tenant_id].setdefault(status.stop_field(), status.stop_detail())
            ends[status.budget.tenant_id] = status.period_end
    pipe = redis.pipeline(transaction=True)
    for tenant_id, fields in stops.items():
        key = budget_stops_key(tenant_id)
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, max(1, int((ends[tenant_id] - now).total_seconds())))
    pipe.execute()
