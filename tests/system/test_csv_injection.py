"""CSV injection: every CSV Tollgate writes is one spreadsheets read as text and numbers, never as
formulas — whatever a user put in a model, an end user, an endpoint, a key's name or an audit
event, and whether the spreadsheet splits on ``,`` or on ``;`` (as in many locales)."""

from __future__ import annotations

import csv
import io
import itertools
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

import pytest
from sqlalchemy import insert, select, update

from portal.billing.statements import close_periods
from portal.extensions import db as _db
from portal.kernel.csv_export import cell, csv_document, csv_line, neutralise
from portal.metering.store import store_usage
from portal.models import AuditEvent, Statement, Subscription, UsageRollup
from tests.api_helpers import add_key, drain
from tests.factories import new_tenant
from tests.portal_helpers import sign_in

PAYLOADS = [
    '=HYPERLINK("http://x","y")',
    "@SUM(1+1)",
    "+1+1",
    "-1+1",
    "=cmd|' /C calc'!A0",
    "x;=cmd",
    "x,=cmd",
    "a\n=b",
    "\t=1",
    "\r=1",
    " =1",
    '"=1"',
]
# Where separators may sit in a cell beyond the list above.
MORE_PAYLOADS = ["a\r\n=b", "x\t=cmd", 'x;"=cmd"', "x; -2+3", "-1.50"]

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
_ids = itertools.count()


# -- what a spreadsheet would run ------------------------------------------------------------------


def is_number(text: str) -> bool:
    try:
        return Decimal(text).is_finite()
    except InvalidOperation:
        return False


def runs_as_formula(text: str) -> bool:
    """Whether a spreadsheet would take the cell for a formula (a number such as -1.50 is a number)."""
    if text[:1] in ("\t", "\r"):
        return True
    start = re.sub(r'^[\s"]+', "", text)
    return start[:1] in ("=", "+", "-", "@") and not is_number(text.strip())


def formulas_in(document: str) -> list[str]:
    """The cells of ``document`` a spreadsheet could run: read as RFC 4180 CSV split on ``,`` and
    on ``;``, and split bluntly on every separator and line break whatever the quotes."""
    found = []
    for delimiter in (",", ";"):
        for row in csv.reader(io.StringIO(document, newline=""), delimiter=delimiter):
            found += [value for value in row if runs_as_formula(value)]
    found += [part for part in re.split(r"[,;\t\r\n]", document) if runs_as_formula(part)]
    return found


def read(document: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(document, newline="")))


# -- the writer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS + MORE_PAYLOADS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_payload_reads_back_as_text_whichever_separator_the_spreadsheet_uses(payload, where):
    row = {"first": [payload, "b", "c"], "middle": ["a", payload, "c"], "last": ["a", "b", payload]}[where]
    document = csv_document([row, row])
    assert formulas_in(document) == []
    # Read as CSV, the cell holds the text as written, neutralised, in its place.
    assert read(document) == [[neutralise(value) for value in row]] * 2
    for delimiter in (",", ";"):
        for cells in csv.reader(io.StringIO(document, newline=""), delimiter=delimiter):
            assert all(not value.lstrip(" ").startswith(("=", "+", "-", "@", "\t", "\r")) for value in cells)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ('=HYPERLINK("http://x","y")', '"\'=HYPERLINK(""http://x"",""y"")"'),
        ("@SUM(1+1)", "'@SUM(1+1)"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("x;=cmd", '"x;\'=cmd"'),
        ("x,=cmd", '"x,\'=cmd"'),
        ("a\n=b", '"a\n\'=b"'),
        ("a\r\n=b", '"a\r\n\'=b"'),
        ("\t=1", "\"'\t'=1\""),
        (" =1", "' =1"),
        ('"=1"', '"\'""=1"""'),
        ("x;y", '"x;y"'),
        ("plain text", "plain text"),
        ("gpt-4o", "gpt-4o"),
        ("", ""),
    ],
)
def test_text_is_neutralised_and_quoted(text, written):
    assert cell(text) == written


def test_numbers_tollgate_writes_stay_numbers_but_the_same_figures_as_text_do_not():
    assert csv_line([Decimal("-1.50"), -3, 0.25, Decimal("0.000001"), Decimal("1E+2"), None, True]) == (
        "-1.50,-3,0.25,0.000001,100,,true\r\n"
    )
    # A string comes from somewhere else: "-1.50" or "-1+2" from a user is text.
    assert csv_line(["-1.50", "-1+2", "12"]) == "'-1.50,'-1+2,12\r\n"
    assert cell(float("-inf")) == "'-inf" and cell(Decimal("-Infinity")) == "'-Infinity"
    with pytest.raises(TypeError):
        cell(datetime(2026, 11, 1))  # type: ignore[arg-type]


def test_neutralising_twice_changes_nothing_more_and_records_end_with_crlf():
    for payload in PAYLOADS + MORE_PAYLOADS:
        assert neutralise(neutralise(payload)) == neutralise(payload)
    assert csv_document([["a", 1], ["b", 2]]) == "a,1\r\nb,2\r\n"


# -- every export, end to end ----------------------------------------------------------------------


def outside(tenant_id: int, at: datetime, model: str, cost: str | None) -> dict:
    return {
        "tenant_id": tenant_id,
        "source": "external",
        "service": "openai",
        "model": model,
        "endpoint": "/v1/chat/completions",
        "end_user": model,
        "status_code": 200,
        "tokens_in": 1000,
        "cost": None if cost is None else Decimal(cost),
        "occurred_at": at,
        "idempotency_key": f"csv-{next(_ids)}",
    }


def close(app, now: datetime) -> None:
    with app.app_context():
        close_periods(now)
        _db.session.remove()


@pytest.fixture
def payloaded(app, client, clock):
    """A tenant on the starter plan since November, the payloads everywhere user text reaches an
    export: reported through the API as models, end users and endpoints by keys named after them;
    stored with costs; in November's statement (closed) and December's, whose adjustment for
    November is negative (a correction lowered November's cost); and in the audit trail."""
    tenant = new_tenant(app, "Payload Co", key=True)
    tid = tenant.tenant_id
    with app.app_context():
        _db.session.execute(
            update(Subscription)
            .where(Subscription.tenant_id == tid)
            .values(started_at=NOV, current_period_start=NOV, current_period_end=DEC)
        )
        _db.session.commit()
        _db.session.remove()
    for n, payload in enumerate(PAYLOADS):
        _, secret = add_key(app, tid, payload if payload.strip() else f"key {n}")
        event = {"service": "groq", "model": payload, "user_id": payload, "endpoint": payload, "tokens_used": 10}
        response = client.post("/api/v1/usage/events", json=event, headers={"X-API-Key": secret})
        assert response.status_code == 202, (payload, response.get_json())
    drain(app)
    with app.app_context():
        store_usage([outside(tid, NOV + timedelta(days=4, hours=n), p, f"{n + 2}.25") for n, p in enumerate(PAYLOADS)])
        _db.session.commit()
        _db.session.remove()
    close(app, DEC + timedelta(minutes=5))
    with app.app_context():
        _db.session.execute(
            update(UsageRollup)
            .where(
                UsageRollup.tenant_id == tid,
                UsageRollup.granularity == "day",
                UsageRollup.service == "openai",
                UsageRollup.model == "-1+1",
            )
            .values(cost=UsageRollup.cost - Decimal("1.50"))
        )
        _db.session.execute(
            insert(AuditEvent),
            [
                {
                    "tenant_id": tid,
                    "action": payload[:32],
                    "ip_address": payload[:45],
                    "details": {"name": payload, "note": f"x,{payload}"},
                    "created_at": NOV + timedelta(hours=n),
                }
                for n, payload in enumerate(PAYLOADS)
            ],
        )
        _db.session.commit()
        _db.session.remove()
    close(app, JAN + timedelta(minutes=5))
    with app.app_context():
        tenant.statements = list(
            _db.session.scalars(select(Statement.id).where(Statement.tenant_id == tid).order_by(Statement.period_start))
        )
        _db.session.remove()
    assert len(tenant.statements) == 2
    sign_in(client, "owner@payload-co.example")
    return tenant


def download(client, url: str, headers: dict | None = None) -> str:
    response = client.get(url, headers=headers or {})
    assert response.status_code == 200, (url, response.get_data(as_text=True)[:300])
    assert response.mimetype == "text/csv", url
    assert "attachment" in response.headers["Content-Disposition"]
    return response.get_data(as_text=True)


def column(document: str, name: str) -> list[str]:
    rows = read(document)
    index = rows[0].index(name)
    return [row[index] for row in rows[1:]]


def test_no_export_holds_a_formula_and_money_stays_numeric(client, payloaded):
    api = payloaded.headers
    exports = {}
    exports["api statements"] = download(client, "/api/v1/billing/statements?format=csv", api)
    for statement_id in payloaded.statements:
        exports[f"api statement {statement_id}"] = download(
            client, f"/api/v1/billing/statements/{statement_id}?format=csv", api
        )
        exports[f"portal statement {statement_id}"] = download(client, f"/billing/statements/{statement_id}.csv")
    for group_by in ("service", "model", "endpoint", "key", "end_user", "day"):
        exports[f"costs by {group_by}"] = download(
            client, f"/api/v1/costs/report?group_by={group_by}&days=30&format=csv", api
        )
    exports["usage explorer"] = download(client, "/usage/export.csv?start=2026-11-01&end=2026-11-18&interval=daily")
    exports["usage explorer, one model"] = download(
        client, "/usage/export.csv?start=2026-11-01&end=2026-11-18&interval=daily&model=%3DHYPERLINK"
    )
    exports["audit"] = download(client, "/team/audit.csv")

    for name, document in exports.items():
        assert formulas_in(document) == [], name
        assert document.endswith("\r\n"), name

    # The payloads are there, as text.
    november, december = payloaded.statements
    models = column(exports[f"portal statement {november}"], "model")
    assert {neutralise(p) for p in PAYLOADS} <= set(models)
    assert exports[f"portal statement {november}"] == exports[f"api statement {november}"]
    assert {neutralise(p) for p in PAYLOADS} <= set(column(exports["costs by model"], "model"))
    assert {neutralise(p) for p in PAYLOADS} <= set(column(exports["costs by end_user"], "end_user"))
    assert {neutralise(p) for p in PAYLOADS} <= set(column(exports["costs by endpoint"], "endpoint"))
    assert {neutralise(p.strip()) for p in PAYLOADS if p.strip()} <= set(column(exports["costs by key"], "key"))
    audit = read(exports["audit"])
    assert {neutralise(p[:32]) for p in PAYLOADS} <= {row[2] for row in audit[1:]}

    # Money is a number a spreadsheet sums: the amounts add up to the total, a negative
    # adjustment included.
    for statement_id in payloaded.statements:
        rows = read(exports[f"portal statement {statement_id}"])
        amounts = [Decimal(row[-1]) for row in rows[1:-1] if row[-1]]
        assert rows[-1][2] == "total" and sum(amounts) == Decimal(rows[-1][-1])
    december_rows = read(exports[f"portal statement {december}"])
    adjustment = next(row for row in december_rows if row[2] == "adjustment")
    assert adjustment[5] == "'-1+1" and adjustment[6] == "2026-11" and adjustment[-1] == "-1.50"
    listing = read(exports["api statements"])
    header = listing[0]
    adjustments = {row[header.index("period")]: row[header.index("adjustments")] for row in listing[1:]}
    assert adjustments == {"2026-11": "0.00", "2026-12": "-1.50"}
    costs = read(exports["costs by model"])
    assert all(is_number(row[-1]) for row in costs[1:])
    assert sum(Decimal(row[-1]) for row in costs[1:-1]) == Decimal(costs[-1][-1])
    for row in read(exports["usage explorer"])[1:]:
        assert all(is_number(value) for value in row[1:])
