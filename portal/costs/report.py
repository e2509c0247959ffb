"""Cost reports: outside-service spend grouped by service, model, endpoint, key, end user or day.

Read from the daily rollups over whole UTC days, the same rows ``usage/stats`` and
``usage/summary`` sum, so the totals agree to the cent. Costs are summed exactly (Decimal) and
rounded only where they are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import case, func, select

from ..extensions import db
from ..kernel.csv_export import csv_document
from ..kernel.periods import day_bounds
from ..models import ApiKey, UsageRollup
from ..models.usage import priced_calls

GROUPS = {
    "service": UsageRollup.service,
    "model": UsageRollup.model,
    "endpoint": UsageRollup.endpoint,
    "key": UsageRollup.api_key_id,
    "end_user": UsageRollup.end_user,
    "day": UsageRollup.bucket_start,
}
SOURCES = ("external", "api", "all")
SHOWN = Decimal("0.000001")


@dataclass
class CostGroup:
    key: str
    calls: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens: int = 0
    quota_units: int = 0
    unpriced_calls: int = 0
    cost: Decimal = Decimal(0)
    api_key_id: int | None = None


@dataclass
class CostReport:
    group_by: str
    start: date
    end: date
    source: str
    groups: list[CostGroup]

    @property
    def total_cost(self) -> Decimal:
        return sum((g.cost for g in self.groups), Decimal(0))

    def total(self, name: str) -> int:
        return sum(getattr(g, name) for g in self.groups)


def cost_report(
    tenant_id: int, group_by: str, start: date, end: date, source: str = "external", service: str | None = None
) -> CostReport:
    """Spend over the days ``start`` to ``end`` (both included), largest cost first."""
    column = GROUPS[group_by]
    begin, finish = day_bounds(start, end)
    conditions = [
        UsageRollup.tenant_id == tenant_id,
        UsageRollup.granularity == "day",
        UsageRollup.bucket_start >= begin,
        UsageRollup.bucket_start < finish,
    ]
    if source == "external":
        conditions.append(priced_calls(UsageRollup))
    elif source != "all":
        conditions.append(UsageRollup.source == source)
    if service:
        conditions.append(UsageRollup.service == service)
    rows = db.session.execute(
        select(
            column,
            func.sum(UsageRollup.calls),
            func.sum(UsageRollup.errors),
            func.sum(UsageRollup.tokens_in),
            func.sum(UsageRollup.tokens_out),
            func.sum(UsageRollup.cached_tokens),
            # An outside service's quota units (an API call's quota unit is Tollgate's own quota).
            func.sum(case((UsageRollup.source == "external", UsageRollup.quota_units), else_=0)),
            func.sum(UsageRollup.unpriced),
            func.sum(UsageRollup.cost),
        )
        .where(*conditions)
        .group_by(column)
    ).all()
    names = {}
    if group_by == "key":
        names = dict(
            db.session.execute(
                select(ApiKey.id, ApiKey.name).where(ApiKey.tenant_id == tenant_id, ApiKey.id.in_([r[0] for r in rows]))
            ).all()
        )
    groups = []
    for value, calls, errors, t_in, t_out, cached, units, unpriced, cost in rows:
        group = CostGroup(
            key=_label(group_by, value, names),
            calls=int(calls),
            errors=int(errors),
            tokens_in=int(t_in),
            tokens_out=int(t_out),
            cached_tokens=int(cached),
            quota_units=int(units),
            unpriced_calls=int(unpriced),
            cost=Decimal(cost or 0),
            api_key_id=(int(value) or None) if group_by == "key" else None,
        )
        groups.append(group)
    if group_by == "day":
        groups.sort(key=lambda g: g.key)
    else:
        groups.sort(key=lambda g: (-g.cost, -g.calls, g.key))
    return CostReport(group_by, start, end, source, groups)


def _label(group_by: str, value, names: dict) -> str:
    if group_by == "day":
        return value.date().isoformat()
    if group_by == "key":
        return "no key" if not value else names.get(value, f"deleted key {value}")
    return value or "(none)"


def shown(amount: Decimal) -> float:
    """A cost as a JSON number, to the millionth of a dollar."""
    return float(amount.quantize(SHOWN))


def report_json(report: CostReport) -> dict:
    total = report.total_cost
    return {
        "group_by": report.group_by,
        "startDate": report.start.isoformat(),
        "endDate": report.end.isoformat(),
        "source": report.source,
        "total_cost": shown(total),
        "total_calls": report.total("calls"),
        "total_tokens": report.total("tokens_in") + report.total("tokens_out"),
        "unpriced_calls": report.total("unpriced_calls"),
        "groups": [
            {
                "key": g.key,
                **({"api_key_id": g.api_key_id} if report.group_by == "key" else {}),
                "calls": g.calls,
                "errors": g.errors,
                "tokens_in": g.tokens_in,
                "tokens_out": g.tokens_out,
                "cached_tokens": g.cached_tokens,
                "quota_units": g.quota_units,
                "unpriced_calls": g.unpriced_calls,
                "cost": shown(g.cost),
                "share": round(float(g.cost / total * 100), 2) if total else 0.0,
            }
            for g in report.groups
        ],
    }


CSV_COLUMNS = (
    "calls",
    "errors",
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "quota_units",
    "unpriced_calls",
)


def report_csv(report: CostReport) -> str:
    rows: list[list] = [[report.group_by, *CSV_COLUMNS, "cost_usd"]]
    for g in report.groups:
        rows.append([g.key, *(getattr(g, c) for c in CSV_COLUMNS), g.cost.quantize(SHOWN)])
    rows.append(["total", *(report.total(c) for c in CSV_COLUMNS), report.total_cost.quantize(SHOWN)])
    return csv_document(rows)
