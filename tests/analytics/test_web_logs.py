"""The logs: the tenant's raw usage records, filtered, newest first, in keyset pages (never OFFSET),
and every field of one record."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
from sqlalchemy import event, select

from portal.analytics.logs import Cursor, LogFilters, log_page
from portal.extensions import db
from portal.metering.store import store_usage
from portal.models import UsageRecord
from tests.api_helpers import add_key
from tests.portal_helpers import count_statements, page_text, sign_in

NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)  # the clock fixture's T0


def call(tenant_id: int, at: datetime, **fields) -> dict:
    record = {
        "tenant_id": tenant_id,
        "service": "tollgate",
        "endpoint": "/api/v1/ping",
        "status_code": 200,
        "duration_ms": 12,
        "occurred_at": at,
        "idempotency_key": uuid.uuid4().hex,
    }
    record.update(fields)
    return record


def store(app, records: list[dict]) -> None:
    with app.app_context():
        for start in range(0, len(records), 5000):
            store_usage(records[start : start + 5000])
        db.session.commit()
        db.session.remove()


def ids_newest_first(app, tenant_id: int) -> list[int]:
    with app.app_context():
        ids = db.session.scalars(
            select(UsageRecord.id)
            .where(UsageRecord.tenant_id == tenant_id)
            .order_by(UsageRecord.occurred_at.desc(), UsageRecord.id.desc())
        ).all()
        db.session.remove()
    return list(ids)


def shown_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-record="(\d+)">', html)]


def link(html: str, rel: str) -> str | None:
    match = re.search(rf'href="([^"]+)" rel="{rel}"', html)
    return unescape(match.group(1)) if match else None


def row_text(html: str, record_id: int) -> str:
    row = re.search(rf'<tr data-record="{record_id}">(.*?)</tr>', html, re.S).group(1)
    return page_text(row.replace("<wbr>", ""))  # an endpoint may break after its slashes


@pytest.fixture
def owner(client, portal_tenant, clock):
    sign_in(client, portal_tenant.owner)
    return portal_tenant


def test_signed_out_visitors_are_sent_to_sign_in(client):
    assert "/login" in client.get("/logs").headers["Location"]
    assert "/login" in client.get("/logs/1").headers["Location"]


def test_records_newest_first_with_their_key_and_cost(app, client, owner, other_tenant):
    tid = owner.tenant_id
    key, _ = add_key(app, tid, "Production backend")
    store(
        app,
        [
            call(tid, NOW - timedelta(minutes=5), api_key_id=key, end_user="web-app", endpoint="/api/v1/usage/stats"),
            call(tid, NOW - timedelta(minutes=1), status_code=503, method="POST", duration_ms=1234),
            call(
                tid,
                NOW - timedelta(minutes=3),
                source="external",
                service="openai",
                endpoint="/v1/chat/completions",
                tokens_in=700,
                tokens_out=350,
                cost=Decimal("0.000525"),
            ),
            call(tid, NOW - timedelta(minutes=2), source="external", service="twitter", endpoint="/2/tweets"),
            call(other_tenant.tenant_id, NOW, service="rival-service"),
        ],
    )
    response = client.get("/logs")
    assert response.status_code == 200
    html = response.text
    ids = shown_ids(html)
    assert ids == ids_newest_first(app, tid) and len(ids) == 4
    assert row_text(html, ids[0]) == "2026-11-18 12:29:10 503 tollgate POST /api/v1/ping — — 1,234 ms 0 —"
    assert row_text(html, ids[1]) == "2026-11-18 12:28:10 200 twitter GET /2/tweets — — 12 ms 0 unpriced"
    assert row_text(html, ids[2]) == "2026-11-18 12:27:10 200 openai GET /v1/chat/completions — — 12 ms 1,050 $0.000525"
    assert (
        row_text(html, ids[3])
        == "2026-11-18 12:25:10 200 tollgate GET /api/v1/usage/stats Production backend web-app 12 ms 0 —"
    )
    # Status badges say the code in words; the class only repeats it.
    assert '<span class="badge badge-5xx">503</span>' in html
    assert "rival-service" not in html
    assert f'href="/logs/{ids[0]}"' in html
    assert 'aria-current="page">Logs</a>' in html
    assert "raw records are kept 90 days on your plan" in page_text(html)


def test_members_read_the_logs(app, client, portal_tenant, clock):
    store(app, [call(portal_tenant.tenant_id, NOW)])
    sign_in(client, portal_tenant.member)
    html = client.get("/logs").text
    assert len(shown_ids(html)) == 1
    assert client.get(f"/logs/{shown_ids(html)[0]}").status_code == 200


@pytest.fixture
def mixed(app, owner):
    tid = owner.tenant_id
    key_a, _ = add_key(app, tid, "Backend")
    key_b, _ = add_key(app, tid, "Bots")
    at = NOW - timedelta(hours=1)
    store(
        app,
        [
            call(tid, at, status_code=200, api_key_id=key_a, end_user="web-app"),
            call(tid, at, status_code=204, api_key_id=key_a, endpoint="/api/v1/usage/stats"),
            call(tid, at, status_code=404, api_key_id=key_b, end_user="web-app"),
            call(tid, at, status_code=429, api_key_id=key_b),
            call(tid, at, status_code=500),
            call(tid, at, status_code=502, source="external", service="groq", end_user="support-bot"),
            call(tid, datetime(2026, 11, 1, 10, tzinfo=UTC), status_code=200),
            call(tid, datetime(2026, 10, 31, 23, 59, tzinfo=UTC), status_code=200),
        ],
    )
    return {"a": key_a, "b": key_b}


def statuses(client, query: str) -> list[int]:
    html = client.get(f"/logs?{query}").text
    return sorted(int(code) for code in re.findall(r'<span class="badge badge-\dxx">(\d+)</span>', html))


@pytest.mark.parametrize(
    ("query", "codes"),
    [
        ("", [200, 200, 200, 204, 404, 429, 500, 502]),
        ("status=2xx", [200, 200, 200, 204]),
        ("status=4XX", [404, 429]),
        ("status=5xx", [500, 502]),
        ("status=429", [429]),
        ("status=201", []),
        ("service=groq", [502]),
        ("endpoint=/api/v1/usage/stats", [204]),
        ("key=A", [200, 204]),
        ("key=B&status=4xx", [404, 429]),
        ("end_user=web-app", [200, 404]),
        ("source=external", [502]),
        ("source=api&status=5xx", [500]),
        ("start=2026-11-01&end=2026-11-01", [200]),
        ("end=2026-10-31", [200]),
        ("start=2026-11-02", [200, 204, 404, 429, 500, 502]),
    ],
)
def test_filters(client, mixed, query, codes):
    query = query.replace("key=A", f"key={mixed['a']}").replace("key=B", f"key={mixed['b']}")
    assert statuses(client, query) == codes


def test_filter_options_and_labels(client, mixed, app, other_tenant):
    store(app, [call(other_tenant.tenant_id, NOW, service="rival", end_user="spy")])
    html = client.get("/logs?service=groq").text
    assert '<option selected value="groq">groq</option>' in html
    assert '<option value="tollgate">tollgate</option>' in html
    assert '<option value="/api/v1/usage/stats">/api/v1/usage/stats</option>' in html
    assert f'<option value="{mixed["a"]}">Backend</option>' in html
    assert '<option value="support-bot">support-bot</option>' in html
    assert "rival" not in html and "spy" not in html
    for field in ("start", "end", "status", "service", "endpoint", "key", "end-user", "source"):
        assert f'<label for="logs-{field}">' in html
    assert '<form method="get" action="/logs"' in html


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("status=6xx", "logs-status", "Enter a class such as 2xx, 4xx or 5xx, or a code such as 429."),
        ("status=ok", "logs-status", "Enter a class such as 2xx, 4xx or 5xx, or a code such as 429."),
        ("start=2026-02-30", "logs-start", "Enter a date as YYYY-MM-DD, e.g. 2026-11-18."),
        ("start=2026-11-10&end=2026-11-01", "logs-end", "The end date is before the start date."),
        ("key=all", "logs-key", "Choose a key from the list."),
        ("source=partner", "logs-source", "Choose the API or external calls."),
    ],
)
def test_bad_filters_are_a_400_with_a_message_beside_the_field(client, owner, query, field, message):
    response = client.get(f"/logs?{query}")
    assert response.status_code == 400
    match = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', response.text)
    assert match and page_text(match.group(1)) == message
    assert "Correct the filters above to see the records." in response.text


@pytest.mark.parametrize("cursor", ["nonsense", "MTIz", "LTEuLTE", "%%%"])
def test_a_broken_page_link_is_a_400(client, owner, cursor):
    response = client.get(f"/logs?before={cursor}")
    assert response.status_code == 400
    assert "That page link is not valid. Start again from the newest records." in page_text(response.text)
    assert client.get(f"/logs?after={cursor}").status_code == 400


# -- keyset pages ----------------------------------------------------------------------------------


@contextmanager
def skipped_rows(app) -> Iterator[list]:
    """The OFFSET of every statement that has one (SQLite's dialect writes OFFSET 0 after every
    LIMIT; PostgreSQL's writes none)."""
    offsets: list = []
    with app.app_context():
        engine = db.engine

    def before(conn, cursor, statement, parameters, context, executemany):
        if "OFFSET" in statement.upper():
            offsets.append(parameters[-1] if isinstance(parameters, (tuple, list)) else parameters)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield offsets
    finally:
        event.remove(engine, "before_cursor_execute", before)


@pytest.fixture
def history(app, owner):
    """137 records; groups of seven share a time, so pages end inside a group."""
    tid = owner.tenant_id
    store(app, [call(tid, NOW - timedelta(seconds=n // 7)) for n in range(137)])
    return ids_newest_first(app, tid)


def test_walking_older_pages_shows_every_record_once_in_order(client, history):
    seen, pages, url = [], [], "/logs"
    while url:
        html = client.get(url).text
        page = shown_ids(html)
        assert 0 < len(page) <= 50
        pages.append((url, page))
        seen += page
        url = link(html, "next")
    assert seen == history
    assert [len(page) for _, page in pages] == [50, 50, 37]
    assert link(client.get("/logs").text, "prev") is None  # the first page has nothing newer

    # And back: each Newer link shows the page before, up to the first (its plain address).
    html = client.get(pages[-1][0]).text
    for url, page in reversed(pages[:-1]):
        newer = link(html, "prev")
        assert newer is not None
        response = client.get(newer)
        if response.status_code == 302:
            assert response.headers["Location"] == "/logs"
            response = client.get(response.headers["Location"])
        html = response.text
        assert shown_ids(html) == page, url


def test_pages_keep_their_filters(client, app, owner):
    tid = owner.tenant_id
    store(app, [call(tid, NOW - timedelta(seconds=n), status_code=500 if n % 2 else 200) for n in range(130)])
    html = client.get("/logs?status=5xx").text
    older = link(html, "next")
    assert "status=5xx" in older and "before=" in older
    second = client.get(older).text
    assert 'value="5xx"' in second
    assert set(statuses(client, older.split("?")[1])) == {500}
    assert len(shown_ids(second)) == 15


def test_a_record_stored_meanwhile_neither_repeats_nor_hides_one(client, app, owner, history):
    first = client.get("/logs").text
    store(app, [call(owner.tenant_id, NOW + timedelta(seconds=1)) for _ in range(5)])
    second = client.get(link(first, "next")).text
    assert shown_ids(second) == history[50:100]


def test_keyset_pages_in_the_domain(app, owner, history):
    with app.app_context():
        seen, before = [], None
        while True:
            page = log_page(owner.tenant_id, LogFilters(), before=before, size=9)
            seen += [r.id for r in page.records]
            if page.older is None:
                break
            before = page.older
        assert seen == history
        db.session.remove()


def test_cursors_are_opaque_and_exact():
    cursor = Cursor(datetime(2026, 11, 18, 12, 30, 10, 123456, tzinfo=UTC), 987654)
    text = cursor.encode()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", text)
    assert Cursor.decode(text) == cursor
    with pytest.raises(ValueError):
        Cursor.decode("bm90LmEuY3Vyc29y")


def test_a_deep_page_of_a_long_history_runs_the_same_statements(app, client, owner):
    tid = owner.tenant_id
    store(app, [call(tid, NOW - timedelta(seconds=n * 17), end_user=f"user-{n % 40}") for n in range(10_000)])
    ids = ids_newest_first(app, tid)
    with app.app_context():
        deep = Cursor.of(db.session.get(UsageRecord, ids[9_000]))
        shallow = Cursor.of(db.session.get(UsageRecord, ids[49]))
        db.session.remove()

    def statements(url: str) -> list[str]:
        client.get(url)
        with count_statements(app) as seen:
            response = client.get(url)
        assert response.status_code == 200
        return seen, response.text

    second, second_html = statements(f"/logs?before={shallow.encode()}")
    far, far_html = statements(f"/logs?before={deep.encode()}")
    assert far == second
    assert shown_ids(second_html) == ids[50:100]
    assert shown_ids(far_html) == ids[9_001:9_051]
    first, _ = statements("/logs")
    assert len(first) == len(far)
    with skipped_rows(app) as skipped:
        client.get(f"/logs?before={deep.encode()}")
        client.get("/logs")
    assert skipped == [] or set(skipped) == {0}
    newer, _ = statements(f"/logs?after={deep.encode()}")
    assert len(newer) == len(far)


def test_statement_count_does_not_grow_with_keys_end_users_or_days(app, client, owner):
    tid = owner.tenant_id
    key, _ = add_key(app, tid, "only")
    store(app, [call(tid, NOW - timedelta(minutes=1), api_key_id=key, end_user="user-0")])
    record_id = ids_newest_first(app, tid)[0]
    urls = ("/logs", "/logs?status=2xx&service=tollgate&end_user=user-0", f"/logs/{record_id}")

    def counts() -> list[int]:
        result = []
        for url in urls:
            client.get(url)
            with count_statements(app) as seen:
                assert client.get(url).status_code == 200
            result.append(len(seen))
        return result

    few = counts()
    keys = [add_key(app, tid, f"key {n}")[0] for n in range(6)]
    store(
        app,
        [
            call(tid, NOW - timedelta(days=day, minutes=n), api_key_id=keys[n % 6], end_user=f"user-{(day + n) % 40}")
            for day in range(60)
            for n in range(10)
        ],
    )
    assert counts() == few


# -- one record ------------------------------------------------------------------------------------


def test_a_record_in_full(app, client, owner):
    tid = owner.tenant_id
    key, _ = add_key(app, tid, "Reporting")
    store(
        app,
        [
            call(
                tid,
                datetime(2026, 11, 18, 9, 15, 30, 250000, tzinfo=UTC),
                source="external",
                service="openai",
                endpoint="/v1/chat/completions",
                method="POST",
                category="llm",
                status_code=502,
                duration_ms=2345,
                tokens_in=1200,
                tokens_out=600,
                cached_tokens=200,
                model="gpt-4o",
                cost=Decimal("0.0084"),
                api_key_id=key,
                end_user="support-bot",
                error_message="openai upstream error",
                meta={"region": "eu-west", "attempt": 2, "tags": ["a", "b"]},
                idempotency_key="evt_abc123",
            )
        ],
    )
    record_id = ids_newest_first(app, tid)[0]
    response = client.get(f"/logs/{record_id}")
    assert response.status_code == 200
    html = response.text
    text = page_text(html)
    for shown in (
        f"Record #{record_id}",
        "Time 2026-11-18 09:15:30.250000 UTC",
        "Source external reported by you",
        "Service openai",
        "Method POST",
        "Endpoint /v1/chat/completions",
        "Category llm",
        "Status 502",
        "Duration 2,345 ms",
        "API key Reporting",
        "End user support-bot",
        "Model gpt-4o",
        "Tokens in 1,200",
        "Of which cached 200",
        "Tokens out 600",
        "Quota units 0",
        "Cost $0.0084",
        "Error openai upstream error",
    ):
        assert shown in text, shown
    assert f'href="/keys/{key}"' in html
    meta = re.search(r'<dl class="log-meta" id="record-meta">(.*?)</dl>', html, re.S).group(1)
    assert page_text(meta) == 'attempt 2 region eu-west tags ["a", "b"]'
    assert 'aria-current="page">Logs</a>' in html


def test_an_unpriced_outside_call_says_so(app, client, owner):
    tid = owner.tenant_id
    store(app, [call(tid, NOW, source="external", service="twitter", endpoint="/2/tweets", idempotency_key="x1")])
    record_id = ids_newest_first(app, tid)[0]
    html = client.get(f"/logs/{record_id}").text
    cost = page_text(re.search(r'<dd id="record-cost">(.*?)</dd>', html, re.S).group(1))
    assert cost.startswith("unpriced")
    assert '<span class="badge badge-unpriced">unpriced</span>' in html
    assert "No metadata." in html


def test_a_cost_past_the_cent_is_also_shown_exactly(app, client, owner):
    tid = owner.tenant_id
    store(app, [call(tid, NOW, source="external", service="openai", cost=Decimal("0.011805"))])
    record_id = ids_newest_first(app, tid)[0]
    html = client.get(f"/logs/{record_id}").text
    assert page_text(re.search(r'<dd id="record-cost">(.*?)</dd>', html, re.S).group(1)) == "$0.01 exactly $0.011805"


def test_another_tenants_record_is_a_404(app, client, owner, other_tenant):
    store(app, [call(other_tenant.tenant_id, NOW)])
    theirs = ids_newest_first(app, other_tenant.tenant_id)[0]
    assert client.get(f"/logs/{theirs}").status_code == 404
    assert client.get("/logs/999999").status_code == 404


def test_the_record_page_leads_back_to_the_list_it_came_from(app, client, owner):
    store(app, [call(owner.tenant_id, NOW)])
    record_id = ids_newest_first(app, owner.tenant_id)[0]
    html = client.get(f"/logs/{record_id}", headers={"Referer": "http://localhost/logs?status=2xx"}).text
    assert 'href="http://localhost/logs?status=2xx">← Logs' in html
    html = client.get(f"/logs/{record_id}", headers={"Referer": "https://elsewhere.example/logs"}).text
    assert 'href="/logs">← Logs' in html
