"""The one way tests make a tenant: through onboarding, as the product does (owner, plan, default
limits and rules), optionally with an admin and a member and an API key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from flask import Flask

from portal.extensions import db
from portal.onboarding import create_tenant
from portal.tenancy.accounts import create_user
from portal.tenancy.keys import create_api_key

PASSWORD = "correct horse battery staple"
# Tenants made here date from then, before every test's clock (no usage is older than its tenant).
TENANTS_SINCE = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class MadeTenant:
    tenant_id: int
    slug: str
    owner: str  # the owner's e-mail; every user's password is PASSWORD
    admin: str | None = None
    member: str | None = None
    user_ids: dict[str, int] = field(default_factory=dict)  # by role
    key_id: int | None = None  # the "default" usage key, when asked for
    secret: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.secret}


def new_tenant(
    app: Flask,
    name: str,
    plan: str = "starter",
    *,
    email: str | None = None,
    team: bool = False,
    key: bool = False,
) -> MadeTenant:
    """A tenant named ``name`` on ``plan`` with its owner (``owner@<name>.example`` unless
    ``email``); with ``team`` an admin and a member too, with ``key`` a usage key "default"."""
    domain = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "tenant"
    owner = email or f"owner@{domain}.example"
    with app.app_context():
        tenant = create_tenant(name, plan, owner, PASSWORD)
        tenant.created_at = TENANTS_SINCE
        admin = member = None
        if team:
            admin, member = f"admin@{domain}.example", f"member@{domain}.example"
            create_user(tenant, admin, PASSWORD, role="admin")
            create_user(tenant, member, PASSWORD, role="member")
        made_key, secret = create_api_key(tenant, "default") if key else (None, None)
        db.session.commit()
        made = MadeTenant(
            tenant.id,
            tenant.slug,
            owner,
            admin,
            member,
            {user.role: user.id for user in tenant.users},
            made_key.id if made_key else None,
            secret,
        )
        db.session.remove()
    return made


# -- the shared fixtures -----------------------------------------------------------------------


@pytest.fixture
def tenant(app: Flask) -> Iterator[MadeTenant]:
    """Acme Co: a starter-plan tenant with its owner and a usage key; what its calls left in the
    usage stream is stored after the test."""
    made = new_tenant(app, "Acme Co", key=True)
    yield made
    from .api_helpers import drain

    drain(app)


@pytest.fixture
def tenant_id(tenant: MadeTenant) -> int:
    return tenant.tenant_id
