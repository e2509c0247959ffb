"""The periodic jobs and the worker: ``jobs list``/``jobs run``, the once-per-interval clock, and
``worker --burst`` both in this process and as a real ``flask --app wsgi worker`` process."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job
from sqlalchemy import func, select

from portal.extensions import db as _db
from portal.metering.store import store_usage
from portal.models import UsageRecord, UsageRollup, utcnow
from worker import queues
from worker.runner import enqueue_due, enqueue_periodic
from worker.schedule import PERIODIC_JOBS, find

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=list(args))

    return invoke


@pytest.fixture
def usage(app, make_tenant):
    """Usage of a starter tenant (kept 90 days) and a professional one (180 days), at ages in days.

    Returns ``plan -> (tenant id, {age: idempotency id})``; committed, with no context left open.
    """
    ages = {"starter": (200, 100, 91, 89, 10, 0), "professional": (200, 181, 179, 100)}
    tenants = {
        plan: (make_tenant(plan=plan)[2], {age: f"{plan}-{age}d" for age in days}) for plan, days in ages.items()
    }
    now = utcnow()
    with app.app_context():
        for tenant_id, idems in tenants.values():
            store_usage(
                {
                    "tenant_id": tenant_id,
                    "service": "tollgate",
                    "endpoint": "/api/v1/ping",
                    "status_code": 200,
                    "duration_ms": 5,
                    "occurred_at": now - timedelta(days=age, minutes=1),
                    "idempotency_key": idem,
                }
                for age, idem in idems.items()
            )
        _db.session.commit()
        _db.session.remove()
    return tenants


def kept(app, tenant_id) -> dict:
    """What is left of a tenant's usage: records' ids and the rollups' number of buckets."""
    with app.app_context():
        try:
            records = set(
                _db.session.scalars(select(UsageRecord.idempotency_key).where(UsageRecord.tenant_id == tenant_id))
            )
            buckets = dict(
                _db.session.execute(
                    select(UsageRollup.granularity, func.count())
                    .where(UsageRollup.tenant_id == tenant_id)
                    .group_by(UsageRollup.granularity)
                ).all()
            )
        finally:
            _db.session.remove()
    return {"records": records, "hourly": buckets.get("hour", 0), "daily": buckets.get("day", 0)}


def assert_retention_applied(app, usage) -> None:
    starter_id, _ = usage["starter"]
    assert kept(app, starter_id) == {
        "records": {"starter-89d", "starter-10d", "starter-0d"},
        "hourly": 3,
        "daily": 6,  # daily rollups outlive the raw rows
    }
    professional_id, _ = usage["professional"]
    assert kept(app, professional_id) == {
        "records": {"professional-179d", "professional-100d"},
        "hourly": 2,
        "daily": 4,
    }


def queued(redis) -> dict[str, int]:
    return {name: Queue(name, connection=redis).count for name in queues.ALL}


# --- jobs list / jobs run --------------------------------------------------------------------


def test_jobs_list_names_the_periodic_jobs(cli):
    result = cli("jobs", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert any(line.split()[0] == "cleanup" for line in lines)
    assert "every  3600s" in result.output


def test_jobs_run_cleanup_deletes_what_each_plan_no_longer_keeps(app, cli, usage):
    assert kept(app, usage["starter"][0])["records"] == set(usage["starter"][1].values())
    result = cli("jobs", "run", "cleanup")
    assert result.exit_code == 0, result.output
    # starter: 200, 100 and 91 days old; professional: 200 and 181 days old.
    assert "cleanup: {'records': 5, 'hourly_rollups': 5, 'daily_rollups': 0, 'exported_files': 0," in result.output
    assert_retention_applied(app, usage)

    # Running it again finds nothing more to delete.
    again = cli("jobs", "run", "cleanup")
    assert "'records': 0, 'hourly_rollups': 0" in again.output
    assert_retention_applied(app, usage)


def test_jobs_run_an_unknown_job_names_the_known_ones(cli):
    result = cli("jobs", "run", "nope")
    assert result.exit_code != 0
    names = ", ".join(job.name for job in PERIODIC_JOBS)
    assert f"no periodic job 'nope'; jobs are: {names}" in result.output
    assert "cleanup" in names


# --- the periodic clock ----------------------------------------------------------------------


def test_a_periodic_job_is_enqueued_once_per_interval(redis):
    job = find("cleanup")
    assert enqueue_periodic(redis, job) is True
    assert enqueue_periodic(redis, job) is False
    assert queued(redis) == {queues.PERIODIC: 1, queues.DEFAULT: 0}
    [queued_job] = Queue(queues.PERIODIC, connection=redis).jobs
    assert queued_job.func_name == "worker.jobs.cleanup"
    assert 0 < redis.ttl("tollgate:periodic:cleanup") <= job.every_seconds
    # The clock's tick does not enqueue it again either (other periodic jobs may be due).
    assert "cleanup" not in enqueue_due(redis)
    jobs = Queue(queues.PERIODIC, connection=redis).jobs
    assert [j.func_name for j in jobs].count("worker.jobs.cleanup") == 1


# --- the worker ------------------------------------------------------------------------------


def test_worker_burst_runs_the_queued_cleanup_in_an_app_context(app, cli, redis, usage):
    assert enqueue_periodic(redis, find("cleanup"))
    result = cli("worker", "--burst")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    assert_retention_applied(app, usage)
    assert queued(redis) == {queues.PERIODIC: 0, queues.DEFAULT: 0}
    queue = Queue(queues.PERIODIC, connection=redis)
    assert queue.failed_job_registry.count == 0
    finished = Job.fetch_many(queue.finished_job_registry.get_job_ids(), connection=redis)
    [cleanup] = [job for job in finished if job.func_name == "worker.jobs.cleanup"]
    counts = cleanup.return_value()
    assert (counts["records"], counts["hourly_rollups"], counts["daily_rollups"], counts["finished"]) == (5, 5, 0, True)


def test_worker_burst_enqueues_the_due_periodic_jobs_itself(app, cli, redis, usage):
    result = cli("worker", "--burst")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert_retention_applied(app, usage)
    assert queued(redis) == {queues.PERIODIC: 0, queues.DEFAULT: 0}
    # Not due again within the hour.
    assert "cleanup" not in enqueue_due(redis)


@pytest.mark.slow
def test_flask_worker_burst_as_a_process(app, redis, usage, tmp_path):
    job = Queue(queues.DEFAULT, connection=redis).enqueue("worker.jobs.cleanup")
    env = {
        **os.environ,
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL_RESOLVED"],
        "TOLLGATE_INSTANCE_PATH": str(tmp_path),
        "SECRET_KEY": "worker-test-secret-key",
    }
    flask = Path(sys.executable).with_name("flask")
    process = subprocess.run(
        [str(flask), "--app", "wsgi", "worker", "--burst"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr[-3000:]

    job = Job.fetch(job.id, connection=redis)
    assert job.get_status() == "finished", job.exc_info
    # The worker also enqueued the due periodic cleanup, which may have run first.
    assert {"records", "hourly_rollups", "daily_rollups", "batches", "finished"} <= set(job.return_value())
    assert_retention_applied(app, usage)
    assert queued(redis) == {queues.PERIODIC: 0, queues.DEFAULT: 0}


def _events_entries(redis, tenant_id: int, entries: int, per_entry: int) -> None:
    """``entries`` stream entries of ``per_entry`` outside-service events each, as the API adds."""
    from portal.costs.events import report_events
    from portal.metering.stream import STREAM

    now = utcnow().timestamp()
    for e in range(entries):
        events = [
            {
                "id": f"ev-{e}-{n}",
                "end_user": "u1",
                "service": "groq",
                "endpoint": "/v1/chat/completions",
                "method": "POST",
                "category": "",
                "status_code": 200,
                "duration_ms": 120,
                "tokens_in": 100,
                "tokens_out": 20,
                "cached_tokens": 0,
                "quota_units": 0,
                "model": "llama-3.1-70b-versatile",
                "error_message": None,
                "meta": None,
                "occurred_at": now - 60,
            }
            for n in range(per_entry)
        ]
        report_events(redis, STREAM, tenant_id, None, [], events, now)


def _stored_events(app, tenant_id: int) -> tuple[int, int]:
    with app.app_context():
        rows = _db.session.scalar(select(func.count()).where(UsageRecord.tenant_id == tenant_id))
        calls = _db.session.scalar(
            select(func.sum(UsageRollup.calls)).where(
                UsageRollup.tenant_id == tenant_id, UsageRollup.granularity == "day"
            )
        )
        _db.session.remove()
    return rows, calls


def test_a_read_batch_counts_the_events_of_an_entry_not_entries(app, redis, make_tenant):
    from portal.ingest import ingest_usage

    _, _, tenant_id = make_tenant()
    _events_entries(redis, tenant_id, entries=3, per_entry=3)
    with app.app_context():
        # 5 records a batch: the first batch takes two entries (6 events), the second the third.
        result = ingest_usage(redis, batch_size=5, claim_idle_ms=0)
    assert (result.batches, result.entries, result.stored) == (2, 3, 9)
    assert _stored_events(app, tenant_id) == (9, 9)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_batch_that_fails_to_store_is_stored_once_later(app, redis, make_tenant, monkeypatch, read_ahead):
    from portal import ingest
    from portal.metering.stream import STREAM

    _, _, tenant_id = make_tenant()
    _events_entries(redis, tenant_id, entries=4, per_entry=2)
    real = ingest.store_usage
    calls = []

    def failing_second(records):
        calls.append(len(records))
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(records)

    monkeypatch.setattr(ingest, "store_usage", failing_second)
    with app.app_context(), pytest.raises(RuntimeError):
        ingest.ingest_usage(redis, batch_size=2, claim_idle_ms=60_000, read_ahead=read_ahead)
    # Only the first batch was committed and acknowledged; what was read after it is pending.
    assert _stored_events(app, tenant_id) == (2, 2)
    assert redis.xlen(STREAM) == 3
    monkeypatch.setattr(ingest, "store_usage", real)
    with app.app_context():
        result = ingest.ingest_usage(redis, batch_size=2, claim_idle_ms=0, read_ahead=read_ahead)
    assert result.stored == 6
    assert _stored_events(app, tenant_id) == (8, 8)
    assert redis.xlen(STREAM) == 0
