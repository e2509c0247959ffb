"""Edge input in query strings — numbers past 64 bits, the calendar's first and last days, NaN,
NUL, very long text — is a 400 with a message (or a 404 for an id), never a 500: in every page
of the portal and every GET operation of the API."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from flask import Request
from sqlalchemy import select, update
from werkzeug.datastructures import ImmutableMultiDict

from portal.billing.statements import close_periods
from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import Alert, AlertRule, ApiKey, Budget, Statement, Subscription, UsageRecord, User
from portal.tenancy.invites import create_invite
from portal.tenancy.self_service import request_email_change, request_password_reset
from tests.api_helpers import add_key, drain, set_limits
from tests.portal_helpers import PASSWORD, page_text, sign_in

HUGE = "9" * 40
# One value of each kind a careless parser trips over, by a label the failures name.
HOSTILE = {
    "huge": HUGE,
    "huge-negative": "-" + HUGE,
    "past-64-bits": str(2**64),
    "minus-one": "-1",
    "zero": "0",
    "empty": "",
    "letter": "x",
    "first-day": "0001-01-01",
    "last-day": "9999-12-31",
    "last-month": "9999-12",
    "first-month": "0001-01",
    "nan": "NaN",
    "inf": "inf",
    "1e400": "1e400",
    "nul": "\x00",
    "percent-00": "%00",
    "long": "x" * 5000,
    "long-digits": "1" * 5000,
    "unicode-digit": "²",
    # Shaped like the audit trail's and the logs' page links, pointing past the calendar or the column.
    "audit-cursor": "999999999999999999-1",
    "logs-cursor": base64.urlsafe_b64encode(f"0.{HUGE}".encode()).decode().rstrip("="),
}
# Names a filter commonly has: each page gets them all at once too, whatever it reads.
COMMON_NAMES = (
    "key", "after", "before", "start", "end", "since", "until", "month", "interval", "page", "status",
    "limit", "offset", "id", "q", "user", "service", "model", "end_user", "sort", "days", "per_page",
    "group", "action", "state", "scope", "source", "endpoint", "category", "channel", "severity", "type",
    "startDate", "endDate", "format", "next",
)  # fmt: skip
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+")


class _ReadArgs(ImmutableMultiDict):
    """Query arguments that note each name a view looks up."""

    read: set[str] = set()

    def __contains__(self, key: object) -> bool:
        _ReadArgs.read.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key):
        _ReadArgs.read.add(str(key))
        return super().__getitem__(key)

    def get(self, key, default=None, type=None):  # noqa: A002 - MultiDict's own signature
        _ReadArgs.read.add(str(key))
        return super().get(key, default, type)

    def getlist(self, key, type=None):  # noqa: A002
        _ReadArgs.read.add(str(key))
        return super().getlist(key, type)


class _RecordingRequest(Request):
    parameter_storage_class = _ReadArgs


def _call(tenant_id: int, **fields) -> dict:
    return {
        "tenant_id": tenant_id,
        "service": "tollgate",
        "endpoint": "/api/v1/ping",
        "category": "system",
        "status_code": 200,
        "duration_ms": 10,
        "occurred_at": NOW,
        "idempotency_key": uuid.uuid4().hex,
        **fields,
    }


def _closed_october(tenant_id: int) -> None:
    """The tenant's October is a closed statement."""
    october, november = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    db.session.execute(
        update(Subscription)
        .where(Subscription.tenant_id == tenant_id)
        .values(started_at=october, current_period_start=october, current_period_end=november)
    )
    db.session.commit()
    store_usage([_call(tenant_id, occurred_at=october + timedelta(days=3))])
    close_periods(november + timedelta(minutes=5))


@pytest.fixture
def owner(app, client, portal_tenant, clock):
    """Signed in as the owner of a tenant with a little of everything: calls, a key, a budget,
    a rule, a channel, an alert, a closed statement and a pending invitation. Gives the tenant, an
    admin key's header and the invitation's token."""
    tid = portal_tenant.tenant_id
    key_id, secret = add_key(app, tid, "ops", scope="admin")
    admin = {"X-API-Key": secret}
    assert client.post("/api/v1/budgets", json={"name": "Ops", "amount": "50.00"}, headers=admin).status_code == 201
    rule = {"name": "Calls", "metric": "calls", "warning_threshold": 5}
    assert client.post("/api/v1/alerts/rules", json=rule, headers=admin).status_code == 201
    channel = {"kind": "email", "target": "ops@example.com"}
    assert client.post("/api/v1/notification-channels", json=channel, headers=admin).status_code == 201
    drain(app)
    with app.app_context():
        _closed_october(tid)
        inviter = db.session.get(User, portal_tenant.user_ids["owner"])
        _, token, _ = create_invite(inviter, "new@initech.example", "member", NOW)
        _, reset_token = request_password_reset(portal_tenant.member, NOW, None)
        email_token = request_email_change(inviter, "owner-new@initech.example", PASSWORD, NOW, None).token
        store_usage(
            [_call(tid, api_key_id=key_id) for _ in range(3)]
            + [_call(tid, status_code=500)]
            + [_call(tid, source="external", service="openai", endpoint="/v1/chat", model="gpt-4o", tokens_in=10)]
        )
        db.session.add(
            Alert(
                tenant_id=tid,
                alert_type="error_rate",
                severity="warning",
                status="active",
                title="Error rate",
                message="Error rate is high.",
                dedup_key="edge",
                first_triggered_at=NOW,
                last_triggered_at=NOW,
            )
        )
        db.session.commit()
        db.session.remove()
    sign_in(client, portal_tenant.owner)
    return portal_tenant, admin, {"token": token, "reset_token": reset_token, "email_token": email_token}


@pytest.fixture
def signed_in(client, portal_tenant, clock):
    sign_in(client, portal_tenant.owner)


def _path_values(app, tenant, tokens: dict[str, str] | None = None) -> dict[str, str]:
    """An id of the tenant's own for each kind a path names."""
    tid = tenant.tenant_id
    with app.app_context():
        values = {
            "alert_id": db.session.scalar(select(Alert.id).where(Alert.tenant_id == tid)),
            "rule_id": db.session.scalar(
                select(AlertRule.id).where(AlertRule.tenant_id == tid, AlertRule.kind == "custom")
            ),
            "budget_id": db.session.scalar(select(Budget.id).where(Budget.tenant_id == tid)),
            "key_id": db.session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == tid)),
            "record_id": db.session.scalar(select(UsageRecord.id).where(UsageRecord.tenant_id == tid)),
            "statement_id": db.session.scalar(select(Statement.id).where(Statement.tenant_id == tid)),
            "user_id": tenant.user_ids["member"],
            **(tokens or {"token": "x", "reset_token": "x", "email_token": "x"}),
        }
        db.session.remove()
    assert None not in values.values(), values
    return {name: str(value) for name, value in values.items()}


def _portal_rules(app) -> list:
    """Every page of the portal: each GET rule outside the API and the static files."""
    rules = [
        rule
        for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and not rule.rule.startswith(("/api/", "/static"))
    ]
    return sorted(rules, key=lambda rule: rule.rule)


def _fill(rule, values: dict[str, str], other: str) -> str:
    return PARAM.sub(lambda m: values.get(m.group(2), other), rule.rule)


def _get(client, page: str, query: dict) -> tuple[int, str]:
    """The page's status and body; 599 for a download that broke off once it had begun."""
    try:
        response = client.get(page, query_string=query)
        body = response.get_data(as_text=True)  # an export streams: read it to its end
    except Exception as error:  # noqa: BLE001 - the test client hands on what a stream raised; reported
        return 599, repr(error)
    response.close()
    return response.status_code, body


def _failure(status: int, body: str) -> str | None:
    if status >= 500:
        return str(status)
    if TRACEBACK.search(body):
        return f"{status} with a traceback"
    return None


def test_every_portal_page_answers_edge_input_without_a_500(app, client, owner, monkeypatch):
    monkeypatch.setattr(app, "request_class", _RecordingRequest)
    tenant, _, tokens = owner
    ids = _path_values(app, tenant, tokens)
    pages = [_fill(rule, ids, "x") for rule in _portal_rules(app)]
    assert len(pages) >= 30
    swept: dict[str, set[str]] = {}
    failures = []

    def check(page: str, query: dict, where: str) -> None:
        status, body = _get(client, page, query)
        if (failure := _failure(status, body)) is not None:
            failures.append(f"{where}: {failure}")

    for page in pages:
        _ReadArgs.read = set()
        status, _ = _get(client, page, {})
        assert status < 400, f"{page}: {status}"
        names, done = set(_ReadArgs.read), set()
        # A value may lead the view to read more names: sweep until no new name shows up.
        while names - done:
            for name in sorted(names - done):
                for label, value in HOSTILE.items():
                    _ReadArgs.read = set()
                    check(page, {name: value}, f"{page}?{name}=<{label}>")
                    names |= _ReadArgs.read
                done.add(name)
        for label, value in HOSTILE.items():
            # Every name at once (a range whose both ends are extreme), the common ones too.
            check(page, dict.fromkeys(done | set(COMMON_NAMES), value), f"{page} with every argument <{label}>")
        swept[page] = done
    assert not failures, "\n".join(failures)
    # The sweep saw the filters (the recording works).
    assert {"start", "end", "interval", "key"} <= swept["/usage"]
    assert {"start", "end", "key", "before", "after"} <= swept["/logs"]
    assert {"month", "start", "end"} <= swept["/costs"]
    assert {"since", "until", "before", "after", "user"} <= swept["/team/audit"]
    assert {"before", "after"} <= swept["/keys"]


def test_a_page_whose_path_holds_a_huge_or_hostile_value_is_a_404(app, client, signed_in):
    rules = [rule for rule in _portal_rules(app) if rule.arguments]
    assert len(rules) >= 9
    failures = []
    for rule in rules:
        for label, value in HOSTILE.items():
            if not value:
                continue
            page = _fill(rule, {}, quote(value, safe=""))
            status, body = _get(client, page, dict.fromkeys(COMMON_NAMES, value))
            if status != 404 or TRACEBACK.search(body):
                failures.append(f"{rule.rule} with <{label}>: {status}")
    assert not failures, "\n".join(failures)


DAY_RANGE = "Choose a day from 2000-01-01 to 2999-12-31."
PAGE_LINK = "That page link is not valid"
LOGS_CURSOR = HOSTILE["logs-cursor"]


# Each known edge value, what it answers and the message shown (by the field named, on a page).
REFUSED = [
    (f"/logs?key={'9' * 30}", 400, "key", "Choose a key from the list."),
    (f"/usage?key={'9' * 30}", 400, "key", "Choose a key from the list."),
    (f"/usage/export.csv?key={'9' * 30}", 400, None, "API key: Choose a key from the list."),
    (f"/usage/export.json?key={'9' * 30}", 400, None, "API key: Choose a key from the list."),
    (f"/keys?after={HUGE}", 400, None, PAGE_LINK),
    (f"/keys?before={HUGE}", 400, None, PAGE_LINK),
    ("/usage?start=0001-01-01&end=0001-01-02", 400, "start", DAY_RANGE),
    ("/usage?start=9999-12-31&interval=monthly", 400, "start", DAY_RANGE),
    ("/usage?end=9999-12-31", 400, "end", DAY_RANGE),
    ("/usage/export.csv?end=0001-01-01", 400, None, f"To (UTC): {DAY_RANGE}"),
    ("/logs?end=0001-01-01", 400, "end", DAY_RANGE),
    ("/logs?start=9999-12-31", 400, "start", DAY_RANGE),
    (f"/logs?before={LOGS_CURSOR}", 400, None, PAGE_LINK),
    (f"/logs?after={LOGS_CURSOR}", 400, None, PAGE_LINK),
    ("/costs?month=9999-12", 400, "month", "Choose a month from 2000-01 to 2999-12."),
    ("/costs?month=0001-01", 400, "month", "Choose a month from 2000-01 to 2999-12."),
    ("/costs?month=&start=9999-12-31", 400, "start", DAY_RANGE),
    ("/team/audit?since=0001-01-01&until=9999-12-31", 400, "since", DAY_RANGE),
    ("/team/audit?until=9999-12-31", 400, "until", DAY_RANGE),
    ("/team/audit.csv?until=9999-12-31", 400, None, f"To (UTC): {DAY_RANGE}"),
    (f"/team/audit?before={HUGE}", 400, None, PAGE_LINK),
    ("/team/audit?before=999999999999999999-1", 400, None, PAGE_LINK),
    ("/team/audit?user=²", 404, None, "Not found"),
    (f"/alerts/history?page={'1' * 5000}", 400, None, "There is no such page: pages run from 1 to 20."),
    ("/alerts/history?page=²", 400, None, "There is no such page: pages run from 1 to 20."),
    ("/notifications?before=²", 400, None, "Bad request"),
]
# The first and last days (and months, and ids) a filter takes.
ACCEPTED = [
    "/usage?start=2999-12-01&end=2999-12-31&interval=monthly",
    "/usage?start=2000-01-01&end=2000-01-07&interval=hourly",
    "/logs?start=2000-01-01&end=2999-12-31",
    "/costs?month=2999-12",
    "/costs?month=2000-01",
    "/costs?month=&start=2999-12-01&end=2999-12-31",
    "/team/audit?since=2000-01-01&until=2999-12-31",
    f"/keys?after={2**31 - 1}",
]


def _invalid(body: str, field: str) -> bool:
    return bool(re.search(rf'name="{field}"[^>]*aria-invalid="true"|aria-invalid="true"[^>]*name="{field}"', body))


def test_an_edge_value_in_a_filter_is_refused_with_a_message(client, signed_in):
    failures = []
    for url, status, field, message in REFUSED:
        response = client.get(url)
        body = response.get_data(as_text=True)
        shown = page_text(body) if response.mimetype == "text/html" else body
        if response.status_code != status or message not in shown:
            failures.append(f"{url}: {response.status_code} {shown[:300]!r}")
        elif field is not None and not _invalid(body, field):
            failures.append(f"{url}: the field {field} is not marked as the one in error")
    assert not failures, "\n".join(failures)


def test_the_first_and_last_days_a_filter_takes_show_the_page(client, signed_in):
    statuses = {url: client.get(url).status_code for url in ACCEPTED}
    assert statuses == dict.fromkeys(ACCEPTED, 200)


def test_every_api_get_answers_edge_input_with_a_detail(app, client, owner):
    set_limits(app, "starter", per_minute=100_000, per_hour=100_000, per_day=100_000)
    tenant, admin, _ = owner
    document = client.get("/api/v1/openapi.json").get_json()
    gets = {path for path, methods in document["paths"].items() if "get" in methods}
    served = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and "GET" in (rule.methods or ()) and rule.endpoint.startswith("api.")
    }
    assert served <= gets, f"GET operations missing from the document: {served - gets}"
    ids = _path_values(app, tenant)
    swept, failures = 0, []

    def check(url: str, query: dict, where: str, expect_404: bool = False) -> None:
        nonlocal swept
        response = client.get(url, query_string=query, headers=admin)
        swept += 1
        status, body = response.status_code, response.get_data(as_text=True)
        detail = (response.get_json(silent=True) or {}).get("detail") if response.is_json else None
        if (failure := _failure(status, body)) is not None:
            failures.append(f"{where}: {failure}")
        elif expect_404 and status != 404:
            failures.append(f"{where}: {status}, not 404")
        elif status >= 400 and not isinstance(detail, str):
            failures.append(f"{where}: {status} without a detail")
        elif status == 422 and len(query) == 1 and next(iter(query)) not in detail:
            failures.append(f"{where}: 422 not naming it: {detail}")

    for path in sorted(gets):
        params = document["paths"][path]["get"].get("parameters", [])
        url = re.sub(r"\{(\w+)\}", lambda m: "groq" if m.group(1) == "service" else ids[m.group(1)], path)
        names = [p["name"] for p in params if p["in"] == "query"]
        for name in names:
            for label, value in HOSTILE.items():
                check(url, {name: value}, f"{path}?{name}=<{label}>")
        for label, value in HOSTILE.items():
            # Every parameter at once (both ends of a range extreme), the common names too.
            check(url, dict.fromkeys([*names, *COMMON_NAMES], value), f"{path} with every parameter <{label}>")
            if "{statement_id}" in path and value:
                huge = path.replace("{statement_id}", quote(value, safe=""))
                check(huge, {}, f"{path} with the id <{label}>", expect_404=True)
    assert not failures, "\n".join(failures)
    assert swept >= 30 * len(HOSTILE)


# -- a NUL typed into a form -------------------------------------------------------------------------


def test_a_nul_in_a_form_field_is_stored_as_a_replacement_character(app, client, portal_tenant, signed_in):
    from tests.portal_helpers import post_form
    from tests.tenancy.test_web_keys import create_key

    made = create_key(client, name="back\x00end", description="nul\x00here")
    assert made.status_code == 201, made.text[:500]
    fields = {
        "name": "LLM\x00spend",
        "amount": "10",
        "warning_percentages": "50",
        "scope": "end_user",
        "end_user": "u\x00",
    }
    assert post_form(client, "/costs/budgets", fields, page="/costs").status_code == 302
    with app.app_context():
        key = db.session.scalar(
            select(ApiKey).where(ApiKey.tenant_id == portal_tenant.tenant_id, ApiKey.name.like("back%"))
        )
        budget = db.session.scalar(select(Budget).where(Budget.tenant_id == portal_tenant.tenant_id))
        assert (key.name, key.description) == ("back\ufffdend", "nul\ufffdhere")
        assert (budget.name, budget.end_user) == ("LLM\ufffdspend", "u\ufffd")
        db.session.remove()


def test_a_failed_statement_still_gets_the_portals_error_page(test_settings):
    from sqlalchemy import text

    from portal import create_app

    app = create_app(dict(test_settings))

    @app.get("/boom")
    def boom():
        db.session.execute(text("SELECT * FROM no_such_table"))

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert "Something went wrong" in response.text or "<title>" in response.text
    assert "Internal Server Error" not in response.text  # the portal's page, not the bare one
    with app.app_context():
        db.engine.dispose()
