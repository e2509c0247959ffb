"""The account page and the password reset in Chromium: every page passes the checks every
portal page does (axe, no browser error, fits a phone, a visible focus), and the whole reset is
done as a person would — from the sign-in page's link to signing in with the new password, the
link read from the e-mail a real SMTP sink received."""

from __future__ import annotations

import pytest

from tests import browser_helpers
from tests.browser_helpers import check_page, sign_in_through_form
from tests.notify_helpers import app_config
from tests.receivers import SmtpSink
from tests.tenancy.test_password_reset import link_of, wait_for_mail

pytestmark = pytest.mark.browser
chromium, live_url, page = browser_helpers.chromium, browser_helpers.live_url, browser_helpers.page

NEW_PASSWORD = "quiet lantern orbit meadow 77"


def test_account_page_passes_every_check_and_changes_the_name(app, make_tenant, live_url, page):
    _, email, _ = make_tenant("Account Co")
    sign_in_through_form(page, live_url, email)
    page.click(f"a.user-email:has-text('{email}')")
    page.wait_for_url("**/account")
    report = check_page(page, "/account")
    assert report.problems == []
    assert page.locator("table.sign-ins tbody tr").count() == 1
    assert "Signed in" in page.locator("table.sign-ins tbody tr").first.inner_text()
    page.fill("#account-name", "Ada Account")
    page.click("text=Save the name")
    page.wait_for_url("**/account")
    assert "Your name is saved." in page.locator(".flashes").inner_text()
    assert page.input_value("#account-name") == "Ada Account"
    page.fill("#account-current-password", "not my password")
    page.fill("#account-new-password", NEW_PASSWORD)
    page.fill("#account-confirm", NEW_PASSWORD)
    page.click("text=Change the password")
    assert page.locator("#account-current-password-error").inner_text() == "Your current password is not that one."
    # The refused change answers 400, which the browser logs; nothing else may have gone wrong.
    assert [e for e in page.problems.new() if "status of 400" not in e] == []


def test_a_forgotten_password_is_reset_through_the_emailed_link(app, make_tenant, live_url, page):
    _, email, _ = make_tenant("Reset Co")
    with SmtpSink() as sink, app_config(app, SMTP_URL=sink.url, MAIL_FROM="tollgate@localhost"):
        page.goto(f"{live_url}/login")
        page.click("text=Forgot your password?")
        page.wait_for_url("**/forgot-password")
        assert check_page(page, "/forgot-password").problems == []
        page.fill("#forgot-email", email)
        page.click("text=Send the link")
        assert page.locator("h1").inner_text() == "Check your e-mail"
        link = link_of(wait_for_mail(sink, 1)[0])
        page.goto(f"{live_url}{link}")
        assert check_page(page, "/reset-password", name="reset-password").problems == []
        page.fill("#reset-password", "password1234")
        page.fill("#reset-confirm", "password1234")
        page.click("text=Save the new password")
        assert page.locator("#reset-password-error").count() == 1
        assert [e for e in page.problems.new() if "status of 400" not in e] == []
        page.fill("#reset-password", NEW_PASSWORD)
        page.fill("#reset-confirm", NEW_PASSWORD)
        page.click("text=Save the new password")
        page.wait_for_url("**/login")
        assert "Sign in with the new password" in page.locator(".flashes").inner_text()
        sign_in_through_form(page, live_url, email, NEW_PASSWORD)
