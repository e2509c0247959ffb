"""Every number that reaches a column is bounded where it is accepted; NaN, Infinity and deep
nesting are refused in every JSON body; events older than the tenant or the late-arrival window
are refused. Each refusal is a 422 naming what was wrong, and nothing is stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Tenant, UsageRecord
from tests.api_helpers import add_key, drain, external_records
from tests.factories import new_tenant

EVENTS = "/api/v1/usage/events"
NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)  # the clock fixture's time


def event(**fields) -> dict:
    return {"service": "youtube", "endpoint": "/v3/search", "occurred_at": "2026-11-18T12:00:00Z", **fields}


def post_raw(client, url: str, text: str, headers: dict):
    return client.post(url, data=text, headers={**headers, "Content-Type": "application/json"})


def external_count(app, tenant_id: int) -> int:
    drain(app)
    with app.app_context():
        count = db.session.scalar(
            select(func.count()).where(UsageRecord.tenant_id == tenant_id, UsageRecord.source == "external")
        )
        db.session.remove()
    return count


@pytest.fixture
def admin(app, acme) -> dict:
    _, secret = add_key(app, acme.tenant_id, "ops", scope="admin")
    return {"X-API-Key": secret}


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cost, why",
    [
        (10**30, "1000000000000000000000000000000 lies outside the 64-bit integers"),
        (10**9 + 1, "quota_cost: a whole number from 0 to 1,000,000,000"),
        (-1, "quota_cost: a whole number from 0 to 1,000,000,000"),
    ],
)
def test_a_quota_cost_past_its_bound_is_422_not_stored(app, client, acme, cost, why):
    response = client.post(EVENTS, json=event(metadata={"quota_cost": cost}), headers=acme.headers)
    assert response.status_code == 422
    assert response.json["detail"].startswith("metadata: ")
    assert why in response.json["detail"]
    assert external_count(app, acme.tenant_id) == 0


def test_a_quota_cost_in_a_batch_names_its_event(app, client, acme):
    body = {"events": [event(), event(metadata={"quota_cost": 10**30})]}
    response = client.post(EVENTS, json=body, headers=acme.headers)
    assert response.status_code == 422
    assert response.json["detail"].startswith("events[1].metadata: ")
    assert external_count(app, acme.tenant_id) == 0


def test_a_quota_cost_at_its_bound_is_stored_as_the_events_units(app, client, acme):
    response = client.post(EVENTS, json=event(metadata={"quota_cost": 10**9}), headers=acme.headers)
    assert response.status_code == 202
    drain(app)
    with app.app_context():
        units = db.session.scalar(
            select(UsageRecord.quota_units).where(
                UsageRecord.tenant_id == acme.tenant_id, UsageRecord.source == "external"
            )
        )
        db.session.remove()
    assert units == 10**9


@pytest.mark.parametrize(
    "fields, where",
    [
        ({"units": 10**30}, "units"),
        ({"units": 10**9 + 1}, "units"),
        ({"tokens_in": 10**20}, "tokens_in"),
        ({"tokens_out": 10**9 + 1}, "tokens_out"),
        ({"tokens_used": 10**13}, "tokens_used"),
        ({"metadata": {"n": 2**64}}, "metadata"),
        ({"metadata": {"n": -(2**63) - 1}}, "metadata"),
    ],
)
def test_integers_past_their_columns_are_refused(app, client, acme, fields, where):
    response = client.post(EVENTS, json=event(**fields), headers=acme.headers)
    assert response.status_code == 422
    assert response.json["detail"].startswith(where)


# -- NaN, Infinity and depth in every body ----------------------------------------------------

NOT_NUMBERS = {
    "NaN": ("NaN", "body: NaN is not a JSON number"),
    "Infinity": ("Infinity", "body: Infinity is not a JSON number"),
    "-Infinity": ("-Infinity", "body: -Infinity is not a JSON number"),
    "1e400": ("1e400", "body: 1e400 is too large a number"),
}


@pytest.mark.parametrize("name", NOT_NUMBERS)
@pytest.mark.parametrize(
    "method, url, template",
    [
        ("post", EVENTS, '{"service": "youtube", "endpoint": "/x", "metadata": {"x": %s}}'),
        ("post", EVENTS, '{"events": [{"service": "youtube", "endpoint": "/x", "tokens_in": %s}]}'),
        ("post", "/api/v1/usage/rate-limits/youtube/acquire", '{"units": %s}'),
        ("post", "/api/v1/budgets", '{"name": "Ops", "amount": %s}'),
        ("put", "/api/v1/alerts/settings", '{"quota_warning_percent": %s}'),
    ],
)
def test_nan_and_infinity_are_refused_in_every_body(app, client, acme, admin, name, method, url, template):
    literal, detail = NOT_NUMBERS[name]
    response = getattr(client, method)(
        url, data=template % literal, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json == {"detail": detail}
    assert external_count(app, acme.tenant_id) == 0


@pytest.mark.parametrize("url", [EVENTS, "/api/v1/budgets", "/api/v1/notification-channels"])
def test_a_body_nested_thousands_deep_is_422(client, acme, admin, url):
    deep = '{"metadata": ' + "[" * 5000 + "]" * 5000 + "}"
    response = post_raw(client, url, deep, admin)
    assert response.status_code == 422
    assert response.json == {"detail": "the body nests too deeply"}


def test_metadata_nested_past_its_limit_is_422(client, acme):
    nested: dict = {}
    inner = nested
    for _ in range(25):
        inner["a"] = {}
        inner = inner["a"]
    response = client.post(EVENTS, json=event(metadata=nested), headers=acme.headers)
    assert response.status_code == 422
    assert response.json["detail"] == "metadata: nests deeper than 20 levels"


@pytest.mark.parametrize(
    "raw_metadata",
    ['{"a": "\\ud800"}', '{"\\udfff": 1}', '{"model": "m\\ud800", "list": ["ok"]}', '{"x": ["\\ud83d"]}'],
    ids=["a-value", "a-key", "a-model-name", "in-a-list"],
)
def test_metadata_holding_a_lone_surrogate_is_422_and_nothing_is_stored(app, client, acme, raw_metadata):
    body = '{"service": "openai", "metadata": ' + raw_metadata + "}"
    response = post_raw(client, EVENTS, body, acme.headers)
    assert response.status_code == 422, response.text
    assert response.json == {
        "detail": "metadata: holds a lone surrogate (an escape like \\ud800 alone), which is not text"
    }
    assert external_count(app, acme.tenant_id) == 0


def test_metadata_with_a_whole_surrogate_pair_is_stored(app, client, acme):
    body = '{"service": "openai", "metadata": {"mood": "\\ud83d\\ude00"}}'
    assert post_raw(client, EVENTS, body, acme.headers).status_code == 202
    drain(app)
    [record] = external_records(app, acme.tenant_id)
    assert record.meta == {"mood": "\U0001f600"}


# -- the late-arrival window ------------------------------------------------------------------


def test_an_event_from_2019_is_refused_naming_the_earliest_time_accepted(app, client, acme):
    response = client.post(EVENTS, json=event(occurred_at="2019-01-01T00:00:00Z"), headers=acme.headers)
    assert response.status_code == 422
    earliest = (NOW - timedelta(days=35)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert response.json == {
        "detail": f"occurred_at: too old; the earliest time accepted is {earliest} (events arrive at most 35 days late)"
    }
    assert external_count(app, acme.tenant_id) == 0


def test_an_event_from_before_the_tenant_was_made_is_refused(app, client, clock):
    tenant = new_tenant(app, "Newcomer", key=True)
    made = NOW - timedelta(days=3)
    with app.app_context():
        db.session.get(Tenant, tenant.tenant_id).created_at = made
        db.session.commit()
        db.session.remove()
    before = (made - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    after = (made + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"events": [event(occurred_at=after), event(occurred_at=before)]}
    response = client.post(EVENTS, json=body, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json == {
        "detail": f"events[1].occurred_at: too old; the earliest time accepted is "
        f"{made:%Y-%m-%dT%H:%M:%SZ} (the account was made then)"
    }
    ok = client.post(EVENTS, json=event(occurred_at=after), headers=tenant.headers)
    assert ok.status_code == 202
    assert external_count(app, tenant.tenant_id) == 1


def test_an_event_within_the_window_is_accepted_and_one_just_past_it_is_not(app, client, acme):
    inside = (NOW - timedelta(days=35) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    outside = (NOW - timedelta(days=35) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client.post(EVENTS, json=event(occurred_at=inside), headers=acme.headers).status_code == 202
    assert client.post(EVENTS, json=event(occurred_at=outside), headers=acme.headers).status_code == 422
    assert external_count(app, acme.tenant_id) == 1


def test_the_window_is_in_the_openapi_document(client):
    document = client.get("/api/v1/openapi.json").json
    text = " ".join(document["paths"][EVENTS]["post"]["description"].split())
    assert "nor more than 35 days back (the late-arrival window" in text
    assert "nor before the account was made" in text


@pytest.fixture
def prices_restored(app):
    """The price catalog as it was (it is kept between tests)."""
    table = db.metadata.tables["model_prices"]
    with app.app_context():
        rows = [dict(row._mapping) for row in db.session.execute(table.select())]
        db.session.remove()
    yield
    with app.app_context():
        db.session.execute(UsageRecord.__table__.delete())  # records name the prices they were priced at
        db.session.execute(table.delete())
        db.session.execute(table.insert(), rows)
        db.session.commit()
        db.session.remove()


def test_a_call_that_would_cost_more_than_a_million_dollars_is_stored_unpriced(
    app, client, acme, caplog, prices_restored
):
    cli = app.test_cli_runner()
    priced = cli.invoke(args=["prices", "set", "apify", "", "--per-unit", "5", "--from", "2026-01-01"])
    assert priced.exit_code == 0, priced.output
    fine = event(service="apify", endpoint="/runs", units=200_000)  # $1,000,000: the most a call costs
    absurd = event(service="apify", endpoint="/runs", units=10**9)  # $5,000,000,000
    assert client.post(EVENTS, json={"events": [fine, absurd]}, headers=acme.headers).status_code == 202
    with caplog.at_level("WARNING", logger="tollgate.costs"):
        drain(app)
    with app.app_context():
        costs = db.session.scalars(
            select(UsageRecord.cost)
            .where(UsageRecord.tenant_id == acme.tenant_id, UsageRecord.source == "external")
            .order_by(UsageRecord.quota_units)
        ).all()
        db.session.remove()
    assert costs == [Decimal("1000000.00000000"), None]
    assert any("more than $1000000: left unpriced" in r.getMessage() for r in caplog.records)


# -- the size of a body ------------------------------------------------------------------------


def test_a_body_past_16_mib_is_413_before_it_is_read(client, acme):
    body = '{"events": [' + ",".join(['{"service": "openai"}'] * 800_000) + "]}"
    assert len(body) > 16 * 2**20
    response = post_raw(client, "/api/v1/usage/events", body, acme.headers)
    assert response.status_code == 413
    assert response.json == {"detail": "Request too large: a body may be at most 16 MiB"}


def test_the_largest_batch_the_api_takes_fits_in_a_body(app, client, acme):
    metadata = {"k": "x" * (8192 - 12)}  # as large as metadata may be
    events = [event(metadata=metadata, id=f"big-{n}") for n in range(1000)]
    response = client.post("/api/v1/usage/events", json={"events": events}, headers=acme.headers)
    assert response.status_code == 202, response.text[:300]
    assert response.json["accepted"] == 1000
    # And the worker stores every one of them, metadata whole.
    assert external_count(app, acme.tenant_id) == 1000
    with app.app_context():
        sizes = db.session.scalars(
            select(UsageRecord.meta).where(UsageRecord.tenant_id == acme.tenant_id, UsageRecord.source == "external")
        ).all()
        db.session.remove()
    assert {len(meta["k"]) for meta in sizes} == {8192 - 12}
