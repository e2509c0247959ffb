"""Inviting an address answers the same whether or not it has an account in another tenant: the
inviter sees the same status, page, flash and audit wording; the e-mail tells the address's
owner that it has an account already and cannot join with it. With a mail server the inviter
never holds the link, so cannot learn from opening it either."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import AuditEvent, Invite
from tests.notify_helpers import app_config
from tests.portal_helpers import page_text, sign_in
from tests.receivers import SmtpSink
from tests.tenancy.test_web_invites import accept, invite, link_in

FRESH = "nora@example.com"
ELSEWHERE = "member@globex.example"  # Globex's member: an account in another tenant


def normalised(html: str, address: str) -> str:
    """The page with the address, the one-time link's token and form tokens taken out."""
    html = html.replace(address, "ADDRESS")
    html = re.sub(r"/invite/[A-Za-z0-9_-]+", "/invite/TOKEN", html)
    return re.sub(r'(name="(?:csrf_token|submission)"[^>]*value=")[^"]+', r"\1X", html)


def audit_seen(app, tenant_id: int, address: str) -> list[tuple[str, dict]]:
    """The tenant's invitation events as the audit trail holds them, the address taken out."""
    with app.app_context():
        events = _db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.action.startswith("invite."))
            .order_by(AuditEvent.id)
        )
        seen = []
        for event in events:
            details = dict(event.details or {})
            if details.get("email") != address:
                continue
            details.pop("invite_id", None)
            details["email"] = "ADDRESS"
            seen.append((event.action, details))
        _db.session.remove()
    return seen


@pytest.fixture
def owner(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


@pytest.fixture
def guest(app):
    """The invited person's browser."""
    return app.test_client()


@pytest.fixture
def both(app, client, owner, other_tenant, clock):
    """The inviter's responses to inviting a fresh address and one with an account elsewhere,
    with a mail server catching what is sent."""
    answers = {}
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        for address in (FRESH, ELSEWHERE):
            response = invite(client, address)
            team = client.get("/team")
            answers[address] = (response, team)
    return answers, {message["To"]: message for message in sink.messages}


def test_the_inviter_gets_the_same_answer_for_every_address(app, owner, both):
    answers, _ = both
    (fresh, fresh_team), (elsewhere, elsewhere_team) = answers[FRESH], answers[ELSEWHERE]
    assert fresh.status_code == elsewhere.status_code == 201
    assert dict(fresh.headers) == dict(elsewhere.headers) | {"Content-Length": fresh.headers["Content-Length"]}
    assert normalised(fresh.text, FRESH) == normalised(elsewhere.text, ELSEWHERE)
    said = page_text(elsewhere.text)
    assert f"The invitation link was e-mailed to {ELSEWHERE}." in said
    assert "already has" not in said and "elsewhere" not in said
    assert "/invite/" not in fresh.text and "/invite/" not in elsewhere.text
    # Both wait on the team page alike.
    for address, team in ((FRESH, fresh_team), (ELSEWHERE, elsewhere_team)):
        row = re.search(rf'<tr id="invite-\d+">\s*<td class="email">{re.escape(address)}</td>.*?</tr>', team.text, re.S)
        assert row, address
    assert audit_seen(app, owner.tenant_id, FRESH) == audit_seen(app, owner.tenant_id, ELSEWHERE) != []
    with app.app_context():
        rows = _db.session.scalars(select(Invite.email).where(Invite.tenant_id == owner.tenant_id)).all()
        _db.session.remove()
    assert sorted(rows) == sorted([FRESH, ELSEWHERE])


def test_the_same_answer_without_a_mail_server(app, client, owner, other_tenant, clock):
    fresh, elsewhere = invite(client, FRESH), invite(client, ELSEWHERE)
    assert fresh.status_code == elsewhere.status_code == 201
    assert normalised(fresh.text, FRESH) == normalised(elsewhere.text, ELSEWHERE)


def test_the_email_tells_an_existing_account_it_cannot_join_with_that_address(both):
    _, mail = both
    fresh, existing = mail[FRESH], mail[ELSEWHERE]
    assert fresh["Subject"] == existing["Subject"] == "owner@initech.example invited you to Initech on Tollgate"
    text = existing.get_body(("plain",)).get_content()
    html = existing.get_body(("html",)).get_content()
    assert "This e-mail address already has a Tollgate account" in text
    assert "the invitation cannot be accepted with it" in text
    assert "ask owner@initech.example to invite another address of yours" in text
    assert "sign in with it as usual at http://localhost/login" in text
    assert 'href="http://localhost/login"' in html and "already has a Tollgate account" in html
    # No link that could not work; the fresh address gets its link and no such words.
    assert "/invite/" not in text and "/invite/" not in html
    fresh_text = fresh.get_body(("plain",)).get_content()
    assert "/invite/" in fresh_text and "already has" not in fresh_text


def test_the_link_still_cannot_make_a_second_account_for_the_address(app, client, owner, other_tenant, guest, clock):
    # Without a mail server the inviter is shown the link to pass on; it makes no second account.
    refused = accept(guest, link_in(invite(client, ELSEWHERE).text))
    assert refused.status_code == 409
    assert f"{ELSEWHERE} already has a Tollgate account: sign in with it instead." in page_text(refused.text)
