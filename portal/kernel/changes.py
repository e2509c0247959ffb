"""Telling every server process that keys, plans or subscriptions changed.

Domain code calls :func:`mark_access_changed` when it changes something the API's admission
depends on; once the transaction commits, the configuration version in Redis is bumped and the
next API call in every process reloads what it cached. Bumping after the commit (never before)
means no process can cache the old state under the new version.
"""

from __future__ import annotations

from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session

from ..extensions import db
from ..redis_store import get_redis
from .redis_keys import CONFIG_VERSION

_FLAG = "tollgate.access_changed"


def mark_access_changed() -> None:
    db.session.info[_FLAG] = True


@event.listens_for(Session, "after_commit")
def _bump_after_commit(session: Session) -> None:
    if session.info.pop(_FLAG, False) and has_app_context():
        get_redis(current_app).incr(CONFIG_VERSION)


@event.listens_for(Session, "after_rollback")
def _forget_on_rollback(session: Session) -> None:
    session.info.pop(_FLAG, None)
