"""Statements as the API shows them: JSON (seed 004's camelCase, as the other billing
endpoints) and CSV."""

from __future__ import annotations

from decimal import Decimal

from ..kernel.csv_export import csv_document
from ..kernel.times import iso
from ..models import Statement


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _cents(value: Decimal | None) -> Decimal | None:
    # A CSV amount stays a number, so a spreadsheet can sum the column.
    return None if value is None else value.quantize(Decimal("0.01"))


def statement_summary(statement: Statement) -> dict:
    return {
        "id": statement.id,
        "period": f"{statement.period_start:%Y-%m}",
        "periodStart": iso(statement.period_start),
        "periodEnd": iso(statement.period_end),
        "planCode": statement.plan_code,
        "currency": statement.currency,
        "requests": statement.requests,
        "includedRequests": statement.included_requests,
        "overageRequests": statement.overage_requests,
        "planFee": _money(statement.plan_fee),
        "overage": _money(statement.overage_amount),
        "tokenCost": _money(statement.token_cost),
        "serviceCost": _money(statement.service_cost),
        "adjustments": _money(statement.adjustments),
        "unpricedCalls": statement.unpriced_calls,
        "total": _money(statement.total),
        "closedAt": iso(statement.closed_at),
    }


def statement_json(statement: Statement) -> dict:
    return {
        **statement_summary(statement),
        "lines": [
            {
                "position": line.position,
                "kind": line.kind,
                "description": line.description,
                "quantity": line.quantity,
                "unitPrice": None if line.unit_price is None else str(line.unit_price.normalize()),
                "amount": _money(line.amount),
                "service": line.service,
                "model": line.model or None,
                "referencePeriod": line.reference_period,
            }
            for line in statement.lines
        ],
    }


LINE_COLUMNS = (
    "period",
    "position",
    "kind",
    "description",
    "service",
    "model",
    "reference_period",
    "quantity",
    "unit_price",
    "amount",
)


def statement_csv(statement: Statement) -> str:
    """One row per line, then the total (amounts in dollars with cents; unpriced lines empty)."""
    period = f"{statement.period_start:%Y-%m}"
    rows: list[list] = [list(LINE_COLUMNS)]
    for line in statement.lines:
        rows.append(
            [
                period,
                line.position,
                line.kind,
                line.description,
                line.service or "",
                line.model or "",
                line.reference_period or "",
                line.quantity,
                None if line.unit_price is None else line.unit_price.normalize(),
                _cents(line.amount),
            ]
        )
    rows.append([period, "", "total", "Total", "", "", "", "", "", _cents(statement.total)])
    return csv_document(rows)


SUMMARY_COLUMNS = (
    "id",
    "period",
    "plan",
    "requests",
    "overage_requests",
    "plan_fee",
    "overage",
    "token_cost",
    "service_cost",
    "adjustments",
    "unpriced_calls",
    "total",
    "closed_at",
)


def statements_csv(statements: list[Statement]) -> str:
    rows: list[list] = [list(SUMMARY_COLUMNS)]
    for s in statements:
        rows.append(
            [
                s.id,
                f"{s.period_start:%Y-%m}",
                s.plan_code,
                s.requests,
                s.overage_requests,
                _cents(s.plan_fee),
                _cents(s.overage_amount),
                _cents(s.token_cost),
                _cents(s.service_cost),
                _cents(s.adjustments),
                s.unpriced_calls,
                _cents(s.total),
                iso(s.closed_at),
            ]
        )
    return csv_document(rows)
