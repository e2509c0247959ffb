"""The portal's costs page: spend grouped as ``costs/report`` groups it, spend per day, budgets
with their progress, the month's forecast, and the prices the tenant's calls are priced with.

Every figure comes from the daily rollups (through :func:`~portal.costs.report.cost_report`, so
the page and the API agree to the cent) and a fixed number of statements, whatever the number of
keys, end users, models or days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import or_, select

from ..billing.changes import upcoming
from ..billing.statements import outside_costs
from ..extensions import db
from ..models import ApiKey, Budget, ModelPrice
from .budgets import BudgetStatus, budget_statuses
from .prices import Price, PriceBook
from .report import CostReport, cost_report

# The groupings the page offers, in the order of its tabs: (group_by of cost_report, label).
GROUPS = (
    ("service", "Service"),
    ("model", "Model"),
    ("key", "API key"),
    ("end_user", "End user"),
    ("endpoint", "Endpoint"),
)
MAX_DAYS = 366


def month_bounds(year: int, month: int) -> tuple[date, date]:
    """The first and last day of a calendar month."""
    first = date(year, month, 1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


@dataclass(frozen=True)
class DayCost:
    day: date
    cost: Decimal
    calls: int
    unpriced: int


@dataclass(frozen=True)
class PriceRow:
    """A (service, model) the tenant called in the range, and the price a call to it gets now."""

    service: str
    model: str
    calls: int
    unpriced: int
    cost: Decimal
    price: Price | None

    @property
    def own(self) -> bool:
        return self.price is not None and self.price.tenant_id is not None


@dataclass(frozen=True)
class BudgetRow:
    status: BudgetStatus
    scope: str  # what the budget covers, in words

    @property
    def budget(self) -> Budget:
        return self.status.budget

    @property
    def remaining(self) -> Decimal:
        return max(self.budget.monthly_amount - self.status.spend, Decimal(0))


@dataclass(frozen=True)
class CostForecast:
    """The month's usage charges so far and at the current pace (``billing/upcoming``)."""

    period_start: datetime
    period_end: datetime
    elapsed_share: float
    usage_so_far: Decimal  # everything on the draft statement but the plan fee
    plan_fee: Decimal
    unpriced_calls: int
    usage_forecast: Decimal | None  # None until enough of the period has passed
    total_forecast: Decimal | None
    note: str | None


@dataclass(frozen=True)
class CostOverview:
    start: date
    end: date
    group: str
    report: CostReport
    days: list[DayCost]
    prices: list[PriceRow]
    own_prices: list[Price]
    budgets: list[BudgetRow]
    keys: list[ApiKey]
    forecast: CostForecast

    @property
    def total_cost(self) -> Decimal:
        return self.report.total_cost

    @property
    def unpriced_calls(self) -> int:
        return self.report.total("unpriced_calls")

    @property
    def calls(self) -> int:
        return self.report.total("calls")

    @property
    def unpriced_models(self) -> list[PriceRow]:
        return [row for row in self.prices if row.unpriced]


def daily_costs(report: CostReport) -> list[DayCost]:
    """One entry per day of a ``group_by="day"`` report's range, zero-filled."""
    by_day = {g.key: g for g in report.groups}
    days = []
    day = report.start
    while day <= report.end:
        group = by_day.get(day.isoformat())
        if group is None:
            days.append(DayCost(day, Decimal(0), 0, 0))
        else:
            days.append(DayCost(day, group.cost, group.calls, group.unpriced_calls))
        day += timedelta(days=1)
    return days


def price_rows(tenant_id: int, start: date, end: date, book: PriceBook, at: datetime) -> list[PriceRow]:
    """The services and models called in the range, each with the price a call to it gets at ``at``."""
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    finish = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    rows = outside_costs([tenant_id], begin, finish).get(tenant_id, [])
    return [
        PriceRow(
            service=row.service,
            model=row.model or "",
            calls=int(row.calls or 0),
            unpriced=int(row.unpriced or 0),
            cost=Decimal(row.cost or 0),
            price=book.price_at(row.service, row.model or "", at, tenant_id),
        )
        for row in rows
    ]


def own_prices(tenant_id: int, at: datetime) -> list[Price]:
    """The tenant's negotiated price versions in force at ``at`` or starting later."""
    rows = db.session.scalars(
        select(ModelPrice)
        .where(
            ModelPrice.tenant_id == tenant_id,
            or_(ModelPrice.effective_to.is_(None), ModelPrice.effective_to > at),
        )
        .order_by(ModelPrice.service, ModelPrice.model, ModelPrice.effective_from)
    )
    return [Price.from_row(row) for row in rows]


def budget_scope(budget: Budget, key_names: dict[int, str]) -> str:
    if budget.service:
        return f"Service {budget.service}"
    if budget.api_key_id:
        return f"API key {key_names.get(budget.api_key_id, budget.api_key_id)}"
    if budget.end_user:
        return f"End user {budget.end_user}"
    return "The whole account"


def budget_rows(budgets: list[Budget], keys: list[ApiKey], now: datetime) -> list[BudgetRow]:
    names = {key.id: key.name for key in keys}
    return [BudgetRow(status, budget_scope(status.budget, names)) for status in budget_statuses(budgets, now)]


def tenant_keys(tenant_id: int) -> list[ApiKey]:
    return list(db.session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.name)))


def tenant_budget_list(tenant_id: int) -> list[Budget]:
    return list(db.session.scalars(select(Budget).where(Budget.tenant_id == tenant_id).order_by(Budget.name)))


def _decimal(value: str | None) -> Decimal:
    return Decimal(value) if value is not None else Decimal(0)


def cost_forecast(tenant_id: int, now: datetime) -> CostForecast:
    """The period so far and its forecast, as ``billing/upcoming`` reports them."""
    body = upcoming(tenant_id, now)
    statement = body["statement"]
    plan_fee = _decimal(statement["planFee"])
    forecast = body["forecast"]
    return CostForecast(
        period_start=datetime.fromisoformat(body["periodStart"]),
        period_end=datetime.fromisoformat(body["periodEnd"]),
        elapsed_share=body["elapsedShare"],
        usage_so_far=_decimal(statement["total"]) - plan_fee,
        plan_fee=plan_fee,
        unpriced_calls=statement["unpricedCalls"],
        usage_forecast=None if forecast is None else Decimal(forecast["usageCost"]),
        total_forecast=None if forecast is None else Decimal(forecast["total"]),
        note=body.get("forecastNote"),
    )


def cost_overview(book: PriceBook, tenant_id: int, start: date, end: date, group: str, now: datetime) -> CostOverview:
    """Everything the costs page shows for the days ``start`` to ``end`` (both included)."""
    keys = tenant_keys(tenant_id)
    return CostOverview(
        start=start,
        end=end,
        group=group,
        report=cost_report(tenant_id, group, start, end),
        days=daily_costs(cost_report(tenant_id, "day", start, end)),
        prices=price_rows(tenant_id, start, end, book, now),
        own_prices=own_prices(tenant_id, now),
        budgets=budget_rows(tenant_budget_list(tenant_id), keys, now),
        keys=keys,
        forecast=cost_forecast(tenant_id, now),
    )
