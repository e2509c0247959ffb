"""Signing in and out: credentials, audit, CSRF, safe redirects, throttling, cookies."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.auth.session import is_safe_next
from portal.models import AuditEvent, User
from tests.conftest import csrf_token
from tests.factories import PASSWORD


def audit_actions(db, tenant_id=None):
    query = select(AuditEvent.action, AuditEvent.details).order_by(AuditEvent.id)
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    return list(db.session.execute(query))


def test_root_sends_visitor_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/login")


def test_dashboard_needs_sign_in(client):
    response = client.get("/dashboard")
    assert response.status_code == 302
    assert "/login?next=%2Fdashboard" in response.headers["Location"]


def test_sign_in_lands_on_dashboard_and_is_audited(client, auth, make_tenant, app, db):
    slug, email, tenant_id = make_tenant("Initech")
    response = auth.login(email, PASSWORD)
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "Initech" in page.text
    assert "<nav" in page.text
    assert [a for a, _ in audit_actions(db, tenant_id)] == ["login.success"]
    assert db.session.scalar(select(User.last_login_at).where(User.email == email)) is not None
    assert client.get("/").headers["Location"].endswith("/dashboard")


@pytest.mark.parametrize(
    ("email", "password"),
    [("owner@nowhere.example", PASSWORD), (None, "wrong password!")],
    ids=["unknown e-mail", "wrong password"],
)
def test_failed_sign_in_says_so_and_is_audited(auth, make_tenant, db, email, password):
    _, owner_email, _ = make_tenant()
    response = auth.login(email or owner_email, password)
    assert response.status_code == 401
    assert "Wrong e-mail or password." in response.text
    events = audit_actions(db)
    assert [a for a, _ in events] == ["login.failure"]
    assert events[0].details["email"] == (email or owner_email)


def test_sign_in_form_without_csrf_token_is_refused(client, make_tenant, db):
    _, email, _ = make_tenant()
    client.get("/login")
    response = client.post("/login", data={"email": email, "password": PASSWORD})
    assert response.status_code == 400
    assert "form expired" in response.text
    assert client.get("/dashboard").status_code == 302


def test_empty_form_shows_field_errors(client):
    page = client.get("/login")
    response = client.post("/login", data={"email": "", "password": "", "csrf_token": csrf_token(page.text)})
    assert response.status_code == 401
    assert "Please fill in both fields correctly." in response.text
    assert "This field is required." in response.text


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/keys", True),
        ("/dashboard?x=1", True),
        ("https://evil.example/", False),
        ("//evil.example/", False),
        ("/\\evil.example", False),
        ("javascript:alert(1)", False),
        ("", False),
        ("/ok\r\nSet-Cookie: x=1", False),
    ],
)
def test_next_redirect_must_stay_on_site(target, safe):
    assert is_safe_next(target) is safe


def test_next_is_followed_when_safe(auth, make_tenant):
    _, email, _ = make_tenant()
    response = auth.login(email, PASSWORD, next_url="/keys")
    assert response.headers["Location"] == "/keys"


def test_unsafe_next_goes_to_dashboard(auth, make_tenant):
    _, email, _ = make_tenant()
    response = auth.login(email, PASSWORD, next_url="https://evil.example/phish")
    assert response.headers["Location"] == "/dashboard"


def test_sign_in_is_throttled_per_address(app, auth, make_tenant):
    _, email, _ = make_tenant()
    limit = int(app.config["LOGIN_RATE_LIMIT"].split("/")[0])
    # A different account each time: only the address's bucket fills up.
    for n in range(limit):
        assert auth.login(f"guess{n}@nowhere.example", "wrong password!").status_code == 401
    response = auth.login(email, PASSWORD)
    assert response.status_code == 429
    assert "Too many sign-in attempts" in response.text
    assert int(response.headers["Retry-After"]) > 0
    # Still signed out: the throttled attempt did not sign in even with the right password.
    assert auth.client.get("/dashboard").status_code == 302


def test_sign_out_needs_a_post_with_csrf(client, auth, make_tenant, db):
    _, email, tenant_id = make_tenant()
    auth.login(email, PASSWORD)
    assert client.get("/logout").status_code == 200  # a confirmation, not a sign-out
    assert client.get("/dashboard").status_code == 200
    assert client.post("/logout").status_code == 400
    response = auth.logout()
    assert response.status_code == 302
    assert client.get("/dashboard").status_code == 302
    assert [a for a, _ in audit_actions(db, tenant_id)][-1] == "logout"


def test_password_change_ends_existing_sessions(app, client, auth, make_tenant):
    from portal.extensions import db
    from portal.tenancy.passwords import hash_password

    _, email, _ = make_tenant()
    auth.login(email, PASSWORD)
    assert client.get("/dashboard").status_code == 200
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        user.password_hash = hash_password("a brand new password")
        db.session.commit()
    assert client.get("/dashboard").status_code == 302


def test_disabled_user_cannot_sign_in(app, auth, make_tenant, db):
    _, email, _ = make_tenant()
    user = db.session.scalar(select(User).where(User.email == email))
    user.is_enabled = False
    db.session.commit()
    response = auth.login(email, PASSWORD)
    assert response.status_code == 401
    assert audit_actions(db)[-1].details["reason"] == "disabled"


def test_passwords_are_stored_as_argon2id(make_tenant, db):
    _, email, _ = make_tenant()
    stored = db.session.scalar(select(User.password_hash).where(User.email == email))
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_session_cookie_flags_in_production(tmp_path):
    from portal.config import load_config

    config = load_config(tmp_path, {"PORTAL_BASE_URL": "https://billing.example.com", "SECRET_KEY": "x" * 32})
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["SESSION_COOKIE_HTTPONLY"] is True
    assert config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert config["REMEMBER_COOKIE_SECURE"] is True
    assert config["REMEMBER_COOKIE_HTTPONLY"] is True


def test_session_cookie_is_httponly_and_samesite(client, auth, make_tenant):
    _, email, _ = make_tenant()
    response = auth.login(email, PASSWORD)
    cookie = next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
