"""The application's clock. The API's admission, its answers and every portal page read the
time here, so a test that sets the clock moves all of them together."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from flask import Flask, current_app

EXTENSION_KEY = "tollgate.clock"


class AppClock:
    """Seconds since the epoch; ``time.time`` unless a test sets another."""

    def __init__(self) -> None:
        self.time: Callable[[], float] = time.time


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = AppClock()


def app_clock(app: Flask | None = None) -> AppClock:
    return (app or current_app).extensions[EXTENSION_KEY]


def set_clock(app: Flask, clock: Callable[[], float]) -> None:
    """Read the time from ``clock`` (epoch seconds) from now on."""
    app_clock(app).time = clock


def seconds() -> float:
    """The current time, as epoch seconds."""
    return app_clock().time()


def now() -> datetime:
    """The current time, UTC."""
    return datetime.fromtimestamp(seconds(), UTC)
