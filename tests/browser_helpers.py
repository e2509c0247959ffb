"""Helpers for the browser tests: a live server, seeded data, Debian's Chromium through Playwright
with every console error, uncaught exception and failed request collected, axe-core, screenshots
at 1280 and 390 px and the checks every page passes."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select
from werkzeug.serving import make_server

from portal.extensions import db
from portal.metering.store import store_usage

from .factories import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
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
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
SERIOUS = ("serious", "critical")
# The clock fixture's T0 (tests/api_helpers.py): the seeded history ends here.
T0 = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)


# -- the server and the browser ------------------------------------------------------------------


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """The app served over HTTP on a free loopback port, in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module's tests (each test gets its own context)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium package (/usr/bin/chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@dataclass
class Problems:
    """What went wrong in the browser: console errors (CSP violations among them), uncaught
    exceptions and requests that failed. A request the browser itself cancelled (``ERR_ABORTED``:
    the page moved on before the favicon came, a link became a download) is not a failure; a
    missing file is, as the console error its 404 logs."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seen: int = 0

    def on_console(self, message) -> None:
        where = message.location.get("url", "?")
        text = f"console {message.type} on {where}: {message.text}"
        if message.type in ("error", "assert"):
            self.errors.append(text)
        elif message.type == "warning":
            self.warnings.append(text)

    def on_page_error(self, error) -> None:
        self.errors.append(f"uncaught exception: {error}")

    def on_request_failed(self, request) -> None:
        failure = request.failure or ""
        if failure == "net::ERR_ABORTED":
            return
        self.errors.append(f"request failed: {request.method} {request.url}: {failure}")

    def new(self) -> list[str]:
        """The errors since the last call."""
        fresh = self.errors[self.seen :]
        self.seen = len(self.errors)
        return fresh


@pytest.fixture
def page(request, chromium):
    """A fresh browser context and page at 1280×900, its problems collected in ``page.problems``;
    the test fails on any the test did not check itself. With the ``clock`` fixture, the
    page's own clock (countdowns) reads the server's time too."""
    context = chromium.new_context(viewport=WIDE, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    if "clock" in request.fixturenames:
        page.clock.set_fixed_time(request.getfixturevalue("clock").now)
    problems = Problems()
    page.on("console", problems.on_console)
    page.on("pageerror", problems.on_page_error)
    page.on("requestfailed", problems.on_request_failed)
    page.problems = problems
    yield page
    context.close()
    unchecked = problems.new()
    assert not unchecked, "the browser reported:\n" + "\n".join(unchecked)


def sign_in_through_form(page, live_url: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{live_url}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button.primary")
    page.wait_for_url("**/dashboard")


# -- what every page must pass -------------------------------------------------------------------


def axe_violations(page, context: str | None = None) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, context=context)
    return [v for v in results.response["violations"] if v.get("impact") in SERIOUS]


def describe_violations(violations: list[dict]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"- {violation['id']} ({violation['impact']}): {violation['help']} [{violation['helpUrl']}]")
        for node in violation["nodes"][:8]:
            lines.append(f"    {', '.join(map(str, node['target']))}: {node.get('failureSummary', '').strip()}")
            lines.append(f"      {node.get('html', '')[:200]}")
    return "\n".join(lines)


def horizontal_overflow(page) -> dict | None:
    """None when the document is no wider than the window, else the widths and the elements that
    stick out on their own (not inside a scrolling container such as ``.table-scroll``, where a
    wide table is fine)."""
    return page.evaluate(
        """() => {
          const doc = document.documentElement, width = window.innerWidth + 1;
          if (doc.scrollWidth <= width) return null;
          const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
            + (el.classList.length ? '.' + [...el.classList].join('.') : '');
          // Clipped by a scrolling ancestor; an absolutely positioned element escapes every
          // ancestor up to its containing block (a positioned one).
          const clipped = el => {
            const own = getComputedStyle(el).position;
            if (own === 'fixed') return true;
            let escaping = own === 'absolute';
            for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
              const style = getComputedStyle(up);
              if (escaping && style.position === 'static') continue;
              if (style.overflowX !== 'visible' || style.position === 'fixed') return true;
              escaping = style.position === 'absolute';
            }
            return false;
          };
          const out = [];
          const bad = el => el && el !== document.body && el.getBoundingClientRect().right > width && !clipped(el);
          for (const el of document.body.querySelectorAll('*')) {
            if (bad(el) && !bad(el.parentElement))
              out.push(name(el) + ' (right edge ' + Math.round(el.getBoundingClientRect().right) + ' px, position '
                + getComputedStyle(el).position + ') in ' + name(el.parentElement));
          }
          return {scrollWidth: doc.scrollWidth, innerWidth: window.innerWidth, sticking_out: out.slice(0, 8)};
        }"""
    )


def chart_problems(page) -> list[str]:
    """Every ``svg[role=img]`` has aria-labelledby naming a <title> and a <desc> inside it, and
    sits in a figure with a data table (``details.chart-data table``)."""
    return page.evaluate(
        """() => {
          const problems = [];
          document.querySelectorAll('svg[role=img]').forEach((svg, n) => {
            const name = 'svg #' + n + (svg.id ? ' (' + svg.id + ')' : '')
              + ' "' + ((svg.querySelector('title') || {}).textContent || '').trim().slice(0, 60) + '"';
            const ids = (svg.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean);
            const named = ids.map(id => document.getElementById(id));
            if (!ids.length) problems.push(name + ': no aria-labelledby');
            if (named.some(el => el === null)) problems.push(name + ': aria-labelledby names a missing id');
            const inside = named.filter(el => el && svg.contains(el));
            if (!inside.some(el => el.tagName.toLowerCase() === 'title' && el.textContent.trim()))
              problems.push(name + ': aria-labelledby names no <title> inside it');
            if (!inside.some(el => el.tagName.toLowerCase() === 'desc' && el.textContent.trim()))
              problems.push(name + ': aria-labelledby names no <desc> inside it');
            const figure = svg.closest('figure');
            if (!figure) problems.push(name + ': not inside a <figure>');
            else if (!figure.querySelector('details.chart-data table'))
              problems.push(name + ': its figure has no data table (details.chart-data table)');
          });
          return problems;
        }"""
    )


def shot_name(path: str) -> str:
    """A file name for a page's screenshots: /billing/statements/12 -> billing-statements-id."""
    name = re.sub(r"/\d+(?=/|$)", "/id", path.split("?")[0])
    name = re.sub(r"/[A-Za-z0-9_-]{20,}", "/token", name).strip("/") or "index"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass
class PageReport:
    path: str
    problems: list[str] = field(default_factory=list)
    charts: int = 0
    tab_stops: int = 0


def check_page(page, path: str, name: str | None = None, axe: bool = True, keyboard: bool = True) -> PageReport:
    """Checks the page the browser shows now (``path`` names it): no browser error since the
    last check, axe (also inside opened chart-data tables), the charts' text alternatives,
    screenshots at 1280 and 390 px, no sideways scrolling at 390 px, and a visible focus on the
    first Tab stops. Returns what failed."""
    report = PageReport(path)
    name = name or shot_name(path)
    page.set_viewport_size(WIDE)
    page.wait_for_load_state("load")
    report.problems += page.problems.new()
    if axe:
        violations = axe_violations(page)
        if violations:
            report.problems.append("axe:\n" + describe_violations(violations))
    report.charts = page.locator("svg[role=img]").count()
    report.problems += [f"chart: {problem}" for problem in chart_problems(page)]
    page.screenshot(path=str(ARTIFACTS / f"{name}-1280.png"), full_page=True)
    if axe and page.locator("details.chart-data").count():
        # The tables behind the charts are read too: open them, check them, close them again.
        page.evaluate("() => document.querySelectorAll('details.chart-data').forEach(d => d.open = true)")
        violations = axe_violations(page, "details.chart-data")
        if violations:
            report.problems.append("axe in the charts' data tables:\n" + describe_violations(violations))
        page.evaluate("() => document.querySelectorAll('details.chart-data').forEach(d => d.open = false)")
    page.set_viewport_size(NARROW)
    overflow = horizontal_overflow(page)
    if overflow:
        report.problems.append(f"scrolls sideways at 390 px: {overflow}")
    page.screenshot(path=str(ARTIFACTS / f"{name}-390.png"), full_page=True)
    page.set_viewport_size(WIDE)
    if keyboard:
        report.tab_stops, problems = focus_problems(page)
        report.problems += problems
    report.problems += page.problems.new()
    return report


def focus_problems(page, presses: int = 40) -> tuple[int, list[str]]:
    """Tab from the top through up to ``presses`` stops: each must be visible and show where
    the focus is (an outline or a shadow). Returns the stops reached and what was wrong."""
    # Tab goes on from where focus was: start it from the document's top.
    page.evaluate(
        """() => {
          const root = document.documentElement;
          root.tabIndex = -1;
          root.focus({preventScroll: true});
          root.removeAttribute('tabindex');
          window.scrollTo(0, 0);
        }"""
    )
    problems = []
    stops = 0
    for _ in range(presses):
        page.keyboard.press("Tab")
        element = focused(page)
        if element is None:
            break
        stops += 1
        name = f"<{element['tag']}{' id=' + element['id'] if element['id'] else ''}> “{element['text']}”"
        if not element["visible"]:
            problems.append(f"focus: Tab reaches {name}, which cannot be seen")
        elif not element["indicator"]:
            problems.append(f"focus: {name} shows no focus ring (outline {element['outline']}, shadow none)")
    return stops, problems


# -- keyboard ------------------------------------------------------------------------------------

FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const r = el.getBoundingClientRect();
  const s = getComputedStyle(el);
  const outline = s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;
  const shadow = s.boxShadow && s.boxShadow !== 'none';
  // Focus inside the control's own shadow tree (a date input's calendar button): the browser
  // draws that ring itself.
  const native = !el.matches(':focus');
  return {
    tag: el.tagName.toLowerCase(), id: el.id, cls: el.className && String(el.className),
    text: (el.innerText || el.value || el.getAttribute('aria-label') || '').trim().slice(0, 40),
    href: el.getAttribute('href'), inNav: !!el.closest('nav[aria-label=Main]'),
    visible: r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.opacity !== '0',
    indicator: outline || shadow || native, outline: s.outlineStyle + ' ' + s.outlineWidth, shadow: s.boxShadow,
  };
}"""


def focused(page) -> dict | None:
    return page.evaluate(FOCUSED)


# -- seeded data ---------------------------------------------------------------------------------


@dataclass
class Demo:
    tenant_id: int
    slug: str
    email: str
    password: str = PASSWORD


def seed_demo_tenant(app: Flask, days: int = 35, now: datetime = T0) -> Demo:
    """``flask seed-demo``'s tenant (Acme Analytics: four keys, one revoked, ``days`` of API and
    outside-service usage ending at ``now``, its past months closed into statements)."""
    from portal.demo import seed_demo

    with app.app_context():
        result = seed_demo(days=days, password=PASSWORD, now=now)
        demo = Demo(result.tenant.id, result.tenant.slug, result.email)
        db.session.remove()
    return demo


def usage_record(tenant_id: int, at: datetime, status: int = 200, **fields) -> dict:
    record = {
        "tenant_id": tenant_id,
        "service": "tollgate",
        "endpoint": "/api/v1/ping",
        "status_code": status,
        "duration_ms": 40,
        "occurred_at": at,
        "idempotency_key": uuid.uuid4().hex,
    }
    record.update(fields)
    return record


def raise_error_rate_alert(app: Flask, tenant_id: int, now: datetime = T0) -> None:
    """Failing calls in the last minutes, then a real evaluation pass: the error-rate alert opens
    (and its in-portal notifications with it)."""
    from portal.alerts.evaluate import evaluate_alerts
    from portal.models import Alert
    from portal.redis_store import get_redis

    at = now - timedelta(minutes=10)
    with app.app_context():
        failing = [usage_record(tenant_id, at, 500) for _ in range(40)]
        store_usage([usage_record(tenant_id, at) for _ in range(60)] + failing)
        db.session.commit()
        result = evaluate_alerts(get_redis(app), now, [tenant_id])
        open_alerts = db.session.scalar(
            select(func.count()).select_from(Alert).where(Alert.tenant_id == tenant_id, Alert.status == "active")
        )
        db.session.remove()
    assert open_alerts >= 1, f"the evaluation left no active alert: {result}"


def add_extras(app: Flask, demo: Demo, now: datetime = T0) -> str:
    """What the demo lacks for every page to show something: a custom alert rule, a webhook
    channel and a pending invitation; returns the invitation's token (its link's last part)."""
    from portal.alerts.rules import create_custom_rule
    from portal.models import NotificationChannel
    from portal.tenancy.accounts import find_user_by_email
    from portal.tenancy.invites import create_invite

    with app.app_context():
        create_custom_rule(
            demo.tenant_id,
            {
                "name": "OpenAI calls",
                "metric": "calls",
                "comparator": "gte",
                "warning_threshold": 500,
                "critical_threshold": 1000,
                "window_minutes": 60,
                "service": "openai",
            },
        )
        db.session.add(
            NotificationChannel(
                tenant_id=demo.tenant_id,
                kind="webhook",
                name="ops hook",
                target="https://hooks.example.com/tollgate",
                signing_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                min_severity="warning",
            )
        )
        _, token, _ = create_invite(find_user_by_email(demo.email), "new.hire@acme.example", "member", now)
        db.session.commit()
        db.session.remove()
    return token
