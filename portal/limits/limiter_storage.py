"""The ``limits`` storage under Tollgate's one Flask-Limiter.

Flask-Limiter declares and enforces both kinds of limit in Tollgate: the plan windows on the API
blueprint and the sign-in throttle. For an API call this storage answers from the call's
admission decision (:mod:`portal.metering.admission`): the admission script has already checked and
counted every window and the quota atomically in one Redis round trip, so the storage hands
Flask-Limiter each window's new count for an admitted call, and the refusing window's count past
its limit for a refused one — Flask-Limiter refuses exactly the calls the script refused, and a
refused call consumes nothing. Every other limit (the sign-in throttle) goes to an ordinary
``limits`` Redis storage.

The scheme is ``tollgate+<redis URL>``, e.g. ``tollgate+redis://host:6379/0``; importing this
module registers it with ``limits``.
"""

from __future__ import annotations

from flask import g
from limits.storage import Storage, storage_from_string

from .compat import window_of

SCHEME = "tollgate"


def storage_uri(redis_storage_uri: str) -> str:
    return f"{SCHEME}+{redis_storage_uri}"


class AdmissionStorage(Storage):
    STORAGE_SCHEME = [f"{SCHEME}+redis", f"{SCHEME}+rediss", f"{SCHEME}+redis+unix"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.redis_storage = storage_from_string(uri.removeprefix(f"{SCHEME}+"), **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return self.redis_storage.base_exceptions

    @staticmethod
    def _call():
        return g.get("api_call")

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        call = self._call()
        if call is None:
            return self.redis_storage.incr(key, expiry, amount)
        decision = call.decision
        if decision is None:
            return amount  # served without Redis (the guard's policy): nothing to count against
        limit, window = window_of(key)
        if decision.refused_by == window:
            return limit + 1
        return decision.count(window)

    def get(self, key: str) -> int:
        call = self._call()
        if call is None:
            return self.redis_storage.get(key)
        return 0 if call.decision is None else call.decision.count(window_of(key)[1])

    def get_expiry(self, key: str) -> float:
        call = self._call()
        if call is None:
            return self.redis_storage.get_expiry(key)
        if call.decision is None:
            return 0.0
        return call.decision.now + call.decision.reset_in(window_of(key)[1])

    def check(self) -> bool:
        return self.redis_storage.check()

    def reset(self) -> int | None:
        return self.redis_storage.reset()

    def clear(self, key: str) -> None:
        if self._call() is None:
            self.redis_storage.clear(key)
