"""A tenant's team: its members and their roles, changing a role, removing someone, and the
team's audit trail (filtered, a page at a time, or all of it for export).

Owners may do anything; admins may change members and admins but never touch the owner role
nor the plan (what the tenant pays); every tenant keeps at least one owner. A removed user is
disabled, not deleted: the audit trail keeps saying who did what, and their sessions end at once
(a disabled user is not signed in). The API keys they made are revoked with them, unless the
remover chooses to keep them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, func, or_, select

from ..extensions import db
from ..kernel.audit import record_event
from ..models import ApiKey, AuditEvent, Tenant, User
from ..models.tenancy import ROLES
from .keys import revoke_api_key
from .sessions import end_user_sessions

ROLE_ORDER = {role: rank for rank, role in enumerate(ROLES)}
# Who may change the plan: in the portal, and through an admin-scope key that such a user made
# (or the operator, on the command line).
PLAN_ROLES = frozenset({"owner"})


class TeamError(ValueError):
    """A change the team rules forbid (the last owner); the message says why."""


class NotAllowed(TeamError):
    """The signed-in user's role does not allow this change."""


def team_members(tenant_id: int) -> list[User]:
    """The tenant's enabled users: owners first, then admins, then members, by e-mail."""
    rank = case({role: n for role, n in ROLE_ORDER.items()}, value=User.role, else_=len(ROLES))
    query = select(User).where(User.tenant_id == tenant_id, User.is_enabled.is_(True)).order_by(rank, User.email)
    return list(db.session.scalars(query))


def may_manage(actor: User, target: User) -> bool:
    """Whether ``actor`` may change ``target``'s role or remove them at all."""
    if actor.role == "owner":
        return True
    return actor.role == "admin" and target.role != "owner"


def assignable_roles(actor: User) -> tuple[str, ...]:
    return ROLES if actor.role == "owner" else ("admin", "member") if actor.role == "admin" else ()


def _owner_count(tenant_id: int) -> int:
    # The tenant row is locked first (PostgreSQL), so two owners demoting each other at the same
    # moment are taken one after the other and the second is refused.
    db.session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    return db.session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.tenant_id == tenant_id, User.role == "owner", User.is_enabled.is_(True))
    )


def _check_owner_rules(actor: User, target: User, new_role: str | None) -> None:
    """``new_role`` None means removing ``target``."""
    if actor.role not in ("owner", "admin"):
        raise NotAllowed("Only owners and admins can change the team.")
    if (target.role == "owner" or new_role == "owner") and actor.role != "owner":
        raise NotAllowed("Only an owner can grant or take away the owner role, or remove an owner.")
    if target.role == "owner" and new_role != "owner" and _owner_count(target.tenant_id) <= 1:
        doing = "be removed" if new_role is None else f"become {'an' if new_role == 'admin' else 'a'} {new_role}"
        raise TeamError(f"{target.email} is the only owner and cannot {doing}: make someone else an owner first.")


def _audit(action: str, target: User, actor: User, ip: str | None, now: datetime, **details) -> None:
    """An audit event of ``actor``'s change to ``target``, dated ``now``."""
    record_event(action, target.tenant_id, actor.id, ip, **details).created_at = now


def change_role(target: User, new_role: str, actor: User, now: datetime, ip: str | None = None) -> str | None:
    """Give ``target`` the role ``new_role``; returns the old role, or None when it is unchanged."""
    if new_role not in ROLES:
        raise TeamError(f"Choose one of: {', '.join(ROLES)}.")
    if new_role == target.role:
        return None
    _check_owner_rules(actor, target, new_role)
    old_role, target.role = target.role, new_role
    details = {"member_id": target.id, "email": target.email, "from": old_role, "to": new_role}
    _audit("user.role_changed", target, actor, ip, now, **details)
    return old_role


def keys_made_by(user: User) -> list[ApiKey]:
    """The API keys ``user`` made that are not revoked (active, inactive or expired), oldest first."""
    query = select(ApiKey).where(
        ApiKey.tenant_id == user.tenant_id, ApiKey.created_by_id == user.id, ApiKey.revoked_at.is_(None)
    )
    return list(db.session.scalars(query.order_by(ApiKey.id)))


def remove_member(
    target: User, actor: User, now: datetime, ip: str | None = None, keep_keys: bool = False
) -> list[ApiKey]:
    """Take ``target`` off the team: disabled, and every session of theirs ended on the server.
    The keys they made are revoked (each audited) unless ``keep_keys``; returns the keys revoked."""
    _check_owner_rules(actor, target, None)
    keys = keys_made_by(target)
    target.is_enabled = False
    end_user_sessions(target.id)
    details = {"member_id": target.id, "email": target.email, "role": target.role}
    if keys:
        details["keys_kept" if keep_keys else "keys_revoked"] = [key.prefix for key in keys]
    _audit("user.removed", target, actor, ip, now, **details)
    if keep_keys:
        return []
    for key in keys:
        revoke_api_key(key, now)
        reason = f"its maker {target.email} was removed from the team"
        details = {"key_id": key.id, "prefix": key.prefix, "name": key.name, "reason": reason}
        _audit("api_key.revoked", target, actor, ip, now, **details)
    return keys


def key_maker(key: ApiKey) -> str:
    """Who made ``key`` or last rotated it (who holds its secret), as the portal shows it: an
    e-mail, a removed user, or the operator."""
    if key.created_by_id is None:
        return "the operator (command line)"
    maker = db.session.get(User, key.created_by_id)
    if maker is None or maker.tenant_id != key.tenant_id:
        return "a deleted user"
    return maker.email if maker.is_enabled else f"removed user {maker.email}"


def key_may_change_plan(key_id: int) -> bool:
    """Whether an admin-scope key may change the plan: a key does no more than its maker may now,
    so it must come from the operator (no maker) or from a current owner of its tenant."""
    row = db.session.execute(select(ApiKey.tenant_id, ApiKey.created_by_id).where(ApiKey.id == key_id)).first()
    if row is None:
        return False
    if row.created_by_id is None:
        return True
    maker = db.session.get(User, row.created_by_id)
    return maker is not None and maker.tenant_id == row.tenant_id and maker.is_enabled and maker.role in PLAN_ROLES


# -- the audit trail ----------------------------------------------------------------------------

PAGE_SIZE = 50
EXPORT_BATCH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AuditFilter:
    """What the audit page shows: an action (or a family such as ``invite.*``), one user's
    events, days from ``since`` to ``until`` inclusive (UTC)."""

    action: str | None = None
    user_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None  # the start of the last day shown

    def where(self, tenant_id: int) -> list:
        conditions = [AuditEvent.tenant_id == tenant_id]
        if self.action:
            if self.action.endswith(".*"):
                conditions.append(AuditEvent.action.startswith(self.action[:-1], autoescape=True))
            else:
                conditions.append(AuditEvent.action == self.action)
        if self.user_id is not None:
            conditions.append(AuditEvent.user_id == self.user_id)
        if self.since is not None:
            conditions.append(AuditEvent.created_at >= self.since)
        if self.until is not None:
            conditions.append(AuditEvent.created_at < self.until + timedelta(days=1))
        return conditions


@dataclass(frozen=True)
class Cursor:
    """A place in the trail (newest first): an event's time and id."""

    created_at: datetime
    event_id: int

    def __str__(self) -> str:
        return f"{(self.created_at - _EPOCH) // timedelta(microseconds=1)}-{self.event_id}"

    @classmethod
    def of(cls, event: AuditEvent) -> Cursor:
        return cls(event.created_at, event.id)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Raises ValueError for anything but ``<microseconds>-<id>``."""
        micros, _, event_id = text.partition("-")
        if not (micros.isdigit() and event_id.isdigit()) or len(micros) > 18 or len(event_id) > 18:
            raise ValueError("not a page of the audit trail")
        try:
            return cls(_EPOCH + timedelta(microseconds=int(micros)), int(event_id))
        except OverflowError:  # past the calendar's last day
            raise ValueError("not a page of the audit trail") from None

    def older(self):
        return or_(
            AuditEvent.created_at < self.created_at,
            and_(AuditEvent.created_at == self.created_at, AuditEvent.id < self.event_id),
        )

    def newer(self):
        return or_(
            AuditEvent.created_at > self.created_at,
            and_(AuditEvent.created_at == self.created_at, AuditEvent.id > self.event_id),
        )


@dataclass
class AuditPage:
    events: list[AuditEvent]
    newer: Cursor | None  # show the page above this one (before=None: after this cursor)
    older: Cursor | None


def audit_page(
    tenant_id: int,
    where: AuditFilter,
    before: Cursor | None = None,
    after: Cursor | None = None,
    size: int = PAGE_SIZE,
) -> AuditPage:
    """One page of the tenant's audit events, newest first (keyset pagination, one query):
    the page older than ``before``, or newer than ``after``, or the newest."""
    query = select(AuditEvent).where(*where.where(tenant_id))
    if after is not None:
        query = query.where(after.newer()).order_by(AuditEvent.created_at, AuditEvent.id)
    else:
        if before is not None:
            query = query.where(before.older())
        query = query.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
    rows = list(db.session.scalars(query.limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    if after is not None:
        rows.reverse()
        newer = Cursor.of(rows[0]) if more and rows else None
        older = Cursor.of(rows[-1]) if rows else after
    else:
        newer = Cursor.of(rows[0]) if before is not None and rows else None
        older = Cursor.of(rows[-1]) if more else None
    return AuditPage(rows, newer, older)


def audit_users(tenant_id: int) -> list[User]:
    """Everyone who can appear in the tenant's trail, removed users too."""
    return list(db.session.scalars(select(User).where(User.tenant_id == tenant_id).order_by(User.email)))


EXPORT_HEADER = ("id", "time_utc", "action", "user_id", "user_email", "ip_address", "details")


def export_rows(tenant_id: int, where: AuditFilter) -> Iterator[tuple[str | int | None, ...]]:
    """Every event the filter matches, newest first, as CSV rows after a header row (the values as
    stored: ``csv_export`` neutralises the text); read in batches so the export never holds the
    whole trail."""
    emails = dict(db.session.execute(select(User.id, User.email).where(User.tenant_id == tenant_id)).all())
    yield EXPORT_HEADER
    columns = (
        AuditEvent.id,
        AuditEvent.created_at,
        AuditEvent.action,
        AuditEvent.user_id,
        AuditEvent.ip_address,
        AuditEvent.details,
    )
    cursor: Cursor | None = None
    while True:
        query = select(*columns).where(*where.where(tenant_id))
        if cursor is not None:
            query = query.where(cursor.older())
        query = query.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc()).limit(EXPORT_BATCH)
        batch = db.session.execute(query).all()
        for event_id, created_at, action, user_id, ip_address, details in batch:
            yield (
                event_id,
                created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                action,
                user_id,
                emails.get(user_id, ""),
                ip_address or "",
                json.dumps(details, sort_keys=True, default=str) if details else "",
            )
        if len(batch) < EXPORT_BATCH:
            return
        cursor = Cursor(batch[-1].created_at, batch[-1].id)
