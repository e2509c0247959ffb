"""The keys page finds keys: search, state and scope filters in the URL, keyset pages of up to
500 keys, each page in a fixed number of statements."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db
from portal.models import ApiKey, Tenant
from portal.tenancy.keys import create_api_key, revoke_api_key, set_key_active
from tests.portal_helpers import count_statements, page_text, sign_in


def make_keys(app, tenant_id: int, count: int, prefix: str = "service", **kwargs) -> list[int]:
    with app.app_context():
        tenant = db.session.get(Tenant, tenant_id)
        keys = [create_api_key(tenant, f"{prefix} {n:03d}", **kwargs)[0] for n in range(count)]
        db.session.commit()
        ids = [key.id for key in keys]
        db.session.remove()
    return ids


def listed_names(html: str) -> list[str]:
    return re.findall(r'<td><a href="/keys/\d+">([^<]+)</a></td>', html)


def link(html: str, rel: str) -> str | None:
    match = re.search(rf'href="([^"]+)" rel="{rel}"', html)
    return match.group(1).replace("&amp;", "&") if match else None


@pytest.fixture
def signed_in(client, portal_tenant):
    sign_in(client, portal_tenant.member)
    return portal_tenant


def test_pages_walk_every_key_once_newest_first_and_back(app, client, signed_in):
    ids = make_keys(app, signed_in.tenant_id, 120)
    seen: list[str] = []
    url = "/keys?per_page=50"
    pages = []
    while url:
        page = client.get(url)
        assert page.status_code == 200
        pages.append(page.text)
        seen += listed_names(page.text)
        url = link(page.text, "next")
    assert len(pages) == 3
    assert seen == [f"service {n:03d}" for n in reversed(range(120))]
    assert "120 keys" in page_text(pages[0])

    # From the last page, "Newer" goes back to the middle page exactly.
    back = client.get(link(pages[2], "prev"))
    assert listed_names(back.text) == listed_names(pages[1])
    assert link(pages[0], "prev") is None
    assert len(ids) == 120


def test_search_matches_name_prefix_and_description(app, client, signed_in):
    make_keys(app, signed_in.tenant_id, 3, prefix="billing")
    make_keys(app, signed_in.tenant_id, 2, prefix="search", description="used by the nightly 100% export")
    assert listed_names(client.get("/keys?q=BILLING").text) == ["billing 002", "billing 001", "billing 000"]
    # % is a character to find, not a wildcard.
    assert len(listed_names(client.get("/keys?q=100%25").text)) == 2
    assert listed_names(client.get("/keys?q=a_b").text) == []
    with app.app_context():
        prefix = db.session.scalar(select(ApiKey.prefix).where(ApiKey.name == "billing 001"))
    assert listed_names(client.get(f"/keys?q={prefix}").text) == ["billing 001"]
    assert "No key matches" in client.get("/keys?q=nothing-like-this").text


def test_state_and_scope_filters(app, client, signed_in, clock):
    ids = make_keys(app, signed_in.tenant_id, 4)
    expiring = datetime.fromtimestamp(clock.now, UTC) + timedelta(days=1)
    [soon] = make_keys(app, signed_in.tenant_id, 1, prefix="soon", expires_at=expiring)
    [admin] = make_keys(app, signed_in.tenant_id, 1, prefix="ops", scope="admin")
    with app.app_context():
        revoke_api_key(db.session.get(ApiKey, ids[0]))
        set_key_active(db.session.get(ApiKey, ids[1]), False)
        db.session.commit()
    assert listed_names(client.get("/keys?state=revoked").text) == ["service 000"]
    assert listed_names(client.get("/keys?state=inactive").text) == ["service 001"]
    assert listed_names(client.get("/keys?state=expired").text) == []
    assert listed_names(client.get("/keys?scope=admin").text) == ["ops 000"]
    assert len(listed_names(client.get("/keys?state=active").text)) == 4

    clock.advance(2 * 86400)  # the "soon" key has expired now
    assert listed_names(client.get("/keys?state=expired").text) == ["soon 000"]
    assert "soon 000" not in listed_names(client.get("/keys?state=active").text)
    assert soon and admin


@pytest.mark.parametrize(
    "query, message",
    [
        ("per_page=7", "Not a valid choice"),
        ("state=lost", "Not a valid choice"),
        ("before=-3", "That page link is not valid"),
    ],
)
def test_a_bad_filter_is_a_400_with_a_message(client, signed_in, query, message):
    page = client.get(f"/keys?{query}")
    assert page.status_code == 400
    assert message in page.text


def test_500_keys_are_one_page_in_the_statements_of_one_key(app, client, signed_in):
    make_keys(app, signed_in.tenant_id, 1)
    client.get("/keys")
    with count_statements(app) as few:
        assert client.get("/keys?per_page=500").status_code == 200
    make_keys(app, signed_in.tenant_id, 499, prefix="more")
    with count_statements(app) as many:
        page = client.get("/keys?per_page=500")
    assert len(listed_names(page.text)) == 500
    assert len(many) == len(few), many


def test_another_tenants_keys_are_not_found(app, client, signed_in, other_tenant):
    [theirs] = make_keys(app, other_tenant.tenant_id, 1, prefix="globex")
    assert listed_names(client.get("/keys?q=globex").text) == []
    assert client.get(f"/keys/{theirs}").status_code == 404
