"""Filters: the Jinja filters for figures (money, counts, times), and the checks every page's
filter form makes of what a URL holds (an id within its column, a day within the calendar the
data can hold)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from flask import Flask, request
from wtforms import DateField

from ..models import as_money
from .tenancy import DEFAULT_ID_LIMIT

# The days a filter may name. Nothing is stored before 2000, and the last day leaves room for
# the day, month or period before and after it that a page adds (9999-12-31 has no next day).
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2999, 12, 31)
DAY_RANGE_MESSAGE = f"Choose a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}."


def query_id(text: str | None, limit: int = DEFAULT_ID_LIMIT) -> int | None:
    """The id a query argument names, or None unless it is whole digits within ``limit`` (the
    largest id its column holds; the database refuses a larger number outright)."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > len(str(limit)):
        return None
    value = int(text)
    return value if 0 < value <= limit else None


def query_args():
    """The request's query arguments as a filter form reads them: a NUL character, which
    PostgreSQL neither stores nor compares, reads as U+FFFD (it then matches nothing)."""
    args = request.args
    if not any("\x00" in value for value in args.values()):
        return args
    return type(args)((name, value.replace("\x00", "\ufffd")) for name, value in args.items(multi=True))


class DayField(DateField):
    """A filter's day: YYYY-MM-DD, from ``FIRST_DAY`` to ``LAST_DAY``."""

    def process_formdata(self, valuelist: list[str]) -> None:
        super().process_formdata(valuelist)
        if self.data is not None and not FIRST_DAY <= self.data <= LAST_DAY:
            self.data = None
            raise ValueError(DAY_RANGE_MESSAGE)


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
