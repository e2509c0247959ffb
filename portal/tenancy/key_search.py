"""Finding a tenant's API keys: search, state and scope filters, newest first, a page at a time.

Pages are keyset-paginated on the key id (newest first), so page 20 costs what page 1 costs,
and one page of up to ``MAX_PAGE_SIZE`` keys is one query.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select

from ..extensions import db
from ..models import ApiKey

STATES = ("active", "inactive", "expired", "revoked")
PAGE_SIZES = (25, 50, 100, 500)
MAX_PAGE_SIZE = PAGE_SIZES[-1]


@dataclass(frozen=True)
class KeyQuery:
    text: str = ""
    state: str = ""
    scope: str = ""
    per_page: int = 50
    before: int | None = None  # show keys older than this id
    after: int | None = None  # show keys newer than this id (paging back)


@dataclass(frozen=True)
class KeyPage:
    keys: list[ApiKey]
    matching: int
    older: int | None  # the ``before`` cursor of the next (older) page
    newer: int | None  # the ``after`` cursor of the previous (newer) page


def _state_condition(state: str, now: datetime):
    not_expired = or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    live = ApiKey.revoked_at.is_(None)
    return {
        "active": and_(live, ApiKey.is_active.is_(True), not_expired),
        "inactive": and_(live, ApiKey.is_active.is_(False), not_expired),
        "expired": and_(live, ApiKey.expires_at.is_not(None), ApiKey.expires_at <= now),
        "revoked": ApiKey.revoked_at.is_not(None),
    }[state]


def search_keys(tenant_id: int, query: KeyQuery, now: datetime) -> KeyPage:
    """One page of the tenant's keys matching ``query`` (two statements: the page and the count)."""
    conditions = [ApiKey.tenant_id == tenant_id]
    text = query.text.strip()
    if text:
        conditions.append(
            or_(
                ApiKey.name.icontains(text, autoescape=True),
                ApiKey.prefix.icontains(text, autoescape=True),
                ApiKey.description.icontains(text, autoescape=True),
            )
        )
    if query.state in STATES:
        conditions.append(_state_condition(query.state, now))
    if query.scope in ("usage", "admin"):
        conditions.append(ApiKey.scope == query.scope)
    matching = db.session.scalar(select(func.count()).select_from(ApiKey).where(*conditions))

    size = min(max(query.per_page, 1), MAX_PAGE_SIZE)
    page = select(ApiKey).where(*conditions)
    if query.after is not None:
        # Paging back: the keys just newer than the cursor, read oldest first, then turned around.
        rows = list(db.session.scalars(page.where(ApiKey.id > query.after).order_by(ApiKey.id).limit(size + 1)))
        more_newer = len(rows) > size
        keys = list(reversed(rows[:size]))
        has_older = True
        has_newer = more_newer
    else:
        if query.before is not None:
            page = page.where(ApiKey.id < query.before)
        rows = list(db.session.scalars(page.order_by(ApiKey.id.desc()).limit(size + 1)))
        keys = rows[:size]
        has_older = len(rows) > size
        has_newer = query.before is not None
    return KeyPage(
        keys=keys,
        matching=int(matching),
        older=keys[-1].id if keys and has_older else None,
        newer=keys[0].id if keys and has_newer else None,
    )
