"""Realistic synthetic usage: the demo tenant's history and benchmark data.

Both go through :func:`portal.metering.store.store_usage`, the same write path as live traffic, so
rows, rollups and key counters agree exactly.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import secrets
import time
import uuid
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import accumulate, islice
from typing import Any

from flask import current_app
from sqlalchemy import select

from .billing.statements import close_periods
from .costs.prices import PriceBook
from .extensions import db
from .kernel.periods import billing_period
from .metering.store import store_usage
from .models import ApiKey, Tenant, utcnow
from .onboarding import create_tenant
from .tenancy.accounts import AccountError, create_user, find_user_by_email
from .tenancy.keys import create_api_key, revoke_api_key
from .tenancy.passwords import hash_password, password_problem

DEMO_TENANT = "Acme Analytics"
DEMO_EMAIL = "admin@acme.example"
DEMO_MEMBER_EMAIL = "dev@acme.example"
DEMO_PLAN = "professional"
# What the demo admin's password is judged against (see portal.tenancy.passwords).
DEMO_USER_INPUTS = (DEMO_EMAIL, DEMO_TENANT)

# (endpoint, method, category, relative weight, typical duration ms) of Tollgate's own API.
API_ENDPOINTS = (
    ("/api/v1/usage/stats", "GET", "analytics", 30, 45),
    ("/api/v1/usage/logs", "GET", "analytics", 18, 70),
    ("/api/v1/account/usage", "GET", "analytics", 14, 60),
    ("/api/v1/billing/usage", "GET", "billing", 10, 35),
    ("/api/v1/billing/subscription", "GET", "billing", 5, 20),
    ("/api/v1/usage/summary", "GET", "analytics", 12, 40),
    ("/api/v1/ping", "GET", "system", 11, 4),
)
# The occasional client error of Tollgate's own API.
API_ERRORS = (
    (400, "Invalid date range"),
    (422, "interval must be one of hourly, daily, weekly, monthly"),
    (404, "Not found"),
)
# (service, endpoint, model, weight, typical duration ms, tokens in, tokens out, quota units)
EXTERNAL_CALLS = (
    ("openai", "/v1/chat/completions", "gpt-4o-mini", 30, 900, 700, 350, 0),
    ("openai", "/v1/chat/completions", "gpt-4o", 8, 2200, 1200, 600, 0),
    ("openai", "/v1/embeddings", "text-embedding-3-small", 12, 150, 800, 0, 0),
    ("groq", "/v1/chat/completions", "llama-3.1-70b-versatile", 20, 600, 600, 300, 0),
    ("groq", "/v1/chat/completions", "llama-3.1-8b-instant", 14, 250, 400, 200, 0),
    ("twitter", "/2/users/:id/tweets", "", 8, 400, 0, 0, 0),
    ("youtube", "/youtube/v3/search", "", 5, 350, 0, 0, 100),
    ("youtube", "/youtube/v3/videos", "", 3, 200, 0, 0, 1),
)
END_USERS = ("web-app", "reporting-bot", "support-bot", "data-team", "mobile")


@dataclass
class DemoResult:
    tenant: Tenant
    email: str
    password: str
    records: int
    created: bool


def _diurnal(hour: int) -> float:
    """Traffic by hour of day (UTC): quiet at night, a peak in the afternoon."""
    return 0.25 + 0.75 * math.exp(-((hour - 14.5) ** 2) / 18)


def _day_volume(rng: random.Random, day_index: int, days: int, weekday: int, base: int) -> int:
    trend = 0.75 + 0.35 * day_index / max(days - 1, 1)  # business grows over the quarter
    rhythm = 0.35 if weekday >= 5 else 1.0
    return max(0, int(rng.gauss(base * trend * rhythm, base * 0.06)))


def _pick(rng: random.Random, options: tuple, weight_index: int):
    return rng.choices(options, weights=[o[weight_index] for o in options])[0]


def demo_records(
    tenant_id: int,
    key_ids: list[int],
    days: int,
    now: datetime,
    prices: PriceBook,
    rng: random.Random,
    api_per_day: int = 1000,
    external_per_day: int = 260,
    retired_at: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield ``days`` days of usage ending at ``now``, day by day.

    The last key stops being used at ``retired_at`` (it gets revoked then).
    """
    first_day = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    # A handful of bad hours: an outage (5xx) and clients hammering past their windows (429).
    outage_days = set(rng.sample(range(days), k=min(3, days)))
    throttle_days = set(rng.sample(range(days), k=min(4, days)))
    hour_weights = [_diurnal(h) for h in range(24)]
    for index in range(days):
        day = first_day + timedelta(days=index)
        bad_hour = rng.randrange(8, 20)
        for source, base in (("api", api_per_day), ("external", external_per_day)):
            for _ in range(_day_volume(rng, index, days, day.weekday(), base)):
                hour = rng.choices(range(24), weights=hour_weights)[0]
                at = day + timedelta(hours=hour, seconds=rng.uniform(0, 3599.999))
                if at > now:
                    continue
                burst = hour == bad_hour
                record = (
                    _api_call(rng, index in outage_days and burst, index in throttle_days and burst)
                    if source == "api"
                    else _external_call(rng, prices, tenant_id, at, index in outage_days and burst)
                )
                key_id = rng.choices(key_ids, weights=[8, 3, 2, 1][: len(key_ids)])[0]
                if retired_at is not None and key_id == key_ids[-1] and at >= retired_at:
                    key_id = key_ids[0]
                record.update(
                    tenant_id=tenant_id,
                    api_key_id=key_id,
                    end_user=rng.choice(END_USERS),
                    source=source,
                    occurred_at=at,
                    idempotency_key=uuid.UUID(int=rng.getrandbits(128)).hex,
                )
                yield record


def _duration(rng: random.Random, typical: int) -> int:
    return max(1, int(rng.lognormvariate(math.log(typical), 0.45)))


def _api_call(rng: random.Random, outage: bool, throttled: bool) -> dict[str, Any]:
    endpoint, method, category, _, typical = _pick(rng, API_ENDPOINTS, 3)
    status = 200
    error = None
    roll = rng.random()
    if throttled and roll < 0.45:
        status, error = 429, "Rate limit exceeded for minute"
    elif outage and roll < 0.35:
        status, error = rng.choice(((500, "Internal server error"), (503, "Service unavailable")))
    elif roll < 0.012:
        status, error = rng.choice(API_ERRORS)
    return {
        "service": "tollgate",
        "endpoint": endpoint,
        "method": method,
        "category": category,
        "status_code": status,
        "duration_ms": 1 if status == 429 else _duration(rng, typical),
        # An admitted call uses one unit of the monthly quota; a refused one (429) none.
        "quota_units": 0 if status == 429 else 1,
        "error_message": error,
    }


def _external_call(rng: random.Random, prices: PriceBook, tenant_id: int, at: datetime, outage: bool) -> dict[str, Any]:
    service, endpoint, model, _, typical, t_in, t_out, units = _pick(rng, EXTERNAL_CALLS, 3)
    status, error = 200, None
    if outage and rng.random() < 0.3:
        status, error = 502, f"{service} upstream error"
    tokens_in = int(t_in * rng.uniform(0.4, 1.8)) if t_in else 0
    tokens_out = int(t_out * rng.uniform(0.3, 1.9)) if t_out and status == 200 else 0
    quote = prices.quote(tenant_id, service, model, at, tokens_in, tokens_out, quota_units=units)
    return {
        "service": service,
        "endpoint": endpoint,
        "method": "POST" if service in ("openai", "groq") else "GET",
        "category": "llm" if tokens_in else "social",
        "status_code": status,
        "duration_ms": _duration(rng, typical),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "quota_units": units,
        "model": model,
        "cost": quote.cost if quote else None,
        "price_id": quote.price_id if quote else None,
        "error_message": error,
        "meta": {"model": model} if model else None,
    }


def store_in_batches(
    records: Iterator[dict[str, Any]], batch: int = 5000, progress: Callable[[int], None] | None = None
) -> int:
    """Store records, committing every ``batch``; returns how many were new.

    The next batch is generated in a thread while the database stores the current one (the
    generator must not use the database)."""
    stored = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollgate-generate") as pool:
        upcoming = pool.submit(list, islice(records, batch))
        while chunk := upcoming.result():
            upcoming = pool.submit(list, islice(records, batch))
            stored += store_usage(chunk)
            db.session.commit()
            if progress:
                progress(len(chunk))
    return stored


def random_password(nbytes: int = 12, user_inputs: Iterable[str] = DEMO_USER_INPUTS) -> str:
    """A random password that meets the password policy (``nbytes`` random bytes, URL-safe)."""
    # 16 random characters all but always pass; the loop only makes "all but" certain.
    while password_problem(password := secrets.token_urlsafe(nbytes), user_inputs) is not None:
        pass
    return password


def seed_demo(
    days: int = 90,
    password: str | None = None,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Create the demo tenant with ``days`` of history, or reset its password if it exists.
    ``password`` (default: a random one) must meet the password policy (``AccountError``)."""
    now = now or utcnow()
    existing = find_user_by_email(DEMO_EMAIL)
    user_inputs = DEMO_USER_INPUTS if existing is None else (*DEMO_USER_INPUTS, existing.name, existing.tenant.name)
    if not password:
        password = random_password(user_inputs=user_inputs)
    elif (problem := password_problem(password, user_inputs)) is not None:
        raise AccountError(problem)
    if existing is not None:
        existing.password_hash = hash_password(password, user_inputs)
        db.session.commit()
        return DemoResult(existing.tenant, DEMO_EMAIL, password, 0, created=False)

    tenant = create_tenant(DEMO_TENANT, DEMO_PLAN, DEMO_EMAIL, password)
    create_user(tenant, DEMO_MEMBER_EMAIL, random_password(16), role="member", name="Dev")
    keys = [
        create_api_key(tenant, name, description)[0]
        for name, description in (
            ("Production backend", "Main application servers"),
            ("Reporting", "Nightly and weekly reports"),
            ("Staging", "Pre-release environment"),
            ("Old mobile app", "Replaced by the new app in the spring"),
        )
    ]
    for key in keys:
        key.created_at = now - timedelta(days=days + 5)
    db.session.flush()
    key_ids = [k.id for k in keys]
    db.session.commit()

    rng = random.Random(20261101)
    retired_at = now - timedelta(days=min(10, days // 2))
    records = demo_records(tenant.id, key_ids, days, now, PriceBook.load(), rng, retired_at=retired_at)
    stored = store_in_batches(records, progress=progress)
    revoke_api_key(db.session.get(ApiKey, key_ids[-1]), retired_at)
    db.session.commit()
    # The demo tenant has been a customer since its history began: its past months are closed
    # into statements (calls counted from the rollups; there are no live counters for them).
    since = now - timedelta(days=days)
    subscription = tenant.subscription
    subscription.started_at = since
    subscription.current_period_start, subscription.current_period_end = billing_period(since)
    tenant.created_at = since
    db.session.commit()
    close_periods(now)
    _add_budgets_and_alerts(tenant, now)
    return DemoResult(tenant, DEMO_EMAIL, password, stored, created=True)


def _add_budgets_and_alerts(tenant: Tenant, now: datetime) -> None:
    """Two budgets near the demo's monthly spend, and one alert pass, so the portal's cost and
    alert pages show what a running tenant sees."""
    from .alerts.evaluate import evaluate_alerts
    from .costs.budgets import create_budget, evaluate_budgets
    from .kernel.redis_keys import quota_key
    from .metering.quota import rebuild_quota_counter
    from .redis_store import get_redis

    create_budget(tenant.id, "All outside services", "90.00", warning_percentages=[50, 80, 100])
    create_budget(tenant.id, "OpenAI", "25.00", service="openai", warning_percentages=[50, 80, 100])
    db.session.commit()
    redis = get_redis()
    # The period's quota counter counts what the records hold (a counter left from an earlier
    # demo database would not).
    redis.delete(quota_key(tenant.id, now))
    rebuild_quota_counter(redis, tenant.id, now.timestamp())
    evaluate_budgets(redis, [tenant.id], now)
    db.session.commit()
    evaluate_alerts(redis, now, [tenant.id])


def synthetic_records(
    tenant_ids: list[int],
    keys_by_tenant: dict[int, list[int]],
    count: int,
    days: int,
    now: datetime,
    rng: random.Random,
) -> Iterator[dict[str, Any]]:
    """``count`` records spread evenly over ``days`` and over the tenants (benchmark data).

    They come oldest first, as traffic does, so a batch of them shares a few hours' rollups.
    Each is an API call as :func:`_api_call` draws it (the same seed, the same records), with
    every field, so the store takes it as it is.
    """
    span = days * 86400
    step = span / count
    start = now - timedelta(seconds=span)
    random_, choice, lognormal, bits = rng.random, rng.choice, rng.lognormvariate, rng.getrandbits
    # rng.choices(API_ENDPOINTS, weights=...)[0], without building the weights every call
    cumulative = list(accumulate(endpoint[3] for endpoint in API_ENDPOINTS))
    total, last = cumulative[-1] + 0.0, len(API_ENDPOINTS) - 1
    endpoints = [(e[0], e[1], e[2], math.log(e[4])) for e in API_ENDPOINTS]
    tenants = len(tenant_ids)
    keys = [keys_by_tenant.get(tenant_id) or [None] for tenant_id in tenant_ids]
    for i in range(count):
        at = start + timedelta(seconds=(i + random_()) * step)
        throttled = random_() < 0.01
        endpoint, method, category, log_typical = endpoints[bisect(cumulative, random_() * total, 0, last)]
        status, error = 200, None
        roll = random_()
        if throttled and roll < 0.45:
            status, error = 429, "Rate limit exceeded for minute"
        elif roll < 0.012:
            status, error = choice(API_ERRORS)
        duration = 1 if status == 429 else max(1, int(lognormal(log_typical, 0.45)))
        yield {
            "tenant_id": tenant_ids[i % tenants],
            "api_key_id": choice(keys[i % tenants]),
            "end_user": "",
            "source": "api",
            "service": "tollgate",
            "endpoint": endpoint,
            "method": method,
            "category": category,
            "status_code": status,
            "duration_ms": duration,
            "tokens_in": 0,
            "tokens_out": 0,
            "cached_tokens": 0,
            "quota_units": 0 if status == 429 else 1,
            "model": "",
            "cost": None,
            "price_id": None,
            "error_message": error,
            "meta": None,
            "occurred_at": at,
            "idempotency_key": f"{bits(128):032x}",
        }


def store_synthetic(
    tenant_ids: list[int],
    keys_by_tenant: dict[int, list[int]],
    count: int,
    days: int,
    now: datetime,
    seed: int | None = None,
    writers: int = 1,
    progress: Callable[[int], None] | None = None,
    batch: int = 20_000,
) -> int:
    """Store ``count`` :func:`synthetic_records`; returns how many were new.

    With ``writers`` > 1 (PostgreSQL only) that many processes share the work, each with its
    own connection and its own tenants, so no two write the same rollup or key rows; one
    writer draws exactly the records of ``random.Random(seed)``. Batches of ``batch`` records
    (bigger than the demo's: a batch's calls share more rollup rows).
    """
    writers = max(1, min(writers, len(tenant_ids)))
    if writers == 1 or db.engine.dialect.name != "postgresql":
        records = synthetic_records(tenant_ids, keys_by_tenant, count, days, now, random.Random(seed))
        return store_in_batches(records, batch, progress)
    shares = []
    for w in range(writers):
        # Shares in proportion to the writers' tenants, adding up to count.
        positions = range(w, len(tenant_ids), writers)
        share = sum(count // len(tenant_ids) + (n < count % len(tenant_ids)) for n in positions)
        rng = random.Random(None if seed is None else f"{seed}/{w}")
        shares.append(([tenant_ids[n] for n in positions], share, rng))
    return _store_in_processes(keys_by_tenant, days, now, shares, batch, progress)


def _store_in_processes(
    keys_by_tenant: dict[int, list[int]],
    days: int,
    now: datetime,
    shares: list[tuple[list[int], int, random.Random]],
    batch: int,
    progress: Callable[[int], None] | None,
) -> int:
    app = current_app._get_current_object()
    context = multiprocessing.get_context("fork")
    done = [context.Value("q", 0) for _ in shares]  # each writer's records so far
    stored = [context.Value("q", -1) for _ in shares]  # each writer's new records, when it is over
    db.session.remove()
    db.engine.dispose()  # each writer opens its own connections
    processes = [
        context.Process(
            target=_write_share,
            args=(app, tenants, keys_by_tenant, share, days, now, rng, batch, done[n], stored[n]),
            name=f"tollgate-generate-{n}",
        )
        for n, (tenants, share, rng) in enumerate(shares)
    ]
    for process in processes:
        process.start()
    reported = 0
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(0.2)
            if any(process.exitcode not in (None, 0) for process in processes):
                break
            reported = _report(done, reported, progress)
    finally:
        for process in processes:
            if process.exitcode is None and any(p.exitcode not in (None, 0) for p in processes):
                process.terminate()  # its batch in progress rolls back; committed ones stay
            process.join()
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"storing synthetic usage failed in {', '.join(failed)} (see its error above)")
    _report(done, reported, progress)
    return sum(value.value for value in stored)


def _report(done: list, reported: int, progress: Callable[[int], None] | None) -> int:
    total = sum(value.value for value in done)
    if progress and total > reported:
        progress(total - reported)
    return total


def _write_share(app, tenants, keys_by_tenant, count, days, now, rng, batch, done, stored) -> None:
    """One writer process: its tenants' share of the records, in batches of its own."""

    def count_done(n: int) -> None:
        with done.get_lock():
            done.value += n

    with app.app_context():
        records = synthetic_records(tenants, keys_by_tenant, count, days, now, rng)
        stored.value = store_in_batches(records, batch, count_done)
        db.session.remove()
        db.engine.dispose()


def bench_tenants(count: int) -> list[Tenant]:
    """``count`` new tenants for benchmark data, each with one key. Their owners share one
    random password nobody is told (hashing a password takes ~0.15 s: 10,000 would take 25
    minutes), so benchmark accounts cannot be signed in to."""
    existing = db.session.scalar(select(db.func.count()).select_from(Tenant).where(Tenant.slug.like("bench-%")))
    unusable = hash_password(secrets.token_urlsafe(24))
    tenants = []
    for n in range(existing + 1, existing + count + 1):
        tenant = create_tenant(
            f"Bench {n}",
            DEMO_PLAN,
            f"bench-{n}-{secrets.token_hex(3)}@bench.example",
            "",
            password_hash=unusable,
        )
        create_api_key(tenant, "bench")
        tenants.append(tenant)
        if len(tenants) % 1000 == 0:
            db.session.flush()
    db.session.commit()
    return tenants


# The example chat product (examples/chatbot) the demo puts behind the gateway as /api/chat.
CHAT_SERVICE = "chatbot"
CHAT_MODEL = "chatbot-mini"
CHAT_PRICES = {"input": "0.50", "output": "1.50"}  # dollars per 1M tokens
QUICK_START_KEY = "Quick start (dev.py run)"


def ensure_chat_price(now: datetime | None = None) -> bool:
    """Give the example chat's model an operator price per 1M tokens unless it has one."""
    from .costs.catalog import prices_in_force, set_price

    now = now or utcnow()
    if any(p.model == CHAT_MODEL for p in prices_in_force(now, service=CHAT_SERVICE)):
        return False
    set_price(CHAT_SERVICE, CHAT_MODEL, dict(CHAT_PRICES), now - timedelta(days=400))
    return True


def quick_start_key(tenant: Tenant) -> str:
    """A fresh usage key for the first minutes with the demo; the previous one is revoked."""
    for key in db.session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant.id, ApiKey.name == QUICK_START_KEY, ApiKey.revoked_at.is_(None))
    ):
        revoke_api_key(key)
    _, secret = create_api_key(tenant, QUICK_START_KEY, "Made by python3 dev.py run for the README's first call")
    return secret
