"""The portal in a real browser (Debian's Chromium, headless): sign in, walk every page with axe,
screenshots at 1280 and 390 px and no console error, charts with text alternatives, the keyboard,
the usage explorer and its exports, keys, alerts and notifications, sign out."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import UsageRecord, utcnow
from tests import browser_helpers
from tests.browser_helpers import (
    ARTIFACTS,
    PageReport,
    add_extras,
    check_page,
    focused,
    raise_error_rate_alert,
    seed_demo_tenant,
    sign_in_through_form,
)
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser
# The fixtures: a live server, one Chromium for the module, a page whose browser errors fail the test.
chromium, live_url, page = browser_helpers.chromium, browser_helpers.live_url, browser_helpers.page

# GET endpoints that are not pages to walk: redirects, the health check, sign-in and out.
NOT_PAGES = {"web.index", "web.health", "static"}


# -- walking every page ---------------------------------------------------------------------------


def portal_pages(app) -> set[str]:
    """The portal's GET pages (endpoints), downloads left out."""
    pages = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("web.") or rule.endpoint in NOT_PAGES or "GET" not in rule.methods:
            continue
        if rule.rule.endswith((".csv", ".json")) or "export" in rule.endpoint:
            continue
        pages.add(rule.endpoint)
    return pages


def endpoint_of(app, path: str) -> str | None:
    try:
        endpoint, _ = app.url_map.bind("localhost").match(path, method="GET")
    except (NotFound, MethodNotAllowed, RequestRedirect):
        return None
    return endpoint


def links_on(page, live_url: str) -> list[str]:
    """Same-site links of the page (path and query), downloads and sign-out left out."""
    hrefs = page.eval_on_selector_all("a[href]:not([download])", "els => els.map(a => a.href)")
    found = []
    for href in hrefs:
        if not href.startswith(live_url):
            continue
        parts = urlsplit(href)
        if parts.path.endswith((".csv", ".json")) or parts.path.startswith(("/logout", "/static", "/api/")):
            continue
        found.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return found


def visit(page, live_url: str, path: str) -> PageReport:
    response = page.goto(f"{live_url}{path}")
    report = check_page(page, path)
    if response is None or response.status != 200:
        report.problems.insert(0, f"status {response.status if response else 'none'}")
    return report


def test_every_page_passes_axe_shows_no_console_error_and_fits_a_phone(app, clock, live_url, page):
    demo = seed_demo_tenant(app)
    invite_token = add_extras(app, demo)
    raise_error_rate_alert(app, demo.tenant_id)
    sign_in_through_form(page, live_url, demo.email)
    reports = [check_page(page, "/dashboard")]
    visited = {"web.dashboard"}

    # The main navigation, found on the page, so a new section is walked without naming it here.
    nav_links = page.eval_on_selector_all("nav[aria-label=Main] a", "els => els.map(a => a.getAttribute('href'))")
    assert len(nav_links) >= 2, nav_links
    queue = [path for path in nav_links if path != "/dashboard"]
    seen_paths = set(nav_links)
    # Then the pages their pages link to (statements, a log, a key, alert and team sub-pages,
    # notifications), one page per endpoint, three links deep.
    pages = portal_pages(app)
    for _depth in range(4):
        found = []
        for path in queue:
            endpoint = endpoint_of(app, urlsplit(path).path)
            if endpoint in visited:
                continue
            visited.add(endpoint)
            reports.append(visit(page, live_url, path))
            found += links_on(page, live_url)
        # Prefer a page's plain address to one with a query (filters, pages of a list).
        queue = []
        for path in sorted(set(found) - seen_paths, key=lambda p: ("?" in p, p)):
            endpoint = endpoint_of(app, urlsplit(path).path)
            if endpoint in pages and endpoint not in visited and endpoint not in {endpoint_of(app, q) for q in queue}:
                queue.append(path)
        seen_paths |= set(found)

    unreached = sorted(pages - visited)
    for endpoint in [e for e in unreached if not any(r.arguments for r in app.url_map.iter_rules(e))]:
        # Not linked from any page: checked all the same, and reported (an old address that
        # redirects to a page is not a page of its own).
        unreached.remove(endpoint)
        report = visit(page, live_url, app.url_map.bind("localhost").build(endpoint))
        if endpoint_of(app, urlsplit(page.url).path) != endpoint:
            continue
        report.problems.append(f"not linked from any page ({endpoint})")
        reports.append(report)

    # Signed out: the sign-in and sign-out pages, an invitation's page, and the page of an
    # address that does not exist (its 404 is the one browser error expected).
    press(page, "text=Sign out")
    for path in ("/login", "/logout", f"/invite/{invite_token}"):
        reports.append(visit(page, live_url, path))
        visited.add(endpoint_of(app, path))
    unreached = [endpoint for endpoint in unreached if endpoint not in visited]
    response = page.goto(f"{live_url}/no-such-page")
    assert response.status == 404
    assert [e for e in page.problems.new() if "status of 404" not in e] == []
    reports.append(check_page(page, "/no-such-page", name="not-found"))

    summary = "\n".join(f"{r.path}: {r.charts} charts, {r.tab_stops} Tab stops checked" for r in reports)
    print(f"walked {len(reports)} pages:\n{summary}")
    print("console warnings:", *sorted(set(page.problems.warnings)) or ["none"], sep="\n")
    failed = [r for r in reports if r.problems]
    assert not failed, "\n\n".join(f"{r.path}:\n" + "\n".join(r.problems) for r in failed)
    assert not unreached, f"pages no link led to: {unreached}"
    assert sum(r.charts for r in reports) >= 1


# -- the keyboard --------------------------------------------------------------------------------

TABS = 40  # how many Tab presses are checked on a page


def tab_through(page, presses: int = TABS) -> list[dict]:
    """Press Tab from the top of the page; what had focus after each press."""
    reached = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        element = focused(page)
        if element is None:  # focus left the document: the tab order is over
            break
        reached.append(element)
    return reached


@pytest.mark.parametrize("path", ["/dashboard", "/keys"])
def test_tab_reaches_the_skip_link_then_the_nav_and_focus_is_always_seen(app, clock, live_url, page, path):
    demo = seed_demo_tenant(app, days=3)
    sign_in_through_form(page, live_url, demo.email)
    page.goto(f"{live_url}{path}")
    nav = page.eval_on_selector_all("nav[aria-label=Main] a", "els => els.map(a => a.getAttribute('href'))")

    reached = tab_through(page)
    assert reached, "Tab moves focus nowhere"
    assert "skip-link" in reached[0]["cls"], f"the first Tab goes to {reached[0]}, not the skip link"
    in_nav = [n for n, element in enumerate(reached) if element["inNav"]]
    assert [reached[n]["href"] for n in in_nav] == nav, "Tab does not go through the navigation in order"
    assert in_nav == list(range(in_nav[0], in_nav[0] + len(nav))), "the navigation's links are not one after another"
    assert in_nav[0] <= 3, f"the navigation comes after {in_nav[0]} other stops"
    unseen = [e for e in reached if not e["visible"]]
    unmarked = [e for e in reached if not e["indicator"]]
    assert not unseen, f"focus goes to elements that cannot be seen: {unseen}"
    assert not unmarked, f"focused elements without an outline or shadow: {unmarked}"

    # The skip link moves focus to the main content; the next Tab goes on from there.
    page.goto(f"{live_url}{path}")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "content"
    page.keyboard.press("Tab")
    assert page.evaluate("() => !!document.activeElement.closest('main')"), f"after main: {focused(page)}"


# -- keys ----------------------------------------------------------------------------------------


def key_state(page) -> str:
    return page.locator("dl.details .badge").first.inner_text().strip()


def press(page, button) -> None:
    """Click a form's button (a selector or locator) and wait for the page it leads to."""
    with page.expect_navigation():
        (page.locator(button) if isinstance(button, str) else button).click()


def test_a_key_is_created_shown_once_deactivated_reactivated_and_revoked(app, clock, live_url, page, make_tenant):
    _, email, _ = make_tenant("Keyring Co")
    sign_in_through_form(page, live_url, email)
    page.goto(f"{live_url}/keys")
    page.fill("#key-name", "billing worker")
    page.fill("#key-description", "the nightly invoices")
    page.click("text=Create key")
    secret = page.locator("#secret").inner_text()
    assert secret.startswith("tg_")
    assert "Copy it now, it will not be shown again." in page.locator(".secret-warning").inner_text()
    report = check_page(page, "/keys (new secret)", name="key-secret")
    assert not report.problems, "\n".join(report.problems)

    page.click("text=I have copied it: go to the key")
    page.wait_for_url("**/keys/*")
    assert page.locator("h1").inner_text() == "billing worker"
    assert key_state(page) == "active"
    assert secret not in page.content(), "the secret is shown again"

    press(page, "button:has-text('Deactivate')")
    assert "is deactivated" in page.locator(".flashes").inner_text()
    assert key_state(page) == "inactive"
    press(page, "button:has-text('Reactivate')")
    assert "is active again" in page.locator(".flashes").inner_text()
    assert key_state(page) == "active"

    asked = []

    def answer(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    press(page, "button:has-text('Revoke')")
    assert "is revoked" in page.locator(".flashes").inner_text()
    assert key_state(page) == "revoked"
    assert page.locator("button:has-text('Reactivate'), button:has-text('Deactivate')").count() == 0
    check = check_page(page, "/keys/<id> (revoked)", name="key-revoked")
    assert not check.problems, "\n".join(check.problems)
    page.goto(f"{live_url}/keys")
    row = page.locator("tr", has_text="billing worker")
    assert row.locator(".badge").inner_text().strip() == "revoked"
    assert asked, "revoking a key asks for no confirmation"


# -- the usage explorer and its exports -----------------------------------------------------------


def figure(page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", "").strip())


def download(page, link_text: str) -> str:
    with page.expect_download() as info:
        page.click(f"p.exports a:has-text('{link_text}')")
    return Path(info.value.path()).read_text()


def test_the_explorer_filters_through_the_url_and_its_exports_add_up(app, clock, live_url, page):
    demo = seed_demo_tenant(app, days=20)
    sign_in_through_form(page, live_url, demo.email)
    page.goto(f"{live_url}/usage")
    everything = figure(page, "#figure-calls .figure")
    daily_rows = page.locator("#series-table tbody tr").count()
    assert everything > 0 and daily_rows == 30

    page.select_option("#explorer-interval", "weekly")
    page.select_option("#explorer-service", "openai")
    page.click("form.explorer-filters button:has-text('Show')")
    page.wait_for_url("**/usage?*")
    query = parse_qs(urlsplit(page.url).query)
    assert query["interval"] == ["weekly"] and query["service"] == ["openai"], page.url
    assert "weekly" in page.locator("#explorer-range").inner_text()
    openai = figure(page, "#figure-calls .figure")
    start, end = page.input_value("#explorer-start"), page.input_value("#explorer-end")
    with app.app_context():
        stored = db.session.scalar(
            select(func.count())
            .select_from(UsageRecord)
            .where(
                UsageRecord.tenant_id == demo.tenant_id,
                UsageRecord.service == "openai",
                UsageRecord.occurred_at >= datetime.fromisoformat(start).replace(tzinfo=UTC),
                UsageRecord.occurred_at < datetime.fromisoformat(end).replace(tzinfo=UTC) + timedelta(days=1),
            )
        )
        db.session.remove()
    assert 0 < openai == stored < everything
    assert page.locator("#series-table tbody tr").count() < daily_rows
    report = check_page(page, "/usage (weekly, openai)", name="usage-filtered")

    rows = list(csv.DictReader(io.StringIO(download(page, "CSV"))))
    total = next(row for row in rows if row["period"] == "total")
    series = [row for row in rows if row["period"] != "total" and not row["period"].startswith("previous")]
    assert int(total["calls"]) == openai == sum(int(row["calls"]) for row in series)

    exported = json.loads(download(page, "JSON"))
    assert exported["interval"] == "weekly" and exported["filters"]["service"] == "openai"
    assert exported["totals"]["calls"] == openai == sum(point["calls"] for point in exported["series"])
    assert page.url.startswith(f"{live_url}/usage?"), "downloading left the page"
    assert not report.problems, "\n".join(report.problems)


# -- alerts and notifications --------------------------------------------------------------------


def test_an_alert_is_acknowledged_and_resolved_and_notifications_are_read(app, clock, live_url, page, make_tenant):
    _, email, tenant_id = make_tenant("Pager Co", plan="professional")
    raise_error_rate_alert(app, tenant_id)
    sign_in_through_form(page, live_url, email)
    assert int(page.locator("#unread-count").inner_text().split()[0]) >= 1, "the nav shows no unread notice"

    page.goto(f"{live_url}/alerts")
    alert = page.locator("li.alert-item", has_text="Error rate")
    assert alert.count() == 1, page.locator("main").inner_text()
    assert "active" in alert.locator(".alert-badges").inner_text()
    press(page, alert.locator("button:has-text('Acknowledge')"))
    assert "Acknowledged" in page.locator(".flashes").inner_text()
    alert = page.locator("li.alert-item", has_text="Error rate")
    assert "acknowledged" in alert.locator(".alert-badges").inner_text()
    assert alert.locator("button:has-text('Acknowledge')").count() == 0
    report = check_page(page, "/alerts (acknowledged)", name="alerts-acknowledged")
    assert not report.problems, "\n".join(report.problems)

    asked = []

    def answer(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    press(page, alert.locator("button:has-text('Resolve')"))
    assert "Resolved" in page.locator(".flashes").inner_text()
    assert asked, "resolving asks for no confirmation"
    assert page.locator("li.alert-item", has_text="Error rate").count() == 0, "a resolved alert is still listed as open"
    page.goto(f"{live_url}/alerts/history")
    assert "resolved" in page.locator("main", has_text="Error rate").inner_text()

    page.goto(f"{live_url}/notifications")
    assert page.locator("#unread-count").count() == 1
    press(page, "button:has-text('Mark all read')")
    assert "read" in page.locator(".flashes").inner_text()
    assert page.locator("#unread-count").count() == 0, "the nav still counts unread notifications"
    report = check_page(page, "/notifications (all read)", name="notifications-read")
    assert not report.problems, "\n".join(report.problems)


# -- the harness itself -------------------------------------------------------------------------


def test_what_the_content_security_policy_blocks_is_a_browser_error(app, live_url, page):
    """An inline script or style attribute on a page would be refused and fail the walk above."""
    page.goto(f"{live_url}/login")
    page.evaluate(
        """() => {
          const script = document.createElement('script');
          script.textContent = 'window.ran = true';
          document.body.appendChild(script);
          document.body.insertAdjacentHTML('beforeend', '<p style="color: red">styled</p>');
        }"""
    )
    page.wait_for_function("() => true")
    errors = page.problems.new()
    assert page.evaluate("() => window.ran") is None
    assert any("Content Security Policy directive 'script-src 'self''" in e for e in errors), errors
    assert any("Content Security Policy directive 'style-src 'self''" in e for e in errors), errors


# -- what was here first: signing in and out, a reloaded form -------------------------------------


def test_sign_in_look_around_and_sign_out(app, make_tenant, live_url, page):
    slug, email, tenant_id = make_tenant("Browser Co", plan="professional")
    now = utcnow()
    with app.app_context():
        store_usage(
            [
                {
                    "tenant_id": tenant_id,
                    "service": "tollgate",
                    "endpoint": "/api/v1/ping",
                    "status_code": 200,
                    "quota_units": 1,  # admitted: counts against the monthly quota
                    "occurred_at": now,
                    "idempotency_key": uuid.uuid4().hex,
                }
                for _ in range(42)
            ]
        )
        db.session.commit()

    page.goto(f"{live_url}/")
    assert page.url.endswith("/login")
    page.fill("#email", email)
    page.fill("#password", "not the password")
    page.click("button.primary")
    assert page.locator(".flash-error").inner_text() == "Wrong e-mail or password."
    # The refused sign-in answers 401, which the browser logs; nothing else may have gone wrong.
    assert [e for e in page.problems.new() if "status of 401" not in e] == []

    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url("**/dashboard")
    assert page.locator("h1").inner_text() == "Browser Co"
    assert page.locator("#plan-heading").inner_text() == "Professional plan"
    assert page.locator("#quota-used").inner_text() == "42"
    assert page.locator("[role=progressbar]").count() == 1
    nav = page.locator("nav[aria-label=Main]")
    assert nav.locator("a").all_inner_texts()[:1] == ["Dashboard"]
    assert nav.locator("a[aria-current=page]").inner_text() == "Dashboard"
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    nav.locator("text=API keys").click()
    page.wait_for_url("**/keys")
    assert page.locator("h1").inner_text() == "API keys"

    page.click("text=Sign out")
    page.wait_for_url("**/login")
    assert "You are signed out." in page.locator(".flashes").inner_text()
    page.goto(f"{live_url}/dashboard")
    assert "/login" in page.url


def test_reloading_the_new_key_page_makes_no_second_key(app, make_tenant, live_url, page):
    _, email, tenant_id = make_tenant("Reload Co")
    sign_in_through_form(page, live_url, email)

    page.goto(f"{live_url}/keys")
    page.fill("#key-name", "production backend")
    page.click("text=Create key")
    page.wait_for_selector("#secret")
    secret = page.locator("#secret").inner_text()
    assert secret.startswith("tg_")

    # The browser sends the form again on reload; the answer is the key list, not a new key.
    page.reload()
    page.wait_for_url("**/keys")
    assert "That form was already sent, and its key was made then." in page.locator(".flashes").inner_text()
    assert page.locator("#secret").count() == 0
    page.screenshot(path=str(ARTIFACTS / "keys-after-reload.png"), full_page=True)
    with app.app_context():
        from sqlalchemy import func, select

        from portal.models import ApiKey

        assert db.session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.tenant_id == tenant_id)) == 1
        db.session.remove()
