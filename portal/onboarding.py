"""Onboarding a tenant: what joins the capabilities when a tenant is made. The tenant and its
owner (tenancy), its subscription to a plan (billing), the default outside-service limits
(costs) and the default alert rules (alerts)."""

from __future__ import annotations

from .alerts.rules import add_default_rules
from .billing.plans import get_plan, subscribe
from .costs.service_limits import add_default_limits
from .extensions import db
from .models import Tenant
from .tenancy.accounts import AccountError, create_user, unique_slug


def create_tenant(
    name: str, plan_code: str, admin_email: str, password: str, password_hash: str | None = None
) -> Tenant:
    """A new tenant on ``plan_code`` with its owner account; the caller commits."""
    name = name.strip()
    if not name:
        raise AccountError("the tenant needs a name")
    plan = get_plan(plan_code)
    tenant = Tenant(name=name, slug=unique_slug(name))
    db.session.add(tenant)
    create_user(tenant, admin_email, password, role="owner", password_hash=password_hash)
    subscribe(tenant, plan)
    add_default_limits(tenant)
    add_default_rules(tenant)
    return tenant
