"""Sessions end on the server at sign-out; "keep me signed in" lasts at most 30 days, survives
the next request and dies at sign-out too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from portal.extensions import db
from portal.models import User, UserSession
from tests.conftest import Auth, csrf_token
from tests.factories import PASSWORD

REMEMBER = "remember_token"


def sign_in(client: FlaskClient, email: str, remember: bool = False):
    page = client.get("/login")
    data = {"email": email, "password": PASSWORD, "csrf_token": csrf_token(page.text)}
    if remember:
        data["remember"] = "y"
    response = client.post("/login", data=data)
    assert response.status_code == 302, response.text
    return response


def cookie(client: FlaskClient, name: str) -> str:
    found = client.get_cookie(name)
    assert found is not None, f"no {name} cookie"
    return found.value


def browser_with(app: Flask, **cookies: str) -> FlaskClient:
    """Another browser that holds only the given cookies (copies of someone's)."""
    other = app.test_client()
    for name, value in cookies.items():
        other.set_cookie(name, value)
    return other


def set_cookie_header(response, name: str) -> str:
    return next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith(f"{name}="))


def opens_dashboard(client: FlaskClient) -> bool:
    response = client.get("/dashboard")
    if response.status_code == 302:
        assert "/login" in response.headers["Location"]
        return False
    assert response.status_code == 200
    return True


# Database work happens in its own short app context: a request made while one is pushed shares
# its ``g``, where Flask-Login keeps the user it loaded, and would never ask the loader again.


def session_rows(app: Flask, email: str) -> int:
    with app.app_context():
        user_id = db.session.scalar(select(User.id).where(User.email == email))
        count = db.session.scalar(select(func.count()).select_from(UserSession).where(UserSession.user_id == user_id))
        db.session.remove()
    return count


def end_every_session_now(app: Flask) -> None:
    with app.app_context():
        db.session.execute(update(UserSession).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        db.session.commit()
        db.session.remove()


# --- sign-out ends the session on the server ------------------------------------------------------


def test_a_session_cookie_copied_before_sign_out_opens_nothing_after(app, client, make_tenant):
    _, email, _ = make_tenant()
    sign_in(client, email)
    copied = cookie(client, "session")
    assert opens_dashboard(browser_with(app, session=copied))  # the copy works while signed in
    assert Auth(client).logout().status_code == 302
    assert not opens_dashboard(client)
    assert not opens_dashboard(browser_with(app, session=copied))
    assert session_rows(app, email) == 0


def test_signing_out_of_one_browser_leaves_the_others_signed_in(app, make_tenant):
    _, email, _ = make_tenant()
    laptop, phone = app.test_client(), app.test_client()
    sign_in(laptop, email)
    sign_in(phone, email)
    Auth(laptop).logout()
    assert not opens_dashboard(laptop)
    assert opens_dashboard(phone)


def test_a_session_past_its_end_opens_nothing(app, client, make_tenant):
    _, email, _ = make_tenant()
    sign_in(client, email)
    assert opens_dashboard(client)
    end_every_session_now(app)
    assert not opens_dashboard(client)


def test_a_session_without_keep_me_signed_in_lasts_the_session_lifetime(app, client, make_tenant):
    _, email, _ = make_tenant()
    before = datetime.now(UTC)
    sign_in(client, email)
    assert client.get_cookie(REMEMBER) is None
    with app.app_context():
        expires_at = db.session.scalar(select(UserSession.expires_at))
        db.session.remove()
    assert before + app.permanent_session_lifetime <= expires_at <= datetime.now(UTC) + app.permanent_session_lifetime


def test_ending_every_session_of_a_user_but_one(app, make_tenant):
    # What "sign out everywhere else" and a password change will do.
    from portal.tenancy.sessions import end_user_sessions

    _, email, _ = make_tenant()
    browsers = [app.test_client() for _ in range(3)]
    for browser in browsers:
        sign_in(browser, email, remember=True)
    user_id, _, rest = session_user_id(app, browsers[0]).partition("-")
    kept_key = rest.partition("-")[2]
    with app.app_context():
        assert end_user_sessions(int(user_id), keep_key=kept_key) == 2
        db.session.commit()
        db.session.remove()
    assert opens_dashboard(browsers[0])
    assert not opens_dashboard(browsers[1])
    assert not opens_dashboard(browsers[2])
    assert session_rows(app, email) == 1


def session_user_id(app: Flask, client: FlaskClient) -> str:
    """The user id Flask-Login keeps in a browser's session cookie."""
    serializer = app.session_interface.get_signing_serializer(app)
    return serializer.loads(cookie(client, "session"))["_user_id"]


# --- keep me signed in ----------------------------------------------------------------------------


def test_the_remember_cookie_lasts_at_most_30_days_and_has_the_session_cookie_flags(client, make_tenant):
    _, email, _ = make_tenant()
    response = sign_in(client, email, remember=True)
    header = set_cookie_header(response, REMEMBER)
    attributes = {part.split("=", 1)[0].strip().lower(): part.split("=", 1)[-1] for part in header.split(";")[1:]}
    expires = parsedate_to_datetime(attributes["expires"])
    now = datetime.now(UTC)
    assert now + timedelta(days=29) < expires <= now + timedelta(days=30, minutes=1)
    if "max-age" in attributes:
        assert int(attributes["max-age"]) <= 30 * 86400
    assert "httponly" in attributes
    assert attributes["samesite"] == "Lax"


@pytest.mark.parametrize("base_url", ["https://billing.example.com", "http://localhost"])
def test_the_remember_cookie_is_secure_exactly_when_the_session_cookie_is(tmp_path, base_url):
    from portal.config import load_config

    config = load_config(tmp_path, {"PORTAL_BASE_URL": base_url, "SECRET_KEY": "x" * 32})
    assert config["REMEMBER_COOKIE_SECURE"] is config["SESSION_COOKIE_SECURE"]
    assert config["REMEMBER_COOKIE_SAMESITE"] == config["SESSION_COOKIE_SAMESITE"]
    assert config["REMEMBER_COOKIE_DURATION"] <= timedelta(days=30)


def test_a_session_restored_from_the_remember_cookie_survives_the_next_requests(client, make_tenant):
    _, email, _ = make_tenant()
    sign_in(client, email, remember=True)
    client.delete_cookie("session")  # the browser was closed
    assert opens_dashboard(client)  # restored from the remember cookie
    assert opens_dashboard(client)  # and still signed in on the next request
    assert opens_dashboard(client)
    assert client.get_cookie(REMEMBER) is not None


def test_a_remember_cookie_copied_before_sign_out_opens_nothing_after(app, client, make_tenant):
    _, email, _ = make_tenant()
    sign_in(client, email, remember=True)
    copied = cookie(client, REMEMBER)
    assert opens_dashboard(browser_with(app, **{REMEMBER: copied}))  # the copy works while signed in
    response = Auth(client).logout()
    assert f"{REMEMBER}=;" in set_cookie_header(response, REMEMBER)  # the browser is told to drop it
    assert not opens_dashboard(client)
    assert not opens_dashboard(browser_with(app, **{REMEMBER: copied}))
    assert session_rows(app, email) == 0


def test_a_remember_cookie_past_its_session_end_opens_nothing(app, client, make_tenant):
    _, email, _ = make_tenant()
    sign_in(client, email, remember=True)
    copied = cookie(client, REMEMBER)
    end_every_session_now(app)
    assert not opens_dashboard(browser_with(app, **{REMEMBER: copied}))


def test_the_hourly_cleanup_deletes_ended_sessions_and_keeps_live_ones(app, make_tenant):
    from worker import jobs

    _, ended_email, _ = make_tenant()
    ended = app.test_client()
    sign_in(ended, ended_email)
    end_every_session_now(app)
    _, live_email, _ = make_tenant()
    live = app.test_client()
    sign_in(live, live_email)
    with app.app_context():
        result = jobs.cleanup()
        db.session.remove()
    assert result["expired_sessions"] == 1
    assert session_rows(app, ended_email) == 0
    assert session_rows(app, live_email) == 1
    assert opens_dashboard(live)
