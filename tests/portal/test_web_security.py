"""Safe pages: strict security headers, no inline script or style anywhere, and CSRF on every form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.portal_helpers import sign_in

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.fixture
def signed_in(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


def test_pages_carry_a_strict_content_security_policy(client, signed_in):
    for url in ("/dashboard", "/keys", "/login"):
        response = client.get(url)
        parts = response.headers["Content-Security-Policy"].split(";")
        policy = dict(part.strip().split(" ", 1) for part in parts if part.strip())
        assert policy["script-src"] == "'self'", url
        assert policy["style-src"] == "'self'", url
        assert policy["frame-ancestors"] == "'none'", url
        assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'", url
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"
        # Plain http (a local run): no HSTS, which would pin a browser to https on localhost.
        assert "Strict-Transport-Security" not in response.headers


def test_hsts_over_https(client):
    response = client.get("/login", base_url="https://portal.example")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_json_and_static_responses_are_not_sniffed(client):
    assert client.get("/health").headers["X-Content-Type-Options"] == "nosniff"
    static = client.get("/static/tollgate.css")
    assert static.headers["X-Content-Type-Options"] == "nosniff"
    static.close()


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda p: str(p.relative_to(TEMPLATES)))
def test_no_template_has_inline_script_style_or_handlers(template):
    html = template.read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>: the CSP blocks it"
    assert not re.search(r"\sstyle\s*=", html), "style attribute: the CSP blocks it"
    assert not re.search(r"<style\b", html), "<style> element: the CSP blocks it"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler: the CSP blocks it"
    assert "javascript:" not in html


def _post_routes(app):
    for rule in app.url_map.iter_rules():
        if "POST" in (rule.methods or ()) and not rule.rule.startswith("/api/"):
            yield rule


def test_every_portal_form_needs_its_csrf_token(app, client, signed_in):
    routes = list(_post_routes(app))
    assert len(routes) >= 7  # sign-in, sign-out and the key actions at least
    for rule in routes:
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "1" if "id" in m.group(1) else "x", rule.rule)
        response = client.post(url, data={"name": "x"})
        assert response.status_code == 400, f"{rule.rule} accepted a POST without a CSRF token"
        assert "The form expired or was not sent from this site" in response.text, rule.rule


def test_the_session_cookie_is_http_only_and_same_site(client, portal_tenant):
    sign_in(client, portal_tenant.owner)
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
