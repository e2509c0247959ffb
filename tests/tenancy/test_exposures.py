"""Small exposures closed: a webhook's URL (its query may hold a token) shows whole only to admins
and admin keys, shortened like a Slack hook's for members and usage keys, and never in the audit
trail or a delivery's error; the API keys a removed user made are revoked with them, unless the
remover keeps them, and a kept key names its maker as a removed user."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from portal.extensions import db as _db
from portal.models import ApiKey, AuditEvent, Tenant, UserSession
from portal.tenancy.keys import create_api_key
from tests.api_helpers import add_key
from tests.conftest import csrf_token
from tests.portal_helpers import page_text, sign_in
from tests.receivers import SlackReceiver, free_port

TOKEN = "tok-5ecret-9f3a2b7c"
CHANNELS = "/api/v1/notification-channels"


def hook_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hooks/tollgate?token={TOKEN}"


def masked(url: str) -> str:
    host = re.match(r"http://([^/]+)/", url).group(1)
    return f"http://{host}/…{url[-4:]}"


# -- webhook URLs ----------------------------------------------------------------------------------


def test_a_webhook_url_shows_whole_only_to_admins_and_admin_keys(app, client, portal_tenant, clock):
    tid = portal_tenant.tenant_id
    _, usage = add_key(app, tid, "reader")
    _, admin = add_key(app, tid, "ops", scope="admin")
    url = hook_url()
    with SlackReceiver() as slack:
        made = client.post(CHANNELS, json={"kind": "webhook", "target": url}, headers={"X-API-Key": admin})
        assert made.status_code == 201 and made.json["channel"]["target"] == url
        client.post(CHANNELS, json={"kind": "slack", "target": slack.url}, headers={"X-API-Key": admin})

    def targets(secret: str) -> dict[str, str]:
        listed = client.get(CHANNELS, headers={"X-API-Key": secret})
        assert listed.status_code == 200
        return {channel["kind"]: channel["target"] for channel in listed.json["channels"]}

    assert targets(admin)["webhook"] == url
    seen = targets(usage)
    assert seen["webhook"] == masked(url) and TOKEN not in str(seen)
    assert seen["slack"] == targets(admin)["slack"]  # a Slack hook is shortened for everyone
    assert seen["slack"].startswith("http://127.0.0.1:") and "/…" in seen["slack"]

    for role, whole in (("owner", True), ("admin", True), ("member", False)):
        sign_in(client, getattr(portal_tenant, role))
        page = client.get("/alerts/channels")
        assert page.status_code == 200
        assert (url in page.text) is whole, role
        assert (TOKEN in page.text) is whole, role
        assert masked(url) in page.text or whole, role
    # The audit trail (members read it) keeps the shortened form.
    sign_in(client, portal_tenant.member)
    audit = client.get("/team/audit?action=notification_channel.created")
    assert audit.status_code == 200 and "notification_channel.created" in audit.text
    assert TOKEN not in audit.text


def test_a_failed_delivery_does_not_repeat_the_webhook_url(app, client, portal_tenant, clock):
    tid = portal_tenant.tenant_id
    _, usage = add_key(app, tid, "reader")
    _, admin = add_key(app, tid, "ops", scope="admin")
    url = hook_url()  # nothing listens there
    made = client.post(CHANNELS, json={"kind": "webhook", "target": url}, headers={"X-API-Key": admin})
    tested = client.post(f"{CHANNELS}/{made.json['channel']['id']}/test", headers={"X-API-Key": admin})
    assert tested.status_code == 200 and tested.json["delivered"] is False
    error = tested.json["delivery"]["last_error"]
    assert error.startswith("could not connect") and TOKEN not in error and "/hooks/tollgate" not in error
    logged = client.get("/api/v1/notification-deliveries", headers={"X-API-Key": usage}).json["deliveries"]
    assert logged and all(TOKEN not in (d["last_error"] or "") for d in logged)


@pytest.mark.parametrize(
    ("path", "secrets"),
    [
        ("/hook/SECRET{x}?t=SECRET^2", ["SECRET", "%7Bx", "%5E2"]),
        ("/s\u00e9cretpath?token=ab|cd", ["cretpath", "ab|cd", "ab%7Ccd"]),
        ("/SECRETPATH?token=SECRET%41TOKEN", ["SECRETPATH", "SECRETATOKEN", "SECRET%41TOKEN"]),
    ],
    ids=["braces-and-caret", "non-ascii-and-bar", "encoded-unreserved"],
)
def test_an_error_never_repeats_the_url_as_the_http_client_re_encoded_it(app, client, portal_tenant, path, secrets):
    _, admin = add_key(app, portal_tenant.tenant_id, "ops", scope="admin")
    url = f"http://127.0.0.1:{free_port()}{path}"
    made = client.post(CHANNELS, json={"kind": "webhook", "target": url}, headers={"X-API-Key": admin})
    assert made.status_code == 201, made.json
    tested = client.post(f"{CHANNELS}/{made.json['channel']['id']}/test", headers={"X-API-Key": admin})
    error = tested.json["delivery"]["last_error"]
    assert error.startswith("could not connect"), error
    assert not [secret for secret in secrets if secret in error], error


# -- the keys of a removed user --------------------------------------------------------------------


def keys_by(app, tenant_id: int, user_id: int, *names: str) -> dict[str, str]:
    secrets = {}
    with app.app_context():
        tenant = _db.session.get(Tenant, tenant_id)
        for name in names:
            _, secrets[name] = create_api_key(tenant, name, created_by_id=user_id)
        _db.session.commit()
        _db.session.remove()
    return secrets


def key_rows(app, tenant_id: int) -> dict[str, tuple[bool, bool]]:
    """name -> (active, revoked)."""
    with app.app_context():
        rows = _db.session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id))
        found = {key.name: (key.is_active, key.revoked_at is not None) for key in rows}
        _db.session.remove()
    return found


def events(app, tenant_id: int, action: str) -> list[tuple[int | None, dict]]:
    with app.app_context():
        query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action == action)
        found = [(e.user_id, e.details) for e in _db.session.scalars(query.order_by(AuditEvent.id))]
        _db.session.remove()
    return found


def ping(client, secret: str):
    return client.get("/api/v1/ping", headers={"X-API-Key": secret})


def test_removing_someone_revokes_the_keys_they_made(app, client, portal_tenant, clock):
    tid, admin_id = portal_tenant.tenant_id, portal_tenant.user_ids["admin"]
    theirs = keys_by(app, tid, admin_id, "ci", "batch")
    mine = keys_by(app, tid, portal_tenant.user_ids["owner"], "owners")
    assert ping(client, theirs["ci"]).status_code == 200
    sign_in(client, portal_tenant.owner)
    team = client.get("/team")
    assert f'href="/team/members/{admin_id}/remove"' in team.text
    page = client.get(f"/team/members/{admin_id}/remove")
    assert page.status_code == 200
    said = page_text(page.text)
    assert "API keys they made (2)" in said and "ci" in said and "batch" in said and "owners" not in said
    assert "Keep these keys" in said
    removed = client.post(f"/team/members/{admin_id}/remove", data={"csrf_token": csrf_token(page.text)})
    assert removed.status_code == 302
    flash = page_text(client.get("/team").text)
    assert f"{portal_tenant.admin} is removed from the team and signed out everywhere." in flash
    assert "The 2 API keys they made are revoked." in flash
    assert key_rows(app, tid) == {"ci": (False, True), "batch": (False, True), "owners": (True, False)}
    for name in ("ci", "batch"):
        refused = ping(client, theirs[name])
        assert (refused.status_code, refused.json) == (403, {"detail": "API key is inactive"})
    assert ping(client, mine["owners"]).status_code == 200
    revoked = events(app, tid, "api_key.revoked")
    assert [(by, d["name"], d["reason"]) for by, d in revoked] == [
        (portal_tenant.user_ids["owner"], name, f"its maker {portal_tenant.admin} was removed from the team")
        for name in ("ci", "batch")
    ]
    [(_, removal)] = events(app, tid, "user.removed")
    assert len(removal["keys_revoked"]) == 2


def test_the_remover_may_keep_the_keys_which_then_name_a_removed_user(app, client, portal_tenant, clock):
    tid, admin_id = portal_tenant.tenant_id, portal_tenant.user_ids["admin"]
    theirs = keys_by(app, tid, admin_id, "ci")
    sign_in(client, portal_tenant.owner)
    page = client.get(f"/team/members/{admin_id}/remove")
    data = {"csrf_token": csrf_token(page.text), "keep_keys": "yes"}
    assert client.post(f"/team/members/{admin_id}/remove", data=data).status_code == 302
    assert "The API key they made stays active." in page_text(client.get("/team").text)
    assert key_rows(app, tid)["ci"] == (True, False)
    assert ping(client, theirs["ci"]).status_code == 200
    assert events(app, tid, "api_key.revoked") == []
    [(_, removal)] = events(app, tid, "user.removed")
    assert len(removal["keys_kept"]) == 1 and "keys_revoked" not in removal
    with app.app_context():
        key_id = _db.session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == tid, ApiKey.name == "ci"))
        _db.session.remove()
    detail = page_text(client.get(f"/keys/{key_id}").text)
    assert f"Made or last rotated by removed user {portal_tenant.admin}" in detail


def test_the_removal_page_is_for_those_who_may_remove(app, client, portal_tenant, other_tenant):
    sign_in(client, portal_tenant.admin)
    owner_page = client.get(f"/team/members/{portal_tenant.user_ids['owner']}/remove")
    assert owner_page.status_code == 403
    assert client.get(f"/team/members/{other_tenant.user_ids['member']}/remove").status_code == 404
    sign_in(client, portal_tenant.member)
    assert client.get(f"/team/members/{portal_tenant.user_ids['admin']}/remove").status_code == 403
    # A kept key's form needs its CSRF token like any other.
    sign_in(client, portal_tenant.owner)
    refused = client.post(f"/team/members/{portal_tenant.user_ids['admin']}/remove", data={"keep_keys": "yes"})
    assert refused.status_code == 400


def test_a_removed_member_is_signed_out_and_their_sessions_are_gone(app, client, portal_tenant):
    admin_id = portal_tenant.user_ids["admin"]
    theirs = app.test_client()
    sign_in(theirs, portal_tenant.admin)
    assert theirs.get("/dashboard").status_code == 200
    sign_in(client, portal_tenant.owner)
    page = client.get(f"/team/members/{admin_id}/remove")
    removed = client.post(f"/team/members/{admin_id}/remove", data={"csrf_token": csrf_token(page.text)})
    assert removed.status_code == 302
    with app.app_context():
        left = _db.session.scalar(select(func.count()).select_from(UserSession).where(UserSession.user_id == admin_id))
        _db.session.remove()
    assert left == 0
    assert "/login" in theirs.get("/dashboard").headers["Location"]
