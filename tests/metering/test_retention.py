"""Retention: raw usage past the plan's days goes (exported first when configured), in batches,
only once it is in the rollups and no longer in the usage stream or the spool, and no total the
API or the portal shows changes."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal.config import ConfigError, load_config
from portal.costs.events import report_events
from portal.costs.prices import PriceBook
from portal.demo import demo_records, store_in_batches
from portal.extensions import db
from portal.ingest import ingest_usage
from portal.kernel.redis_keys import RETENTION_LOCK
from portal.metering import retention
from portal.metering.retention import apply_retention
from portal.metering.store import store_usage
from portal.metering.stream import EVENTS_FIELD, STREAM
from portal.models import UsageRecord, UsageRollup, utcnow
from tests.api_helpers import add_key
from tests.factories import PASSWORD, new_tenant

# The free plan keeps raw records 90 days: records of days before this one go.
NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)
CUTOFF = datetime(2026, 8, 20, tzinfo=UTC)


def call(tenant_id: int, at: datetime, idem: str, **fields) -> dict:
    return {
        "tenant_id": tenant_id,
        "service": "tollgate",
        "endpoint": "/api/v1/ping",
        "status_code": 200,
        "duration_ms": 5,
        "occurred_at": at,
        "idempotency_key": idem,
        **fields,
    }


def store(app, records) -> None:
    with app.app_context():
        store_usage(list(records))
        db.session.commit()
        db.session.remove()


def run(app, now: datetime = NOW, **options) -> retention.RetentionResult:
    with app.app_context():
        from portal.redis_store import get_redis

        result = apply_retention(now, get_redis(), **options)
        db.session.remove()
    return result


def stored(app, tenant_id: int) -> dict:
    """The tenant's records by id (their idempotency ids) and its rollups per granularity."""
    with app.app_context():
        records = dict(
            db.session.execute(
                select(UsageRecord.id, UsageRecord.idempotency_key).where(UsageRecord.tenant_id == tenant_id)
            ).all()
        )
        rollups = dict(
            db.session.execute(
                select(UsageRollup.granularity, func.count())
                .where(UsageRollup.tenant_id == tenant_id)
                .group_by(UsageRollup.granularity)
            ).all()
        )
        calls = db.session.scalar(
            select(func.coalesce(func.sum(UsageRollup.calls), 0)).where(
                UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == "day"
            )
        )
        db.session.remove()
    return {"records": records, "hourly": rollups.get("hour", 0), "daily": rollups.get("day", 0), "calls": calls}


def exported(folder: Path) -> dict[str, list[dict]]:
    """Every export file under ``folder`` (by its path below it) and its lines."""
    return {
        str(path.relative_to(folder)): [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
        for path in sorted(folder.rglob("*.jsonl.gz"))
    }


@pytest.fixture
def free(app, make_tenant):
    """A free-plan tenant (raw records kept 90 days): (slug, tenant id)."""
    slug, _, tenant_id = make_tenant(plan="free")
    return slug, tenant_id


# --- every total stays ------------------------------------------------------------------------

API_TOTALS = (
    "/api/v1/usage/stats?days=150",
    "/api/v1/usage/stats?days=30",
    "/api/v1/usage/summary",
    "/api/v1/costs/report?days=150",
    "/api/v1/costs/report?days=150&source=all&group_by=day",
    "/api/v1/costs/report?days=150&group_by=key",
    "/api/v1/account/usage?startDate={first}&endDate={last}",
    "/api/v1/account/usage?startDate={first}&endDate={last}&interval=monthly",
    "/api/v1/account/usage?startDate={recent}&endDate={last}&interval=hourly",
    "/api/v1/billing/usage",
    "/api/v1/billing/api-usage?days=150",
)


def _without_quota_counters(url: str, body: dict) -> dict:
    """The calls admitted this period count in Redis with every request made here (this test's own
    reads among them), not in the stored usage: left out of the comparison."""
    if url.startswith("/api/v1/billing/usage"):
        body["usage"]["apiCalls"] = {
            k: v for k, v in body["usage"]["apiCalls"].items() if k not in ("used", "remaining", "percentage")
        }
    if url.startswith("/api/v1/billing/api-usage"):
        body["data"].pop("rateLimit")
    return body


def api_totals(client, headers, now: datetime) -> dict:
    dates = {
        "first": (now - timedelta(days=149)).date().isoformat(),
        "recent": (now - timedelta(days=6)).date().isoformat(),
        "last": now.date().isoformat(),
    }
    found = {}
    for template in API_TOTALS:
        url = template.format(**dates)
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.get_json())
        found[url] = _without_quota_counters(url, response.get_json())
    return found


def dashboard(client) -> str:
    """The dashboard without its live counters (the quota and the windows count the test's own
    API calls, which retention does not touch)."""
    page = client.get("/dashboard")
    assert page.status_code == 200
    html = re.sub(r'name="csrf_token"[^>]*', "", page.text)
    for heading in ("quota-heading", "windows-heading"):
        html = re.sub(rf'<section[^>]*aria-labelledby="{heading}".*?</section>', "", html, flags=re.S)
    assert "Top endpoints" in html and "API calls, last 30 days" in html
    return html


def test_retention_changes_no_total_the_api_or_the_portal_shows(app, client, auth, clock, tmp_path):
    # 150 days of calls to the API and reported outside calls (priced, with tokens, keys and end
    # users), stored through the real writer; "now" is a fixed time the API's clock shows too.
    now = utcnow().replace(microsecond=0)
    clock.now = now.timestamp()
    tenant = new_tenant(app, "Keeps Totals", plan="free", email="owner@keeps.example", key=True)
    second_key, _ = add_key(app, tenant.tenant_id, "reporting")
    with app.app_context():
        records = demo_records(
            tenant.tenant_id,
            [tenant.key_id, second_key],
            days=150,
            now=now,
            prices=PriceBook.load(),
            rng=random.Random(7),
            api_per_day=24,
            external_per_day=10,
        )
        store_in_batches(records, batch=2000)
        db.session.remove()
    before = stored(app, tenant.tenant_id)
    cutoff = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=90)
    with app.app_context():
        expired = set(
            db.session.scalars(
                select(UsageRecord.id).where(
                    UsageRecord.tenant_id == tenant.tenant_id, UsageRecord.occurred_at < cutoff
                )
            )
        )
        db.session.remove()
    assert 1000 < len(expired) < len(before["records"])
    with app.app_context():
        expired_days = {
            at.date() for at in db.session.scalars(select(UsageRecord.occurred_at).where(UsageRecord.id.in_(expired)))
        }
        db.session.remove()
    auth.login("owner@keeps.example", PASSWORD)
    totals_before = api_totals(client, tenant.headers, now)
    portal_before = dashboard(client)
    logs_before = client.get("/api/v1/usage/logs?limit=1", headers=tenant.headers).get_json()
    hourly_before = client.get(
        f"/api/v1/account/usage?startDate={(now - timedelta(days=149)).date()}&endDate={now.date()}&interval=hourly",
        headers=tenant.headers,
    ).get_json()

    export = tmp_path / "export"
    result = run(app, now, export_dir=export, batch_size=250)

    after = stored(app, tenant.tenant_id)
    assert result.finished and result.held_days == 0
    assert result.records == len(expired)
    assert set(after["records"]) == set(before["records"]) - expired
    assert after["daily"] == before["daily"] and after["calls"] == before["calls"]
    assert 0 < result.hourly_rollups == before["hourly"] - after["hourly"]
    assert result.batches >= result.records // 250
    # The exported files hold exactly the deleted records, each once, one file per day.
    files = exported(export)
    assert result.exported_files == len(files) == len(expired_days)
    assert sorted(line["id"] for lines in files.values() for line in lines) == sorted(expired)
    assert sorted(files) == [f"{tenant.slug}/usage-{day.isoformat()}.jsonl.gz" for day in sorted(expired_days)]

    # Every total is as it was.
    assert api_totals(client, tenant.headers, now) == totals_before
    assert dashboard(client) == portal_before
    # Raw rows are what usage/logs lists, and hourly rollups what the hourly interval reads:
    # both now start where the plan's retention does (as the API documents).
    logs_after = client.get("/api/v1/usage/logs?limit=1", headers=tenant.headers).get_json()
    assert logs_after["total"] == logs_before["total"] - len(expired)
    hourly_after = client.get(
        f"/api/v1/account/usage?startDate={(now - timedelta(days=149)).date()}&endDate={now.date()}&interval=hourly",
        headers=tenant.headers,
    ).get_json()
    assert hourly_after["totals"]["requests"] < hourly_before["totals"]["requests"]
    assert hourly_after["usage"][0]["period"] >= cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")

    # Nothing more to do the second time.
    again = run(app, now, export_dir=export, batch_size=250)
    assert (again.records, again.hourly_rollups, again.exported_files, again.batches) == (0, 0, 0, 0)
    assert api_totals(client, tenant.headers, now) == totals_before


# --- what is deleted, and how ---------------------------------------------------------------


def test_whole_days_past_the_plan_go_in_batches_and_daily_rollups_after_730_days(app, free):
    _, tenant_id = free
    ages = {"800d": 800, "700d": 700, "91d": 91, "90d": 90, "89d": 89, "now": 0}
    store(app, (call(tenant_id, NOW - timedelta(days=age), idem) for idem, age in ages.items()))
    # Ten more on one expired day: several batches of three.
    store(app, (call(tenant_id, CUTOFF - timedelta(days=3) + timedelta(minutes=n), f"busy-{n}") for n in range(10)))

    result = run(app, batch_size=3)

    left = stored(app, tenant_id)
    # 90 days ago is 2026-08-20, the cutoff's own day: kept until that whole day is past.
    assert sorted(left["records"].values()) == ["89d", "90d", "now"]
    assert (result.records, result.hourly_rollups, result.daily_rollups) == (13, 4, 1)
    # Raw: one batch each for 800d, 700d, 91d, four for the busy day; hourly: two; daily: one.
    assert result.batches == 3 + 4 + 2 + 1
    assert left["hourly"] == 3 and left["daily"] == 6  # the 800-day-old day is past 730 days
    counts = result.as_dict()
    assert counts.pop("longest_batch_ms") > 0
    assert counts == {
        "records": 13,
        "hourly_rollups": 4,
        "daily_rollups": 1,
        "exported_files": 0,
        "batches": 10,
        "held_days": 0,
        "finished": True,
    }


def test_an_export_file_has_every_column_of_each_record(app, free, tmp_path):
    slug, tenant_id = free
    at = datetime(2026, 8, 1, 9, 15, 30, 250000, tzinfo=UTC)
    store(
        app,
        [
            call(
                tenant_id,
                at,
                "gpt",
                source="external",
                service="openai",
                endpoint="/v1/chat/completions",
                method="POST",
                tokens_in=120,
                tokens_out=30,
                model="gpt-4o",
                cost=Decimal("0.00123400"),
                end_user="web-app",
                meta={"model": "gpt-4o", "trace": "t-1"},
            ),
            call(tenant_id, at + timedelta(hours=5), "ping", error_message="Not found", status_code=404),
        ],
    )
    result = run(app, export_dir=tmp_path)
    assert result.exported_files == 1
    [(name, lines)] = exported(tmp_path).items()
    assert name == f"{slug}/usage-2026-08-01.jsonl.gz"
    gpt, ping = lines
    assert set(gpt) == {column.name for column in UsageRecord.__table__.c}
    assert gpt["cost"] == "0.00123400"
    assert gpt["occurred_at"] == "2026-08-01T09:15:30.250000Z"
    assert gpt["metadata"] == {"model": "gpt-4o", "trace": "t-1"}
    assert (gpt["tokens_in"], gpt["tokens_out"], gpt["model"], gpt["end_user"]) == (120, 30, "gpt-4o", "web-app")
    assert (ping["cost"], ping["status_code"], ping["error_message"]) == (None, 404, "Not found")
    assert ping["occurred_at"] == "2026-08-01T14:15:30.250000Z"
    assert stored(app, tenant_id)["records"] == {}


def test_runs_stopped_at_any_point_leave_each_record_exported_exactly_once(app, free, tmp_path):
    _, tenant_id = free
    days = [CUTOFF - timedelta(days=d) for d in (1, 2, 5)]
    store(app, (call(tenant_id, day + timedelta(minutes=n), f"{day.date()}-{n}") for day in days for n in range(7)))
    all_ids = set(stored(app, tenant_id)["records"])

    # Runs whose time budget ends after 1, 2, 3, ... clock readings: each stops somewhere, in an
    # export or between two batches, as a crash would; the next run goes on from there.
    stopped = 0
    for budget in range(1, 40):
        ticks = iter(range(10_000))
        result = run(app, export_dir=tmp_path, batch_size=2, time_budget_seconds=budget, clock=lambda t=ticks: next(t))
        stopped += not result.finished
        if result.finished:
            break
    assert stopped > 5 and result.finished
    assert stored(app, tenant_id)["records"] == {}
    files = exported(tmp_path)
    assert len(files) == 3
    ids = [line["id"] for lines in files.values() for line in lines]
    assert sorted(ids) == sorted(all_ids)  # each once
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_crash_between_export_and_delete_exports_the_same_rows_again_into_the_same_file(
    app, free, tmp_path, monkeypatch
):
    slug, tenant_id = free
    store(app, (call(tenant_id, CUTOFF - timedelta(days=2) + timedelta(minutes=n), f"r{n}") for n in range(4)))
    real_export = retention._export_day

    def export_then_crash(*args, **kwargs):
        real_export(*args, **kwargs)
        raise OSError("the worker was killed")

    monkeypatch.setattr(retention, "_export_day", export_then_crash)
    held = run(app, export_dir=tmp_path)
    assert (held.records, held.held_days) == (0, 1)
    first = (tmp_path / slug / "usage-2026-08-18.jsonl.gz").read_bytes()
    monkeypatch.setattr(retention, "_export_day", real_export)

    result = run(app, export_dir=tmp_path)
    assert (result.records, result.exported_files) == (4, 1)
    # The same rows again, merged by id: the very same file.
    assert (tmp_path / slug / "usage-2026-08-18.jsonl.gz").read_bytes() == first


def test_a_record_stored_into_a_day_while_it_is_exported_stays_for_the_next_run(app, free, tmp_path, monkeypatch):
    slug, tenant_id = free
    day = CUTOFF - timedelta(days=2)
    store(app, (call(tenant_id, day + timedelta(minutes=n), f"r{n}") for n in range(4)))
    real_export = retention._export_day

    def export_then_a_late_record_arrives(*args, **kwargs):
        exported = real_export(*args, **kwargs)
        store_usage([call(tenant_id, day + timedelta(hours=3), "late")])
        db.session.commit()
        return exported

    monkeypatch.setattr(retention, "_export_day", export_then_a_late_record_arrives)
    assert run(app, export_dir=tmp_path).records == 4
    assert list(stored(app, tenant_id)["records"].values()) == ["late"]
    monkeypatch.setattr(retention, "_export_day", real_export)

    assert run(app, export_dir=tmp_path).records == 1
    [lines] = exported(tmp_path).values()
    assert sorted(line["idempotency_key"] for line in lines) == ["late", "r0", "r1", "r2", "r3"]


def test_a_row_committed_between_exported_ids_stops_the_delete_until_it_is_exported(app, free, tmp_path, monkeypatch):
    slug, tenant_id = free
    day = CUTOFF - timedelta(days=2)
    other = "/api/v1/other"
    store(app, [call(tenant_id, day, "r0"), call(tenant_id, day + timedelta(minutes=1), "r1")])
    store(app, [call(tenant_id, day + timedelta(days=1), "between", endpoint=other)])  # the id between theirs
    store(app, [call(tenant_id, day + timedelta(minutes=2), "r2")])
    real_export = retention._export_day
    moved = []

    def export_then_a_row_commits_between_the_ids(*args, **kwargs):
        exported = real_export(*args, **kwargs)
        if not moved:  # as a writer whose transaction took its id earlier would, rollups and all
            moved.append(day)
            db.session.execute(
                UsageRecord.__table__.update()
                .where(UsageRecord.idempotency_key == "between")
                .values(occurred_at=day + timedelta(hours=1))
            )
            db.session.execute(
                UsageRollup.__table__.update()
                .where(UsageRollup.granularity == "day", UsageRollup.endpoint == other)
                .values(bucket_start=day)
            )
            db.session.commit()
        return exported

    monkeypatch.setattr(retention, "_export_day", export_then_a_row_commits_between_the_ids)
    assert run(app, export_dir=tmp_path).records == 0  # the batch met a row it had not exported
    assert len(stored(app, tenant_id)["records"]) == 4
    monkeypatch.setattr(retention, "_export_day", real_export)

    assert run(app, export_dir=tmp_path).records == 4
    [lines] = exported(tmp_path).values()
    assert sorted(line["idempotency_key"] for line in lines) == ["between", "r0", "r1", "r2"]


# --- only what is in the rollups and no longer on its way --------------------------------------


def test_a_day_whose_records_outnumber_its_rollups_is_kept_and_logged(app, free, caplog):
    _, tenant_id = free
    store(
        app,
        [
            call(tenant_id, CUTOFF - timedelta(days=10), "rolled-up"),
            call(tenant_id, CUTOFF - timedelta(days=20), "fine"),
        ],
    )
    with app.app_context():  # a row written past the store: not in any rollup
        db.session.add(
            UsageRecord(
                **{**call(tenant_id, CUTOFF - timedelta(days=10) + timedelta(hours=1), "stray"), "method": "GET"}
            )
        )
        db.session.commit()
        db.session.remove()
    with caplog.at_level(logging.ERROR, logger="tollgate.retention"):
        result = run(app)
    assert (result.records, result.held_days) == (1, 1)
    assert sorted(stored(app, tenant_id)["records"].values()) == ["rolled-up", "stray"]
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"tenant {tenant_id}'s usage of 2026-08-10: 2 records but its daily rollups count 1 calls" in message


def _old_events(redis, tenant_id: int, at: datetime, ids: list[str]) -> None:
    event = {
        "end_user": "",
        "service": "groq",
        "endpoint": "/v1/chat/completions",
        "method": "POST",
        "category": "",
        "status_code": 200,
        "duration_ms": 100,
        "tokens_in": 10,
        "tokens_out": 5,
        "cached_tokens": 0,
        "quota_units": 0,
        "model": "llama-3.1-70b-versatile",
        "error_message": None,
        "meta": None,
        "occurred_at": at.timestamp(),
    }
    report_events(redis, STREAM, tenant_id, None, [], [{**event, "id": i} for i in ids], NOW.timestamp())


def test_records_the_stream_may_deliver_again_keep_their_day_until_it_has(app, free, redis):
    _, tenant_id = free
    store(app, [call(tenant_id, CUTOFF - timedelta(days=30), "older")])
    # Outside calls reported long after they happened: stored, but the stream entry stays behind
    # (as when a worker dies between its commit and its acknowledgement).
    _old_events(redis, tenant_id, CUTOFF - timedelta(days=6), ["late-1", "late-2"])
    [(_, fields)] = redis.xrange(STREAM)
    with app.app_context():
        assert ingest_usage(redis, claim_idle_ms=0).stored == 2
        db.session.remove()
    assert EVENTS_FIELD in fields
    redis.xadd(STREAM, fields)

    result = run(app)
    left = stored(app, tenant_id)
    assert result.records == 1  # the day before the stream's oldest record
    assert left["calls"] == 3 and sorted(left["records"].values()) == ["e:late-1", "e:late-2"]

    # Delivered again: skipped, as the first copies are still stored. Then they may go.
    with app.app_context():
        assert ingest_usage(redis, claim_idle_ms=0).stored == 0
        db.session.remove()
    assert stored(app, tenant_id)["calls"] == 3
    assert run(app).records == 2
    assert stored(app, tenant_id)["calls"] == 3


def test_records_in_the_spool_keep_their_day(app, free, tmp_path):
    _, tenant_id = free
    store(app, [call(tenant_id, CUTOFF - timedelta(days=d), f"d{d}") for d in (3, 9)])
    spool = tmp_path / "spool"
    spool.mkdir()
    record = json.dumps(
        {
            "id": "sp",
            "t": tenant_id,
            "k": 0,
            "e": "/api/v1/ping",
            "m": "GET",
            "c": "",
            "at": (CUTOFF - timedelta(days=5)).timestamp(),
        }
    )
    (spool / "usage-999999.jsonl").write_text(json.dumps({"r": record, "s": 200, "d": 3}) + "\n" + '{"r": "half a li')
    assert run(app, spool_folder=spool).records == 1
    assert sorted(stored(app, tenant_id)["records"].values()) == ["d3"]


def test_a_backlog_in_the_stream_keeps_raw_records_but_not_hourly_rollups(app, free, redis, monkeypatch, caplog):
    _, tenant_id = free
    store(app, [call(tenant_id, CUTOFF - timedelta(days=4), "old")])
    _old_events(redis, tenant_id, NOW, ["new"])
    monkeypatch.setattr(retention, "STREAM_SCAN_LIMIT", 0)
    with caplog.at_level(logging.WARNING, logger="tollgate.retention"):
        result = run(app)
    assert (result.records, result.hourly_rollups) == (0, 1)
    assert "the usage stream holds more than 0 entries" in caplog.text


def test_one_run_at_a_time(app, free, redis):
    _, tenant_id = free
    store(app, [call(tenant_id, CUTOFF - timedelta(days=4), "old")])
    redis.set(RETENTION_LOCK, "another run", ex=60)
    result = run(app)
    assert (result.records, result.finished) == (0, False)
    redis.delete(RETENTION_LOCK)
    assert run(app).records == 1
    assert redis.get(RETENTION_LOCK) is None


def test_the_cleanup_job_exports_where_retention_export_dir_says(app, free, tmp_path, monkeypatch):
    slug, tenant_id = free
    store(app, [call(tenant_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "old")])
    monkeypatch.setitem(app.config, "RETENTION_EXPORT_DIR", str(tmp_path / "archive"))
    result = app.test_cli_runner().invoke(args=["jobs", "run", "cleanup"])
    assert result.exit_code == 0, result.output
    assert "'records': 1" in result.output
    assert list(exported(tmp_path / "archive")) == [f"{slug}/usage-2026-01-02.jsonl.gz"]


# --- RETENTION_EXPORT_DIR ----------------------------------------------------------------------


def test_retention_export_dir_unset_or_empty_exports_nothing(tmp_path):
    assert load_config(tmp_path, {})["RETENTION_EXPORT_DIR"] is None
    assert load_config(tmp_path, {"RETENTION_EXPORT_DIR": " "})["RETENTION_EXPORT_DIR"] is None


def test_retention_export_dir_may_name_a_folder_still_to_be_made(tmp_path):
    target = tmp_path / "archive" / "usage"
    assert load_config(tmp_path, {"RETENTION_EXPORT_DIR": str(target)})["RETENTION_EXPORT_DIR"] == str(target)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("relative/folder", "expected an absolute path to a folder; got 'relative/folder'"),
        ("{file}/below", "is not a folder"),
    ],
)
def test_a_bad_retention_export_dir_stops_start_up_naming_it(tmp_path, value, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, {"RETENTION_EXPORT_DIR": value.format(file=a_file)})
    assert str(raised.value).startswith("Configuration error: RETENTION_EXPORT_DIR: ")
    assert message in str(raised.value)
