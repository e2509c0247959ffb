"""API keys in the portal: create, see the secret once, deactivate, reactivate, rotate, revoke."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from portal.extensions import db as _db
from portal.models import ApiKey, AuditEvent, Tenant
from portal.tenancy.accounts import create_user
from portal.tenancy.keys import hash_secret
from tests.api_helpers import drain
from tests.conftest import csrf_token
from tests.factories import PASSWORD

ACTIONS = ("deactivate", "reactivate", "revoke", "rotate")
ONCE_NOTE = "Copy it now, it will not be shown again."


# -- helpers -------------------------------------------------------------------------------------


def shown_secret(html: str) -> str:
    match = re.search(r'<code id="secret">(tg_[A-Za-z0-9_-]+)</code>', html)
    assert match, "page shows no secret"
    return match.group(1)


def submission_token(html: str) -> str | None:
    match = re.search(r'name="submission" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="submission" value="([^"]+)"', html
    )
    return match.group(1) if match else None


def create_key(client, name="backend", description="", expires_on="", csrf=True, scope=None):
    page = client.get("/keys")
    data = {"name": name, "description": description, "expires_on": expires_on}
    if scope is not None:
        data["scope"] = scope
    data["submission"] = submission_token(page.text)
    if csrf:
        data["csrf_token"] = csrf_token(page.text)
    return client.post("/keys", data=data)


def act(client, key_id: int, action: str, csrf=True, submission: str | None = None):
    """Press a button on a key's page (the tokens come from a page the user can see; a page
    opened before the key changed, when the key's page no longer offers the button)."""
    page = client.get(f"/keys/{key_id}")
    data = {"csrf_token": csrf_token(page.text)} if csrf else {}
    if action == "rotate":
        data["submission"] = submission or submission_token(page.text) or secrets.token_urlsafe(18)
    return client.post(f"/keys/{key_id}/{action}", data=data)


def ping(client, secret: str):
    return client.get("/api/v1/ping", headers={"X-API-Key": secret})


def get_key(db, key_id: int) -> ApiKey:
    db.session.expire_all()
    return db.session.get(ApiKey, key_id)


def key_id_of(db, name: str) -> int:
    return db.session.scalar(select(ApiKey.id).where(ApiKey.name == name))


def audit(db, tenant_id: int) -> list[AuditEvent]:
    db.session.expire_all()
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action.like("api_key.%"))
    return list(db.session.scalars(query.order_by(AuditEvent.id)))


def flashes(client) -> list[tuple[str, str]]:
    with client.session_transaction() as session:
        return list(session.get("_flashes", []))


def add_user(app, tenant_id: int, email: str, role: str) -> None:
    with app.app_context():
        create_user(_db.session.get(Tenant, tenant_id), email, PASSWORD, role=role)
        _db.session.commit()
        _db.session.remove()


@pytest.fixture(autouse=True)
def _drain_usage(app):
    yield
    drain(app)


@pytest.fixture
def owner(make_tenant, auth):
    """A signed-in owner; returns the tenant id."""
    _, email, tenant_id = make_tenant("Initech")
    assert auth.login(email, PASSWORD).status_code == 302
    return tenant_id


@pytest.fixture
def made(client, db, owner):
    """A key made through the form; returns (key id, secret)."""
    response = create_key(client, "backend")
    assert response.status_code == 201
    return key_id_of(db, "backend"), shown_secret(response.text)


# -- creating ------------------------------------------------------------------------------------


def test_new_key_shows_its_secret_once_and_stores_only_a_hash(client, db, owner):
    response = create_key(client, "production backend", description="billing service", expires_on="")
    assert response.status_code == 201
    assert ONCE_NOTE in response.text
    assert response.headers["Cache-Control"] == "no-store"
    secret = shown_secret(response.text)

    key = db.session.scalar(select(ApiKey).where(ApiKey.tenant_id == owner))
    assert key.key_hash == hash_secret(secret)
    assert len(key.key_hash) == 64 and secret not in (key.key_hash, key.prefix, key.name, key.description)
    assert secret.startswith(key.prefix)
    assert (key.name, key.description, key.expires_at, key.is_active) == (
        "production backend",
        "billing service",
        None,
        True,
    )
    assert key.created_by_id is not None

    listing = client.get("/keys")
    assert f"{key.prefix}…" in listing.text
    assert secret not in listing.text
    detail = client.get(f"/keys/{key.id}")
    assert detail.status_code == 200
    assert key.prefix in detail.text
    assert secret not in detail.text
    assert ONCE_NOTE not in detail.text
    # Neither the session cookie nor a flash message carries it.
    with client.session_transaction() as session:
        assert secret not in repr(dict(session))


def test_creation_is_audited(client, db, owner):
    create_key(client, "backend")
    [event] = audit(db, owner)
    key = db.session.scalar(select(ApiKey))
    assert event.action == "api_key.created"
    assert event.user_id == key.created_by_id
    assert event.ip_address == "127.0.0.1"
    assert event.details["prefix"] == key.prefix
    assert event.details["name"] == "backend"
    assert event.details["key_id"] == key.id


def test_expiry_date_ends_the_key_at_the_start_of_that_day_utc(client, db, owner):
    day = (datetime.now(UTC) + timedelta(days=30)).date()
    response = create_key(client, "temporary", expires_on=day.isoformat())
    assert response.status_code == 201
    key = db.session.scalar(select(ApiKey))
    assert key.expires_at == datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert day.isoformat() in client.get(f"/keys/{key.id}").text


def test_a_key_made_in_the_portal_works_on_the_api(client, made):
    _, secret = made
    response = ping(client, secret)
    assert (response.status_code, response.json) == (200, {"ok": True})


def _days_from_today(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"name": ""}, "This field is required."),
        ({"name": "   "}, "This field is required."),
        ({"name": "x" * 121}, "Field cannot be longer than 120 characters."),
        ({"description": "x" * 501}, "Field cannot be longer than 500 characters."),
        ({"expires_on": _days_from_today(-1)}, "Choose a date in the future."),
        ({"expires_on": _days_from_today(0)}, "Choose a date in the future."),
        ({"expires_on": "next tuesday"}, "Not a valid date value."),
    ],
    ids=["empty name", "blank name", "long name", "long description", "past expiry", "expiry today", "not a date"],
)
def test_invalid_form_shows_errors_and_creates_nothing(client, db, owner, form, message):
    response = create_key(client, **{"name": "backend", **form})
    assert response.status_code == 400
    assert '<p class="field-error" id="' in response.text
    assert message in response.text
    assert "tg_" not in response.text
    assert db.session.scalar(select(ApiKey)) is None
    assert audit(db, owner) == []


# -- deactivating, reactivating, revoking, rotating ----------------------------------------------


def test_sending_the_create_form_again_makes_no_second_key(client, db, owner):
    page = client.get("/keys")
    data = {
        "name": "backend",
        "description": "",
        "expires_on": "",
        "csrf_token": csrf_token(page.text),
        "submission": submission_token(page.text),
    }
    first = client.post("/keys", data=data)
    assert first.status_code == 201
    secret = shown_secret(first.text)
    # A reload of the secret page, or a double click: the same form arrives again.
    again = client.post("/keys", data=data, follow_redirects=True)
    assert again.status_code == 200
    assert "That form was already sent, and its key was made then." in again.text
    assert ONCE_NOTE not in again.text and secret not in again.text
    assert db.session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.tenant_id == owner)) == 1
    assert [event.action for event in audit(db, owner)] == ["api_key.created"]
    # A form from a fresh page makes another key.
    assert create_key(client, "second").status_code == 201


def test_a_create_form_without_its_submission_token_is_refused(client, db, owner):
    page = client.get("/keys")
    response = client.post("/keys", data={"name": "backend", "csrf_token": csrf_token(page.text)})
    assert response.status_code == 400
    assert "This form has expired. Please fill it in again." in response.text
    assert submission_token(response.text)  # the page offers a fresh form
    assert key_id_of(db, "backend") is None


def test_sending_the_rotate_form_again_keeps_the_secret_just_shown(client, db, owner, made):
    key_id, _ = made
    token = submission_token(client.get(f"/keys/{key_id}").text)
    first = act(client, key_id, "rotate", submission=token)
    assert first.status_code == 200
    secret = shown_secret(first.text)

    again = act(client, key_id, "rotate", submission=token)
    assert again.status_code == 302
    category, message = flashes(client)[0]
    assert category == "info"
    assert message.startswith("Key “backend” was already rotated by that form.")
    assert ping(client, secret).status_code == 200
    assert [event.action for event in audit(db, owner)].count("api_key.rotated") == 1


def test_deactivate_and_reactivate_reach_the_api_on_the_next_call(client, db, owner, made):
    key_id, secret = made
    assert ping(client, secret).status_code == 200

    response = act(client, key_id, "deactivate")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/keys/{key_id}"
    assert get_key(db, key_id).is_active is False
    denied = ping(client, secret)
    assert (denied.status_code, denied.json) == (403, {"detail": "API key is inactive"})
    page = client.get(f"/keys/{key_id}")
    assert "deactivated" in page.text and "Reactivate" in page.text and ">Deactivate<" not in page.text

    response = act(client, key_id, "reactivate")
    assert response.headers["Location"] == f"/keys/{key_id}"
    assert get_key(db, key_id).is_active is True
    assert ping(client, secret).status_code == 200
    assert "is active again" in client.get(f"/keys/{key_id}").text

    events = audit(db, owner)
    assert [e.action for e in events] == ["api_key.created", "api_key.deactivated", "api_key.reactivated"]
    assert all(e.details["key_id"] == key_id and e.user_id is not None for e in events)


def test_revoke_stops_the_key_for_good(client, db, owner, made):
    key_id, secret = made
    response = act(client, key_id, "revoke")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/keys/{key_id}"
    key = get_key(db, key_id)
    assert key.revoked_at is not None and key.is_active is False
    assert ping(client, secret).status_code == 403
    assert audit(db, owner)[-1].action == "api_key.revoked"

    page = client.get(f"/keys/{key_id}")
    assert "is revoked. It can no longer be used." in page.text
    # A revoked key offers no actions at all.
    for action in ACTIONS:
        assert f"/keys/{key_id}/{action}" not in page.text


def test_rotate_shows_a_new_secret_once_and_the_old_one_stops(client, db, owner, made):
    key_id, old_secret = made
    old_hash = get_key(db, key_id).key_hash

    response = act(client, key_id, "rotate")
    assert response.status_code == 200
    assert ONCE_NOTE in response.text
    assert response.headers["Cache-Control"] == "no-store"
    new_secret = shown_secret(response.text)
    assert new_secret != old_secret

    key = get_key(db, key_id)
    assert key.key_hash == hash_secret(new_secret) != old_hash
    assert new_secret.startswith(key.prefix)
    event = audit(db, owner)[-1]
    assert event.action == "api_key.rotated"
    assert event.details["prefix"] == key.prefix
    assert event.details["old_prefix"] == old_secret[: len(key.prefix)]

    stale = ping(client, old_secret)
    assert (stale.status_code, stale.json) == (401, {"detail": "Invalid API key"})
    assert ping(client, new_secret).status_code == 200
    assert new_secret not in client.get(f"/keys/{key_id}").text


@pytest.mark.parametrize("action", ["reactivate", "deactivate", "rotate", "revoke"])
def test_changing_a_revoked_key_is_a_flashed_error_not_a_500(client, db, owner, made, action):
    key_id, _ = made
    act(client, key_id, "revoke")
    revoked_at = get_key(db, key_id).revoked_at
    events_before = len(audit(db, owner))

    response = act(client, key_id, action)
    assert response.status_code == 302
    assert response.headers["Location"] == f"/keys/{key_id}"
    [(category, message)] = flashes(client)
    assert category == "error"
    assert "revoked" in message
    key = get_key(db, key_id)
    assert (key.revoked_at, key.is_active) == (revoked_at, False)
    assert len(audit(db, owner)) == events_before


def test_deactivating_an_inactive_key_changes_nothing(client, db, owner, made):
    key_id, _ = made
    act(client, key_id, "deactivate")
    response = act(client, key_id, "deactivate")
    assert response.status_code == 302
    assert flashes(client) == [("info", "Key “backend” is already inactive.")]
    assert [e.action for e in audit(db, owner)] == ["api_key.created", "api_key.deactivated"]


# -- who may do what -----------------------------------------------------------------------------


@pytest.fixture
def other_tenants_key(app, make_tenant):
    from portal.tenancy.keys import create_api_key

    _, _, tenant_id = make_tenant("Globex")
    with app.app_context():
        key, secret = create_api_key(_db.session.get(Tenant, tenant_id), "theirs")
        _db.session.commit()
        result = (key.id, secret)
        _db.session.remove()
    return result


def test_another_tenants_key_is_not_found(client, db, owner, other_tenants_key):
    key_id, secret = other_tenants_key
    assert client.get(f"/keys/{key_id}").status_code == 404
    for action in ACTIONS:
        assert act(client, key_id, action).status_code == 404, action
    key = get_key(db, key_id)
    assert (key.is_active, key.revoked_at, key.key_hash) == (True, None, hash_secret(secret))
    assert "theirs" not in client.get("/keys").text
    assert audit(db, key.tenant_id) == []


def test_a_member_sees_keys_but_cannot_manage_them(app, client, auth, db, make_tenant):
    _, owner_email, tenant_id = make_tenant("Initech")
    add_user(app, tenant_id, "member@initech.example", role="member")

    auth.login(owner_email, PASSWORD)
    create_key(client, "backend")
    auth.logout()
    key_id = key_id_of(db, "backend")

    assert auth.login("member@initech.example", PASSWORD).status_code == 302
    listing = client.get("/keys")
    assert listing.status_code == 200
    assert "backend" in listing.text
    assert "Create key" not in listing.text
    detail = client.get(f"/keys/{key_id}")
    assert detail.status_code == 200
    for action in ACTIONS:
        assert f"/keys/{key_id}/{action}" not in detail.text

    assert create_key(client, "mine").status_code == 403
    for action in ACTIONS:
        assert act(client, key_id, action).status_code == 403, action
    assert [k.name for k in db.session.scalars(select(ApiKey))] == ["backend"]
    key = get_key(db, key_id)
    assert (key.is_active, key.revoked_at) == (True, None)
    assert [e.action for e in audit(db, tenant_id)] == ["api_key.created"]


def test_an_admin_may_manage_keys(app, client, auth, db, make_tenant):
    _, _, tenant_id = make_tenant("Initech")
    add_user(app, tenant_id, "admin@initech.example", role="admin")
    auth.login("admin@initech.example", PASSWORD)
    assert create_key(client, "backend").status_code == 201
    assert act(client, key_id_of(db, "backend"), "deactivate").status_code == 302


def test_forms_without_a_csrf_token_are_refused(client, db, owner, made):
    key_id, secret = made
    assert create_key(client, "sneaky", csrf=False).status_code == 400
    for action in ACTIONS:
        assert act(client, key_id, action, csrf=False).status_code == 400, action
    assert key_id_of(db, "sneaky") is None
    key = get_key(db, key_id)
    assert (key.is_active, key.revoked_at, key.key_hash) == (True, None, hash_secret(secret))
    assert [e.action for e in audit(db, owner)] == ["api_key.created"]


def test_signed_out_visitors_are_sent_to_sign_in(client):
    assert client.get("/keys").headers["Location"].startswith("/login")
    token = csrf_token(client.get("/login").text)
    for path in ["/keys", "/keys/1/revoke"]:
        response = client.post(path, data={"csrf_token": token, "name": "x"})
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login")


def test_a_key_made_in_the_portal_has_the_scope_chosen(client, db, owner):
    made = create_key(client, "ops", scope="admin")
    assert made.status_code == 201
    admin_secret = shown_secret(made.text)
    usage_secret = shown_secret(create_key(client, "app").text)
    assert get_key(db, key_id_of(db, "ops")).scope == "admin"
    assert get_key(db, key_id_of(db, "app")).scope == "usage"  # the default
    change = {"limits_when_redis_down": "closed"}
    assert client.put("/api/v1/account/settings", json=change, headers={"X-API-Key": admin_secret}).status_code == 200
    assert client.put("/api/v1/account/settings", json=change, headers={"X-API-Key": usage_secret}).status_code == 403
    listing = client.get("/keys").text
    assert "<td>admin</td>" in listing and "<td>usage</td>" in listing
    assert "Not a valid choice" in create_key(client, "root", scope="root").text
