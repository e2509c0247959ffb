"""Operator commands leave audit events like the portal's: with no user, ``via: command line``
and the system user that ran the command."""

from __future__ import annotations

import getpass
import os

from ..kernel.audit import act_as, record_event


def _system_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (some containers)
        return str(os.getuid())


def by_operator() -> None:
    """Audit what this command changes as the operator's (domain code that audits names them)."""
    act_as(via="command line", os_user=_system_user())


def operator_event(action: str, tenant_id: int | None = None, **details: object) -> None:
    """Record an audit event of this command; the command's commit stores it."""
    by_operator()
    record_event(action, tenant_id, None, None, **details)
