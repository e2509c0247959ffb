"""The usage explorer: a date range by interval, filtered, compared with the period before, with
the peak hours; its CSV and JSON exports hold exactly the figures the page shows."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from portal.extensions import db
from portal.metering.store import store_usage
from tests.api_helpers import add_key
from tests.portal_helpers import count_statements, page_text, sign_in

NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)  # the clock fixture's T0, a Wednesday


def call(tenant_id: int, at: datetime, **fields) -> dict:
    record = {
        "tenant_id": tenant_id,
        "service": "tollgate",
        "endpoint": "/api/v1/ping",
        "category": "system",
        "status_code": 200,
        "duration_ms": 10,
        "occurred_at": at,
        "idempotency_key": uuid.uuid4().hex,
    }
    record.update(fields)
    return record


def llm_call(tenant_id: int, at: datetime, **fields) -> dict:
    return call(
        tenant_id,
        at,
        **{
            "source": "external",
            "service": "openai",
            "endpoint": "/v1/chat/completions",
            "category": "llm",
            "model": "gpt-4o-mini",
            **fields,
        },
    )


def store(app, records: list[dict]) -> None:
    with app.app_context():
        store_usage(records)
        db.session.commit()
        db.session.remove()


def card(html: str, card_id: str) -> str:
    match = re.search(rf'<section class="card figure-card" id="{card_id}">(.*?)</section>', html, re.S)
    assert match, f"no card {card_id}"
    return page_text(match.group(1))


def series_rows(html: str) -> list[str]:
    body = re.search(r'<table id="series-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [page_text(row) for row in re.findall(r"<tr.*?</tr>", body, re.S)]


def field_error(html: str, field_id: str) -> str:
    match = re.search(rf'<p class="field-error" id="{field_id}-error">(.*?)</p>', html, re.S)
    assert match, f"no message beside {field_id}"
    assert re.search(rf'id="{field_id}"[^>]*aria-invalid="true"|aria-invalid="true"[^>]*id="{field_id}"', html)
    return page_text(match.group(1))


@pytest.fixture
def owner(client, portal_tenant, clock):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


@pytest.fixture
def month(app, owner, other_tenant):
    """Calls in the default range (Oct 20 - Nov 18) and in the 30 days before (Sep 20 - Oct 19)."""
    tid = owner.tenant_id
    records = [call(tid, datetime(2026, 11, 16, 10, 5, tzinfo=UTC), duration_ms=100) for _ in range(6)]
    records += [
        call(tid, datetime(2026, 11, 17, 15, 0, tzinfo=UTC), status_code=500, duration_ms=300) for _ in range(2)
    ]
    records += [call(tid, datetime(2026, 11, 17, 15, 1, tzinfo=UTC), status_code=429, duration_ms=1) for _ in range(2)]
    records += [
        llm_call(
            tid,
            datetime(2026, 11, 18, 9, 0, tzinfo=UTC),
            tokens_in=1000,
            tokens_out=500,
            cost=Decimal("0.0135"),
            duration_ms=800,
        )
        for _ in range(2)
    ]
    # The previous period.
    records += [call(tid, datetime(2026, 10, 1, 8, 0, tzinfo=UTC), duration_ms=50) for _ in range(8)]
    records.append(
        llm_call(tid, datetime(2026, 10, 19, 23, 59, tzinfo=UTC), tokens_in=2000, cost=Decimal("0.018"), duration_ms=50)
    )
    # Neither: before the previous period, and another tenant's calls.
    records.append(call(tid, datetime(2026, 9, 19, 23, 59, tzinfo=UTC)))
    records += [
        call(other_tenant.tenant_id, datetime(2026, 11, 16, 10, 0, tzinfo=UTC), service="rival-service")
        for _ in range(40)
    ]
    store(app, records)
    return owner


# -- the page --------------------------------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get("/usage")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_default_range_is_the_last_30_days_daily(client, owner):
    response = client.get("/usage")
    assert response.status_code == 200
    html = response.text
    text = page_text(html)
    assert "Oct 20, 2026 – Nov 18, 2026 · daily · compared with Sep 20, 2026 – Oct 19, 2026" in text
    assert 'id="explorer-start" name="start" type="date" value="2026-10-20"' in html
    assert 'id="explorer-end" name="end" type="date" value="2026-11-18"' in html
    rows = series_rows(html)
    assert len(rows) == 30
    assert rows[0].startswith("Tue Oct 20, 2026 0 ")
    assert rows[-1].startswith("Wed Nov 18, 2026 0 ")
    assert 'aria-current="page">Usage</a>' in html


def test_members_read_the_explorer(client, portal_tenant, clock):
    sign_in(client, portal_tenant.member)
    assert client.get("/usage").status_code == 200


def test_every_figure_with_its_change_against_the_previous_period(client, month):
    html = client.get("/usage").text
    assert card(html, "figure-calls") == "Calls 12 ▲ +33.3% previous: 9"
    assert card(html, "figure-errors") == "Errors 4 — no earlier data previous: 0"
    assert card(html, "figure-error-rate") == "Error rate 33.3% — no earlier data previous: 0.0%"
    assert card(html, "figure-rate-limited") == "Rate-limited 2 — no earlier data previous: 0"
    assert card(html, "figure-tokens") == "Tokens 3,000 ▲ +50.0% previous: 2,000"
    # 2 x $0.0135 against $0.018.
    assert card(html, "figure-cost") == "Cost $0.03 ▲ +50.0% previous: $0.02"
    # (6 x 100 + 2 x 300 + 2 x 1 + 2 x 800) / 12 = 233.5 ms against 50 ms.
    assert card(html, "figure-latency") == "Avg latency 233.5 ms ▲ +367.0% previous: 50.0 ms"
    total = page_text(re.search(r'<tr id="series-total">(.*?)</tr>', html, re.S).group(1))
    assert total == "Total 12 4 33.3% 2 3,000 $0.03 233.5 ms"
    rows = series_rows(html)
    assert "Mon Nov 16, 2026 6 0 0.0% 0 0 $0.00 100.0 ms" in rows
    assert "Tue Nov 17, 2026 4 4 100.0% 2 0 $0.00 150.5 ms" in rows
    assert "Wed Nov 18, 2026 2 0 0.0% 0 3,000 $0.03 800.0 ms" in rows


def test_a_fall_shows_a_down_arrow(client, month):
    # Nov 17-18 against Nov 15-16: 6 calls each; Nov 18 against Nov 17: 2 against 4.
    html = client.get("/usage?start=2026-11-17&end=2026-11-18").text
    assert card(html, "figure-calls") == "Calls 6 ±0.0% previous: 6"
    html = client.get("/usage?start=2026-11-18&end=2026-11-18").text
    assert card(html, "figure-calls") == "Calls 2 ▼ -50.0% previous: 4"


def test_another_tenants_usage_is_not_shown(client, month):
    html = client.get("/usage").text
    assert "rival-service" not in html
    assert card(html, "figure-calls").startswith("Calls 12 ")


@pytest.fixture
def dimensions(app, owner):
    tid = owner.tenant_id
    key_a, _ = add_key(app, tid, "Backend")
    key_b, _ = add_key(app, tid, "Bots")
    at = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    records = [
        call(tid, at, category="analytics", endpoint="/api/v1/usage/stats", api_key_id=key_a, end_user="web-app")
        for _ in range(3)
    ]
    records += [llm_call(tid, at, api_key_id=key_b, end_user="support-bot", cost=Decimal("0.5")) for _ in range(2)]
    records.append(call(tid, at))
    store(app, records)
    return {"a": key_a, "b": key_b}


@pytest.mark.parametrize(
    ("query", "calls"),
    [
        ("", 6),
        ("category=analytics", 3),
        ("service=openai", 2),
        ("key=A", 3),
        ("key=B", 2),
        ("endpoint=/api/v1/ping", 1),
        ("end_user=support-bot", 2),
        ("service=tollgate&category=system", 1),
        ("service=youtube", 0),
    ],
)
def test_filters_narrow_every_figure(client, dimensions, query, calls):
    query = query.replace("key=A", f"key={dimensions['a']}").replace("key=B", f"key={dimensions['b']}")
    response = client.get(f"/usage?{query}")
    assert response.status_code == 200
    assert card(response.text, "figure-calls").startswith(f"Calls {calls} ")
    total = page_text(re.search(r'<tr id="series-total">(.*?)</tr>', response.text, re.S).group(1))
    assert total.startswith(f"Total {calls} ")


def test_filters_offer_what_the_tenant_has(client, dimensions, app, other_tenant):
    store(app, [call(other_tenant.tenant_id, datetime(2026, 11, 10, tzinfo=UTC), service="rival", end_user="spy")])
    html = client.get(f"/usage?service=openai&key={dimensions['b']}").text
    assert '<option value="">All services</option>' in html
    assert '<option selected value="openai">openai</option>' in html
    assert '<option value="tollgate">tollgate</option>' in html
    for value in (
        "analytics",
        "llm",
        "system",
        "/api/v1/usage/stats",
        "/v1/chat/completions",
        "web-app",
        "support-bot",
    ):
        assert f'<option value="{value}">{value}</option>' in html, value
    assert f'<option value="{dimensions["a"]}">Backend</option>' in html
    assert f'<option selected value="{dimensions["b"]}">Bots</option>' in html
    assert "rival" not in html and "spy" not in html
    # Each filter has a label.
    for field in ("start", "end", "interval", "category", "service", "key", "endpoint", "end-user"):
        assert f'<label for="explorer-{field}">' in html


def test_the_filters_live_in_the_url_of_one_get_form(client, owner):
    html = client.get("/usage").text
    assert html.count("<form") == 2  # the filters and the sign-out button
    assert '<form method="get" action="/usage"' in html


def test_hourly_interval_reads_hours(client, app, owner):
    tid = owner.tenant_id
    store(
        app,
        [call(tid, datetime(2026, 11, 18, 9, 15, tzinfo=UTC)) for _ in range(3)]
        + [call(tid, datetime(2026, 11, 18, 9, 45, tzinfo=UTC)) for _ in range(2)]
        + [call(tid, datetime(2026, 11, 17, 23, 59, tzinfo=UTC))],
    )
    html = client.get("/usage?start=2026-11-17&end=2026-11-18&interval=hourly").text
    rows = series_rows(html)
    assert len(rows) == 48
    assert rows[23].startswith("Tue Nov 17 23:00–24:00 1 ")
    assert rows[24 + 9].startswith("Wed Nov 18 09:00–10:00 5 ")
    assert "Calls per hour" in html


def test_weekly_and_monthly_intervals(client, app, owner):
    tid = owner.tenant_id
    store(
        app,
        [call(tid, datetime(2026, 9, 20, tzinfo=UTC))]
        + [call(tid, datetime(2026, 11, 1, 8, tzinfo=UTC)) for _ in range(2)]  # a Sunday
        + [call(tid, datetime(2026, 11, 3, tzinfo=UTC)) for _ in range(3)]
        + [call(tid, datetime(2026, 11, 17, tzinfo=UTC)) for _ in range(4)],
    )
    weekly = client.get("/usage/export.json?start=2026-11-01&end=2026-11-18&interval=weekly").get_json()
    # Weeks start on Mondays; the first holds only Nov 1.
    assert [(p["period"], p["calls"]) for p in weekly["series"]] == [
        ("2026-10-26", 2),
        ("2026-11-02", 3),
        ("2026-11-09", 0),
        ("2026-11-16", 4),
    ]
    assert series_rows(client.get("/usage?start=2026-11-01&end=2026-11-18&interval=weekly").text)[0].startswith(
        "Week of Oct 26, 2026 2 "
    )
    monthly = client.get("/usage/export.json?start=2026-09-15&end=2026-11-18&interval=monthly").get_json()
    assert [(p["period"], p["calls"]) for p in monthly["series"]] == [
        ("2026-09-01", 1),
        ("2026-10-01", 0),
        ("2026-11-01", 9),
    ]
    rows = series_rows(client.get("/usage?start=2026-09-15&end=2026-11-18&interval=monthly").text)
    assert [row.split(" 2026 ")[0] for row in rows] == ["September", "October", "November"]


def test_a_chart_of_calls_per_interval_with_its_table(client, month):
    html = client.get("/usage").text
    assert 'role="img" aria-labelledby="explorer-calls-title explorer-calls-desc"' in html
    assert html.count('class="bar"') == 30
    assert "<title>Mon Nov 16: 6 calls, 0 errors</title>" in html


def test_peak_hours_grid_of_weekday_by_hour(client, app, owner):
    tid = owner.tenant_id
    store(
        app,
        [call(tid, datetime(2026, 11, 18, 9, 15, tzinfo=UTC)) for _ in range(5)]
        + [call(tid, datetime(2026, 11, 16, 14, 0, tzinfo=UTC)) for _ in range(2)]
        + [call(tid, datetime(2026, 11, 9, 14, 59, tzinfo=UTC))],
    )
    html = client.get("/usage").text
    text = page_text(html)
    assert "Busiest: Wed 09:00–10:00, 5 calls" in text
    assert "kept 90 days on your plan" in text
    assert 'role="img" aria-labelledby="peak-hours-title peak-hours-desc"' in html
    assert "<title>Wed 09:00–10:00 UTC: 5 calls</title>" in html
    assert "<title>Mon 14:00–15:00 UTC: 3 calls</title>" in html
    assert "<title>Sun 03:00–04:00 UTC: 0 calls</title>" in html
    assert html.count('class="heat heat-') == 7 * 24 + 6  # the cells and the legend's shades
    # The cells write their numbers too, and the shade's meaning is written out.
    assert "80–100% of the busiest hour" in text
    table = re.search(r'<table id="peak-hours-table".*?</table>', html, re.S).group(0)
    rows = {
        page_text(r).split(" ")[0]: page_text(r).split(" ")[1:]
        for r in re.findall(r"<tr><th scope=\"row\">.*?</tr>", table, re.S)
    }
    assert rows["Wed"][9] == "5" and rows["Wed"][24] == "5"
    assert rows["Mon"][14] == "3"
    assert set(rows["Sun"]) == {"0"}
    # Hourly figures for the hourly interval too.
    hourly = client.get("/usage?start=2026-11-16&end=2026-11-18&interval=hourly").text
    assert "<title>Mon 14:00–15:00 UTC: 2 calls</title>" in hourly


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("start=2026-13-01", "explorer-start", "Enter a date as YYYY-MM-DD, e.g. 2026-11-18."),
        ("end=yesterday", "explorer-end", "Enter a date as YYYY-MM-DD, e.g. 2026-11-18."),
        ("start=2026-11-10&end=2026-11-01", "explorer-end", "The end date is before the start date."),
        ("start=2026-11-19", "explorer-end", "The end date is before the start date."),
        ("start=2025-01-01&end=2026-11-18", "explorer-end", "Choose at most 366 days; this range has 687."),
        (
            "start=2026-10-01&end=2026-11-18&interval=hourly",
            "explorer-interval",
            "Hourly figures cover at most 31 days; this range has 49. Choose a shorter range or a daily interval.",
        ),
        ("interval=yearly", "explorer-interval", "Choose hourly, daily, weekly or monthly."),
        ("key=backend", "explorer-key", "Choose a key from the list."),
    ],
)
def test_bad_filters_are_a_400_with_a_message_beside_the_field(client, owner, query, field, message):
    response = client.get(f"/usage?{query}")
    assert response.status_code == 400
    assert field_error(response.text, field) == message
    assert "Correct the filters above to see the figures." in response.text
    assert 'id="figure-calls"' not in response.text
    for export in ("csv", "json"):
        assert client.get(f"/usage/export.{export}?{query}").status_code == 400


def test_the_longest_ranges_are_accepted(client, owner):
    assert client.get("/usage?start=2025-11-18&end=2026-11-18").status_code == 200  # 366 days
    assert client.get("/usage?start=2026-10-19&end=2026-11-18&interval=hourly").status_code == 200  # 31 days
    assert client.get("/usage?start=&end=").status_code == 200  # empty means the default


def test_bad_export_says_what_was_wrong(client, owner):
    response = client.get("/usage/export.json?start=2026-11-10&end=2026-11-01")
    assert response.status_code == 400
    assert response.get_json() == {"detail": "To (UTC): The end date is before the start date."}


# -- exports ---------------------------------------------------------------------------------------


def test_exports_hold_exactly_the_page_and_its_totals(client, month):
    query = "start=2026-10-20&end=2026-11-18&interval=daily&service=tollgate"
    html = client.get(f"/usage?{query}").text
    shown_query = query.replace("&", "&amp;")
    assert f'href="/usage/export.csv?{shown_query}"' in html
    assert f'href="/usage/export.json?{shown_query}"' in html
    assert card(html, "figure-calls").startswith("Calls 10 ")
    shown_total = page_text(re.search(r'<tr id="series-total">(.*?)</tr>', html, re.S).group(1))
    page_calls = [int(row.split(", 2026 ")[1].split(" ")[0].replace(",", "")) for row in series_rows(html)]

    response = client.get(f"/usage/export.csv?{query}")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="usage-2026-10-20-to-2026-11-18-daily.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    series, total, previous = rows[:-2], rows[-2], rows[-1]
    assert [int(r["calls"]) for r in series] == page_calls
    assert series[0]["period"] == "2026-10-20" and series[-1]["period"] == "2026-11-18"
    assert total["period"] == "total"
    assert sum(int(r["calls"]) for r in series) == int(total["calls"])
    csv_shown = (
        f"Total {int(total['calls']):,} {int(total['errors']):,} {float(total['error_rate']) * 100:.1f}% "
        f"{int(total['rate_limited']):,} {int(total['tokens']):,} ${Decimal(total['cost']).quantize(Decimal('0.01'))} "
        f"{float(total['avg_latency_ms']):.1f} ms"
    )
    assert csv_shown == shown_total == "Total 10 4 40.0% 2 0 $0.00 120.2 ms"
    assert previous["period"] == "previous 2026-09-20..2026-10-19"
    assert previous["calls"] == "8"

    response = client.get(f"/usage/export.json?{query}")
    assert response.headers["Content-Disposition"] == 'attachment; filename="usage-2026-10-20-to-2026-11-18-daily.json"'
    report = response.get_json()
    assert report["filters"] == {
        "category": None,
        "service": "tollgate",
        "key": None,
        "endpoint": None,
        "end_user": None,
    }
    assert [p["calls"] for p in report["series"]] == page_calls
    assert report["totals"] == {
        "calls": 10,
        "errors": 4,
        "error_rate": 0.4,
        "rate_limited": 2,
        "tokens": 0,
        "cost": "0.000000",
        "avg_latency_ms": 120.2,
    }
    assert report["previous"]["calls"] == 8
    assert report["change"]["calls"] == 0.25 and report["change"]["errors"] is None
    assert report["peak_hours"]["calls"][0][10] == 6  # Monday 10:00


def test_export_costs_are_exact(client, month):
    report = client.get("/usage/export.json").get_json()
    assert report["totals"]["cost"] == "0.027000"
    assert report["previous"]["cost"] == "0.018000"
    assert report["totals"]["tokens"] == 3000
    assert [p for p in report["series"] if p["period"] == "2026-11-18"][0]["cost"] == "0.027000"


# -- a fixed number of statements ------------------------------------------------------------------

PAGES = (
    "/usage",
    "/usage?start=2026-11-01&end=2026-11-18&interval=hourly",
    "/usage?interval=weekly&service=tollgate&end_user=user-1",
    "/usage?start=2026-01-01&end=2026-11-18&interval=monthly",
    "/usage/export.csv",
    "/usage/export.json?interval=hourly&start=2026-11-10",
)


def statements_per_page(app, client) -> list[int]:
    counts = []
    for url in PAGES:
        client.get(url)  # warm: the session's user and tenant are loaded the same way each time
        with count_statements(app) as statements:
            assert client.get(url).status_code == 200, url
        counts.append(len(statements))
    return counts


def test_statement_count_does_not_grow_with_keys_end_users_or_days(app, client, owner):
    tid = owner.tenant_id
    key, _ = add_key(app, tid, "only")
    store(app, [call(tid, NOW - timedelta(hours=1), api_key_id=key, end_user="user-1")])
    few = statements_per_page(app, client)

    keys = [add_key(app, tid, f"key {n}")[0] for n in range(6)]
    records = [
        call(
            tid,
            NOW - timedelta(days=day, hours=hour),
            api_key_id=keys[(day + hour) % 6],
            end_user=f"user-{hour}",
            endpoint=f"/api/v1/e{day % 4}",
        )
        for day in range(60)
        for hour in range(0, 24, 3)
    ]
    records += [llm_call(tid, NOW - timedelta(days=d), cost=Decimal("0.01"), end_user=f"user-{d}") for d in range(40)]
    store(app, records)
    many = statements_per_page(app, client)
    assert many == few
    assert max(many) <= 10, many
