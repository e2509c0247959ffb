"""Jinja filters for figures: money, counts, times."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from flask import Flask

from ..models import as_money


def money(value: Decimal | int | None) -> str:
    amount = as_money(value)
    return f"-${-amount:,.2f}" if amount < 0 else f"${amount:,.2f}"


def fine_money(value: Decimal | None) -> str:
    """Small costs keep their fractions of a cent."""
    if value is None:
        return "—"
    amount = Decimal(value)
    if amount != 0 and abs(amount) < Decimal("0.01"):
        return f"${amount:.6f}".rstrip("0")
    return money(amount)


def count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def utc(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    return "—" if value is None else value.strftime(fmt)


def percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(money=money, fine_money=fine_money, count=count, utc=utc, percent=percent)
