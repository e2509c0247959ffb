"""The last run of each periodic job, kept in Redis for operators (``flask --app wsgi jobs list``).

A run is recorded by :func:`run_recorded`, the wrapper both the worker (around every job whose
function is a periodic job's) and ``jobs run`` call the job through. The hash
``tollgate:jobs:last:<name>`` holds the last finished run: ``started_at`` and ``finished_at``
(ISO 8601 UTC), ``duration_ms``, ``outcome`` (``ok`` or ``failed``), ``summary`` (the result's
counts, or the error) and ``job_id`` (empty when run in the foreground); ``running_since`` is
set while a run is under way. Plain functions over a Redis client: no Flask, no database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from portal.kernel.redis_keys import last_run_key
from portal.kernel.times import iso

log = logging.getLogger("tollgate.worker")
SUMMARY_CHARS = 300


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def summarise(result: Any) -> str:
    """A job's result in one short line: ``key=value`` pairs of a dict, else its text."""
    if isinstance(result, dict):
        return _short(", ".join(f"{key}={value}" for key, value in result.items()))
    return _short("" if result is None else str(result))


def reason(error: BaseException) -> str:
    """An exception as operators read it: its type and message."""
    message = str(error)
    return _short(f"{type(error).__name__}: {message}" if message else type(error).__name__)


def record_start(redis: Redis, name: str, at: float) -> None:
    redis.hset(last_run_key(name), "running_since", iso(at))


def record_finish(
    redis: Redis, name: str, started: float, finished: float, duration_ms: int, ok: bool, summary: str, job_id: str = ""
) -> None:
    pipe = redis.pipeline()
    pipe.hset(
        last_run_key(name),
        mapping={
            "started_at": iso(started),
            "finished_at": iso(finished),
            "duration_ms": duration_ms,
            "outcome": "ok" if ok else "failed",
            "summary": summary,
            "job_id": job_id,
        },
    )
    pipe.hdel(last_run_key(name), "running_since")
    pipe.execute()


def run_recorded(
    redis: Redis,
    name: str,
    call: Callable[[], Any],
    job_id: str = "",
    clock: Callable[[], float] = time.time,
    timer: Callable[[], float] = time.monotonic,
) -> Any:
    """Run ``call`` (the periodic job ``name``) and record its run; a failure is recorded, logged
    at ERROR with its reason, and raised again (so RQ still counts it as failed)."""
    started, begun = clock(), timer()
    record_start(redis, name, started)
    try:
        result = call()
    except BaseException as error:  # a job timeout or a signal too: recorded, then raised on
        duration_ms = int((timer() - begun) * 1000)
        record_finish(redis, name, started, clock(), duration_ms, False, reason(error), job_id)
        log.error("periodic job %s failed after %d ms: %s", name, duration_ms, reason(error))
        raise
    record_finish(redis, name, started, clock(), int((timer() - begun) * 1000), True, summarise(result), job_id)
    return result


@dataclass(frozen=True)
class LastRun:
    started_at: str
    finished_at: str
    duration_ms: int
    outcome: str
    summary: str
    job_id: str
    running_since: str | None


def last_runs(redis: Redis, names: Iterable[str]) -> dict[str, LastRun | None]:
    """Each job's last finished run (None if it never finished one)."""
    names = list(names)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(last_run_key(name))
    runs: dict[str, LastRun | None] = {}
    for name, raw in zip(names, pipe.execute(), strict=True):
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        if "outcome" not in fields:
            runs[name] = None
            continue
        runs[name] = LastRun(
            fields["started_at"],
            fields["finished_at"],
            int(fields["duration_ms"]),
            fields["outcome"],
            fields.get("summary", ""),
            fields.get("job_id", ""),
            fields.get("running_since"),
        )
    return runs


@dataclass(frozen=True)
class FailedJobs:
    queue: str
    count: int
    last_job_id: str | None = None
    last_error: str | None = None  # the last line of its exception


def failed_jobs(redis: Redis, queue_names: Iterable[str]) -> list[FailedJobs]:
    """How many jobs each queue's RQ failed-job registry holds, and the latest of them."""
    found = []
    for name in queue_names:
        registry = Queue(name, connection=redis).failed_job_registry
        count = registry.count
        if not count:
            found.append(FailedJobs(name, 0))
            continue
        # Scored by expiry, and every failure is kept as long: the highest score failed last.
        [job_id] = registry.get_job_ids(0, 0, desc=True) or [None]
        error = None
        try:
            job = Job.fetch(job_id, connection=redis) if job_id else None
        except NoSuchJobError:  # expired meanwhile
            job = None
        if job is not None:
            latest = job.latest_result()
            if latest is not None and latest.exc_string:
                lines = [line for line in latest.exc_string.strip().splitlines() if line.strip()]
                error = _short(lines[-1]) if lines else None
        found.append(FailedJobs(name, count, job_id, error))
    return found
