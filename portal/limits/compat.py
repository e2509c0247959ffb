"""Where Tollgate leans on Flask-Limiter's and ``limits``' private parts, and the releases that
was checked against. Each coupling is tested (``tests/limits/``):

* :class:`~portal.limits.limit_manager.RememberingLimitManager` subclasses Flask-Limiter's
  private ``LimitManager`` and reads its declarations;
* :func:`remember_parsed_limits` replaces ``flask_limiter._limits.parse_many``, which
  Flask-Limiter calls for a callable limit (a tenant's plan windows) on every request, with a
  remembering one — for the whole process;
* :func:`window_of` reads a limit's amount and window from the storage key ``limits`` builds
  for it (the admission storage answers per window).

Start-up stops with a message naming the release when Flask-Limiter or ``limits`` is a release
these were not checked against (:func:`check_versions`).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version

import flask_limiter._limits
import limits

# The releases (major.minor) the couplings above were checked against.
CHECKED = {"Flask-Limiter": ("4.1",), "limits": ("5.8",)}


class UnsupportedRelease(SystemExit):
    """Flask-Limiter or ``limits`` is a release Tollgate's couplings were not checked against
    (start-up stops with the message, no traceback)."""


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise :class:`UnsupportedRelease` unless each package is a checked release."""
    installed = installed or {name: version(name) for name in CHECKED}
    for name, releases in CHECKED.items():
        found = installed[name]
        if ".".join(found.split(".")[:2]) not in releases:
            raise UnsupportedRelease(
                f"Tollgate cannot start: it relies on private parts of {name} and was checked against {name} "
                f"{', '.join(f'{r}.x' for r in releases)}; this is {name} {found}. Install the release "
                "requirements.txt pins, or check portal/limits/compat.py against this one."
            )


# The parsed limits of a callable limit's strings: a plan's windows are one of a handful.
cached_parse_many = lru_cache(maxsize=256)(limits.parse_many)


def remember_parsed_limits() -> None:
    """Have Flask-Limiter parse each limit string once per process (its items are immutable)."""
    flask_limiter._limits.parse_many = cached_parse_many


def window_of(key: str) -> tuple[int, str]:
    """(amount, granularity) of a limit from its storage key, which ``limits`` ends with
    ``/<amount>/<multiples>/<granularity>``."""
    amount, _, granularity = key.rsplit("/", 3)[-3:]
    return int(amount), granularity


def install() -> None:
    """Check the releases, then remember parsed limits (called once at start-up)."""
    check_versions()
    remember_parsed_limits()
