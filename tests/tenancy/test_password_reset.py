"""“Forgot your password?”: a one-time link by e-mail (a real SMTP sink on loopback), the same
answer whether or not the address has an account, one hour, used once, voided by a newer link or
a password change, throttled per address and per client."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import AccountToken, User
from tests.api_helpers import clock  # noqa: F401 - the fixture
from tests.conftest import csrf_token
from tests.notify_helpers import app_config
from tests.portal_helpers import PASSWORD, audit_events, page_text, sign_in
from tests.receivers import SmtpSink

NEW_PASSWORD = "quiet lantern orbit meadow 77"
LINK = re.compile(r"http://localhost(/reset-password/[A-Za-z0-9_-]+)")


@pytest.fixture
def sink(app):
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        yield sink


def wait_for_mail(sink: SmtpSink, count: int) -> list:
    """The sink's messages once ``count`` have arrived (sent on a thread of their own)."""
    deadline = time.monotonic() + 10
    while len(sink.messages) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(sink.messages) >= count, f"{len(sink.messages)} of {count} e-mails arrived"
    return sink.messages


def ask(client, email: str):
    page = client.get("/forgot-password")
    return client.post("/forgot-password", data={"email": email, "csrf_token": csrf_token(page.text)})


def link_of(message) -> str:
    match = LINK.search(message.get_body(("plain",)).get_content())
    assert match, "the e-mail holds no reset link"
    return match.group(1)


def choose(client, link: str, password: str, confirm: str | None = None):
    page = client.get(link)
    assert page.status_code == 200, page.status_code
    data = {"new_password": password, "confirm": confirm or password, "csrf_token": csrf_token(page.text)}
    return client.post(link, data=data)


def test_sign_in_page_links_to_the_reset(client) -> None:
    page = client.get("/login")
    assert 'href="/forgot-password"' in page.text and "Forgot your password?" in page.text


def test_without_a_mail_server_the_page_says_so(client, app, portal_tenant) -> None:
    with app_config(app, SMTP_URL=""):
        page = client.get("/forgot-password")
    assert page.status_code == 200
    assert "This Tollgate has no mail server configured" in page_text(page.text)
    assert 'name="email"' not in page.text


def test_reset_by_link_changes_the_password_and_ends_every_session(app, client, portal_tenant, sink) -> None:
    other_browser = app.test_client()
    sign_in(other_browser, portal_tenant.owner)
    answer = ask(client, portal_tenant.owner)
    assert answer.status_code == 200
    assert "If a Tollgate account uses" in page_text(answer.text)
    (message,) = wait_for_mail(sink, 1)
    assert message["To"] == portal_tenant.owner and message["Subject"] == "Reset your Tollgate password"
    link = link_of(message)
    page = client.get(link)
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"

    done = choose(client, link, NEW_PASSWORD)
    assert done.status_code == 302 and done.headers["Location"].endswith("/login")
    # The other browser's session ended; the old password opens nothing, the new one does.
    assert other_browser.get("/dashboard").status_code == 302
    fresh = app.test_client()
    page = fresh.get("/login")
    data = {"email": portal_tenant.owner, "password": PASSWORD, "csrf_token": csrf_token(page.text)}
    old = fresh.post("/login", data=data)
    assert old.status_code == 401
    sign_in(fresh, portal_tenant.owner, NEW_PASSWORD)
    # Used once: the same link again is gone.
    again = client.get(link)
    assert again.status_code == 404 and "This link no longer works" in page_text(again.text)
    # The owner is told by e-mail that the password changed.
    notice = wait_for_mail(sink, 2)[1]
    assert notice["Subject"] == "Your Tollgate password was changed"
    assert len(audit_events(app, portal_tenant.tenant_id, "password.reset")) == 1
    assert len(audit_events(app, portal_tenant.tenant_id, "password.reset_requested")) == 1


def test_unknown_address_gets_the_same_answer_and_no_mail(client, portal_tenant, sink) -> None:
    known = ask(client, portal_tenant.owner)
    unknown = ask(client, "nobody@nowhere.example")
    assert known.status_code == unknown.status_code == 200

    def shown(response, address):
        return re.sub(r'value="[^"]+"', "", response.text.replace(address, "ADDRESS"))

    assert shown(known, portal_tenant.owner) == shown(unknown, "nobody@nowhere.example")
    wait_for_mail(sink, 1)
    time.sleep(0.2)  # a second e-mail, wrongly sent, would be on its way by now
    assert [message["To"] for message in sink.messages] == [portal_tenant.owner]


def test_only_the_hash_of_the_token_is_stored(app, client, portal_tenant, sink) -> None:
    ask(client, portal_tenant.owner)
    token = link_of(wait_for_mail(sink, 1)[0]).rsplit("/", 1)[1]
    with app.app_context():
        stored = _db.session.scalars(select(AccountToken.token_hash)).all()
        _db.session.remove()
    assert len(stored) == 1 and token not in stored[0] and len(stored[0]) == 64


def test_link_expires_after_an_hour(client, portal_tenant, sink, clock) -> None:  # noqa: F811
    ask(client, portal_tenant.owner)
    link = link_of(wait_for_mail(sink, 1)[0])
    clock.advance(59 * 60)
    assert client.get(link).status_code == 200
    clock.advance(61)
    assert client.get(link).status_code == 404


def test_newer_link_voids_the_older_one(client, portal_tenant, sink) -> None:
    ask(client, portal_tenant.owner)
    first = link_of(wait_for_mail(sink, 1)[0])
    ask(client, portal_tenant.owner)
    second = link_of(wait_for_mail(sink, 2)[1])
    assert client.get(first).status_code == 404
    assert client.get(second).status_code == 200


def test_password_change_voids_an_open_link(app, client, portal_tenant, sink) -> None:
    ask(client, portal_tenant.owner)
    link = link_of(wait_for_mail(sink, 1)[0])
    signed_in = app.test_client()
    sign_in(signed_in, portal_tenant.owner)
    page = signed_in.get("/account")
    changed = signed_in.post(
        "/account/password",
        data={
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
            "csrf_token": csrf_token(page.text),
        },
    )
    assert changed.status_code == 302
    assert client.get(link).status_code == 404


def test_weak_or_mismatched_new_password_is_refused_and_the_link_kept(app, client, portal_tenant, sink) -> None:
    ask(client, portal_tenant.owner)
    link = link_of(wait_for_mail(sink, 1)[0])
    short = choose(client, link, "short pw")
    assert short.status_code == 400 and "12 characters" in page_text(short.text)
    differ = choose(client, link, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert differ.status_code == 400 and "The two passwords differ." in page_text(differ.text)
    # Nothing changed: the old password still signs in, and the link still works.
    sign_in(app.test_client(), portal_tenant.owner)
    assert choose(client, link, NEW_PASSWORD).status_code == 302


def test_disabled_user_gets_no_link(app, client, portal_tenant, sink) -> None:
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == portal_tenant.member))
        user.is_enabled = False
        _db.session.commit()
    assert ask(client, portal_tenant.member).status_code == 200
    assert ask(client, portal_tenant.owner).status_code == 200
    time.sleep(0.2)
    assert [message["To"] for message in wait_for_mail(sink, 1)] == [portal_tenant.owner]


def test_requests_are_throttled_per_address(app, portal_tenant, sink) -> None:
    # Three an hour for one address, from however many clients.
    answers = [ask(app.test_client(), portal_tenant.owner).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]
    # Another address is not held back by it.
    assert ask(app.test_client(), portal_tenant.admin).status_code == 200


def test_requests_are_throttled_per_client(client, portal_tenant, sink) -> None:
    statuses = [ask(client, f"someone{n}@nowhere.example").status_code for n in range(6)]
    assert statuses == [200] * 5 + [429]
    page = ask(client, "someone-else@nowhere.example")
    assert page.status_code == 429 and "Too many password reset requests" in page_text(page.text)
    assert page.headers["Retry-After"].isdigit()


def test_bad_and_tampered_links(client) -> None:
    assert client.get("/reset-password/not-a-token").status_code == 404
    # Without the form's CSRF token nothing is read; with one, an unknown token is still gone.
    assert client.post("/reset-password/not-a-token", data={"new_password": NEW_PASSWORD}).status_code == 400
    token = csrf_token(client.get("/login").text)
    data = {"new_password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": token}
    assert client.post("/reset-password/not-a-token", data=data).status_code == 404
