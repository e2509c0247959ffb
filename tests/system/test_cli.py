"""The operator commands, run the way ``flask --app wsgi ...`` runs them: through the CLI runner,
with no application context of the test's own around them. The database is read between
commands in short application contexts of its own."""

from __future__ import annotations

import re
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from portal.extensions import db as _db
from portal.kernel.redis_keys import quota_key
from portal.models import ApiKey, Plan, Subscription, Tenant, UsageRecord, UsageRollup, User, utcnow
from portal.redis_store import get_redis
from portal.tenancy.keys import hash_secret
from portal.tenancy.passwords import verify_password
from tests.factories import PASSWORD

PLAN_CODES = "free, starter, professional, enterprise"


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=list(args))

    return invoke


@pytest.fixture
def session(app):
    """``with session() as s:`` — a short application context to look at the database."""

    @contextmanager
    def open_session():
        with app.app_context():
            try:
                yield _db.session
            finally:
                _db.session.remove()

    return open_session


def succeeded(result):
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


def count(s, model, *where) -> int:
    return s.scalar(select(func.count()).select_from(model).where(*where))


def create_tenant(cli, name="Globex", email="hank@globex.example", plan="starter", password=PASSWORD):
    return cli("create-tenant", name, "--plan", plan, "--admin-email", email, "--password", password)


def create_key(cli, slug, name, *extra):
    return last_line(succeeded(cli("create-api-key", slug, "--name", name, *extra)))


# --- create-tenant ---------------------------------------------------------------------------


def test_create_tenant_prints_the_slug_last_and_creates_owner_and_subscription(cli, session):
    before = utcnow()
    result = succeeded(create_tenant(cli, "Globex Corporation", "Hank.Scorpio@Globex.example"))
    slug = last_line(result)
    assert slug == "globex-corporation"

    with session() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.slug == slug))
        assert tenant.name == "Globex Corporation"
        assert tenant.is_active
        [owner] = tenant.users
        assert owner.email == "hank.scorpio@globex.example"
        assert owner.role == "owner"
        assert owner.password_hash.startswith("$argon2id$")
        assert PASSWORD not in owner.password_hash
        assert verify_password(owner.password_hash, PASSWORD)
        [subscription] = tenant.subscriptions
        assert subscription.plan.code == "starter"
        assert subscription.status == "active"
        assert subscription.ended_at is None
        assert subscription.current_period_start <= before < subscription.current_period_end


def test_create_tenant_on_each_plan(cli, session):
    for n, code in enumerate(PLAN_CODES.split(", ")):
        slug = last_line(succeeded(create_tenant(cli, f"Plan {code}", f"owner{n}@plans.example", plan=code)))
        with session() as s:
            assert s.scalar(select(Tenant).where(Tenant.slug == slug)).subscription.plan.code == code


def test_a_second_tenant_with_the_same_name_gets_another_slug(cli, session):
    first = last_line(succeeded(create_tenant(cli, "Initech", "bill@initech.example")))
    second = last_line(succeeded(create_tenant(cli, "Initech", "peter@initech.example")))
    assert first == "initech"
    assert second != first
    with session() as s:
        tenants = s.scalars(select(Tenant).order_by(Tenant.id)).all()
        assert [(t.name, t.slug) for t in tenants] == [("Initech", first), ("Initech", second)]
        assert [u.email for u in tenants[1].users] == ["peter@initech.example"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"plan": "gold"}, f"no plan 'gold'; plans are: {PLAN_CODES}"),
        ({"email": "not-an-address"}, "invalid e-mail address 'not-an-address'"),
        ({"email": "hank@globex"}, "invalid e-mail address 'hank@globex'"),
        ({"password": "short"}, "The password must be at least 12 characters long."),
        ({"name": "   "}, "the tenant needs a name"),
    ],
    ids=["unknown plan", "bad e-mail", "e-mail without a domain", "short password", "blank name"],
)
def test_create_tenant_refuses_bad_input_and_creates_nothing(cli, session, changes, message):
    result = create_tenant(cli, **changes)
    assert result.exit_code != 0
    assert message in result.output
    with session() as s:
        assert count(s, Tenant) == 0
        assert count(s, User) == 0
        assert count(s, Subscription) == 0


def test_create_tenant_refuses_an_e_mail_already_in_use(cli, session):
    succeeded(create_tenant(cli, "Globex", "hank@globex.example"))
    result = create_tenant(cli, "Globex Two", "HANK@globex.example")
    assert result.exit_code != 0
    assert "a user with e-mail hank@globex.example already exists" in result.output
    with session() as s:
        assert s.scalars(select(Tenant.name)).all() == ["Globex"]
        assert count(s, User) == 1
        assert count(s, Subscription) == 1


# --- create-api-key --------------------------------------------------------------------------


def test_create_api_key_shows_the_secret_once_and_stores_only_its_hash(cli, session, make_tenant):
    slug, _, tenant_id = make_tenant("Umbrella")
    result = succeeded(cli("create-api-key", slug, "--name", "Production", "--description", "main servers"))
    secret = last_line(result)
    assert secret.startswith("tg_")
    assert len(secret) > 40
    assert result.output.count(secret) == 1
    assert f"({secret[:11]})" in result.output  # the shown prefix

    with session() as s:
        [key] = s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)).all()
        assert key.name == "Production"
        assert key.description == "main servers"
        assert key.key_hash == hash_secret(secret)
        assert key.prefix == secret[:11]
        assert key.is_active
        assert key.revoked_at is None
        assert key.expires_at is None
        assert key.usage_count == 0
        # The secret is in no column of any table.
        for table in _db.metadata.sorted_tables:
            for row in s.execute(table.select()):
                for column, value in row._mapping.items():
                    assert secret not in str(value), f"{table.name}.{column.name} holds the secret"


def test_each_key_gets_its_own_secret_and_prefix(cli, session, make_tenant):
    slug, _, _ = make_tenant()
    first = create_key(cli, slug, "one")
    second = create_key(cli, slug, "two")
    assert first != second
    with session() as s:
        prefixes = set(s.scalars(select(ApiKey.prefix)))
        assert prefixes == {first[:11], second[:11]}


def test_create_api_key_with_an_expiry(cli, session, make_tenant):
    slug, _, _ = make_tenant()
    before = utcnow()
    secret = create_key(cli, slug, "Temporary", "--expires-in-days", "30")
    after = utcnow()
    with session() as s:
        key = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret)))
        assert before + timedelta(days=30) <= key.expires_at <= after + timedelta(days=30)
        assert key.state(utcnow()) == "active"
        assert key.state(after + timedelta(days=30, seconds=1)) == "expired"


def test_create_api_key_refuses_a_zero_day_expiry(cli, session, make_tenant):
    slug, _, _ = make_tenant()
    result = cli("create-api-key", slug, "--name", "x", "--expires-in-days", "0")
    assert result.exit_code != 0
    assert "--expires-in-days" in result.output
    with session() as s:
        assert count(s, ApiKey) == 0


def test_create_api_key_for_an_unknown_tenant(cli, session):
    result = cli("create-api-key", "no-such-tenant", "--name", "Production")
    assert result.exit_code != 0
    assert "no tenant with slug 'no-such-tenant'" in result.output
    with session() as s:
        assert count(s, ApiKey) == 0


# --- revoke-api-key --------------------------------------------------------------------------


def key_states(s, tenant_id=None) -> dict[str, tuple[bool, bool]]:
    """name -> (is_active, revoked)"""
    query = select(ApiKey)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return {k.name: (k.is_active, k.revoked_at is not None) for k in s.scalars(query)}


@pytest.mark.parametrize("by", ["name", "prefix"])
def test_revoke_api_key_by_name_or_prefix(cli, session, make_tenant, by):
    slug, _, _ = make_tenant()
    create_key(cli, slug, "Production")
    staging = create_key(cli, slug, "Staging")
    before = utcnow()
    result = succeeded(cli("revoke-api-key", slug, "Staging" if by == "name" else staging[:11]))
    after = utcnow()
    assert f"Revoked key 'Staging' ({staging[:11]}) of {slug}" in result.output
    with session() as s:
        assert key_states(s) == {"Production": (True, False), "Staging": (False, True)}
        revoked_at = s.scalar(select(ApiKey.revoked_at).where(ApiKey.name == "Staging"))
        assert before <= revoked_at <= after


@pytest.mark.parametrize(
    ("slug", "name_or_prefix", "message"),
    [
        (None, "Nope", "has no active key named or prefixed 'Nope'"),
        (None, "tg_00000000", "has no active key named or prefixed 'tg_00000000'"),
        ("no-such-tenant", "Production", "no tenant with slug 'no-such-tenant'"),
    ],
    ids=["unknown name", "unknown prefix", "unknown tenant"],
)
def test_revoke_api_key_that_is_not_there(cli, session, make_tenant, slug, name_or_prefix, message):
    own_slug, _, _ = make_tenant()
    create_key(cli, own_slug, "Production")
    result = cli("revoke-api-key", slug or own_slug, name_or_prefix)
    assert result.exit_code != 0
    assert message in result.output
    with session() as s:
        assert key_states(s) == {"Production": (True, False)}


def test_a_revoked_key_cannot_be_revoked_again(cli, session, make_tenant):
    slug, _, _ = make_tenant()
    create_key(cli, slug, "Production")
    succeeded(cli("revoke-api-key", slug, "Production"))
    result = cli("revoke-api-key", slug, "Production")
    assert result.exit_code != 0
    assert "no active key named or prefixed 'Production'" in result.output


def test_revoke_api_key_does_not_reach_another_tenants_key(cli, session, make_tenant):
    slug_a, _, tenant_a = make_tenant()
    slug_b, _, _ = make_tenant()
    secret_a = create_key(cli, slug_a, "Production")
    create_key(cli, slug_b, "Other")
    for target in (secret_a[:11], "Production"):
        result = cli("revoke-api-key", slug_b, target)
        assert result.exit_code != 0
        assert f"tenant {slug_b} has no active key" in result.output
    with session() as s:
        assert key_states(s, tenant_a) == {"Production": (True, False)}


def test_revoke_api_key_with_an_ambiguous_name_asks_for_the_prefix(cli, session, make_tenant):
    slug, _, _ = make_tenant()
    first = create_key(cli, slug, "Backend")
    second = create_key(cli, slug, "Backend")
    result = cli("revoke-api-key", slug, "Backend")
    assert result.exit_code != 0
    assert "2 keys match 'Backend'" in result.output
    assert first[:11] in result.output and second[:11] in result.output
    succeeded(cli("revoke-api-key", slug, second[:11]))
    with session() as s:
        states = {k.prefix: k.revoked_at is not None for k in s.scalars(select(ApiKey))}
        assert states == {first[:11]: False, second[:11]: True}


# --- set-plan --------------------------------------------------------------------------------


def plans_snapshot(s) -> dict[str, dict]:
    return {
        row.code: dict(row._mapping)
        for row in s.execute(select(*Plan.__table__.columns)).all()  # every column of every plan
    }


LIMITS = ("monthly_quota", "per_minute", "per_hour", "per_day")


def test_set_plan_changes_exactly_the_numbers_given(cli, session):
    with session() as s:
        before = plans_snapshot(s)
    result = succeeded(
        cli(
            "set-plan",
            "starter",
            "--monthly-quota",
            "250000",
            "--per-minute",
            "600",
            "--per-hour",
            "9000",
            "--per-day",
            "90000",
        )
    )
    assert last_line(result) == "starter: 250,000 requests/month, 600/minute, 9,000/hour, 90,000/day"
    with session() as s:
        after = plans_snapshot(s)
    assert {k: after["starter"][k] for k in LIMITS} == {
        "monthly_quota": 250_000,
        "per_minute": 600,
        "per_hour": 9_000,
        "per_day": 90_000,
    }
    unchanged = set(before["starter"]) - set(LIMITS) - {"updated_at"}
    assert {k: after["starter"][k] for k in unchanged} == {k: before["starter"][k] for k in unchanged}
    assert after["starter"]["monthly_price"] == Decimal("29.00")
    for code in ("free", "professional", "enterprise"):
        assert after[code] == before[code]


def test_set_plan_with_one_option_leaves_the_others(cli, session):
    with session() as s:
        before = plans_snapshot(s)["professional"]
    result = succeeded(cli("set-plan", "professional", "--per-hour", "25000"))
    assert last_line(result) == "professional: 1,000,000 requests/month, 1,000/minute, 25,000/hour, 200,000/day"
    with session() as s:
        after = plans_snapshot(s)["professional"]
    assert after["per_hour"] == 25_000
    assert {k: after[k] for k in set(after) - {"per_hour", "updated_at"}} == {
        k: before[k] for k in set(before) - {"per_hour", "updated_at"}
    }


def test_set_plan_unlimited_removes_the_monthly_quota(cli, session):
    result = succeeded(cli("set-plan", "starter", "--unlimited"))
    assert last_line(result) == "starter: unlimited requests/month, 300/minute, 5,000/hour, 50,000/day"
    with session() as s:
        starter = plans_snapshot(s)["starter"]
    assert starter["monthly_quota"] is None
    assert (starter["per_minute"], starter["per_hour"], starter["per_day"]) == (300, 5_000, 50_000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["starter", "--per-minute", "0"], "per-minute must be at least 1; got 0"),
        (["starter", "--monthly-quota", "-5"], "monthly-quota must be at least 1; got -5"),
        (["starter", "--monthly-quota", "5000", "--per-day", "0"], "per-day must be at least 1; got 0"),
        (["gold", "--per-minute", "10"], f"no plan 'gold'; plans are: {PLAN_CODES}"),
        (["starter", "--per-hour", "lots"], "'lots' is not a valid integer"),
    ],
    ids=["zero per minute", "negative quota", "good quota with zero per day", "unknown plan", "not a number"],
)
def test_set_plan_refuses_bad_values_and_changes_nothing(cli, session, args, message):
    with session() as s:
        before = plans_snapshot(s)
    result = cli("set-plan", *args)
    assert result.exit_code != 0
    assert message in result.output
    with session() as s:
        assert plans_snapshot(s) == before


# --- seed-demo -------------------------------------------------------------------------------


def printed(result, label: str) -> str:
    match = re.search(rf"^\s*{label}:\s+(\S.*?)\s*$", result.output, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{result.output}"
    return match.group(1)


def usage_totals(s, tenant_id) -> dict:
    """Per source: records, and the calls of the daily and of the hourly rollups."""
    records = dict(
        s.execute(
            select(UsageRecord.source, func.count()).where(UsageRecord.tenant_id == tenant_id).group_by("source")
        ).all()
    )
    rollups = {
        granularity: dict(
            s.execute(
                select(UsageRollup.source, func.sum(UsageRollup.calls))
                .where(UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == granularity)
                .group_by("source")
            ).all()
        )
        for granularity in ("day", "hour")
    }
    return {"records": records, **rollups}


def test_seed_demo_creates_a_tenant_with_consistent_history(app, cli, session, auth):
    password = "some long password"
    now = utcnow()
    result = succeeded(cli("seed-demo", "--days", "3", "--password", password))
    assert f"Sign in at {app.config['PORTAL_BASE_URL']}/login" in result.output
    email = printed(result, "e-mail")
    assert printed(result, "password") == password

    with session() as s:
        user = s.scalar(select(User).where(User.email == email))
        assert user.role == "owner"
        tenant_id = user.tenant_id
        keys = s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)).all()
        assert len(keys) >= 3
        revoked = [k for k in keys if k.revoked_at is not None]
        assert len(revoked) == 1
        assert not revoked[0].is_active
        assert all(k.is_active for k in keys if k.revoked_at is None)

        totals = usage_totals(s, tenant_id)
        assert set(totals["records"]) == {"api", "external"}
        assert all(n > 0 for n in totals["records"].values())
        assert f"{sum(totals['records'].values()):,} usage records" in result.output
        # Rollups agree with the rows, per source, in both granularities.
        assert totals["day"] == totals["records"]
        assert totals["hour"] == totals["records"]

        records = s.execute(
            select(
                UsageRecord.source,
                UsageRecord.api_key_id,
                UsageRecord.status_code,
                UsageRecord.cost,
                UsageRecord.occurred_at,
            ).where(UsageRecord.tenant_id == tenant_id)
        ).all()
        first_day = (now - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
        assert all(first_day <= r.occurred_at <= utcnow() for r in records)

        # The period's quota counter counts the calls the records say were admitted.
        period_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        admitted = sum(
            1 for r in records if r.source == "api" and r.status_code != 429 and r.occurred_at >= period_start
        )
        assert int(get_redis(app).get(quota_key(tenant_id, now)) or 0) == admitted

        # Every key's counter is its number of api-source calls.
        api_calls = Counter(r.api_key_id for r in records if r.source == "api")
        assert {k.id: k.usage_count for k in keys} == {k.id: api_calls[k.id] for k in keys}
        # The revoked key is not used after it was revoked.
        assert not [r for r in records if r.api_key_id == revoked[0].id and r.occurred_at >= revoked[0].revoked_at]

        # Errors and money agree between rows and rollups.
        rollups = s.execute(
            select(UsageRollup.errors, UsageRollup.cost).where(
                UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == "day"
            )
        ).all()
        assert sum(r.errors for r in rollups) == sum(1 for r in records if r.status_code >= 400)
        record_cost = sum((r.cost for r in records if r.cost is not None), Decimal(0))
        assert record_cost > 0
        assert sum((r.cost for r in rollups), Decimal(0)) == record_cost

    response = auth.login(email, password)
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"


def test_seed_demo_again_adds_nothing_and_resets_the_password(cli, session, auth):
    first = succeeded(cli("seed-demo", "--days", "3", "--password", "first long password"))
    email = printed(first, "e-mail")
    with session() as s:
        tenant_id = s.scalar(select(User.tenant_id).where(User.email == email))
        before = usage_totals(s, tenant_id)
        keys_before = key_states(s)

    second = succeeded(cli("seed-demo", "--days", "3"))  # a random password this time
    assert "already exists" in second.output
    assert printed(second, "e-mail") == email
    new_password = printed(second, "password")
    assert len(new_password) >= 8
    assert new_password != "first long password"

    with session() as s:
        assert count(s, Tenant) == 1
        assert usage_totals(s, tenant_id) == before
        assert key_states(s) == keys_before

    assert auth.login(email, "first long password").status_code == 401
    response = auth.login(email, new_password)
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"


# --- generate-usage --------------------------------------------------------------------------


def assert_rollups_agree(s, tenant_id, expected: int) -> None:
    totals = usage_totals(s, tenant_id)
    assert sum(totals["records"].values()) == expected
    assert totals["day"] == totals["records"]
    assert totals["hour"] == totals["records"]
    keys = s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id)).all()
    for key in keys:
        assert key.usage_count == count(s, UsageRecord, UsageRecord.api_key_id == key.id, UsageRecord.source == "api")


def test_generate_usage_over_new_tenants(cli, session):
    now = utcnow()
    result = succeeded(cli("generate-usage", "--tenants", "2", "--records", "500", "--days", "5"))
    assert "Stored 500 records for 2 tenant(s)" in result.output
    with session() as s:
        tenants = s.scalars(select(Tenant)).all()
        assert len(tenants) == 2
        assert count(s, UsageRecord) == 500
        for tenant in tenants:
            assert tenant.slug in result.output
            records = count(s, UsageRecord, UsageRecord.tenant_id == tenant.id)
            assert records > 0
            assert_rollups_agree(s, tenant.id, records)
        oldest = s.scalar(select(func.min(UsageRecord.occurred_at)))
        assert oldest >= now - timedelta(days=5)


def test_generate_usage_for_one_tenant(cli, session, make_tenant):
    slug, _, tenant_id = make_tenant()
    _, _, other_id = make_tenant()
    create_key(cli, slug, "bench key")
    now = utcnow()
    succeeded(cli("generate-usage", "--tenant", slug, "--records", "300", "--days", "2"))
    with session() as s:
        assert_rollups_agree(s, tenant_id, 300)
        assert count(s, UsageRecord, UsageRecord.tenant_id == other_id) == 0
        assert s.scalar(select(func.min(UsageRecord.occurred_at))) >= now - timedelta(days=2)
        assert s.scalar(select(ApiKey.usage_count)) == 300

    succeeded(cli("generate-usage", "--tenant", slug, "--records", "300", "--days", "2"))
    with session() as s:
        assert_rollups_agree(s, tenant_id, 600)
        assert count(s, Tenant) == 2


@pytest.mark.parametrize(
    "target",
    [["--tenant", "acme", "--tenants", "2"], []],
    ids=["both", "neither"],
)
def test_generate_usage_needs_exactly_one_target(cli, session, make_tenant, target):
    make_tenant("Acme")
    result = cli("generate-usage", *target, "--records", "10", "--days", "1")
    assert result.exit_code != 0
    assert "give exactly one of --tenant SLUG or --tenants M" in result.output
    with session() as s:
        assert count(s, Tenant) == 1
        assert count(s, UsageRecord) == 0


def test_generate_usage_for_an_unknown_tenant(cli, session):
    result = cli("generate-usage", "--tenant", "no-such-tenant", "--records", "10", "--days", "1")
    assert result.exit_code != 0
    assert "no tenant with slug 'no-such-tenant'" in result.output
    with session() as s:
        assert count(s, UsageRecord) == 0
