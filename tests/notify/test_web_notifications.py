"""In-portal notifications: each user's own, newest first, unread ones said so in words; marking
one or all read, after which the navigation's unread count drops. Marking one's own notifications
read changes nothing of the tenant's, so members may; nobody reaches another user's or another
tenant's notification (404); every form needs its CSRF token; the page runs a fixed number of
SQL statements however many notifications there are.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from portal.extensions import db as _db
from portal.models import Notification
from tests.api_helpers import T0
from tests.notify_helpers import raise_alert
from tests.portal_helpers import count_statements, page_text, post_form, sign_in

INBOX = "/notifications"
NOW = datetime.fromtimestamp(T0, UTC)


def alert_for_everyone(app, tenant_id: int, title: str, at: datetime = NOW, **options) -> None:
    """An alert as the evaluator writes it: each enabled user of the tenant gets a notification."""
    with app.app_context():
        raise_alert(tenant_id, title=title, at=at, **options)
        _db.session.remove()


def notices(app, user_id: int) -> list[Notification]:
    with app.app_context():
        rows = _db.session.scalars(
            select(Notification).where(Notification.user_id == user_id).order_by(Notification.id)
        ).all()
        _db.session.expunge_all()
        _db.session.remove()
    return list(rows)


def nav_count(html: str) -> int:
    match = re.search(r'<span class="count-badge" id="unread-count">(\d+)<span class="visually-hidden"> unread', html)
    return int(match.group(1)) if match else 0


@pytest.fixture
def admin(client, clock, portal_tenant):
    sign_in(client, portal_tenant.admin)
    return portal_tenant


def test_a_users_notifications_are_listed_newest_first_with_the_unread_ones_said_so(app, client, admin):
    alert_for_everyone(app, admin.tenant_id, "Error rate 12.5% above 10%", at=NOW - timedelta(minutes=5))
    alert_for_everyone(app, admin.tenant_id, "Monthly quota 85% used", severity="warning")
    html = client.get(INBOX).text
    text = page_text(html)
    assert "2 unread" in text
    assert text.index("Monthly quota 85% used") < text.index("Error rate 12.5% above 10%")
    assert "Unread ▲ warning 2026-11-18 12:30 UTC Monthly quota 85% used" in text
    assert "Unread ● critical 2026-11-18 12:25 UTC Error rate 12.5% above 10%" in text
    assert "12.5% of the calls in the last 60 minutes failed (threshold 10%)." in text
    [first, _] = notices(app, admin.user_ids["admin"])
    assert f'href="/alerts/{first.alert_id}">Error rate 12.5% above 10%</a>' in html
    assert nav_count(html) == 2


def test_marking_one_read_drops_the_navigations_count(app, client, admin):
    alert_for_everyone(app, admin.tenant_id, "First")
    alert_for_everyone(app, admin.tenant_id, "Second")
    first, second = notices(app, admin.user_ids["admin"])
    assert nav_count(client.get("/alerts").text) == 2

    response = post_form(client, f"{INBOX}/{first.id}/read", page=INBOX)
    assert response.status_code == 302 and response.headers["Location"] == f"/notifications#notification-{first.id}"
    first, second = notices(app, admin.user_ids["admin"])
    assert (first.read_at, second.read_at) == (NOW, None)
    html = client.get(INBOX).text
    assert nav_count(html) == 1 and "1 unread" in page_text(html)
    assert "Read ● critical 2026-11-18 12:30 UTC First" in page_text(html)
    # Once more changes nothing: read stays read, at the first time.
    assert post_form(client, f"{INBOX}/{first.id}/read", page=INBOX).status_code == 302
    assert notices(app, admin.user_ids["admin"])[0].read_at == NOW


def test_marking_all_read_clears_the_count_for_that_user_only(app, client, admin):
    for n in range(3):
        alert_for_everyone(app, admin.tenant_id, f"Alert {n}")
    response = post_form(client, f"{INBOX}/read", page=INBOX)
    assert response.status_code == 302 and response.headers["Location"] == "/notifications"
    html = client.get(INBOX).text
    assert "Marked 3 notifications read." in page_text(html)
    assert nav_count(html) == 0 and "Nothing unread" in page_text(html) and "Mark all read" not in html
    assert all(n.read_at == NOW for n in notices(app, admin.user_ids["admin"]))
    assert all(n.read_at is None for n in notices(app, admin.user_ids["owner"]))
    post_form(client, f"{INBOX}/read", page=INBOX)
    assert "There was nothing unread." in page_text(client.get(INBOX).text)


def test_a_member_reads_and_marks_their_own_notifications(app, client, clock, portal_tenant):
    alert_for_everyone(app, portal_tenant.tenant_id, "Seen by all")
    sign_in(client, portal_tenant.member)
    [mine] = notices(app, portal_tenant.user_ids["member"])
    assert "Seen by all" in client.get(INBOX).text
    assert post_form(client, f"{INBOX}/{mine.id}/read", page=INBOX).status_code == 302
    assert notices(app, portal_tenant.user_ids["member"])[0].read_at == NOW
    alert_for_everyone(app, portal_tenant.tenant_id, "Another")
    assert post_form(client, f"{INBOX}/read", page=INBOX).status_code == 302
    assert all(n.read_at for n in notices(app, portal_tenant.user_ids["member"]))


def test_another_users_or_tenants_notification_is_not_found(app, client, admin, other_tenant):
    alert_for_everyone(app, admin.tenant_id, "Ours")
    alert_for_everyone(app, other_tenant.tenant_id, "Theirs")
    [owners] = notices(app, admin.user_ids["owner"])
    [globex] = notices(app, other_tenant.user_ids["owner"])
    for notice in (owners, globex):
        assert post_form(client, f"{INBOX}/{notice.id}/read", page=INBOX).status_code == 404
    assert post_form(client, f"{INBOX}/{2**40}/read", page=INBOX).status_code == 404
    assert notices(app, admin.user_ids["owner"])[0].read_at is None
    assert notices(app, other_tenant.user_ids["owner"])[0].read_at is None
    post_form(client, f"{INBOX}/read", page=INBOX)
    assert notices(app, other_tenant.user_ids["owner"])[0].read_at is None
    assert "Theirs" not in client.get(INBOX).text


def test_marking_read_needs_the_csrf_token(app, client, admin):
    alert_for_everyone(app, admin.tenant_id, "Ours")
    [mine] = notices(app, admin.user_ids["admin"])
    assert client.post(f"{INBOX}/{mine.id}/read").status_code == 400
    assert client.post(f"{INBOX}/read").status_code == 400
    assert notices(app, admin.user_ids["admin"])[0].read_at is None


def test_older_notifications_are_on_further_pages(app, client, admin):
    with app.app_context():
        for n in range(60):
            _db.session.add(
                Notification(
                    tenant_id=admin.tenant_id,
                    user_id=admin.user_ids["admin"],
                    event_type="alert.triggered",
                    severity="warning",
                    title=f"Notice {n:02d}",
                    created_at=NOW - timedelta(minutes=60 - n),
                )
            )
        _db.session.commit()
        _db.session.remove()
    first = client.get(INBOX).text
    assert "Notice 59" in first and "Notice 10" in first and "Notice 09" not in first
    older = re.search(r'href="(/notifications\?before=\d+)" rel="next"', first).group(1)
    second = client.get(older).text
    assert "Notice 09" in second and "Notice 00" in second and "Notice 10" not in second
    assert 'rel="next"' not in second and 'href="/notifications" rel="prev"' in second
    assert client.get(f"{INBOX}?before=abc").status_code == 400


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get(INBOX)
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_the_page_runs_a_fixed_number_of_statements_with_1_or_50_notifications(app, client, admin):
    alert_for_everyone(app, admin.tenant_id, "Alert 0")
    client.get(INBOX)
    with count_statements(app) as small:
        assert client.get(INBOX).status_code == 200
    for n in range(1, 50):
        alert_for_everyone(app, admin.tenant_id, f"Alert {n}")
    with count_statements(app) as big:
        started = time.perf_counter()
        response = client.get(INBOX)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200 and "Alert 49" in response.text and "50 unread" in page_text(response.text)
    assert len(big) == len(small) <= 5
    assert elapsed < 0.5  # generous on a shared machine
