"""Two-factor sign-in in Chromium, as a person sets it up: from the account page to the QR code,
a code typed from the "phone", the recovery codes, and the next sign-in asking for a code. The
pages pass the checks every portal page does (axe, no browser error, fits a phone, visible focus)."""

from __future__ import annotations

import re
import time

import pyotp
import pytest

from tests import browser_helpers
from tests.browser_helpers import check_page, sign_in_through_form
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser
chromium, live_url, page = browser_helpers.chromium, browser_helpers.live_url, browser_helpers.page


def test_two_factor_is_set_up_and_then_asked_for_at_sign_in(app, make_tenant, live_url, page):
    _, email, _ = make_tenant("Second Factor Co")
    sign_in_through_form(page, live_url, email)
    page.goto(f"{live_url}/account")
    page.click("text=Set up two-factor sign-in")
    page.wait_for_url("**/account/two-factor")
    assert page.locator("figure.qr-box svg.totp-qr").is_visible()
    assert check_page(page, "/account/two-factor", name="two-factor-setup").problems == []
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    page.fill("#setup-code", pyotp.TOTP(secret).now())
    page.click("text=Turn on two-factor sign-in")
    codes = page.locator("ol.recovery-codes code").all_inner_texts()
    assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", code) for code in codes)
    assert check_page(page, "/account/two-factor/recovery-codes", name="two-factor-recovery-codes").problems == []
    page.click("text=I have saved them")
    page.wait_for_url("**/account/two-factor")
    assert "10 of 10" in page.locator("#codes-left").inner_text()
    assert check_page(page, "/account/two-factor", name="two-factor-manage").problems == []

    page.context.clear_cookies()
    page.goto(f"{live_url}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button.primary")
    page.wait_for_url("**/login/two-factor")
    assert check_page(page, "/login/two-factor", name="login-two-factor").problems == []
    # The code of the next step: the one the set-up used may not be used again.
    page.fill("#two-factor-code", pyotp.TOTP(secret).at(time.time() + 30))
    page.check("#remember_device")
    page.click("button.primary")
    page.wait_for_url("**/dashboard")
