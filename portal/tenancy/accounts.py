"""Tenants and their users."""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select

from ..extensions import db
from ..models import Tenant, User
from .passwords import hash_password


class AccountError(ValueError):
    """A tenant or user could not be created as asked."""


def slugify(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:48] or "tenant"


def unique_slug(name: str) -> str:
    base = slugify(name)
    taken = set(db.session.scalars(select(Tenant.slug).where(Tenant.slug.like(f"{base}%"))))
    slug, n = base, 2
    while slug in taken:
        slug = f"{base}-{n}"
        n += 1
    return slug


def normalise_email(email: str) -> str:
    try:
        return validate_email(email, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise AccountError(f"invalid e-mail address {email!r}: {exc}") from None


def find_user_by_email(email: str) -> User | None:
    return db.session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))


def create_user(
    tenant: Tenant, email: str, password: str, role: str = "member", name: str = "", password_hash: str | None = None
) -> User:
    """A new user; ``password`` must meet the password policy, which judges it against the
    address, the name and the tenant's name. ``password_hash`` (a hash made already, e.g. one
    shared by benchmark accounts) saves hashing ``password`` again."""
    address = normalise_email(email)
    if find_user_by_email(address) is not None:
        raise AccountError(f"a user with e-mail {address} already exists")
    if password_hash is None:
        try:
            password_hash = hash_password(password, (address, name, tenant.name))
        except ValueError as exc:
            raise AccountError(str(exc)) from None
    user = User(tenant=tenant, email=address, password_hash=password_hash, role=role, name=name)
    db.session.add(user)
    return user


def get_tenant(slug: str) -> Tenant:
    tenant = db.session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise AccountError(f"no tenant with slug {slug!r}")
    return tenant
