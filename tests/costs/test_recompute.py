"""The recompute job: outside calls stored without a price get one once it exists, and their
rollups move with them; calls that have a cost are never touched."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.costs.recompute import recompute_costs
from portal.extensions import db as _db
from portal.metering.store import store_usage
from portal.models import UsageRecord, UsageRollup
from tests.costs.test_prices import restore_catalog  # noqa: F401 - autouse: puts the catalog back

DAY = datetime(2026, 3, 10, tzinfo=UTC)


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(command: str):
        result = runner.invoke(args=shlex.split(command))
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def call(tenant_id: int, key: str, at: datetime, service="acme-ai", model="acme-large", **fields) -> dict:
    return {
        "tenant_id": tenant_id,
        "source": "external",
        "service": service,
        "endpoint": "/v1/chat/completions",
        "method": "POST",
        "status_code": 200,
        "model": model,
        "tokens_in": 10_000,
        "tokens_out": 2_000,
        "occurred_at": at,
        "idempotency_key": key,
        **fields,
    }


@pytest.fixture
def calls(db, make_tenant):
    """A tenant's outside calls on one day: four to a model with no price yet (two of them in
    the same hour), one to a service nobody prices, and one that came with its cost."""
    _, _, tenant_id = make_tenant()
    store_usage(
        [
            call(tenant_id, "a", DAY + timedelta(hours=9, minutes=5)),
            call(tenant_id, "b", DAY + timedelta(hours=9, minutes=40), cached_tokens=4_000),
            call(tenant_id, "c", DAY + timedelta(hours=15)),
            call(tenant_id, "d", DAY + timedelta(hours=15, minutes=30), model="acme-large-2026-01-15"),
            call(tenant_id, "unknown", DAY + timedelta(hours=10), service="nobody-prices-this"),
            call(tenant_id, "given", DAY + timedelta(hours=9, minutes=50), cost=Decimal("0.5")),
        ]
    )
    _db.session.commit()
    return tenant_id


def records() -> dict[str, UsageRecord]:
    _db.session.expire_all()
    return {r.idempotency_key: r for r in _db.session.scalars(select(UsageRecord))}


def rollups(granularity: str) -> dict[tuple, tuple[Decimal, int]]:
    rows = _db.session.execute(
        select(UsageRollup.bucket_start, UsageRollup.service, UsageRollup.model, UsageRollup.cost, UsageRollup.unpriced)
        .where(UsageRollup.granularity == granularity)
        .order_by(UsageRollup.bucket_start, UsageRollup.service, UsageRollup.model)
    )
    return {(r.bucket_start.hour, r.service, r.model): (r.cost, r.unpriced) for r in rows}


def assert_rollups_match_records() -> None:
    rows = list(records().values())
    cost = sum((r.cost for r in rows if r.cost is not None), Decimal(0))
    unpriced = sum(1 for r in rows if r.cost is None)
    for granularity in ("hour", "day"):
        totals = _db.session.execute(
            select(func.sum(UsageRollup.cost), func.sum(UsageRollup.unpriced)).where(
                UsageRollup.granularity == granularity
            )
        ).one()
        assert (Decimal(totals[0]), totals[1]) == (cost, unpriced), granularity


def test_calls_without_a_price_stay_unpriced(calls):
    assert recompute_costs() == {"priced": 0, "still_unpriced": 5}
    assert {k for k, r in records().items() if r.cost is None} == {"a", "b", "c", "d", "unknown"}
    assert rollups("day")[(0, "acme-ai", "acme-large")] == (Decimal("0.5"), 3)


def test_a_new_price_prices_the_waiting_calls_and_moves_their_rollups(calls, cli):
    cli("prices set acme-ai acme-large --input 3 --output 15 --cached-input 0.30 --from 2026-01-01")

    assert recompute_costs() == {"priced": 4, "still_unpriced": 1}
    got = records()
    price_id = got["a"].price_id
    assert price_id is not None
    assert {k: (r.cost, r.price_id) for k, r in got.items()} == {
        "a": (Decimal("0.06"), price_id),  # 10,000 x 3 + 2,000 x 15, per million
        "b": (Decimal("0.0492"), price_id),  # 6,000 x 3 + 4,000 cached x 0.30 + 2,000 x 15
        "c": (Decimal("0.06"), price_id),
        "d": (Decimal("0.06"), price_id),  # a dated name of the model
        "unknown": (None, None),
        "given": (Decimal("0.5"), None),  # had its cost: untouched
    }
    assert rollups("hour") == {
        (9, "acme-ai", "acme-large"): (Decimal("0.6092"), 0),
        (10, "nobody-prices-this", "acme-large"): (Decimal(0), 1),
        (15, "acme-ai", "acme-large"): (Decimal("0.06"), 0),
        (15, "acme-ai", "acme-large-2026-01-15"): (Decimal("0.06"), 0),
    }
    assert rollups("day") == {
        (0, "acme-ai", "acme-large"): (Decimal("0.6692"), 0),
        (0, "acme-ai", "acme-large-2026-01-15"): (Decimal("0.06"), 0),
        (0, "nobody-prices-this", "acme-large"): (Decimal(0), 1),
    }
    assert_rollups_match_records()

    # A second run finds nothing more to do.
    assert recompute_costs() == {"priced": 0, "still_unpriced": 1}
    assert rollups("day")[(0, "acme-ai", "acme-large")] == (Decimal("0.6692"), 0)
    assert_rollups_match_records()


def test_each_call_takes_the_price_in_force_when_it_happened(calls, cli):
    cli("prices set acme-ai acme-large --input 1 --from 2026-01-01")
    cli("prices set acme-ai acme-large --input 2 --from 2026-03-10T12:00:00")
    assert recompute_costs()["priced"] == 4
    got = records()
    assert [got[k].cost for k in "abcd"] == [Decimal("0.01"), Decimal("0.01"), Decimal("0.02"), Decimal("0.02")]
    assert got["a"].price_id != got["c"].price_id
    assert_rollups_match_records()


def test_a_tenant_price_prices_that_tenants_calls(calls, cli, make_tenant):
    slug, _, other = make_tenant()
    store_usage([call(other, "other", DAY + timedelta(hours=9))])
    _db.session.commit()
    cli("prices set acme-ai acme-large --input 1 --from 2026-01-01")
    cli(f"prices set acme-ai acme-large --input 5 --tenant {slug} --from 2026-01-01")
    assert recompute_costs()["priced"] == 5
    got = records()
    assert (got["a"].cost, got["other"].cost) == (Decimal("0.01"), Decimal("0.05"))
    assert_rollups_match_records()


def test_small_batches_walk_past_calls_that_stay_unpriced(calls, cli, make_tenant):
    _, _, other = make_tenant()
    store_usage([call(other, f"x{n}", DAY + timedelta(minutes=n), service="nobody-prices-this") for n in range(5)])
    store_usage([call(other, "y", DAY + timedelta(hours=1))])
    _db.session.commit()
    cli("prices set acme-ai acme-large --input 1 --from 2026-01-01")
    assert recompute_costs(batch=2) == {"priced": 5, "still_unpriced": 6}
    assert recompute_costs(batch=2) == {"priced": 0, "still_unpriced": 6}
    assert_rollups_match_records()


def test_calls_after_now_wait_for_a_later_run(calls, cli):
    cli("prices set acme-ai acme-large --input 1 --from 2026-01-01")
    assert recompute_costs(now=DAY + timedelta(hours=12)) == {"priced": 2, "still_unpriced": 1}
    assert recompute_costs() == {"priced": 2, "still_unpriced": 1}


def test_the_recompute_costs_job_runs_from_the_command_line(calls, cli):
    assert any(line.split()[0] == "recompute-costs" for line in cli("jobs list").splitlines())
    cli("prices set acme-ai '' --per-request 0.001 --from 2026-01-01")
    output = cli("jobs run recompute-costs")
    assert "recompute-costs: {'priced': 4, 'still_unpriced': 1}" in output
    assert records()["a"].cost == Decimal("0.001")
