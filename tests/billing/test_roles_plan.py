"""Who may change the plan: what the team page says each role may do is what /billing/plan
lets it do (owners change the plan; admins and members read it), and through the API an admin
key changes it only when an owner (or the operator) made it."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import AuditEvent, Tenant, User
from portal.tenancy.keys import create_api_key
from tests.conftest import csrf_token
from tests.portal_helpers import page_text, sign_in


def plan_of(app, tenant_id: int) -> str:
    with app.app_context():
        code = _db.session.get(Tenant, tenant_id).subscription.plan.code
        _db.session.remove()
    return code


def role_guide(html: str) -> dict[str, str]:
    """The team page's role guide: role -> what it says that role may do."""
    found = re.findall(r'<dt><span class="badge badge-role-(\w+)">\w+</span></dt><dd>([^<]+)</dd>', html)
    return {role: text for role, text in found}


def says_may_change_plan(text: str) -> bool:
    """Whether a role's description grants changing the plan."""
    if "not the plan" in text or "change nothing" in text:
        return False
    return "the plan" in text


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_the_role_guide_and_the_access_to_the_plan_agree(app, client, portal_tenant, role):
    sign_in(client, getattr(portal_tenant, role))
    guide = role_guide(client.get("/team").text)
    assert set(guide) == {"owner", "admin", "member"}
    allowed = says_may_change_plan(guide[role])
    assert allowed == (role == "owner")

    shown = client.get("/billing/plan")
    billing = client.get("/billing")
    posted = client.post("/billing/plan", data={"csrf_token": csrf_token(billing.text), "plan": "enterprise"})
    if allowed:
        assert shown.status_code == 302 and shown.headers["Location"] == "/billing#plans-heading"
        assert "Upgrade now" in billing.text
        assert posted.status_code == 302
        assert plan_of(app, portal_tenant.tenant_id) == "enterprise"
    else:
        assert shown.status_code == 403
        assert "Upgrade now" not in billing.text
        assert "Only owners can change the plan." in page_text(billing.text)
        assert posted.status_code == 403
        assert plan_of(app, portal_tenant.tenant_id) == "starter"


def test_the_role_guide_says_who_changes_the_plan(client, portal_tenant):
    sign_in(client, portal_tenant.member)
    guide = role_guide(client.get("/team").text)
    assert guide == {
        "owner": "Everything, including the plan and who is an owner.",
        "admin": "Change keys, settings and the team, but not the plan.",
        "member": "Read everything, change nothing.",
    }


def test_the_invite_form_names_the_plan_in_the_role_choices(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    html = client.get("/team").text
    assert ">Owner (everything, the plan too)</option>" in html
    assert ">Admin (makes changes, not the plan)</option>" in html


def test_an_admin_cannot_cancel_a_scheduled_downgrade_either(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    page = client.get("/billing")
    assert client.post("/billing/plan", data={"csrf_token": csrf_token(page.text), "plan": "free"}).status_code == 302
    sign_in(client, portal_tenant.admin)
    page = client.get("/billing")
    assert "Keep the Starter plan" not in page.text
    kept = client.post("/billing/plan", data={"csrf_token": csrf_token(page.text), "plan": "starter"})
    assert kept.status_code == 403
    with app.app_context():
        subscription = _db.session.get(Tenant, portal_tenant.tenant_id).subscription
        assert subscription.scheduled_plan.code == "free"
        actions = list(
            _db.session.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.tenant_id == portal_tenant.tenant_id, AuditEvent.action.startswith("plan.")
                )
            )
        )
        _db.session.remove()
    assert actions == ["plan.change_scheduled"]


# -- the API ---------------------------------------------------------------------------------------


def admin_key(app, tenant_id: int, made_by: int | None) -> dict[str, str]:
    with app.app_context():
        _, secret = create_api_key(
            _db.session.get(Tenant, tenant_id), f"ops-{made_by}", scope="admin", created_by_id=made_by
        )
        _db.session.commit()
        _db.session.remove()
    return {"X-API-Key": secret}


def change(client, headers: dict[str, str], plan: str = "professional"):
    return client.put("/api/v1/billing/subscription", json={"plan": plan}, headers=headers)


def test_an_admin_key_changes_the_plan_only_when_an_owner_made_it(app, client, portal_tenant, clock):
    tid = portal_tenant.tenant_id
    by_admin = admin_key(app, tid, portal_tenant.user_ids["admin"])
    refused = change(client, by_admin)
    assert refused.status_code == 403
    assert refused.get_json() == {
        "detail": "Only an owner changes the plan: this admin key was made by someone who is not an owner "
        "now; use a key an owner made"
    }
    assert plan_of(app, tid) == "starter"
    by_owner = admin_key(app, tid, portal_tenant.user_ids["owner"])
    assert change(client, by_owner).status_code == 200
    assert plan_of(app, tid) == "professional"
    by_operator = admin_key(app, tid, None)  # the command line's create-api-key
    assert change(client, by_operator, "enterprise").status_code == 200
    assert plan_of(app, tid) == "enterprise"


def test_an_owners_key_stops_changing_the_plan_when_they_are_no_longer_owner(app, client, portal_tenant, clock):
    tid = portal_tenant.tenant_id
    with app.app_context():
        second = _db.session.get(User, portal_tenant.user_ids["admin"])
        second.role = "owner"
        _db.session.commit()
        _db.session.remove()
    headers = admin_key(app, tid, portal_tenant.user_ids["owner"])
    sign_in(client, portal_tenant.admin)  # now an owner too
    page = client.get("/team")
    demoted = client.post(
        f"/team/members/{portal_tenant.user_ids['owner']}/role",
        data={"csrf_token": csrf_token(page.text), "role": "admin"},
    )
    assert demoted.status_code == 302
    assert change(client, headers).status_code == 403
    assert plan_of(app, tid) == "starter"
    # Reading the subscription still works with the same key.
    assert client.get("/api/v1/billing/subscription", headers=headers).status_code == 200


def key_id_of(app, tenant_id: int, name: str) -> int:
    with app.app_context():
        from portal.models import ApiKey

        found = _db.session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == tenant_id, ApiKey.name == name))
        _db.session.remove()
    return found


@pytest.mark.parametrize("maker", ["owner", None], ids=["an-owners-key", "the-operators-key"])
def test_an_admin_who_rotates_a_plan_changing_key_gets_a_key_that_cannot_change_it(
    app, client, portal_tenant, clock, maker
):
    from tests.tenancy.test_web_keys import act, shown_secret

    tid = portal_tenant.tenant_id
    made_by = portal_tenant.user_ids[maker] if maker else None
    admin_key(app, tid, made_by)
    key_id = key_id_of(app, tid, f"ops-{made_by}")
    sign_in(client, portal_tenant.admin)
    rotated = act(client, key_id, "rotate")
    assert rotated.status_code == 200
    headers = {"X-API-Key": shown_secret(rotated.text)}
    refused = change(client, headers)
    assert refused.status_code == 403 and refused.get_json()["detail"].startswith("Only an owner changes the plan")
    assert plan_of(app, tid) == "starter"
    assert f"Made or last rotated by {portal_tenant.admin}" in page_text(client.get(f"/keys/{key_id}").text)
    # Removing the admin revokes the key whose secret they hold.
    client.get("/logout")
    sign_in(client, portal_tenant.owner)
    page = client.get(f"/team/members/{portal_tenant.user_ids['admin']}/remove")
    assert client.post(page.request.path, data={"csrf_token": csrf_token(page.text)}).status_code == 302
    gone = client.get("/api/v1/ping", headers=headers)
    assert (gone.status_code, gone.get_json()) == (403, {"detail": "API key is inactive"})
