"""The account page: name, password (other sessions end), e-mail address (confirmed by a link to
the new one, the old one told), sign out everywhere, and the user's own recent sign-ins."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import User
from tests.api_helpers import clock  # noqa: F401 - the fixture
from tests.conftest import csrf_token
from tests.notify_helpers import app_config
from tests.portal_helpers import PASSWORD, audit_events, page_text, sign_in
from tests.receivers import SmtpSink
from tests.tenancy.test_password_reset import wait_for_mail

NEW_PASSWORD = "quiet lantern orbit meadow 77"
CONFIRM_LINK = re.compile(r"http://localhost(/account/email/confirm/[A-Za-z0-9_-]+)")


@pytest.fixture
def sink(app):
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        yield sink


@pytest.fixture
def owner(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


def post(client, url: str, **data):
    page = client.get("/account")
    return client.post(url, data={**data, "csrf_token": csrf_token(page.text)})


def user_row(app, email: str) -> User | None:
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == email))
        _db.session.expunge_all()
        _db.session.remove()
    return user


def test_account_page_shows_every_part_and_the_header_links_to_it(client, owner) -> None:
    page = client.get("/account")
    assert page.status_code == 200
    text = page_text(page.text)
    headings = ("Your account", "Name", "Password", "E-mail address", "Sign out everywhere", "Your recent sign-ins")
    for heading in headings:
        assert heading in text
    assert 'href="/account"' in client.get("/dashboard").text


def test_account_needs_sign_in(client) -> None:
    answer = client.get("/account")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]


def test_recent_sign_ins_show_time_address_browser_and_result(app, owner) -> None:
    stranger = app.test_client()
    stranger.environ_base["HTTP_USER_AGENT"] = "Evil/1.0 (X11)"
    page = stranger.get("/login")
    guess = {"email": owner.owner, "password": "not the password at all", "csrf_token": csrf_token(page.text)}
    stranger.post("/login", data=guess)
    browser = app.test_client()
    browser.environ_base["HTTP_USER_AGENT"] = "Mozilla/5.0 (Test) Firefox/140.0"
    sign_in(browser, owner.owner)
    rows = re.findall(r"<tr class=\"(ok|failed)\">(.*?)</tr>", browser.get("/account").text, re.S)
    assert [kind for kind, _ in rows[:3]] == ["ok", "failed", "ok"]
    newest, failed = page_text(rows[0][1]), page_text(rows[1][1])
    assert "Signed in" in newest and "127.0.0.1" in newest and "Firefox/140.0" in newest
    assert "Failed" in failed and "bad credentials" in failed and "Evil/1.0" in failed


def test_recent_sign_ins_are_only_the_users_own(app, client, owner) -> None:
    sign_in(app.test_client(), owner.admin)
    page = client.get("/account").text
    assert page.count('<tr class="ok">') == 1


def test_name_change_is_saved_and_audited(app, client, owner) -> None:
    answer = post(client, "/account/name", name="  Olive Owner  ")
    assert answer.status_code == 302
    assert user_row(app, owner.owner).name == "Olive Owner"
    assert "Your name is saved." in page_text(client.get("/account").text)
    (event,) = audit_events(app, owner.tenant_id, "profile.changed")
    assert event.details == {"name": "Olive Owner"}
    too_long = post(client, "/account/name", name="x" * 121)
    assert too_long.status_code == 400


def test_password_change_ends_other_sessions_and_keeps_this_one(app, client, owner, sink) -> None:
    elsewhere = app.test_client()
    sign_in(elsewhere, owner.owner)
    answer = post(
        client, "/account/password", current_password=PASSWORD, new_password=NEW_PASSWORD, confirm=NEW_PASSWORD
    )
    assert answer.status_code == 302
    # This browser goes on; the other one is signed out.
    assert "Every other sign-in of yours has ended." in page_text(client.get("/account").text)
    assert elsewhere.get("/dashboard").status_code == 302
    sign_in(app.test_client(), owner.owner, NEW_PASSWORD)
    (notice,) = wait_for_mail(sink, 1)
    assert notice["To"] == owner.owner and notice["Subject"] == "Your Tollgate password was changed"
    assert len(audit_events(app, owner.tenant_id, "password.changed")) == 1


def test_password_change_refusals(app, client, owner) -> None:
    wrong = post(
        client, "/account/password", current_password="wrong one", new_password=NEW_PASSWORD, confirm=NEW_PASSWORD
    )
    assert wrong.status_code == 400 and "Your current password is not that one." in page_text(wrong.text)
    # A wrong current password counts as a failed authentication.
    failures = audit_events(app, owner.tenant_id, "login.failure")
    assert failures[-1].details["reason"] == "wrong current password on the account page"
    weak = post(client, "/account/password", current_password=PASSWORD, new_password="short", confirm="short")
    assert weak.status_code == 400 and "12 characters" in page_text(weak.text)
    same = post(client, "/account/password", current_password=PASSWORD, new_password=PASSWORD, confirm=PASSWORD)
    assert same.status_code == 400 and "is your current one" in page_text(same.text)
    differ = post(
        client, "/account/password", current_password=PASSWORD, new_password=NEW_PASSWORD, confirm=NEW_PASSWORD + "!"
    )
    assert differ.status_code == 400 and "The two passwords differ." in page_text(differ.text)
    sign_in(app.test_client(), owner.owner)  # the password is unchanged


def test_current_password_checks_are_throttled(app, client, owner) -> None:
    fields = {"new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    statuses = [post(client, "/account/password", current_password=f"guess {n}", **fields) for n in range(11)]
    statuses = [answer.status_code for answer in statuses]
    assert statuses == [400] * 10 + [429]
    assert "Too many attempts with your current password" in page_text(
        post(client, "/account/email", new_email="x@y.example", password="guess").text
    )


def test_email_change_is_confirmed_by_the_new_address(app, client, owner, sink) -> None:
    answer = post(client, "/account/email", new_email="Olive@New.Example", password=PASSWORD)
    assert answer.status_code == 302
    confirm, notice = sorted(wait_for_mail(sink, 2), key=lambda message: message["To"] != "olive@new.example")
    assert confirm["To"] == "olive@new.example" and notice["To"] == owner.owner
    assert "olive@new.example" in notice.get_body(("plain",)).get_content()
    assert CONFIRM_LINK.search(notice.get_body(("plain",)).get_content()) is None  # the link goes to the new one only
    link = CONFIRM_LINK.search(confirm.get_body(("plain",)).get_content()).group(1)
    # Nothing changes until the link is opened and confirmed.
    assert user_row(app, owner.owner) is not None
    page = client.get(link)
    assert page.status_code == 200 and "olive@new.example" in page_text(page.text)
    assert user_row(app, owner.owner) is not None
    done = client.post(link, data={"csrf_token": csrf_token(page.text)})
    assert done.status_code == 302
    assert user_row(app, owner.owner) is None and user_row(app, "olive@new.example") is not None
    sign_in(app.test_client(), "olive@new.example")
    assert client.get(link).status_code == 404  # used once
    (event,) = audit_events(app, owner.tenant_id, "email.changed")
    assert event.details == {"old_email": owner.owner, "new_email": "olive@new.example"}


def test_email_change_refusals(app, client, owner, sink) -> None:
    wrong = post(client, "/account/email", new_email="olive@new.example", password="wrong")
    assert wrong.status_code == 400 and "Your current password is not that one." in page_text(wrong.text)
    taken = post(client, "/account/email", new_email=owner.admin, password=PASSWORD)
    assert taken.status_code == 400 and "Another Tollgate account uses that address." in page_text(taken.text)
    same = post(client, "/account/email", new_email=owner.owner, password=PASSWORD)
    assert same.status_code == 400 and "That is your address already." in page_text(same.text)
    assert sink.messages == []


def test_email_change_link_expires_and_is_voided_if_the_address_is_taken_meanwhile(
    app,
    client,
    owner,
    sink,
    clock,  # noqa: F811
) -> None:
    post(client, "/account/email", new_email="olive@new.example", password=PASSWORD)
    link = CONFIRM_LINK.search(
        next(m for m in wait_for_mail(sink, 2) if m["To"] == "olive@new.example").get_body(("plain",)).get_content()
    ).group(1)
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == owner.member))
        user.email = "olive@new.example"
        _db.session.commit()
    page = client.get(link)
    refused = client.post(link, data={"csrf_token": csrf_token(page.text)})
    assert refused.status_code == 409 and "is used by another Tollgate account now" in page_text(refused.text)
    assert user_row(app, owner.owner) is not None
    clock.advance(24 * 3600 + 1)
    assert client.get(link).status_code == 404


def test_email_change_without_a_mail_server_is_refused_clearly(app, client, owner) -> None:
    with app_config(app, SMTP_URL=""):
        assert "no mail server configured" in page_text(client.get("/account").text)
        answer = post(client, "/account/email", new_email="olive@new.example", password=PASSWORD)
    assert answer.status_code == 400 and "no mail server configured" in page_text(answer.text)


def test_sign_out_everywhere_ends_every_session(app, client, owner) -> None:
    elsewhere = app.test_client()
    sign_in(elsewhere, owner.owner)
    answer = post(client, "/account/sign-out-everywhere")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/login")
    assert client.get("/dashboard").status_code == 302
    assert elsewhere.get("/dashboard").status_code == 302
    (event,) = audit_events(app, owner.tenant_id, "logout.everywhere")
    assert event.details == {"sessions": 2}


def test_account_forms_need_the_csrf_token(client, owner) -> None:
    for url in ("/account/name", "/account/password", "/account/email", "/account/sign-out-everywhere"):
        assert client.post(url, data={"name": "x"}).status_code == 400, url
    assert client.get("/dashboard").status_code == 200
