"""Shaping figures for the SVG chart macros in ``templates/macros/ui.html``."""

from __future__ import annotations

from collections.abc import Iterable

from .totals import DayCalls


def daily_bars(days: Iterable[DayCalls]) -> list[tuple[str, int, str]]:
    """(axis label, value, tooltip) per day."""
    return [
        (
            d.day.strftime("%b %-d"),
            d.calls,
            f"{d.day:%a %b %-d}: {d.calls:,} calls, {d.errors:,} errors",
        )
        for d in days
    ]
