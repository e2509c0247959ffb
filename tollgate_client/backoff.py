"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter")."""

from __future__ import annotations

import random
from collections.abc import Callable


def full_jitter(attempt: int, base: float, cap: float, fraction: Callable[[], float] = random.random) -> float:
    """A wait drawn uniformly from ``[0, min(cap, base * 2**attempt)]``; ``attempt`` counts from 0.

    ``fraction`` returns a number in [0, 1] (tests pass a constant to make the schedule exact).
    """
    ceiling = min(cap, base * 2.0 ** min(max(0, attempt), 64))
    return ceiling * min(1.0, max(0.0, fraction()))
