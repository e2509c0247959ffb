"""A ``limits`` storage that answers Flask-Limiter from the call's admission decision.

Flask-Limiter declares and enforces the plan's windows on the API blueprint; the counting is
done by the admission script (:mod:`portal.admission`), which checks and increments every window
and the quota atomically in one round trip. This storage hands Flask-Limiter that decision: for
an admitted call each window's new count, for a refused call the refusing window's count past
its limit — so Flask-Limiter refuses exactly the calls the script refused, and a refused call
consumes nothing.

Importing this module registers the ``tollgate-admission://`` scheme with ``limits``.
"""

from __future__ import annotations

from flask import g
from limits.storage import Storage

SCHEME = "tollgate-admission"


def _decision_and_window(key: str):
    call = g.get("api_call")
    if call is None or call.decision is None:
        return None, None
    # limits keys end with ".../<amount>/<multiples>/<granularity>".
    window = key.rsplit("/", 1)[-1]
    return call.decision, window


class AdmissionStorage(Storage):
    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception]:
        return RuntimeError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        decision, window = _decision_and_window(key)
        if decision is None:
            return 0
        limit = int(key.rsplit("/", 3)[-3])
        if decision.refused_by == window:
            return limit + 1
        return decision.count(window)

    def get(self, key: str) -> int:
        decision, window = _decision_and_window(key)
        return 0 if decision is None else decision.count(window)

    def get_expiry(self, key: str) -> float:
        decision, window = _decision_and_window(key)
        if decision is None:
            return 0.0
        return decision.now + decision.reset_in(window)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        return None

    def clear(self, key: str) -> None:
        return None
