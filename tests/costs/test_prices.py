"""The price catalog: how a call is priced, ``prices import``, ``prices list`` and ``prices set``."""

from __future__ import annotations

import shlex
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select, update

from portal.costs import prices as prices_module
from portal.costs.catalog import genai_price_rows
from portal.costs.prices import PriceBook, current_price_book, family_name, forget_price_book, prices_version
from portal.extensions import db as _db
from portal.metering.store import store_usage
from portal.models import ModelPrice, UsageRecord, utcnow

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def restore_catalog(app):
    """model_prices is reference data the suite keeps: put it back as it was after each test."""
    with app.app_context():
        newest = _db.session.scalar(select(func.max(ModelPrice.id))) or 0
        open_ids = set(_db.session.scalars(select(ModelPrice.id).where(ModelPrice.effective_to.is_(None))))
        _db.session.remove()
    forget_price_book()
    yield
    with app.app_context():
        _db.session.execute(delete(ModelPrice).where(ModelPrice.id > newest))
        if open_ids:
            _db.session.execute(update(ModelPrice).where(ModelPrice.id.in_(open_ids)).values(effective_to=None))
        _db.session.commit()
        _db.session.remove()
    forget_price_book()


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(command: str, *more: str):
        return runner.invoke(args=[*shlex.split(command), *more])

    return invoke


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def add_price(**fields) -> ModelPrice:
    fields.setdefault("source", "operator")
    fields.setdefault("effective_from", datetime(2025, 1, 1, tzinfo=UTC))
    price = ModelPrice(**fields)
    _db.session.add(price)
    _db.session.commit()
    return price


def quote(service, model, at=AT, tenant_id=None, **usage):
    return PriceBook.load().quote(tenant_id, service, model, at, **usage)


# --- seed 002's figure ---------------------------------------------------------------------------


def test_seed_002_groq_tokens_cost_exactly_0_236(db):
    book = PriceBook.load()
    # 400,000 tokens in one go and as seed 002's 1,000 calls of 400.
    whole = book.quote(None, "groq", "llama-3.1-70b-versatile", AT, tokens_in=400_000)
    calls = [book.quote(None, "groq", "llama-3.1-70b-versatile", AT, tokens_in=400) for _ in range(1000)]
    assert whole.cost == Decimal("0.236")
    assert sum((q.cost for q in calls), Decimal(0)) == Decimal("0.236")
    assert book.cost("groq", "llama-3.1-70b-versatile", AT, tokens_in=400_000) == Decimal("0.23600000")


def test_seed_002_figure_holds_after_the_import(cli, db):
    ok(cli("prices import"))
    price = PriceBook.load().price_at("groq", "llama-3.1-70b-versatile", AT)
    assert price.source == "genai-prices"
    assert quote("groq", "llama-3.1-70b-versatile", tokens_in=400_000).cost == Decimal("0.236")


# --- the cost of a call --------------------------------------------------------------------------


def test_cached_tokens_cost_the_cached_price_and_are_not_also_input(db):
    price = add_price(
        service="acme-ai",
        model="acme-large",
        input_per_million=Decimal("2.50"),
        cached_input_per_million=Decimal("1.25"),
        output_per_million=Decimal("10"),
    )
    got = quote("acme-ai", "acme-large", tokens_in=1234, cached_tokens=567, tokens_out=89)
    # 667 uncached x 2.50 + 567 cached x 1.25 + 89 out x 10, per million.
    assert got.cost == Decimal("0.00326625")
    assert got.price_id == price.id


def test_without_a_cached_price_cached_tokens_cost_the_input_price(db):
    add_price(service="acme-ai", model="acme-large", input_per_million=Decimal("2.50"), output_per_million=Decimal(10))
    got = quote("acme-ai", "acme-large", tokens_in=1234, cached_tokens=567, tokens_out=89)
    assert got.cost == Decimal("0.00397500")  # 1234 x 2.50 + 89 x 10


def test_per_request_and_per_unit_prices_add_up(db):
    add_price(service="acme-api", model="", per_request=Decimal("0.000116"), per_quota_unit=Decimal("0.40"))
    assert quote("acme-api", "", quota_units=3).cost == Decimal("1.20011600")
    assert quote("twitter", "").cost == Decimal("0.000116")
    assert quote("youtube", "", quota_units=100).cost == Decimal(0)
    assert quote("apify", "", quota_units=5).cost == Decimal("2.00")


TIERED = [
    {
        "above_input_tokens": 200_000,
        "input_per_million": "6",
        "output_per_million": "22.5",
        "cached_input_per_million": "0.6",
    }
]


@pytest.mark.parametrize(
    ("tokens_in", "cached", "tokens_out", "expected"),
    [
        (200_000, 0, 1000, "0.61500000"),  # at the threshold: base prices (3 / 15)
        (200_001, 0, 1000, "1.22250600"),  # past it: the tier's prices for the whole request
        (300_000, 100_000, 0, "1.26000000"),  # 200,000 x 6 + 100,000 cached x 0.6
        (1000, 1000, 0, "0.00030000"),  # all cached, base cached price 0.30
    ],
)
def test_tiers_price_the_whole_request_past_their_threshold(db, tokens_in, cached, tokens_out, expected):
    add_price(
        service="acme-ai",
        model="acme-long",
        input_per_million=Decimal(3),
        output_per_million=Decimal(15),
        cached_input_per_million=Decimal("0.30"),
        tiers=TIERED,
    )
    got = quote("acme-ai", "acme-long", tokens_in=tokens_in, cached_tokens=cached, tokens_out=tokens_out)
    assert got.cost == Decimal(expected)


def test_the_highest_tier_passed_applies(db):
    tiers = [
        {"above_input_tokens": 1000, "input_per_million": "2", "output_per_million": "0"},
        {"above_input_tokens": 10_000, "input_per_million": "1", "output_per_million": "0"},
    ]
    add_price(service="acme-ai", model="acme-bulk", input_per_million=Decimal(4), tiers=tiers)
    assert quote("acme-ai", "acme-bulk", tokens_in=1000).cost == Decimal("0.004")
    assert quote("acme-ai", "acme-bulk", tokens_in=1001).cost == Decimal("0.002002")
    assert quote("acme-ai", "acme-bulk", tokens_in=20_000).cost == Decimal("0.02")


def test_an_unknown_service_or_model_has_no_price(db):
    assert quote("nobody-knows", "x", tokens_in=10) is None
    assert quote("openai", "not-a-model", tokens_in=10) is None


# --- which price: models, families, sources, tenants -------------------------------------------


@pytest.mark.parametrize(
    ("asked", "priced_as"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-mini-20240718", "gpt-4o-mini"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4o@20240806", "gpt-4o"),
        ("gpt-4o-latest", "gpt-4o"),
        ("gpt-4o-mini-search-preview", "gpt-4o-mini"),
    ],
)
def test_a_dated_model_name_finds_its_family(db, asked, priced_as):
    price = PriceBook.load().price_at("openai", asked, AT)
    assert (price.model, price.source) == (priced_as, "tollgate")


@pytest.mark.parametrize(
    ("asked", "priced_as"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a dated name with its own price keeps it
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
    ],
)
def test_after_the_import_dated_names_find_their_catalog_entry(cli, db, asked, priced_as):
    ok(cli("prices import"))
    service = "anthropic" if asked.startswith("claude") else "openai"
    price = PriceBook.load().price_at(service, asked, AT)
    assert (price.model, price.source) == (priced_as, "genai-prices")


def test_family_names():
    assert family_name("gpt-4o-2024-08-06") == "gpt-4o"
    assert family_name("claude-3-5-sonnet@20240620") == "claude-3-5-sonnet"
    assert family_name("gpt-4-0613") == "gpt-4"
    assert family_name("o1-mini") == "o1-mini"


def test_sources_rank_operator_then_genai_prices_then_tollgate(db):
    start = datetime(2024, 1, 1, tzinfo=UTC)
    shipped = add_price(
        service="acme-ai", model="m", source="tollgate", input_per_million=Decimal(1), effective_from=start
    )
    assert quote("acme-ai", "m").price_id == shipped.id
    imported = add_price(service="acme-ai", model="m", source="genai-prices", input_per_million=Decimal(2))
    assert quote("acme-ai", "m").price_id == imported.id
    # An operator's price from a later date: before it, the imported one still stands.
    operator = add_price(
        service="acme-ai", model="m", input_per_million=Decimal(3), effective_from=datetime(2026, 2, 1, tzinfo=UTC)
    )
    assert quote("acme-ai", "m").price_id == operator.id
    assert quote("acme-ai", "m", at=datetime(2026, 1, 31, tzinfo=UTC)).price_id == imported.id


def test_a_tenant_price_wins_for_that_tenant_only(cli, db, make_tenant):
    slug, _, tenant_id = make_tenant()
    _, _, other_id = make_tenant()
    ok(cli(f"prices set openai gpt-4o --input 1 --output 2 --tenant {slug} --from 2024-01-01"))
    book = PriceBook.load()
    mine = book.quote(tenant_id, "openai", "gpt-4o", AT, tokens_in=1_000_000, tokens_out=1_000_000)
    theirs = book.quote(other_id, "openai", "gpt-4o", AT, tokens_in=1_000_000, tokens_out=1_000_000)
    catalog = book.quote(None, "openai", "gpt-4o", AT, tokens_in=1_000_000, tokens_out=1_000_000)
    assert mine.cost == Decimal(3)
    assert theirs.cost == catalog.cost == Decimal("12.50")  # 2.50 + 10.00
    # The tenant's price covers the model's dated names, but not a neighbouring family.
    assert book.quote(tenant_id, "openai", "gpt-4o-2024-08-06", AT, tokens_in=10**6).cost == Decimal(1)
    assert book.quote(tenant_id, "openai", "gpt-4o-mini", AT, tokens_in=10**6).cost == Decimal("0.15")


def test_a_tenant_service_wide_price_beats_the_catalog(cli, db, make_tenant):
    slug, _, tenant_id = make_tenant()
    ok(cli(f"prices set twitter '' --per-request 0.0001 --tenant {slug} --from 2024-01-01"))
    book = PriceBook.load()
    assert book.quote(tenant_id, "twitter", "", AT).cost == Decimal("0.0001")
    assert book.quote(None, "twitter", "", AT).cost == Decimal("0.000116")


# --- prices set ----------------------------------------------------------------------------------


def test_a_price_change_keeps_costs_computed_before_and_prices_later_calls_anew(cli, db, make_tenant):
    _, _, tenant_id = make_tenant()
    before_change = datetime(2026, 5, 20, tzinfo=UTC)
    after_change = datetime(2026, 6, 2, tzinfo=UTC)
    old = PriceBook.load().quote(tenant_id, "groq", "llama-3.1-70b-versatile", before_change, tokens_in=400_000)
    record = {
        "tenant_id": tenant_id,
        "source": "external",
        "service": "groq",
        "endpoint": "/v1/chat/completions",
        "status_code": 200,
        "model": "llama-3.1-70b-versatile",
        "tokens_in": 400_000,
    }
    store_usage(
        [
            {
                **record,
                "occurred_at": before_change,
                "idempotency_key": "priced",
                "cost": old.cost,
                "price_id": old.price_id,
            }
        ]
    )
    _db.session.commit()

    output = ok(cli("prices set groq llama-3.1-70b-versatile --input 1.00 --output 2 --from 2026-06-01"))
    assert "from 2026-06-01 00:00 UTC" in output

    book = PriceBook.load()
    assert book.quote(None, "groq", "llama-3.1-70b-versatile", before_change, tokens_in=400_000).cost == Decimal(
        "0.236"
    )
    assert book.quote(None, "groq", "llama-3.1-70b-versatile", after_change, tokens_in=400_000).cost == Decimal("0.4")
    _db.session.expire_all()
    stored = _db.session.scalar(select(UsageRecord).where(UsageRecord.idempotency_key == "priced"))
    assert (stored.cost, stored.price_id) == (Decimal("0.236"), old.price_id)

    # A second change closes the first at its start; the one before stays as it was.
    ok(cli("prices set groq llama-3.1-70b-versatile --input 0.50 --from 2026-09-01T12:00:00"))
    versions = _db.session.scalars(
        select(ModelPrice)
        .where(
            ModelPrice.service == "groq", ModelPrice.model == "llama-3.1-70b-versatile", ModelPrice.source == "operator"
        )
        .order_by(ModelPrice.effective_from)
    ).all()
    assert [(v.effective_from, v.effective_to) for v in versions] == [
        (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 9, 1, 12, tzinfo=UTC)),
        (datetime(2026, 9, 1, 12, tzinfo=UTC), None),
    ]
    # Prices not given are kept from the price in force.
    assert (versions[1].input_per_million, versions[1].output_per_million) == (Decimal("0.5"), Decimal(2))


def test_a_price_set_without_a_date_starts_now_and_workers_reload(cli, db, redis):
    book = current_price_book(redis)
    assert current_price_book(redis) is book
    version = prices_version(redis)
    ok(cli("prices set acme-ai acme-large --input 4"))
    assert prices_version(redis) != version
    reloaded = current_price_book(redis)
    assert reloaded is not book
    price = reloaded.price_at("acme-ai", "acme-large", utcnow())
    assert price.input_per_million == Decimal(4)
    assert utcnow() - price.effective_from < timedelta(minutes=1)


def test_the_prices_version_never_goes_back_after_redis_lost_it(app, redis):
    first = int(prices_module.bump_prices_version(redis))
    redis.delete(prices_module.PRICES_VERSION)  # a failover that lost the last bump
    assert int(prices_module.bump_prices_version(redis)) > first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "-1"], "input must not be negative"),
        (["--output", "abc"], "output must be a number"),
        (["--cached-input", "0.000000001"], "cached_input has more than 8 decimal places"),
        (["--input", "1", "--tenant", "no-such-tenant"], "no tenant with slug 'no-such-tenant'"),
        (["--input", "1", "--from", "2026-13-01"], "bad date '2026-13-01'"),
        (["--input", "1", "--from", "yesterday"], "bad date 'yesterday'"),
        ([], "give at least one price"),
    ],
)
def test_prices_set_refuses_bad_input_and_stores_nothing(cli, db, redis, args, message):
    count = _db.session.scalar(select(func.count()).select_from(ModelPrice))
    version = prices_version(redis)
    result = cli("prices set openai gpt-4o", *args)
    assert result.exit_code != 0
    assert message in result.output
    assert _db.session.scalar(select(func.count()).select_from(ModelPrice)) == count
    assert prices_version(redis) == version


# --- prices list ---------------------------------------------------------------------------------


def test_prices_list_prints_the_prices_in_force(cli, db, make_tenant):
    output = ok(cli("prices list --service groq"))
    lines = output.splitlines()
    assert lines[0].split()[:3] == ["service", "model", "input/1M"]
    [line] = [row for row in lines if " llama-3.1-70b-versatile " in row]
    assert line.split() == [
        "groq",
        "llama-3.1-70b-versatile",
        "0.59",
        "0.59",
        "-",
        "0",
        "0",
        "tollgate",
        "2024-01-01",
        "00:00",
    ]
    assert all(row.startswith("groq ") for row in lines[1:])

    slug, _, _ = make_tenant()
    ok(cli(f"prices set groq llama-3.1-70b-versatile --input 0.3 --tenant {slug} --from 2025-01-01"))
    [mine] = [row for row in ok(cli(f"prices list --service groq --tenant {slug}")).splitlines() if "70b" in row]
    assert mine.split()[2:8] == ["0.3", "0.59", "-", "0", "0", "tenant"]
    [catalog] = [row for row in ok(cli("prices list --service groq")).splitlines() if "70b" in row]
    assert catalog.split()[7] == "tollgate"


def test_prices_list_names_what_it_cannot_find(cli, db):
    assert "no tenant with slug 'ghost'" in cli("prices list --tenant ghost").output
    result = cli("prices list --service nothing-here")
    assert result.exit_code != 0
    assert "no prices in force for service 'nothing-here'" in result.output


# --- prices import -------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Refuse every connection but to this machine (the test database and Redis)."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family != socket.AF_UNIX and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def service_counts() -> dict[str, int]:
    rows = _db.session.execute(
        select(ModelPrice.service, func.count()).where(ModelPrice.source == "genai-prices").group_by(ModelPrice.service)
    )
    return dict(rows.all())


def test_prices_import_fills_the_catalog_offline_and_only_once(cli, db, offline):
    from genai_prices import data_snapshot

    expected = sum(1 for row in genai_price_rows() if row is not None)
    first = ok(cli("prices import"))
    assert f"{expected} price versions added, 0 unchanged" in first
    counts = service_counts()
    assert sum(counts.values()) == expected
    assert all(counts.get(service, 0) > 5 for service in ("openai", "anthropic", "groq", "google", "mistral"))
    # Only the bundled data was read: no updater installed a snapshot of its own.
    assert data_snapshot._custom_snapshot is None

    second = ok(cli("prices import"))
    assert f"0 price versions added, {expected} unchanged" in second
    assert "0 of Tollgate's own prices added" in second
    assert service_counts() == counts
    own = _db.session.execute(
        select(ModelPrice.service, func.count())
        .where(ModelPrice.service.in_(["twitter", "youtube", "apify"]), ModelPrice.tenant_id.is_(None))
        .group_by(ModelPrice.service)
    ).all()
    assert dict(own) == {"twitter": 1, "youtube": 1, "apify": 1}


def test_imported_prices_cost_what_genai_prices_says(cli, db):
    from genai_prices import Usage, calc_price

    ok(cli("prices import"))
    book = PriceBook.load()
    at = datetime(2026, 11, 1, tzinfo=UTC)
    cases = [
        ("openai", "gpt-4o", 12_345, 2_000, 678),
        ("openai", "gpt-4o-mini-2024-07-18", 50_000, 10_000, 9_000),
        ("anthropic", "claude-sonnet-4-5", 250_000, 100_000, 3_000),  # past the 200k tier
        ("anthropic", "claude-sonnet-4-5", 150_000, 100_000, 3_000),
        ("google", "gemini-2.5-pro", 210_000, 0, 1_000),
        ("groq", "llama-3.1-70b-versatile", 400_000, 0, 0),
    ]
    for service, model, tokens_in, cached, tokens_out in cases:
        usage = Usage(input_tokens=tokens_in, cache_read_tokens=cached, output_tokens=tokens_out)
        theirs = calc_price(usage, model, provider_id=service, genai_request_timestamp=at).total_price
        ours = book.quote(None, service, model, at, tokens_in=tokens_in, tokens_out=tokens_out, cached_tokens=cached)
        assert ours.cost == theirs.quantize(Decimal("0.00000001")), (service, model)


def test_genai_versions_follow_the_package_start_dates(db):
    rows = [row for row in genai_price_rows() if row is not None]
    by_model: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_model.setdefault((row["service"], row["model"]), []).append(row)
    dated = [versions for versions in by_model.values() if len(versions) > 1]
    assert dated
    for versions in dated:
        assert versions[0]["effective_from"] == datetime(2023, 1, 1, tzinfo=UTC)
        for earlier, later in zip(versions, versions[1:], strict=False):
            assert earlier["effective_to"] == later["effective_from"]
        assert versions[-1]["effective_to"] is None
