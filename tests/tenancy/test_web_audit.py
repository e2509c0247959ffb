"""The audit log: every event of the tenant, newest first, filtered by action, user and days
(in the URL), a page at a time, and exported to CSV in full."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from sqlalchemy import delete, insert

from portal.extensions import db as _db
from portal.models import AuditEvent
from portal.tenancy.members import EXPORT_BATCH, PAGE_SIZE
from tests.portal_helpers import count_statements, page_text, sign_in

DAY0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def add_events(app, tenant_id: int, rows: list[dict]) -> None:
    """Store audit events (action, user_id, ip_address, details, created_at) for ``tenant_id``."""
    with app.app_context():
        _db.session.execute(insert(AuditEvent), [{"tenant_id": tenant_id, **row} for row in rows])
        _db.session.commit()
        _db.session.remove()


def only_these_events(app, tenant_id: int, rows: list[dict]) -> None:
    """The tenant's trail is exactly ``rows`` (the sign-ins the fixtures made are dropped)."""
    with app.app_context():
        _db.session.execute(delete(AuditEvent).where(AuditEvent.tenant_id == tenant_id))
        _db.session.commit()
        _db.session.remove()
    add_events(app, tenant_id, rows)


def numbered(count: int, start: datetime = DAY0, step: timedelta = timedelta(minutes=10), **fields) -> list[dict]:
    return [
        {"action": "settings.changed", "created_at": start + step * n, "details": {"n": n}, **fields}
        for n in range(count)
    ]


def shown_numbers(html: str) -> list[int]:
    """The ``n`` detail of each row shown, top to bottom."""
    return [int(n) for n in re.findall(r'<span class="detail-key">n:</span> (\d+)</span>', html)]


def link(html: str, rel: str) -> str | None:
    match = re.search(rf'href="([^"]+)" rel="{rel}"', html)
    return unescape(match.group(1)) if match else None


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


@pytest.fixture
def trail(app, client, portal_tenant):
    """Initech's trail: seven events of three people over three days; the owner signed in."""
    ids = portal_tenant.user_ids
    sign_in(client, portal_tenant.owner)
    only_these_events(
        app,
        portal_tenant.tenant_id,
        [
            {"action": "login.success", "user_id": ids["owner"], "ip_address": "10.0.0.1", "created_at": DAY0},
            {
                "action": "api_key.created",
                "user_id": ids["admin"],
                "ip_address": "10.0.0.2",
                "details": {"name": "backend", "prefix": "tg_abcdefgh"},
                "created_at": DAY0 + timedelta(hours=1),
            },
            {
                "action": "api_key.revoked",
                "user_id": ids["admin"],
                "ip_address": "10.0.0.2",
                "details": {"name": '=HYPERLINK("http://evil")'},
                "created_at": DAY0 + timedelta(days=1),
            },
            {
                "action": "invite.created",
                "user_id": ids["owner"],
                "details": {"email": "nora@example.com", "role": "admin"},
                "created_at": DAY0 + timedelta(days=1, hours=2),
            },
            {
                "action": "invite.accepted",
                "user_id": ids["member"],
                "details": {"email": "nora@example.com"},
                "created_at": DAY0 + timedelta(days=2),
            },
            {"action": "user.role_changed", "user_id": ids["owner"], "created_at": DAY0 + timedelta(days=2, hours=1)},
            {"action": "alerts.settings_changed", "user_id": None, "created_at": DAY0 + timedelta(days=2, hours=3)},
        ],
    )
    return portal_tenant


def rows_of(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in html else ""
    return re.findall(r'<code class="action">([^<]+)</code>', body)


# -- the page --------------------------------------------------------------------------------------


def test_every_event_is_listed_newest_first_with_who_from_where_and_details(client, trail):
    response = client.get("/team/audit")
    assert response.status_code == 200
    assert rows_of(response.text) == [
        "alerts.settings_changed",
        "user.role_changed",
        "invite.accepted",
        "invite.created",
        "api_key.revoked",
        "api_key.created",
        "login.success",
    ]
    text = page_text(response.text)
    assert (
        "2026-11-01 10:00:00 api_key.created admin@initech.example 10.0.0.2 name: backend prefix: tg_abcdefgh" in text
    )
    assert "2026-11-03 12:00:00 alerts.settings_changed — —" in text
    assert 'aria-current="page"' in response.text  # under Team in the navigation


def test_members_read_the_audit_log_too(client, trail):
    sign_in(client, trail.member)
    assert client.get("/team/audit").status_code == 200
    assert client.get("/team/audit.csv").status_code == 200


def test_only_this_tenants_events_are_shown(app, client, trail, other_tenant):
    add_events(
        app, other_tenant.tenant_id, [{"action": "settings.changed", "ip_address": "10.9.9.9", "created_at": DAY0}]
    )
    text = page_text(client.get("/team/audit").text)
    assert "10.9.9.9" not in text and other_tenant.owner not in text
    assert "10.9.9.9" not in client.get("/team/audit.csv").get_data(as_text=True)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("action=api_key.created", ["api_key.created"]),
        ("action=invite.*", ["invite.accepted", "invite.created"]),
        ("action=api_key.*", ["api_key.revoked", "api_key.created"]),
        (
            "since=2026-11-02",
            ["alerts.settings_changed", "user.role_changed", "invite.accepted", "invite.created", "api_key.revoked"],
        ),
        ("until=2026-11-01", ["api_key.created", "login.success"]),
        ("since=2026-11-02&until=2026-11-02", ["invite.created", "api_key.revoked"]),
        ("action=invite.*&since=2026-11-03", ["invite.accepted"]),
        ("action=plan.changed", []),
    ],
)
def test_filters_narrow_the_list(client, trail, query, expected):
    response = client.get(f"/team/audit?{query}")
    assert response.status_code == 200
    assert rows_of(response.text) == expected
    if not expected:
        assert "No events match the filter." in page_text(response.text)


def test_the_user_filter_shows_one_persons_events(client, trail):
    response = client.get(f"/team/audit?user={trail.user_ids['admin']}")
    assert rows_of(response.text) == ["api_key.revoked", "api_key.created"]
    # The filter is kept in the form, and the export link carries it.
    assert f'<option selected value="{trail.user_ids["admin"]}">' in response.text
    assert f'href="/team/audit.csv?user={trail.user_ids["admin"]}"' in response.text


def test_another_tenants_user_in_the_filter_is_not_found(client, trail, other_tenant):
    assert client.get(f"/team/audit?user={other_tenant.user_ids['owner']}").status_code == 404
    assert client.get(f"/team/audit.csv?user={other_tenant.user_ids['owner']}").status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=2026-11-03&until=2026-11-01", "Choose a day on or after the first day."),
        ("since=yesterday", "Not a valid date value."),
        ("action=drop.tables", "Not a valid choice."),
    ],
)
def test_a_bad_filter_says_what_is_wrong(client, trail, query, message):
    response = client.get(f"/team/audit?{query}")
    assert response.status_code == 400
    assert message in page_text(response.text)
    assert client.get(f"/team/audit.csv?{query}").status_code == 400


def test_a_removed_users_events_still_name_them(app, client, trail):
    from tests.conftest import csrf_token

    page = client.get("/team")
    client.post(f"/team/members/{trail.user_ids['admin']}/remove", data={"csrf_token": csrf_token(page.text)})
    response = client.get(f"/team/audit?user={trail.user_ids['admin']}&action=api_key.*")
    assert "admin@initech.example (removed)" in page_text(response.text)
    assert rows_of(response.text) == ["api_key.revoked", "api_key.created"]


# -- pages -----------------------------------------------------------------------------------------


def test_pages_go_back_in_time_without_gaps_or_repeats(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    total = PAGE_SIZE * 2 + 20
    only_these_events(app, portal_tenant.tenant_id, numbered(total))
    first = client.get("/team/audit").text
    assert shown_numbers(first) == list(range(total - 1, total - 1 - PAGE_SIZE, -1))
    assert link(first, "prev") is None
    second = client.get(link(first, "next")).text
    third = client.get(link(second, "next")).text
    assert link(third, "next") is None
    seen = shown_numbers(first) + shown_numbers(second) + shown_numbers(third)
    assert seen == list(range(total - 1, -1, -1))
    # And forwards again: the newer page of the third is the second.
    assert shown_numbers(client.get(link(third, "prev")).text) == shown_numbers(second)
    assert shown_numbers(client.get(link(second, "prev")).text) == shown_numbers(first)


def test_events_at_the_same_moment_are_not_lost_between_pages(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    only_these_events(app, portal_tenant.tenant_id, numbered(PAGE_SIZE + 10, step=timedelta(0)))
    first = client.get("/team/audit").text
    second = client.get(link(first, "next")).text
    assert sorted(shown_numbers(first) + shown_numbers(second)) == list(range(PAGE_SIZE + 10))


def test_pages_keep_the_filter(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    rows = numbered(PAGE_SIZE + 5) + numbered(30, action="login.failure")
    only_these_events(app, portal_tenant.tenant_id, rows)
    first = client.get("/team/audit?action=settings.changed").text
    older = link(first, "next")
    assert "action=settings.changed" in older
    assert len(shown_numbers(client.get(older).text)) == 5


def test_a_bad_page_link_is_refused(client, trail):
    for cursor in ("yesterday", "12-", "-3", "1" * 40 + "-1"):
        response = client.get(f"/team/audit?before={cursor}")
        assert response.status_code == 400
        assert "That page link is not valid" in page_text(response.text)


# -- CSV -------------------------------------------------------------------------------------------


def test_the_csv_has_a_header_and_every_event_with_its_fields(client, trail):
    response = client.get("/team/audit.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="audit-initech-')
    rows = read_csv(response)
    assert rows[0] == ["id", "time_utc", "action", "user_id", "user_email", "ip_address", "details"]
    assert [row[2] for row in rows[1:]] == rows_of(client.get("/team/audit").text)
    by_action = {row[2]: row for row in rows[1:]}
    created = by_action["api_key.created"]
    assert created[1:6] == [
        "2026-11-01T10:00:00.000000Z",
        "api_key.created",
        str(trail.user_ids["admin"]),
        "admin@initech.example",
        "10.0.0.2",
    ]
    assert json.loads(created[6]) == {"name": "backend", "prefix": "tg_abcdefgh"}
    assert by_action["alerts.settings_changed"][3:7] == ["", "", "", ""]
    # A cell a spreadsheet would run as a formula is written as text.
    assert by_action["api_key.revoked"][6] == '{"name": "=HYPERLINK(\\"http://evil\\")"}'
    assert all(not cell.startswith("=") for row in rows for cell in row)


def test_the_csv_holds_exactly_the_filtered_events(client, trail):
    rows = read_csv(client.get("/team/audit.csv?action=invite.*&until=2026-11-02"))
    assert [row[2] for row in rows] == ["action", "invite.created"]
    rows = read_csv(client.get(f"/team/audit.csv?user={trail.user_ids['owner']}"))
    assert [row[2] for row in rows[1:]] == ["user.role_changed", "invite.created", "login.success"]


def test_the_csv_holds_every_event_not_just_one_page(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    total = EXPORT_BATCH * 2 + 7
    only_these_events(app, portal_tenant.tenant_id, numbered(total, step=timedelta(seconds=30)))
    response = client.get("/team/audit.csv")
    assert response.is_streamed
    rows = read_csv(response)
    assert len(rows) == total + 1
    assert [json.loads(row[6])["n"] for row in rows[1:]] == list(range(total - 1, -1, -1))
    assert len({row[0] for row in rows[1:]}) == total


# -- cost ------------------------------------------------------------------------------------------


def test_the_audit_page_runs_the_same_statements_for_10_and_500_events(app, client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    users = list(portal_tenant.user_ids.values())
    rows = [dict(row, user_id=users[n % 3]) for n, row in enumerate(numbered(500))]
    only_these_events(app, portal_tenant.tenant_id, rows[:10])
    with count_statements(app) as few:
        assert client.get("/team/audit").status_code == 200
    add_events(app, portal_tenant.tenant_id, rows[10:])
    with count_statements(app) as many:
        response = client.get("/team/audit")
    assert response.status_code == 200
    assert len(shown_numbers(response.text)) == PAGE_SIZE
    assert len(many) == len(few), many
    with count_statements(app) as filtered:
        client.get(f"/team/audit?user={users[1]}&action=settings.*&since=2026-11-01&until=2026-11-30")
    assert len(filtered) == len(few)


def test_the_old_activity_page_moved_to_the_audit_log(client, trail):
    response = client.get("/activity")
    assert response.status_code == 301
    assert response.headers["Location"] == "/team/audit"
