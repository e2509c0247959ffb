"""The portal in a real browser (Debian's Chromium, headless): sign in, look around, sign out."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import utcnow

from .conftest import PASSWORD

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def live_url(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium package (/usr/bin/chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


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

    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url("**/dashboard")
    assert page.locator("h1").inner_text() == "Browser Co"
    assert page.locator("#plan-heading").inner_text() == "Professional plan"
    assert page.locator("#quota-used").inner_text() == "42"
    assert page.locator("[role=progressbar]").count() == 1
    nav = page.locator("nav")
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
    page.goto(f"{live_url}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url("**/dashboard")

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
