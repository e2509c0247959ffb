"""The team page: members with their roles, changing a role, removing someone, and the rules
that keep a tenant with at least one owner."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import AuditEvent, Invite, Tenant, User
from portal.tenancy.accounts import create_user
from tests.conftest import csrf_token
from tests.factories import PASSWORD
from tests.portal_helpers import count_statements, page_text, sign_in

# The checks read the database in their own short application context: a context held open for
# the whole test would be shared by every request, and with it the signed-in user.


def role_of(app, email: str) -> str:
    with app.app_context():
        return _db.session.scalar(select(User.role).where(User.email == email))


def enabled(app, user_id: int) -> bool:
    with app.app_context():
        return _db.session.get(User, user_id).is_enabled


def set_role(client, target_id: int, role: str, csrf: bool = True):
    page = client.get("/team")
    data = {"role": role}
    if csrf:
        data["csrf_token"] = csrf_token(page.text)
    return client.post(f"/team/members/{target_id}/role", data=data)


def remove(client, target_id: int, csrf: bool = True):
    page = client.get("/team")
    data = {"csrf_token": csrf_token(page.text)} if csrf else {}
    return client.post(f"/team/members/{target_id}/remove", data=data)


def events(app, tenant_id: int, action: str) -> list[tuple[int | None, dict | None]]:
    """(user id, details) of the tenant's events of ``action``, oldest first."""
    with app.app_context():
        query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action == action)
        return [(event.user_id, event.details) for event in _db.session.scalars(query.order_by(AuditEvent.id))]


def add_user(app, tenant_id: int, email: str, role: str) -> int:
    with app.app_context():
        user = create_user(_db.session.get(Tenant, tenant_id), email, PASSWORD, role=role)
        _db.session.commit()
        new_id = user.id
        _db.session.remove()
    return new_id


# -- the page ------------------------------------------------------------------------------------


def test_the_team_page_lists_members_with_role_and_last_sign_in(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    response = client.get("/team")
    assert response.status_code == 200
    text = page_text(response.text)
    for email in (portal_tenant.owner, portal_tenant.admin, portal_tenant.member):
        assert email in text
    # Owners first, then admins, then members, each with the role in words.
    assert text.index(portal_tenant.owner) < text.index(portal_tenant.admin) < text.index(portal_tenant.member)
    assert "badge-role-owner" in response.text and ">owner<" in response.text
    # The owner just signed in; the others never have.
    assert "UTC" in text.split(portal_tenant.owner, 1)[1].split(portal_tenant.admin, 1)[0]
    assert "never" in text.split(portal_tenant.member, 1)[1]
    assert "Invite someone" in text
    assert 'aria-current="page"' in response.text and ">Team</a>" in response.text


def test_a_member_sees_the_team_but_no_buttons(client, portal_tenant):
    sign_in(client, portal_tenant.member)
    response = client.get("/team")
    assert response.status_code == 200
    text = page_text(response.text)
    assert portal_tenant.owner in text
    assert "Invite someone" not in text and "Change role" not in text and "Remove" not in text
    assert "Only owners and admins of Initech can invite people or change roles." in text


def test_an_admin_gets_no_buttons_on_an_owner(client, portal_tenant):
    sign_in(client, portal_tenant.admin)
    html = client.get("/team").text
    owner_row = html.split(f'id="member-{portal_tenant.user_ids["owner"]}"', 1)[1].split("</tr>", 1)[0]
    assert "Only an owner can change an owner." in owner_row and "<form" not in owner_row
    member_row = html.split(f'id="member-{portal_tenant.user_ids["member"]}"', 1)[1].split("</tr>", 1)[0]
    assert "Change role" in member_row and "Remove" in member_row
    # An admin may not hand out the owner role, so it is not offered.
    assert '<option value="owner"' not in member_row


# -- roles -----------------------------------------------------------------------------------------


def test_a_member_is_refused_every_change(client, app, portal_tenant):
    sign_in(client, portal_tenant.member)
    other = portal_tenant.user_ids["admin"]
    assert set_role(client, other, "member").status_code == 403
    assert remove(client, other).status_code == 403
    assert set_role(client, portal_tenant.user_ids["member"], "admin").status_code == 403
    assert role_of(app, portal_tenant.admin) == "admin" and role_of(app, portal_tenant.member) == "member"


def test_an_admin_promotes_a_member_and_demotes_an_admin(client, app, portal_tenant):
    sign_in(client, portal_tenant.admin)
    response = set_role(client, portal_tenant.user_ids["member"], "admin")
    assert response.status_code == 302 and response.headers["Location"] == "/team"
    assert role_of(app, portal_tenant.member) == "admin"
    assert f"{portal_tenant.member} is now admin (was member)." in client.get("/team").text
    assert set_role(client, portal_tenant.user_ids["member"], "member").status_code == 302
    assert role_of(app, portal_tenant.member) == "member"
    [(by, promoted), (_, demoted)] = events(app, portal_tenant.tenant_id, "user.role_changed")
    assert by == portal_tenant.user_ids["admin"]
    assert promoted == {
        "member_id": portal_tenant.user_ids["member"],
        "email": portal_tenant.member,
        "from": "member",
        "to": "admin",
    }
    assert (demoted["from"], demoted["to"]) == ("admin", "member")


def test_an_admin_cannot_make_an_owner_or_change_or_remove_one(client, app, portal_tenant):
    sign_in(client, portal_tenant.admin)
    response = set_role(client, portal_tenant.user_ids["member"], "owner")
    assert response.status_code == 403
    assert "Only an owner can grant or take away the owner role" in page_text(response.text)
    assert set_role(client, portal_tenant.user_ids["owner"], "member").status_code == 403
    assert remove(client, portal_tenant.user_ids["owner"]).status_code == 403
    assert role_of(app, portal_tenant.member) == "member" and role_of(app, portal_tenant.owner) == "owner"
    assert events(app, portal_tenant.tenant_id, "user.role_changed") == []


def test_an_owner_makes_a_second_owner_who_may_then_demote_the_first(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    assert set_role(client, portal_tenant.user_ids["admin"], "owner").status_code == 302
    assert role_of(app, portal_tenant.admin) == "owner"
    sign_in(client, portal_tenant.admin)
    assert set_role(client, portal_tenant.user_ids["owner"], "admin").status_code == 302
    assert role_of(app, portal_tenant.owner) == "admin"


def test_the_last_owner_cannot_be_demoted_even_by_themselves(client, app, portal_tenant):
    sign_in(client, portal_tenant.owner)
    response = set_role(client, portal_tenant.user_ids["owner"], "admin")
    assert response.status_code == 409
    assert (
        f"{portal_tenant.owner} is the only owner and cannot become an admin: make someone else an owner first."
        in page_text(response.text)
    )
    assert role_of(app, portal_tenant.owner) == "owner"
    assert events(app, portal_tenant.tenant_id, "user.role_changed") == []


def test_an_unchanged_role_changes_nothing(client, app, portal_tenant):
    sign_in(client, portal_tenant.owner)
    response = set_role(client, portal_tenant.user_ids["member"], "member")
    assert response.status_code == 302
    assert f"{portal_tenant.member} is member already." in client.get("/team").text
    assert events(app, portal_tenant.tenant_id, "user.role_changed") == []


def test_an_unknown_role_is_refused(client, app, portal_tenant):
    sign_in(client, portal_tenant.owner)
    response = set_role(client, portal_tenant.user_ids["member"], "superuser")
    assert response.status_code == 400
    assert "Choose one of the roles owner, admin or member." in page_text(response.text)
    assert role_of(app, portal_tenant.member) == "member"


# -- removing --------------------------------------------------------------------------------------


def test_a_removed_users_session_ends_at_once(app, client, portal_tenant):
    theirs = app.test_client()
    sign_in(theirs, portal_tenant.member)
    assert theirs.get("/dashboard").status_code == 200
    sign_in(client, portal_tenant.admin)
    response = remove(client, portal_tenant.user_ids["member"])
    assert response.status_code == 302
    assert f"{portal_tenant.member} is removed from the team and signed out everywhere." in client.get("/team").text
    # Their very next request is sent to sign in, and signing in again is refused.
    response = theirs.get("/dashboard")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    page = theirs.get("/login")
    refused = theirs.post(
        "/login", data={"email": portal_tenant.member, "password": PASSWORD, "csrf_token": csrf_token(page.text)}
    )
    assert refused.status_code == 401
    # Gone from the team page; their user row stays (disabled) so the audit log still names them.
    assert portal_tenant.member not in page_text(client.get("/team").text)
    assert enabled(app, portal_tenant.user_ids["member"]) is False
    [(by, details)] = events(app, portal_tenant.tenant_id, "user.removed")
    assert by == portal_tenant.user_ids["admin"]
    assert details == {"member_id": portal_tenant.user_ids["member"], "email": portal_tenant.member, "role": "member"}
    # Removed once: the id is no longer on the team.
    assert remove(client, portal_tenant.user_ids["member"]).status_code == 404


def test_an_admin_removes_an_admin_but_not_an_owner(app, client, portal_tenant):
    second_admin = add_user(app, portal_tenant.tenant_id, "ops@initech.example", "admin")
    sign_in(client, portal_tenant.admin)
    assert remove(client, second_admin).status_code == 302
    response = remove(client, portal_tenant.user_ids["owner"])
    assert response.status_code == 403
    assert "Only an owner can grant or take away the owner role, or remove an owner." in page_text(response.text)
    assert enabled(app, portal_tenant.user_ids["owner"]) is True


def test_the_last_owner_cannot_be_removed_nor_leave(client, app, portal_tenant):
    sign_in(client, portal_tenant.owner)
    response = remove(client, portal_tenant.user_ids["owner"])
    assert response.status_code == 409
    assert "is the only owner and cannot be removed: make someone else an owner first." in page_text(response.text)
    assert enabled(app, portal_tenant.user_ids["owner"]) is True
    assert client.get("/dashboard").status_code == 200  # still signed in


def test_an_owner_with_a_co_owner_may_leave_and_is_signed_out(client, app, portal_tenant):
    sign_in(client, portal_tenant.owner)
    assert set_role(client, portal_tenant.user_ids["admin"], "owner").status_code == 302
    response = remove(client, portal_tenant.user_ids["owner"])
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/dashboard").status_code == 302
    assert enabled(app, portal_tenant.user_ids["owner"]) is False


# -- CSRF, tenancy --------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["role", "remove"])
def test_every_member_form_needs_its_csrf_token(client, app, portal_tenant, action):
    sign_in(client, portal_tenant.owner)
    target = portal_tenant.user_ids["member"]
    response = set_role(client, target, "admin", csrf=False) if action == "role" else remove(client, target, csrf=False)
    assert response.status_code == 400
    assert role_of(app, portal_tenant.member) == "member"
    assert enabled(app, target) is True


def test_another_tenants_user_is_not_found(client, app, portal_tenant, other_tenant):
    sign_in(client, portal_tenant.owner)
    theirs = other_tenant.user_ids["member"]
    assert set_role(client, theirs, "admin").status_code == 404
    assert remove(client, theirs).status_code == 404
    assert role_of(app, other_tenant.member) == "member"
    assert enabled(app, theirs) is True


def test_the_page_shows_only_this_tenants_people(client, portal_tenant, other_tenant):
    sign_in(client, portal_tenant.owner)
    text = page_text(client.get("/team").text)
    assert other_tenant.owner not in text and other_tenant.member not in text


# -- cost ------------------------------------------------------------------------------------------


def _grow_team(app, tenant_id: int, people: int) -> None:
    from portal.models import utcnow

    with app.app_context():
        tenant = _db.session.get(Tenant, tenant_id)
        owner = next(user for user in tenant.users if user.role == "owner")
        now = utcnow()
        for n in range(people):
            user = User(tenant_id=tenant_id, email=f"p{n}-{people}@initech.example", password_hash="x", role="member")
            user.last_login_at = now
            _db.session.add(user)
            _db.session.add(
                Invite(
                    tenant_id=tenant_id,
                    email=f"i{n}-{people}@initech.example",
                    role="admin",
                    token_hash=f"{people:04d}{n:060d}",
                    created_by_id=owner.id,
                    created_at=now,
                    expires_at=now.replace(year=now.year + 1),
                )
            )
        _db.session.commit()
        _db.session.remove()


def test_the_team_page_runs_the_same_statements_for_a_small_and_a_large_team(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    _grow_team(app, portal_tenant.tenant_id, 3)
    with count_statements(app) as small:
        assert client.get("/team").status_code == 200
    _grow_team(app, portal_tenant.tenant_id, 40)
    with count_statements(app) as large:
        response = client.get("/team")
    assert response.status_code == 200
    assert response.text.count('<tr id="invite-') == 43 and response.text.count('<tr id="member-') == 46
    assert len(large) == len(small), large
