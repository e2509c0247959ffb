"""Inviting people to the team by a one-time link: made by owners and admins, shown once, e-mailed
when a mail server is configured, accepted once within 7 days, revocable until then."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import func, select

from portal.extensions import db as _db
from portal.models import AuditEvent, Invite, User
from tests.conftest import csrf_token
from tests.factories import PASSWORD
from tests.notify_helpers import app_config
from tests.portal_helpers import page_text, sign_in
from tests.receivers import SmtpSink

NEW_PASSWORD = "a brand new passphrase"
DAY = 86400


# -- helpers (database reads in their own short context: see tests/tenancy/test_web_team.py) -----------


def submission_token(html: str) -> str:
    match = re.search(r'name="submission" type="hidden" value="([^"]+)"', html)
    assert match, "the form has no submission token"
    return match.group(1)


def invite(client, email: str, role: str = "member", csrf: bool = True):
    page = client.get("/team")
    data = {"email": email, "role": role, "submission": submission_token(page.text)}
    if csrf:
        data["csrf_token"] = csrf_token(page.text)
    return client.post("/team/invites", data=data)


def link_in(html: str) -> str:
    match = re.search(r'<code id="invite-link">http://localhost(/invite/[A-Za-z0-9_-]+)</code>', html)
    assert match, "the page shows no invitation link"
    return match.group(1)


def accept(
    client,
    link: str,
    name: str = "Nora New",
    password: str = NEW_PASSWORD,
    confirm: str | None = None,
    csrf: bool = True,
):
    page = client.get(link)
    data = {"name": name, "password": password, "confirm": password if confirm is None else confirm}
    if csrf:
        data["csrf_token"] = csrf_token(page.text) if page.status_code == 200 else csrf_token(client.get("/login").text)
    return client.post(link, data=data)


def invites(app, tenant_id: int) -> list[dict]:
    with app.app_context():
        rows = _db.session.scalars(select(Invite).where(Invite.tenant_id == tenant_id).order_by(Invite.id))
        return [{column.name: getattr(row, column.name) for column in Invite.__table__.columns} for row in rows]


def user_named(app, email: str) -> dict | None:
    with app.app_context():
        user = _db.session.scalar(select(User).where(User.email == email))
        return (
            None
            if user is None
            else {
                "id": user.id,
                "tenant_id": user.tenant_id,
                "role": user.role,
                "name": user.name,
                "enabled": user.is_enabled,
            }
        )


def user_count(app) -> int:
    with app.app_context():
        return _db.session.scalar(select(func.count()).select_from(User))


def actions(app, tenant_id: int, prefix: str = "invite.") -> list[tuple[str, int | None, dict]]:
    with app.app_context():
        query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action.startswith(prefix))
        return [(e.action, e.user_id, e.details) for e in _db.session.scalars(query.order_by(AuditEvent.id))]


@pytest.fixture
def owner(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


@pytest.fixture
def guest(app):
    """Someone else's browser: the person invited."""
    return app.test_client()


# -- inviting --------------------------------------------------------------------------------------


def test_an_invitation_is_accepted_through_its_link_and_signs_the_new_user_in_with_the_role(
    app, client, guest, owner, clock
):
    response = invite(client, "Nora@Example.com", "admin")
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    text = page_text(response.text)
    assert "Copy it now, it will not be shown again." in text
    assert "No mail server is configured (SMTP_URL)" in text
    link = link_in(response.text)
    token = link.rsplit("/", 1)[1]
    [stored] = invites(app, owner.tenant_id)
    assert stored["email"] == "nora@example.com" and stored["role"] == "admin"
    assert stored["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(stored)  # only the hash is kept
    assert (stored["expires_at"] - stored["created_at"]).total_seconds() == 7 * DAY

    page = guest.get(link)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "You are invited to Initech on Tollgate as admin" in page_text(page.text)
    assert 'value="nora@example.com" readonly' in page.text
    response = accept(guest, link)
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    dashboard = guest.get("/dashboard")
    assert dashboard.status_code == 200 and "nora@example.com" in dashboard.text
    assert "Welcome to Initech! You are signed in as nora@example.com (admin)." in page_text(dashboard.text)
    new = user_named(app, "nora@example.com")
    assert new == {"id": new["id"], "tenant_id": owner.tenant_id, "role": "admin", "name": "Nora New", "enabled": True}
    [used] = invites(app, owner.tenant_id)
    assert used["accepted_user_id"] == new["id"] and used["accepted_at"] is not None
    # The new user signs in again with the password they chose, and appears on the team.
    sign_in(guest, "nora@example.com", NEW_PASSWORD)
    assert "nora@example.com" in page_text(client.get("/team").text)
    assert [(action, by) for action, by, _ in actions(app, owner.tenant_id)] == [
        ("invite.created", owner.user_ids["owner"]),
        ("invite.accepted", new["id"]),
    ]
    assert actions(app, owner.tenant_id)[1][2] == {
        "invite_id": stored["id"],
        "email": "nora@example.com",
        "role": "admin",
        "invited_by_id": owner.user_ids["owner"],
    }


def test_the_link_works_once(app, client, guest, owner):
    link = link_in(invite(client, "nora@example.com").text)
    assert accept(guest, link).status_code == 302
    users = user_count(app)
    again = app.test_client()
    response = again.get(link)
    assert response.status_code == 410
    assert "This invitation was used already" in page_text(response.text)
    assert accept(again, link, name="Someone Else").status_code == 410
    assert user_count(app) == users
    assert user_named(app, "nora@example.com")["name"] == "Nora New"


def test_a_link_expires_after_7_days(app, client, guest, owner, clock):
    link = link_in(invite(client, "late@example.com").text)
    clock.advance(7 * DAY - 1)
    assert guest.get(link).status_code == 200  # still open a second before
    clock.advance(1)
    response = guest.get(link)
    assert response.status_code == 410
    assert "This invitation has expired" in page_text(response.text)
    assert accept(guest, link).status_code == 410
    assert user_named(app, "late@example.com") is None
    # And it is no longer listed as pending.
    assert "late@example.com" not in page_text(client.get("/team").text)


def test_an_unknown_or_cut_short_link_is_not_found_and_creates_nothing(app, client, guest, owner):
    link = link_in(invite(client, "nora@example.com").text)
    users = user_count(app)
    for bad in (link[:-3], "/invite/not-a-token", "/invite/" + "x" * 300):
        response = guest.get(bad)
        assert response.status_code == 404
        assert "This invitation link is not valid" in page_text(response.text)
        assert accept(guest, bad).status_code == 404
    assert user_count(app) == users


def test_pending_invitations_are_listed_with_role_inviter_and_expiry(app, client, portal_tenant, clock):
    sign_in(client, portal_tenant.admin)
    assert invite(client, "one@example.com", "member").status_code == 201
    clock.advance(3600)
    assert invite(client, "two@example.com", "admin").status_code == 201
    html = client.get("/team").text
    text = page_text(html)
    assert "Pending invitations (2)" in text
    # Newest first, each with its role, who sent it and when it expires (7 days after it was sent).
    assert text.index("two@example.com") < text.index("one@example.com")
    row = text.split("two@example.com", 1)[1].split("one@example.com", 1)[0]
    assert "admin" in row and portal_tenant.admin in row
    assert "2026-11-18 13:30 UTC" in row and "2026-11-25 13:30 UTC" in row


def test_a_revoked_invitation_stops_working(app, client, guest, owner):
    link = link_in(invite(client, "nora@example.com").text)
    [stored] = invites(app, owner.tenant_id)
    page = client.get("/team")
    response = client.post(f"/team/invites/{stored['id']}/revoke", data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302
    text = page_text(client.get("/team").text)
    assert "The invitation to nora@example.com is revoked: its link no longer works." in text
    assert "Pending invitations (0)" in text
    response = guest.get(link)
    assert response.status_code == 410 and "This invitation was withdrawn" in page_text(response.text)
    assert accept(guest, link).status_code == 410
    assert user_named(app, "nora@example.com") is None
    assert [action for action, _, _ in actions(app, owner.tenant_id)] == ["invite.created", "invite.revoked"]


def test_inviting_the_same_address_again_replaces_the_first_link(app, client, guest, owner):
    first = link_in(invite(client, "nora@example.com").text)
    response = invite(client, "nora@example.com", "admin")
    assert "The earlier invitation to nora@example.com is revoked" in page_text(response.text)
    second = link_in(response.text)
    assert guest.get(first).status_code == 410
    assert accept(guest, second).status_code == 302
    assert user_named(app, "nora@example.com")["role"] == "admin"


def test_reloading_the_invitation_form_makes_one_invitation(app, client, owner):
    page = client.get("/team")
    data = {
        "email": "nora@example.com",
        "role": "member",
        "csrf_token": csrf_token(page.text),
        "submission": submission_token(page.text),
    }
    assert client.post("/team/invites", data=data).status_code == 201
    again = client.post("/team/invites", data=data)
    assert again.status_code == 302
    assert "That form was already sent" in page_text(client.get("/team").text)
    assert len(invites(app, owner.tenant_id)) == 1


# -- who may invite ---------------------------------------------------------------------------------


def test_a_member_may_not_invite_or_revoke(app, client, portal_tenant):
    sign_in(client, portal_tenant.admin)
    assert invite(client, "nora@example.com").status_code == 201
    [stored] = invites(app, portal_tenant.tenant_id)
    sign_in(client, portal_tenant.member)
    page = client.get("/team")
    token = csrf_token(page.text)
    response = client.post("/team/invites", data={"email": "x@example.com", "role": "member", "csrf_token": token})
    assert response.status_code == 403
    assert client.post(f"/team/invites/{stored['id']}/revoke", data={"csrf_token": token}).status_code == 403
    assert [row["revoked_at"] for row in invites(app, portal_tenant.tenant_id)] == [None]


def test_an_admin_cannot_invite_an_owner_but_an_owner_can(app, client, guest, portal_tenant):
    sign_in(client, portal_tenant.admin)
    assert 'value="owner"' not in client.get("/team").text
    response = invite(client, "boss@example.com", "owner")
    assert response.status_code == 403
    assert "Only an owner can invite an owner." in page_text(response.text)
    assert invites(app, portal_tenant.tenant_id) == []
    sign_in(client, portal_tenant.owner)
    link = link_in(invite(client, "boss@example.com", "owner").text)
    assert accept(guest, link).status_code == 302
    assert user_named(app, "boss@example.com")["role"] == "owner"


def test_an_admin_cannot_revoke_an_invitation_to_be_owner(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    invite(client, "boss@example.com", "owner")
    [stored] = invites(app, portal_tenant.tenant_id)
    sign_in(client, portal_tenant.admin)
    page = client.get("/team")
    response = client.post(f"/team/invites/{stored['id']}/revoke", data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 403
    assert invites(app, portal_tenant.tenant_id)[0]["revoked_at"] is None


def test_another_tenants_invitation_is_not_found(app, client, portal_tenant, other_tenant):
    sign_in(client, other_tenant.owner)
    invite(client, "theirs@example.com")
    [theirs] = invites(app, other_tenant.tenant_id)
    sign_in(client, portal_tenant.owner)
    page = client.get("/team")
    response = client.post(f"/team/invites/{theirs['id']}/revoke", data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 404
    assert invites(app, other_tenant.tenant_id)[0]["revoked_at"] is None
    assert "theirs@example.com" not in page_text(client.get("/team").text)


# -- the forms' checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("", "This field is required."),
        ("not an address", "Enter a valid e-mail address."),
        ("member@initech.example", "member@initech.example is on the team already."),
        # An address with an account in another tenant is invited like any other: see
        # tests/tenancy/test_invite_privacy.py.
    ],
)
def test_the_invitation_needs_a_new_valid_address(app, client, owner, other_tenant, email, message):
    response = invite(client, email)
    assert response.status_code == 400
    assert message in page_text(response.text)
    assert 'aria-invalid="true"' in response.text
    assert invites(app, owner.tenant_id) == []


@pytest.mark.parametrize(
    ("name", "password", "confirm", "message"),
    [
        ("", NEW_PASSWORD, None, "This field is required."),
        ("Nora", "short", None, "The password must be at least 12 characters long."),
        ("Nora", NEW_PASSWORD, "something else entirely", "The two passwords differ."),
    ],
)
def test_accepting_needs_a_name_and_a_good_password(app, client, guest, owner, name, password, confirm, message):
    link = link_in(invite(client, "nora@example.com").text)
    response = accept(guest, link, name=name, password=password, confirm=confirm)
    assert response.status_code == 400
    assert message in page_text(response.text)
    assert user_named(app, "nora@example.com") is None
    assert invites(app, owner.tenant_id)[0]["accepted_at"] is None
    assert accept(guest, link).status_code == 302  # the link still works


def test_every_invitation_form_needs_its_csrf_token(app, client, guest, owner):
    assert invite(client, "nora@example.com", csrf=False).status_code == 400
    assert invites(app, owner.tenant_id) == []
    link = link_in(invite(client, "nora@example.com").text)
    [stored] = invites(app, owner.tenant_id)
    assert client.post(f"/team/invites/{stored['id']}/revoke").status_code == 400
    assert accept(guest, link, csrf=False).status_code == 400
    assert invites(app, owner.tenant_id)[0]["revoked_at"] is None
    assert user_named(app, "nora@example.com") is None


def test_accepting_is_throttled_like_signing_in(app, client, guest, owner):
    link = link_in(invite(client, "nora@example.com").text)
    limit = int(app.config["LOGIN_RATE_LIMIT"].split("/")[0])
    for _ in range(limit):
        assert accept(guest, link, password="short").status_code == 400
    response = accept(guest, link)
    assert response.status_code == 429
    assert "Too many attempts" in page_text(response.text)
    assert int(response.headers["Retry-After"]) > 0
    assert user_named(app, "nora@example.com") is None


def test_a_removed_member_can_be_invited_back(app, client, guest, owner):
    page = client.get("/team")
    client.post(f"/team/members/{owner.user_ids['member']}/remove", data={"csrf_token": csrf_token(page.text)})
    link = link_in(invite(client, owner.member, "admin").text)
    assert accept(guest, link, name="Back Again").status_code == 302
    back = user_named(app, owner.member)
    assert back == {
        "id": owner.user_ids["member"],
        "tenant_id": owner.tenant_id,
        "role": "admin",
        "name": "Back Again",
        "enabled": True,
    }
    sign_in(guest, owner.member, NEW_PASSWORD)
    # The password from before the removal no longer works.
    stranger = app.test_client()
    page = stranger.get("/login")
    data = {"email": owner.member, "password": PASSWORD, "csrf_token": csrf_token(page.text)}
    assert stranger.post("/login", data=data).status_code == 401


# -- e-mail ----------------------------------------------------------------------------------------


def test_the_invitation_is_emailed_when_a_mail_server_is_configured(app, client, guest, owner, clock):
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        response = invite(client, "nora@example.com", "admin")
    assert response.status_code == 201
    said = page_text(response.text)
    assert "The invitation link was e-mailed to nora@example.com. It works once, until 2026-11-25 12:30 UTC." in said
    assert "/invite/" not in response.text  # only the invited person receives the link
    [message] = sink.messages
    link = re.search(r"http://localhost(/invite/[A-Za-z0-9_-]+)", message.get_body(("plain",)).get_content()).group(1)
    assert sink.envelopes == [("tollgate@localhost", ["nora@example.com"])]
    assert message["Subject"] == "owner@initech.example invited you to Initech on Tollgate"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert f"http://localhost{link}" in text and f'href="http://localhost{link}"' in html
    assert "join Initech on Tollgate as an admin" in text
    assert "the link works once, until 2026-11-25 12:30 UTC" in text
    assert accept(guest, link).status_code == 302


def test_an_unreachable_mail_server_still_shows_the_link(app, client, owner):
    from tests.receivers import free_port

    with app_config(app, SMTP_URL=f"smtp://127.0.0.1:{free_port()}", NOTIFY_CONNECT_TIMEOUT=1, NOTIFY_READ_TIMEOUT=1):
        response = invite(client, "nora@example.com")
    assert response.status_code == 201
    assert "The e-mail to nora@example.com was not sent" in page_text(response.text)
    link_in(response.text)
