"""Storing metered calls (rows, rollups, key counters: together and exactly once) and pricing
calls at the price in force when they happened."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.costs.prices import PriceBook
from portal.metering.store import SUMS, _Totals, store_usage, store_usage_portable
from portal.models import LATENCY_COLUMNS, ApiKey, ModelPrice, Tenant, UsageRecord, UsageRollup
from portal.tenancy.keys import create_api_key

T0 = datetime(2026, 3, 10, 10, 15, tzinfo=UTC)
ROLLUP_FIGURES = (
    "calls",
    "errors",
    "rate_limited",
    "tokens_in",
    "tokens_out",
    "quota_units",
    "cost",
    "duration_ms_sum",
    "duration_ms_max",
    *LATENCY_COLUMNS,
)


@pytest.fixture
def row(db, tenant):
    """The shared tenant's row, in the test's session."""
    return db.session.get(Tenant, tenant.tenant_id)


@pytest.fixture
def key(db, row):
    key, _ = create_api_key(row, "Production")
    db.session.commit()
    return key


def call(row, key=None, idem="call-1", at=T0, **fields):
    record = {
        "tenant_id": row.id,
        "api_key_id": key.id if key is not None else None,
        "service": "tollgate",
        "endpoint": "/api/v1/ping",
        "status_code": 200,
        "duration_ms": 5,
        "occurred_at": at,
        "idempotency_key": idem,
    }
    record.update(fields)
    return record


def rollups(db, row, granularity: str) -> list[UsageRollup]:
    return list(
        db.session.scalars(
            select(UsageRollup)
            .where(UsageRollup.tenant_id == row.id, UsageRollup.granularity == granularity)
            .order_by(UsageRollup.bucket_start, UsageRollup.endpoint)
        )
    )


def figures(rollup: UsageRollup) -> dict:
    return {name: getattr(rollup, name) for name in ROLLUP_FIGURES}


def snapshot(db, row) -> dict:
    """Everything store_usage writes, for comparing before and after."""
    db.session.expire_all()
    return {
        "records": db.session.scalar(
            select(func.count()).select_from(UsageRecord).where(UsageRecord.tenant_id == row.id)
        ),
        "rollups": {
            (r.granularity, r.bucket_start, r.endpoint, r.api_key_id): figures(r)
            for granularity in ("hour", "day")
            for r in rollups(db, row, granularity)
        },
        "keys": {k.id: (k.usage_count, k.last_used_at) for k in db.session.scalars(select(ApiKey))},
    }


def test_store_usage_writes_rows_and_hourly_and_daily_rollups(db, row, key):
    batch = [
        call(row, key, "a", T0, status_code=200, duration_ms=40, tokens_in=100, tokens_out=50),
        call(row, key, "b", T0 + timedelta(minutes=30), status_code=429, duration_ms=1),
        call(row, key, "c", T0 + timedelta(hours=1), status_code=500, duration_ms=300, error_message="boom"),
        call(row, key, "d", T0, endpoint="/api/v1/usage/stats", quota_units=3),
    ]
    assert store_usage(batch) == 4
    db.session.commit()

    stored = db.session.scalars(select(UsageRecord).order_by(UsageRecord.idempotency_key)).all()
    assert [(r.idempotency_key, r.status_code, r.occurred_at) for r in stored] == [
        ("a", 200, T0),
        ("b", 429, T0 + timedelta(minutes=30)),
        ("c", 500, T0 + timedelta(hours=1)),
        ("d", 200, T0),
    ]
    assert stored[2].error_message == "boom"
    assert stored[0].source == "api" and stored[0].method == "GET"  # the defaults

    hourly = rollups(db, row, "hour")
    assert [(r.bucket_start, r.endpoint, r.calls, r.errors, r.rate_limited) for r in hourly] == [
        (datetime(2026, 3, 10, 10, tzinfo=UTC), "/api/v1/ping", 2, 1, 1),
        (datetime(2026, 3, 10, 10, tzinfo=UTC), "/api/v1/usage/stats", 1, 0, 0),
        (datetime(2026, 3, 10, 11, tzinfo=UTC), "/api/v1/ping", 1, 1, 0),
    ]
    daily = rollups(db, row, "day")
    assert [(r.bucket_start, r.endpoint, r.calls, r.errors, r.rate_limited) for r in daily] == [
        (datetime(2026, 3, 10, tzinfo=UTC), "/api/v1/ping", 3, 2, 1),
        (datetime(2026, 3, 10, tzinfo=UTC), "/api/v1/usage/stats", 1, 0, 0),
    ]
    ping_day = daily[0]
    assert (ping_day.tokens_in, ping_day.tokens_out, ping_day.duration_ms_sum, ping_day.duration_ms_max) == (
        100,
        50,
        341,
        300,
    )
    assert daily[1].quota_units == 3
    assert ping_day.api_key_id == key.id and ping_day.source == "api"

    db.session.refresh(key)
    assert key.usage_count == 4
    assert key.last_used_at == T0 + timedelta(hours=1)


def test_store_usage_runs_in_the_callers_transaction(db, row, key):
    batch = [call(row, key, f"k{n}", T0 + timedelta(minutes=n)) for n in range(3)]
    assert store_usage(batch) == 3
    db.session.rollback()
    after = snapshot(db, row)
    assert (after["records"], after["rollups"]) == (0, {})
    assert after["keys"][key.id] == (0, None) and set(after["keys"].values()) == {(0, None)}

    # Nothing of the rolled-back attempt remains to block the same records later.
    assert store_usage(batch) == 3
    db.session.commit()
    after = snapshot(db, row)
    assert after["records"] == 3
    assert after["keys"][key.id] == (3, T0 + timedelta(minutes=2))
    assert [counts for key_id, counts in after["keys"].items() if key_id != key.id] == [(0, None)]


def test_the_same_batch_twice_counts_nothing_twice(db, row, key):
    batch = [
        call(row, key, "a", T0, tokens_in=1000, tokens_out=200, cost=Decimal("0.00123456"), duration_ms=80),
        call(row, key, "b", T0, status_code=429, duration_ms=1),
        call(row, key, "c", T0 + timedelta(hours=2), status_code=503, cost=Decimal("0.5")),
        call(row, None, "d", T0, source="external", service="openai", tokens_in=10, cost=Decimal("0.01")),
    ]
    assert store_usage(batch) == 4
    db.session.commit()
    first = snapshot(db, row)

    assert store_usage(batch) == 0
    db.session.commit()
    assert snapshot(db, row) == first
    assert first["keys"][key.id] == (3, T0 + timedelta(hours=2))

    # A redelivery that overlaps a new record: only the new one counts.
    assert store_usage([*batch[:2], call(row, key, "e", T0, cost=Decimal("0.00000001"))]) == 1
    db.session.commit()
    after = snapshot(db, row)
    assert after["records"] == 5
    assert after["keys"][key.id] == (4, T0 + timedelta(hours=2))
    day = rollups(db, row, "day")
    assert sum(r.calls for r in day) == 5
    assert sum(r.errors for r in day) == 2
    assert sum(r.rate_limited for r in day) == 1
    assert sum(r.tokens_in for r in day) == 1010
    assert sum((r.cost for r in day), Decimal(0)) == Decimal("0.51123457")


def test_a_batch_carrying_the_same_record_twice_counts_it_once(db, row, key):
    record = call(row, key, "dup", T0, tokens_in=500, cost=Decimal("0.25"), duration_ms=60)
    batch = [record, call(row, key, "other", T0, cost=Decimal("0.10")), dict(record)]
    assert store_usage(batch) == 2
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 2
    for granularity in ("hour", "day"):
        [rollup] = rollups(db, row, granularity)
        assert (rollup.calls, rollup.tokens_in, rollup.cost, rollup.duration_ms_sum) == (
            2,
            500,
            Decimal("0.35"),
            65,
        )
    db.session.refresh(key)
    assert key.usage_count == 2


def test_the_same_idempotency_id_in_two_tenants_is_two_calls(db, make_tenant, row):
    _, _, other_id = make_tenant()
    other = db.session.get(Tenant, other_id)
    assert store_usage([call(row, idem="shared"), call(other, idem="shared")]) == 2
    db.session.commit()
    for t in (row, other):
        [day] = rollups(db, t, "day")
        assert day.calls == 1
        assert day.api_key_id == 0  # a call without a key


def test_costs_add_up_exactly_to_eight_places(db, row, key):
    batch = [call(row, key, f"c{n}", T0, cost=Decimal("0.00012345")) for n in range(3)]
    store_usage(batch[:2])
    db.session.commit()
    store_usage(batch[2:])  # the third arrives later: added to the stored rollup
    store_usage([call(row, key, "unpriced", T0, cost=None)])
    db.session.commit()
    for granularity in ("hour", "day"):
        [rollup] = rollups(db, row, granularity)
        assert rollup.calls == 4
        assert isinstance(rollup.cost, Decimal)
        assert rollup.cost == Decimal("0.00037035")

    # Amounts that a float cannot hold exactly still add up exactly.
    store_usage([call(row, key, f"f{n}", T0 + timedelta(days=1), cost=Decimal("0.1")) for n in range(3)])
    store_usage([call(row, key, "f3", T0 + timedelta(days=1), cost=Decimal("1234567.89012345"))])
    db.session.commit()
    day = rollups(db, row, "day")[1]
    assert day.cost == Decimal("1234568.19012345")
    assert isinstance(day.cost, Decimal)


@pytest.mark.parametrize(
    ("duration_ms", "column"),
    [
        (0, "latency_le_10"),
        (10, "latency_le_10"),
        (11, "latency_le_25"),
        (25, "latency_le_25"),
        (26, "latency_le_50"),
        (250, "latency_le_250"),
        (251, "latency_le_500"),
        (10000, "latency_le_10000"),
        (10001, "latency_over_10000"),
    ],
)
def test_latency_histogram_bucket_edges(db, row, duration_ms, column):
    store_usage([call(row, idem="x", duration_ms=duration_ms)])
    db.session.commit()
    for granularity in ("hour", "day"):
        [rollup] = rollups(db, row, granularity)
        histogram = {name: getattr(rollup, name) for name in LATENCY_COLUMNS}
        assert histogram == {name: int(name == column) for name in LATENCY_COLUMNS}
        assert rollup.duration_ms_sum == rollup.duration_ms_max == duration_ms


def test_duration_max_is_kept_across_batches(db, row):
    def store(idem, duration_ms):
        store_usage([call(row, idem=idem, duration_ms=duration_ms)])
        db.session.commit()
        db.session.expire_all()
        [hour] = rollups(db, row, "hour")
        [day] = rollups(db, row, "day")
        assert (hour.duration_ms_max, hour.duration_ms_sum) == (day.duration_ms_max, day.duration_ms_sum)
        return hour.duration_ms_max, hour.duration_ms_sum

    assert store("a", 480) == (480, 480)
    assert store("b", 300) == (480, 780)
    assert store("c", 2000) == (2000, 2780)
    assert store("d", 7) == (2000, 2787)


def test_last_used_at_keeps_the_latest_call_whatever_the_arrival_order(db, row, key):
    def store(idem, at, source="api"):
        store_usage([call(row, key, idem, at, source=source)])
        db.session.commit()
        db.session.refresh(key)
        return key.usage_count, key.last_used_at

    assert store("new", T0) == (1, T0)
    assert store("old", T0 - timedelta(hours=5)) == (2, T0)  # a late, older batch
    assert store("older-in-a-batch", T0 - timedelta(days=1)) == (3, T0)
    # A reported external call made with the key is not a use of our API.
    assert store("external", T0 + timedelta(hours=3), source="external") == (3, T0)
    assert store("newest", T0 + timedelta(seconds=1)) == (4, T0 + timedelta(seconds=1))


def test_last_used_at_within_one_batch(db, row, key):
    batch = [call(row, key, f"k{n}", T0 + timedelta(minutes=m)) for n, m in enumerate((5, 50, 20))]
    store_usage(batch)
    db.session.commit()
    db.session.refresh(key)
    assert (key.usage_count, key.last_used_at) == (3, T0 + timedelta(minutes=50))


def test_unknown_record_fields_are_refused(db, row):
    with pytest.raises(ValueError, match="unknown usage record fields: colour"):
        store_usage([call(row, idem="a"), call(row, idem="b", colour="red")])
    with pytest.raises(ValueError, match="usage record lacks: idempotency_key"):
        record = call(row)
        del record["idempotency_key"]
        store_usage([record])
    db.session.commit()
    assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert db.session.scalar(select(func.count()).select_from(UsageRollup)) == 0


def test_an_empty_batch_stores_nothing(db):
    assert store_usage([]) == 0


# --- prices ----------------------------------------------------------------------------------

SWITCH = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def prices(db):
    """Two versions of a model's price and a service-wide price, added to the session only
    (the model prices are reference data the test clean-up keeps, so nothing is committed)."""
    versions = [
        ModelPrice(
            service="acme-ai",
            model="acme-large",
            input_per_million=Decimal("3.00"),
            output_per_million=Decimal("15.00"),
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            effective_to=SWITCH,
        ),
        ModelPrice(
            service="acme-ai",
            model="acme-large",
            input_per_million=Decimal("1.50"),
            output_per_million=Decimal("6.00"),
            effective_from=SWITCH,
            effective_to=None,
        ),
        ModelPrice(
            service="acme-ai",
            model="",
            per_request=Decimal("0.002"),
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        ),
        ModelPrice(
            service="acme-ai",
            model="acme-legacy",
            input_per_million=Decimal("10.00"),
            effective_from=datetime(2025, 1, 1, tzinfo=UTC),
            effective_to=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        ModelPrice(
            service="tube",
            model="",
            per_quota_unit=Decimal("0.0001"),
            effective_from=datetime(2024, 1, 1, tzinfo=UTC),
        ),
    ]
    db.session.add_all(versions)
    db.session.flush()
    yield PriceBook.load()
    db.session.rollback()


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # 20,000 tokens in and 4,000 out
        (datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC), Decimal("0.12000000")),  # 0.06 + 0.06
        (SWITCH, Decimal("0.05400000")),  # 0.03 + 0.024
        (datetime(2026, 11, 1, tzinfo=UTC), Decimal("0.05400000")),
    ],
    ids=["before the switch", "at the switch", "long after"],
)
def test_a_call_is_priced_at_the_version_in_force_when_it_happened(prices, at, expected):
    assert prices.cost("acme-ai", "acme-large", at, tokens_in=20_000, tokens_out=4_000) == expected


def test_price_versions_are_told_apart(prices):
    before = prices.price_at("acme-ai", "acme-large", SWITCH - timedelta(microseconds=1))
    after = prices.price_at("acme-ai", "acme-large", SWITCH)
    assert (before.input_per_million, before.effective_to) == (Decimal("3.00"), SWITCH)
    assert (after.input_per_million, after.effective_to) == (Decimal("1.50"), None)


def test_the_service_wide_price_covers_other_models_and_times(prices):
    # A model without a price of its own.
    assert prices.cost("acme-ai", "acme-tiny", SWITCH, tokens_in=10_000) == Decimal("0.00200000")
    # The model, before its first price version.
    assert prices.cost("acme-ai", "acme-large", datetime(2025, 6, 1, tzinfo=UTC), tokens_in=10**6) == Decimal(
        "0.00200000"
    )
    # A model whose price was withdrawn: its own price until then, the service's after.
    assert prices.cost("acme-ai", "acme-legacy", datetime(2025, 12, 31, tzinfo=UTC), tokens_in=1000) == Decimal(
        "0.01000000"
    )
    assert prices.cost("acme-ai", "acme-legacy", datetime(2026, 1, 1, tzinfo=UTC), tokens_in=1000) == Decimal(
        "0.00200000"
    )
    assert prices.cost("tube", "", SWITCH, quota_units=100) == Decimal("0.01000000")


def test_a_call_without_any_price_has_no_cost(prices):
    assert prices.cost("nobody-knows", "", SWITCH, tokens_in=1000) is None
    assert prices.price_at("nobody-knows", "x", SWITCH) is None


def test_the_cost_is_rounded_to_eight_places(prices):
    # 1 token in at $1.50 per million is $0.0000015 exactly: kept to 8 places.
    assert prices.cost("acme-ai", "acme-large", SWITCH, tokens_in=1) == Decimal("0.00000150")
    # 1 token out at $6.00 per million: $0.000006.
    assert prices.cost("acme-ai", "acme-large", SWITCH, tokens_out=1) == Decimal("0.00000600")
    # 7 tokens in at $3.00 per million: 0.000021.
    assert prices.cost("acme-ai", "acme-large", SWITCH - timedelta(days=1), tokens_in=7) == Decimal("0.00002100")


# --- the bulk path (COPY on PostgreSQL) ------------------------------------------------------


def recount(db, row) -> dict:
    """The rollups and key counters as they should be, counted again from the stored rows."""
    rows = db.session.scalars(select(UsageRecord).where(UsageRecord.tenant_id == row.id)).all()
    expected: dict = {}
    for record in rows:
        dims = (
            record.source,
            record.service,
            record.endpoint,
            record.method,
            record.category,
            record.model,
            record.api_key_id or 0,
        )
        at = record.occurred_at
        for granularity, bucket in (
            ("hour", at.replace(minute=0, second=0, microsecond=0)),
            ("day", at.replace(hour=0, minute=0, second=0, microsecond=0)),
        ):
            totals = expected.setdefault((granularity, bucket, *dims), _Totals())
            totals.add({**{c: getattr(record, c) for c in ROW_FIELDS}, "cost": record.cost})
    return {
        key: {**totals.counts, "cost": totals.cost, "duration_ms_max": totals.duration_ms_max}
        for key, totals in expected.items()
    }


ROW_FIELDS = ("status_code", "duration_ms", "tokens_in", "tokens_out", "cached_tokens", "quota_units", "source")
ALL_FIGURES = (*SUMS, *LATENCY_COLUMNS, "cost", "duration_ms_max")


def stored_rollups(db, row) -> dict:
    db.session.expire_all()
    return {
        (r.granularity, r.bucket_start, r.source, r.service, r.endpoint, r.method, r.category, r.model, r.api_key_id): {
            name: getattr(r, name) for name in ALL_FIGURES
        }
        for r in db.session.scalars(select(UsageRollup).where(UsageRollup.tenant_id == row.id))
    }


def mixed_calls(row, key, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    calls = []
    for n in range(count):
        external = rng.random() < 0.3
        at = T0 + timedelta(minutes=rng.randrange(0, 3 * 24 * 60), microseconds=rng.randrange(10**6))
        if rng.random() < 0.2:  # any offset: stored and bucketed in UTC
            at = at.astimezone(timezone(timedelta(hours=rng.choice((-8, 5, 9)), minutes=rng.choice((0, 30)))))
        calls.append(
            call(
                row,
                key if rng.random() < 0.8 else None,
                f"m{seed}-{n}",
                at,
                source="external" if external else "api",
                service=rng.choice(("openai", "groq")) if external else "tollgate",
                endpoint=rng.choice(("/api/v1/ping", "/api/v1/usage/stats", "/v1/chat/completions")),
                model=rng.choice(("", "gpt-4o")) if external else "",
                status_code=rng.choice((200, 200, 200, 201, 400, 429, 500, 503)),
                duration_ms=rng.choice((0, 10, 11, 250, 251, 9999, 10001, rng.randrange(20000))),
                tokens_in=rng.randrange(5000) if external else 0,
                tokens_out=rng.randrange(2000) if external else 0,
                cached_tokens=rng.randrange(100) if external else 0,
                quota_units=rng.randrange(3),
                cost=rng.choice((None, Decimal(0), Decimal("0.00000001"), Decimal(rng.randrange(10**6)) / 10**8)),
            )
        )
    return calls


def test_rollups_and_key_counters_equal_a_recount_of_the_rows(db, row, key):
    calls = mixed_calls(row, key, 1500, seed=1)
    # Overlapping batches, and one that repeats records inside itself.
    assert store_usage(calls[:700]) == 700
    db.session.commit()
    assert store_usage(calls[500:1200] + calls[1100:1150]) == 500
    db.session.commit()
    assert store_usage(calls) == 300
    db.session.commit()

    assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 1500
    assert stored_rollups(db, row) == recount(db, row)
    db.session.refresh(key)
    used = [c for c in calls if c["api_key_id"] == key.id and c["source"] == "api"]
    assert key.usage_count == len(used)
    assert key.last_used_at == max(c["occurred_at"] for c in used)


def test_the_bulk_path_and_the_portable_path_store_the_same(db, make_tenant, row, key):
    """On PostgreSQL store_usage copies; store_usage_portable is the executemany path."""
    _, _, other_id = make_tenant()
    other = db.session.get(Tenant, other_id)
    other_key, _ = create_api_key(other, "Production")
    db.session.commit()
    calls = mixed_calls(row, key, 600, seed=2)
    store_usage(calls[:400])
    store_usage(calls)  # two batches in one transaction
    db.session.commit()
    twins = [{**c, "tenant_id": other.id, "api_key_id": other_key.id if c["api_key_id"] else None} for c in calls]
    store_usage_portable(twins[:400])
    store_usage_portable(twins)
    db.session.commit()

    def without_key(rollups: dict) -> dict:
        return {(*k[:-1], bool(k[-1])): v for k, v in rollups.items()}

    assert without_key(stored_rollups(db, row)) == without_key(stored_rollups(db, other))
    db.session.refresh(key)
    db.session.refresh(other_key)
    assert (key.usage_count, key.last_used_at) == (other_key.usage_count, other_key.last_used_at)


AWKWARD_TEXT = "tab\there, \"quotes\", 'single', back\\slash \\N \\. new\nline\r\n, ünïcødé ✓ 日本語 🚀, end\\"


def test_metadata_and_text_survive_the_trip_unchanged(db, row):
    meta = {
        "text": AWKWARD_TEXT,
        "nested": {"list": [1, 2.5, None, True, "x\ty"], "empty": {}, 'quote"key': "v"},
        "number": 12345678901234,
    }
    store_usage(
        [
            call(row, idem="awkward", meta=meta, error_message=AWKWARD_TEXT, end_user="ü\tser\\1", model='m"1'),
            call(row, idem="plain", meta=None, error_message=None),
            call(row, idem="empty", meta={}, error_message=""),
        ]
    )
    db.session.commit()
    db.session.expire_all()
    rows = {r.idempotency_key: r for r in db.session.scalars(select(UsageRecord))}
    assert rows["awkward"].meta == meta
    assert rows["awkward"].error_message == AWKWARD_TEXT
    assert (rows["awkward"].end_user, rows["awkward"].model) == ("ü\tser\\1", 'm"1')
    assert rows["plain"].meta is None and rows["plain"].error_message is None
    assert rows["empty"].meta == {} and rows["empty"].error_message == ""


def test_a_missing_cost_stays_missing_and_zero_stays_zero(db, row, key):
    store_usage(
        [
            call(row, None, "ext-unpriced", source="external", service="openai", cost=None, cached_tokens=7),
            call(row, None, "ext-free", source="external", service="openai", cost=Decimal(0)),
            call(row, None, "ext-priced", source="external", service="openai", cost=Decimal("0.125")),
            call(row, key, "api-no-cost", cost=None),
        ]
    )
    db.session.commit()
    costs = dict(db.session.execute(select(UsageRecord.idempotency_key, UsageRecord.cost)).all())
    assert costs == {"ext-unpriced": None, "ext-free": Decimal(0), "ext-priced": Decimal("0.125"), "api-no-cost": None}
    unpriced = db.session.scalar(
        select(func.count())
        .select_from(UsageRecord)
        .where(UsageRecord.cost.is_(None), UsageRecord.source == "external")
    )
    assert unpriced == 1
    for granularity in ("hour", "day"):
        by_source = {r.source: r for r in rollups(db, row, granularity)}
        assert (by_source["external"].unpriced, by_source["external"].cost) == (1, Decimal("0.125"))
        assert by_source["external"].cached_tokens == 7
        assert (by_source["api"].unpriced, by_source["api"].cost) == (0, Decimal(0))


def test_records_of_a_deleted_tenant_are_dropped_and_a_deleted_keys_keep_no_key(db, row, key):
    gone_tenant = db.session.scalar(select(func.max(Tenant.id))) + 100
    gone_key = db.session.scalar(select(func.max(ApiKey.id))) + 100
    batch = [
        call(row, key, "kept"),
        {**call(row, None, "orphan"), "tenant_id": gone_tenant},
        {**call(row, None, "keyless"), "api_key_id": gone_key},
    ]
    assert store_usage(batch) == 2
    db.session.commit()
    stored = dict(db.session.execute(select(UsageRecord.idempotency_key, UsageRecord.api_key_id)).all())
    assert stored == {"kept": key.id, "keyless": None}
    [day] = [r for r in rollups(db, row, "day") if r.api_key_id == 0]
    assert day.calls == 1
    db.session.refresh(key)
    assert key.usage_count == 1


def test_the_price_version_is_kept_with_the_record(db, row):
    price = db.session.scalars(select(ModelPrice)).first()
    assert price is not None  # the migrations' seed prices
    store_usage([call(row, idem="priced", source="external", price_id=price.id, cost=Decimal("0.5"))])
    db.session.commit()
    assert db.session.scalar(select(UsageRecord.price_id)) == price.id


@pytest.mark.parametrize("writers", [1, 2])
def test_synthetic_usage_stores_exactly_n_records_with_their_rollups_whatever_the_writers(db, make_tenant, writers):
    from portal.demo import store_synthetic

    tenants = [make_tenant()[2] for _ in range(3)]
    for tenant_id in tenants:
        create_api_key(db.session.get(Tenant, tenant_id), "Production")
    db.session.commit()
    keys: dict[int, list[int]] = {}
    for tenant_id, key_id in db.session.execute(select(ApiKey.tenant_id, ApiKey.id)):
        keys.setdefault(tenant_id, []).append(key_id)
    seen: list[int] = []
    stored = store_synthetic(tenants, keys, 10_001, 3, T0, seed=5, writers=writers, progress=seen.append, batch=1500)
    # On PostgreSQL two writer processes share the tenants (elsewhere one writer does it all).
    assert stored == 10_001 and sum(seen) == 10_001
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(UsageRecord)) == 10_001
    for tenant_id in tenants:
        row = db.session.get(Tenant, tenant_id)
        assert stored_rollups(db, row) == recount(db, row)
        [key] = db.session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id))
        rows = select(func.count(), func.max(UsageRecord.occurred_at)).where(UsageRecord.tenant_id == tenant_id)
        assert (key.usage_count, key.last_used_at) == tuple(db.session.execute(rows).one())
        assert 3300 <= key.usage_count <= 3400  # the tenants share the records evenly


def test_synthetic_records_are_the_api_calls_of_the_demo_drawn_the_same_way(db):
    from portal.demo import _api_call, synthetic_records

    rng = random.Random(11)
    expected = []
    span = 2 * 86400
    for i in range(2000):
        at = T0 - timedelta(seconds=span) + timedelta(seconds=(i + rng.random()) * span / 2000)
        record = _api_call(rng, outage=False, throttled=rng.random() < 0.01)
        record.update(tenant_id=[1, 2][i % 2], api_key_id=rng.choice([7, None] if i % 2 == 0 else [None]))
        record.update(source="api", occurred_at=at, idempotency_key=f"{rng.getrandbits(128):032x}")
        expected.append(record)
    drawn = list(synthetic_records([1, 2], {1: [7, None]}, 2000, 2, T0, random.Random(11)))
    assert [{name: r[name] for name in e} for r, e in zip(drawn, expected, strict=True)] == expected
