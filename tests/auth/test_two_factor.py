"""Two-factor sign-in: setting up TOTP (QR code as inline SVG, the secret as text), the code step
after the password, recovery codes, remembered devices, the tenant rule for owners and admins,
an owner's reset of a member's two-factor, and the throttling and audit of every failure."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pyotp
import pytest
from sqlalchemy import select

from portal.alerts.evaluate import evaluate_alerts
from portal.extensions import db as _db
from portal.models import Alert, RecoveryCode, TrustedDevice, User
from portal.redis_store import get_redis
from tests.conftest import csrf_token
from tests.factories import PASSWORD
from tests.portal_helpers import audit_events, page_text, sign_in

SECRET_TEXT = re.compile(r'<code id="totp-secret">([A-Z2-7 ]+)</code>')
RECOVERY = re.compile(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>")


@pytest.fixture
def owner(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


def user_row(app, email: str) -> User:
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == email))
        _db.session.expunge_all()
        _db.session.remove()
    return user


def code_at(secret: str, clock, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now + 30 * offset_steps)


def set_up(client, clock) -> tuple[str, list[str]]:
    """Turn two-factor on for the signed-in user; returns the secret and the recovery codes."""
    page = client.get("/account/two-factor")
    secret = SECRET_TEXT.search(page.text).group(1).replace(" ", "")
    answer = client.post(
        "/account/two-factor", data={"code": code_at(secret, clock), "csrf_token": csrf_token(page.text)}
    )
    assert answer.status_code == 200, answer.text
    return secret, RECOVERY.findall(answer.text)


def password_step(client, email: str, password: str = PASSWORD):
    client.delete_cookie("session")
    page = client.get("/login")
    data = {"email": email, "password": password, "csrf_token": csrf_token(page.text)}
    return client.post("/login", data=data)


def code_step(client, code: str, remember: bool = False):
    page = client.get("/login/two-factor")
    data = {"code": code, "csrf_token": csrf_token(page.text)}
    if remember:
        data["remember_device"] = "y"
    return client.post("/login/two-factor", data=data)


def post(client, url: str, page_url: str = "/account/two-factor", **data):
    page = client.get(page_url)
    return client.post(url, data={**data, "csrf_token": csrf_token(page.text)})


# -- setting it up --------------------------------------------------------------------------------


def test_set_up_shows_a_qr_code_as_inline_svg_and_the_secret_as_text(client, owner, clock) -> None:
    page = client.get("/account/two-factor")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert re.search(r'<figure class="qr-box"><svg aria-hidden="true"[^>]*class="totp-qr"', page.text)
    svg = re.search(r"<svg.*?</svg>", page.text, re.S).group(0)
    assert "<path" in svg and "<script" not in svg and "style=" not in svg and "<img" not in page.text
    secret = SECRET_TEXT.search(page.text).group(1).replace(" ", "")
    assert len(secret) == 32
    # The same secret on a reload (the app may have scanned it already), and nothing stored yet.
    assert SECRET_TEXT.search(client.get("/account/two-factor").text).group(1).replace(" ", "") == secret
    assert user_row(client.application, owner.owner).totp_secret is None
    assert 'name="code"' in page.text


def test_a_wrong_code_does_not_turn_it_on(client, owner, clock) -> None:
    page = client.get("/account/two-factor")
    answer = client.post("/account/two-factor", data={"code": "000000", "csrf_token": csrf_token(page.text)})
    assert answer.status_code == 400
    assert "That code does not match" in page_text(answer.text)
    assert user_row(client.application, owner.owner).totp_enabled_at is None


def test_the_right_code_turns_it_on_and_shows_ten_recovery_codes_once(app, client, owner, clock) -> None:
    secret, codes = set_up(client, clock)
    assert len(codes) == 10 and len(set(codes)) == 10
    user = user_row(app, owner.owner)
    assert user.totp_secret == secret and user.totp_enabled_at is not None
    with app.app_context():
        hashes = _db.session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.user_id == user.id)).all()
        _db.session.remove()
    assert len(hashes) == 10 and not any(code.replace("-", "") in h for code in codes for h in hashes)
    assert [event.user_id for event in audit_events(app, owner.tenant_id, "two_factor.enabled")] == [user.id]
    account = page_text(client.get("/account").text)
    assert "Two-factor sign-in On since" in account
    manage = page_text(client.get("/account/two-factor").text)
    assert "10 of 10 recovery codes left" in manage
    assert not RECOVERY.search(client.get("/account/two-factor").text)  # shown only once


# -- signing in with it ---------------------------------------------------------------------------


def test_the_password_alone_no_longer_signs_in(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    browser = app.test_client()
    answer = password_step(browser, owner.owner)
    assert answer.status_code == 302 and answer.headers["Location"] == "/login/two-factor"
    assert browser.get("/dashboard").status_code == 302  # nothing opens before the code
    step = browser.get("/login/two-factor")
    assert step.status_code == 200 and 'name="code"' in step.text and 'autocomplete="one-time-code"' in step.text
    answer = code_step(browser, code_at(secret, clock, 1))
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard"
    assert browser.get("/dashboard").status_code == 200
    [success] = audit_events(app, owner.tenant_id, "login.success")[-1:]
    assert success.details["second_factor"] == "authenticator"


def test_the_code_step_keeps_where_the_user_was_going(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    browser = app.test_client()
    page = browser.get("/login?next=/keys")
    browser.post(
        "/login",
        data={"email": owner.owner, "password": PASSWORD, "next": "/keys", "csrf_token": csrf_token(page.text)},
    )
    assert code_step(browser, code_at(secret, clock, 1)).headers["Location"] == "/keys"


def test_a_wrong_code_is_refused_audited_and_counts_toward_the_failed_sign_in_alert(app, client, owner, clock) -> None:
    set_up(client, clock)
    browser = app.test_client()
    password_step(browser, owner.owner)
    for _ in range(5):
        answer = code_step(browser, "123456")
        assert answer.status_code == 401
        assert "That code is not right" in page_text(answer.text)
    failures = audit_events(app, owner.tenant_id, "login.failure")
    assert [f.details["reason"] for f in failures] == ["wrong two-factor code"] * 5
    password_step(app.test_client(), owner.owner, "a wrong password here")
    with app.app_context():
        evaluate_alerts(get_redis(app), datetime.now(UTC), [owner.tenant_id])
        alert = _db.session.scalar(
            select(Alert).where(Alert.tenant_id == owner.tenant_id, Alert.alert_type == "unauthorized_access")
        )
        assert alert is not None and alert.value == 6
        _db.session.remove()


def test_codes_tried_are_throttled_per_account(app, client, owner, clock) -> None:
    set_up(client, clock)
    limit = int(app.config["TWO_FACTOR_RATE_LIMIT"].split("/")[0])
    browser = app.test_client()
    password_step(browser, owner.owner)
    for _ in range(limit):
        assert code_step(browser, "999999").status_code == 401
    # Another browser that knows the password: the same account, the same budget.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    password_step(other, owner.owner)
    answer = code_step(other, "999999")
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert "Too many codes tried" in page_text(answer.text)


def test_a_code_works_once(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    code = code_at(secret, clock, 1)
    first, second = app.test_client(), app.test_client()
    password_step(first, owner.owner)
    assert code_step(first, code).status_code == 302
    password_step(second, owner.owner)
    assert code_step(second, code).status_code == 401
    # Nor the code of the step the set-up used, nor an older one.
    assert code_step(second, code_at(secret, clock)).status_code == 401
    clock.advance(60)
    assert code_step(second, code_at(secret, clock)).status_code == 302


def test_a_code_from_a_phone_a_step_out_of_time_counts_two_steps_do_not(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    clock.advance(300)
    browser = app.test_client()
    password_step(browser, owner.owner)
    assert code_step(browser, code_at(secret, clock, 2)).status_code == 401
    assert code_step(browser, code_at(secret, clock, -2)).status_code == 401
    assert code_step(browser, code_at(secret, clock, -1)).status_code == 302


def test_the_pending_sign_in_expires_after_five_minutes(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    browser = app.test_client()
    password_step(browser, owner.owner)
    clock.advance(301)
    page = browser.get("/login/two-factor")
    assert page.status_code == 302 and page.headers["Location"] == "/login"
    assert "took too long" in page_text(browser.get("/login").text)


def test_a_password_change_voids_a_pending_sign_in(app, client, owner, clock) -> None:
    from portal.tenancy.self_service import set_password

    secret, _ = set_up(client, clock)
    browser = app.test_client()
    password_step(browser, owner.owner)
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == owner.owner))
        set_password(user, "another fine password 2026!", datetime.now(UTC))
        _db.session.commit()
        _db.session.remove()
    assert browser.get("/login/two-factor").headers["Location"] == "/login"
    assert browser.get("/dashboard").status_code == 302


def test_the_code_step_needs_the_password_first(app, clock) -> None:
    browser = app.test_client()
    answer = browser.get("/login/two-factor")
    assert answer.status_code == 302 and answer.headers["Location"] == "/login"


# -- recovery codes -------------------------------------------------------------------------------


def test_a_recovery_code_signs_in_once_and_its_use_is_audited(app, client, owner, clock) -> None:
    _, codes = set_up(client, clock)
    browser = app.test_client()
    password_step(browser, owner.owner)
    answer = code_step(browser, codes[3].upper().replace("-", " "))  # however it is typed
    assert answer.status_code == 302
    assert "signed in with a recovery code; 9 of them left" in page_text(browser.get("/dashboard").text)
    [used] = audit_events(app, owner.tenant_id, "two_factor.recovery_used")
    assert used.details == {"codes_left": 9}
    assert audit_events(app, owner.tenant_id, "login.success")[-1].details["second_factor"] == "recovery code"
    again = app.test_client()
    password_step(again, owner.owner)
    assert code_step(again, codes[3]).status_code == 401
    assert "9 of 10 recovery codes left" in page_text(client.get("/account/two-factor").text)


def test_new_recovery_codes_need_the_password_and_void_the_old_ones(app, client, owner, clock) -> None:
    _, old = set_up(client, clock)
    wrong = post(client, "/account/two-factor/recovery-codes", password="not my password at all")
    assert wrong.status_code == 400 and "Your current password is not that one." in page_text(wrong.text)
    assert audit_events(app, owner.tenant_id, "login.failure")[-1].details["reason"].startswith("wrong current")
    answer = post(client, "/account/two-factor/recovery-codes", password=PASSWORD)
    new = RECOVERY.findall(answer.text)
    assert answer.status_code == 200 and len(new) == 10 and not set(new) & set(old)
    browser = app.test_client()
    password_step(browser, owner.owner)
    assert code_step(browser, old[0]).status_code == 401
    assert code_step(browser, new[0]).status_code == 302
    assert len(audit_events(app, owner.tenant_id, "two_factor.codes_renewed")) == 1


# -- remembered devices ---------------------------------------------------------------------------


def test_a_remembered_device_skips_the_code_for_thirty_days(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    browser = app.test_client()
    password_step(browser, owner.owner)
    answer = code_step(browser, code_at(secret, clock, 1), remember=True)
    cookie = next(h for h in answer.headers.getlist("Set-Cookie") if h.startswith("tollgate_device="))
    assert "Max-Age=2592000" in cookie and "HttpOnly" in cookie and "Path=/login" in cookie
    assert "SameSite=Lax" in cookie
    # Signed out, and back: the password alone on this device.
    browser.delete_cookie("remember_token")
    again = password_step(browser, owner.owner)
    assert again.status_code == 302 and again.headers["Location"] == "/dashboard"
    assert audit_events(app, owner.tenant_id, "login.success")[-1].details["second_factor"] == "remembered device"
    # Another browser still needs the code.
    assert password_step(app.test_client(), owner.owner).headers["Location"] == "/login/two-factor"
    # After 30 days this one does too.
    clock.advance(30 * 86400 + 1)
    assert password_step(browser, owner.owner).headers["Location"] == "/login/two-factor"


def test_the_device_list_shows_them_and_forgetting_them_asks_for_codes_again(app, client, owner, clock) -> None:
    secret, _ = set_up(client, clock)
    browser = app.test_client()
    browser.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (Test) Firefox/140.0"
    password_step(browser, owner.owner)
    code_step(browser, code_at(secret, clock, 1), remember=True)
    page = page_text(client.get("/account/two-factor").text)
    assert "Firefox/140.0" in page
    answer = post(client, "/account/two-factor/devices/forget")
    assert answer.status_code == 302
    assert "Forgot 1 remembered device" in page_text(client.get("/account/two-factor").text)
    assert password_step(browser, owner.owner).headers["Location"] == "/login/two-factor"


def test_a_new_password_forgets_every_remembered_device(app, client, owner, clock) -> None:
    from portal.tenancy.self_service import set_password

    secret, _ = set_up(client, clock)
    browser = app.test_client()
    password_step(browser, owner.owner)
    code_step(browser, code_at(secret, clock, 1), remember=True)
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == owner.owner))
        set_password(user, "another fine password 2026!", datetime.now(UTC))
        _db.session.commit()
        assert _db.session.scalars(select(TrustedDevice).where(TrustedDevice.user_id == user.id)).all() == []
        _db.session.remove()


def test_a_forged_device_cookie_opens_nothing(app, client, owner, clock) -> None:
    set_up(client, clock)
    browser = app.test_client()
    browser.set_cookie("tollgate_device", "x" * 43, path="/login")
    assert password_step(browser, owner.owner).headers["Location"] == "/login/two-factor"


# -- turning it off -------------------------------------------------------------------------------


def test_turning_it_off_needs_the_password(app, client, owner, clock) -> None:
    set_up(client, clock)
    wrong = post(client, "/account/two-factor/disable", password="not my password at all")
    assert wrong.status_code == 400 and user_row(app, owner.owner).totp_enabled_at is not None
    answer = post(client, "/account/two-factor/disable", password=PASSWORD)
    assert answer.status_code == 302
    user = user_row(app, owner.owner)
    assert user.totp_enabled_at is None and user.totp_secret is None
    assert password_step(app.test_client(), owner.owner).headers["Location"] == "/dashboard"
    with app.app_context():
        assert _db.session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id)).all() == []
        _db.session.remove()
    assert len(audit_events(app, owner.tenant_id, "two_factor.disabled")) == 1


# -- the tenant rule and the owner's reset --------------------------------------------------------


def test_a_tenant_can_require_it_of_owners_and_admins(app, client, owner, clock) -> None:
    answer = post(client, "/team/two-factor", page_url="/team", require="yes")
    assert answer.status_code == 302
    [changed] = audit_events(app, owner.tenant_id, "settings.changed")
    assert changed.details == {"require_two_factor": True}
    # The owner, without it, is sent to set it up before any other page; signing out still works.
    page = client.get("/dashboard")
    assert page.status_code == 302 and page.headers["Location"] == "/account/two-factor"
    assert client.get("/keys").headers["Location"] == "/account/two-factor"
    assert client.get("/logout").status_code == 200
    assert "Initech requires it of owners and admins" in page_text(client.get("/account/two-factor").text)
    # An admin too; a member is not.
    admin, member = app.test_client(), app.test_client()
    sign_in(admin, owner.admin)
    sign_in(member, owner.member)
    assert admin.get("/dashboard").headers["Location"] == "/account/two-factor"
    assert member.get("/dashboard").status_code == 200
    # Once set up, the pages open; and it cannot be turned off while required.
    set_up(client, clock)
    assert client.get("/dashboard").status_code == 200
    refused = post(client, "/account/two-factor/disable", password=PASSWORD)
    assert refused.status_code == 409 and user_row(app, owner.owner).totp_enabled_at is not None
    team = page_text(client.get("/team").text)
    assert "Required of owners and admins" in team and "required, not set up" in team


def test_only_an_owner_changes_the_rule(app, owner, clock) -> None:
    admin = app.test_client()
    sign_in(admin, owner.admin)
    answer = post(admin, "/team/two-factor", page_url="/team", require="yes")
    assert answer.status_code == 403
    assert audit_events(app, owner.tenant_id, "settings.changed") == []


def test_an_owner_resets_a_members_two_factor_and_it_is_audited(app, client, owner, clock) -> None:
    admin = app.test_client()
    sign_in(admin, owner.admin)
    set_up(admin, clock)
    admin_id = user_row(app, owner.admin).id
    assert "Reset the two-factor sign-in of" in client.get("/team").text
    # An admin may not reset anyone's.
    assert post(admin, f"/team/members/{admin_id}/two-factor/reset", page_url="/team").status_code == 403
    answer = post(client, f"/team/members/{admin_id}/two-factor/reset", page_url="/team")
    assert answer.status_code == 302
    assert "Two-factor sign-in of " + owner.admin + " is reset" in page_text(client.get("/team").text)
    [reset] = audit_events(app, owner.tenant_id, "two_factor.reset")
    assert reset.user_id == owner.user_ids["owner"]
    assert reset.details == {"member_id": admin_id, "member_email": owner.admin}
    assert password_step(app.test_client(), owner.admin).headers["Location"] == "/dashboard"


def test_another_tenants_member_cannot_be_reset(app, client, owner, other_tenant, clock) -> None:
    stranger = user_row(app, other_tenant.admin).id
    assert post(client, f"/team/members/{stranger}/two-factor/reset", page_url="/team").status_code == 404
