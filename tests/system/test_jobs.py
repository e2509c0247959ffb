"""Operators see how periodic jobs went: every run, through the worker or ``jobs run``, leaves its
last run in Redis; ``jobs list`` shows it with RQ's failed-job counts, and a failure is logged at
ERROR with its reason and still lands in RQ's failed-job registry."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import pytest
from rq import Queue

from tests import jobs_for_tests
from worker import history, queues, schedule
from worker.runner import enqueue_periodic, run_worker
from worker.schedule import PeriodicJob

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=list(args))

    return invoke


@pytest.fixture
def schedule_with_test_jobs(monkeypatch):
    """The schedule with two more periodic jobs: one that fails and one that succeeds. Only these
    and cleanup are due, so the run does not depend on the other jobs' work."""
    jobs = (
        schedule.find("cleanup"),
        PeriodicJob("explode", jobs_for_tests.explode, 60, "fails on purpose"),
        PeriodicJob("count", jobs_for_tests.count_to_three, 30, "succeeds"),
    )
    monkeypatch.setattr(schedule, "PERIODIC_JOBS", jobs)
    return jobs


def job_lines(output: str) -> dict[str, str]:
    """``jobs list``'s lines by their first word (the job's name), the final ``#`` line apart."""
    return {line.split()[0]: line for line in output.splitlines() if line and not line.startswith("#")}


def test_a_job_never_run_shows_never_and_no_failures(cli):
    result = cli("jobs", "list")
    assert result.exit_code == 0, result.output
    lines = job_lines(result.output)
    assert list(lines) == [job.name for job in schedule.PERIODIC_JOBS]
    for job in schedule.PERIODIC_JOBS:
        assert re.match(
            rf"{re.escape(job.name)}\s+every\s+{job.every_seconds}s\s+never\s+{re.escape(job.description)}",
            lines[job.name],
        )
    assert result.output.splitlines()[-2] == f"# failed jobs: {queues.PERIODIC} 0; {queues.DEFAULT} 0"
    assert result.output.splitlines()[-1].startswith("# usage set aside: 0 record(s) not stored")


def test_jobs_run_records_the_run_that_jobs_list_then_shows(cli, redis):
    before = datetime.now(UTC).replace(microsecond=0)
    assert cli("jobs", "run", "cleanup").exit_code == 0
    [run] = history.last_runs(redis, ["cleanup"]).values()
    assert run.outcome == "ok" and run.job_id == "" and run.running_since is None
    assert run.summary.startswith("records=0, hourly_rollups=0, daily_rollups=0, exported_files=0, batches=0")
    assert before <= datetime.fromisoformat(run.started_at) <= datetime.fromisoformat(run.finished_at)

    line = job_lines(cli("jobs", "list").output)["cleanup"]
    assert re.match(rf"cleanup\s+every\s+3600s\s+{run.started_at}\s+ok\s+{run.duration_ms:,} ms\s+delete usage", line)


def test_jobs_run_of_a_failing_job_records_logs_and_fails(cli, redis, schedule_with_test_jobs, caplog):
    with caplog.at_level(logging.ERROR, logger="tollgate.worker"):
        result = cli("jobs", "run", "explode")
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    [run] = history.last_runs(redis, ["explode"]).values()
    assert (run.outcome, run.summary) == ("failed", "RuntimeError: the archive disk is full")
    [record] = [r for r in caplog.records if r.name == "tollgate.worker"]
    assert record.levelno == logging.ERROR
    assert "periodic job explode failed" in record.getMessage()
    assert record.getMessage().endswith("RuntimeError: the archive disk is full")


def test_the_worker_records_each_periodic_run_and_jobs_list_shows_failures(
    app, cli, redis, schedule_with_test_jobs, caplog
):
    # Also a job that is no periodic job's, failing: RQ files it, the history does not know it.
    other = Queue(queues.DEFAULT, connection=redis).enqueue("tests.jobs_for_tests.break_down")
    for job in schedule_with_test_jobs:
        assert enqueue_periodic(redis, job)

    with caplog.at_level(logging.ERROR, logger="tollgate.worker"):
        assert run_worker(app, burst=True, log_level="WARNING")

    runs = history.last_runs(redis, ["cleanup", "explode", "count", "tests.jobs_for_tests.break_down", "break_down"])
    assert runs["tests.jobs_for_tests.break_down"] is None and runs["break_down"] is None
    assert (runs["cleanup"].outcome, runs["count"].outcome, runs["explode"].outcome) == ("ok", "ok", "failed")
    assert runs["count"].summary == "counted=3, note=fine"
    assert runs["explode"].summary == "RuntimeError: the archive disk is full"
    # Run by the worker: the RQ job's id is kept.
    periodic = Queue(queues.PERIODIC, connection=redis)
    [failed_id] = periodic.failed_job_registry.get_job_ids()
    assert runs["explode"].job_id == failed_id
    assert runs["cleanup"].job_id in periodic.finished_job_registry.get_job_ids()

    # Logged at ERROR with the reason (by us; RQ logs its traceback on its own logger).
    ours = [r for r in caplog.records if r.name == "tollgate.worker" and r.levelno == logging.ERROR]
    assert [r.getMessage().rsplit(": ", 2)[-2:] for r in ours] == [["RuntimeError", "the archive disk is full"]]

    # Both failures are in RQ's failed-job registries, as before.
    assert periodic.failed_job_registry.count == 1
    assert Queue(queues.DEFAULT, connection=redis).failed_job_registry.get_job_ids() == [other.id]

    listing = cli("jobs", "list")
    assert listing.exit_code == 0, listing.output
    lines = job_lines(listing.output)
    assert list(lines) == ["cleanup", "explode", "count"]
    assert re.match(rf"explode\s+every\s+60s\s+{ISO}\s+failed\s+[\d,]+ ms\s+fails on purpose", lines["explode"])
    assert lines["explode"].endswith("[error: RuntimeError: the archive disk is full]")
    assert re.match(rf"count\s+every\s+30s\s+{ISO}\s+ok\s+[\d,]+ ms\s+succeeds$", lines["count"])
    assert listing.output.splitlines()[-2] == (
        f"# failed jobs: {queues.PERIODIC} 1 (latest {failed_id}: RuntimeError: the archive disk is full); "
        f"{queues.DEFAULT} 1 (latest {other.id}: ValueError: no periodic job runs this)"
    )


def test_a_run_under_way_is_shown_as_such(cli, redis):
    history.record_finish(redis, "cleanup", 1_780_000_000, 1_780_000_002, 2_000, True, "records=1")
    history.record_start(redis, "cleanup", 1_780_003_600)
    line = job_lines(cli("jobs", "list").output)["cleanup"]
    assert "2026-05-28T20:26:40Z  ok" in line and "2,000 ms" in line
    assert line.endswith("[running since 2026-05-28T21:26:40Z]")


def test_a_summary_is_one_short_line():
    assert history.summarise({"a": 1, "b": "x\ny"}) == "a=1, b=x y"
    assert len(history.summarise({"k": "v" * 1000})) == history.SUMMARY_CHARS
    assert history.reason(KeyError()) == "KeyError"
