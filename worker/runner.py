"""The worker process: an RQ worker with its scheduler, plus the periodic-job clock.

Jobs run in this process (RQ's ``SimpleWorker``) inside a fresh application context each, so
each job gets its own database session and the app is built once, not per job. The periodic
clock enqueues each periodic job at most once per interval across all worker processes: the
right to enqueue is a Redis key set with NX and an expiry of the interval.

Every run of a periodic job's function, whichever queue it came from, goes through
:func:`worker.history.run_recorded` (the worker's job class wraps it), so ``jobs list`` shows its
last run and a failure is logged at ERROR before RQ files it in its failed-job registry.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask
from redis import Redis, RedisError
from rq import Queue, SimpleWorker
from rq.job import Job

from portal.kernel.redis_keys import periodic_key
from portal.redis_store import get_redis

from . import history, jobs, queues, schedule
from .schedule import PeriodicJob

log = logging.getLogger("tollgate.worker")


def periodic_job_name(job: Job) -> str | None:
    """The periodic job an RQ job runs: as enqueued by the clock, or its function's."""
    name = job.meta.get("periodic")
    if name:
        return name
    for periodic in schedule.PERIODIC_JOBS:
        if job.func_name == f"{periodic.func.__module__}.{periodic.func.__qualname__}":
            return periodic.name
    return None


class RecordedJob(Job):
    """A job whose run is recorded in the periodic jobs' history when it runs one of them."""

    def perform(self):
        name = periodic_job_name(self)
        if name is None:
            return super().perform()
        return history.run_recorded(self.connection, name, super().perform, job_id=self.id)


class AppWorker(SimpleWorker):
    """An RQ worker that runs every job inside the Flask application context."""

    flask_app: Flask
    job_class = RecordedJob

    def perform_job(self, job, queue, execution):
        with self.flask_app.app_context():
            return super().perform_job(job, queue, execution)


def enqueue_periodic(connection: Redis, job: PeriodicJob) -> bool:
    """Enqueue ``job`` unless it was enqueued less than its interval ago; True if enqueued."""
    if not connection.set(periodic_key(job.name), int(time.time()), nx=True, ex=job.every_seconds):
        return False
    Queue(queues.PERIODIC, connection=connection).enqueue(
        job.func,
        job_timeout=queues.JOB_TIMEOUT,
        result_ttl=job.result_ttl,
        failure_ttl=queues.FAILURE_TTL,
        description=f"periodic: {job.name}",
        meta={"periodic": job.name},
    )
    return True


def enqueue_due(connection: Redis) -> list[str]:
    return [job.name for job in schedule.PERIODIC_JOBS if enqueue_periodic(connection, job)]


class PeriodicClock(threading.Thread):
    def __init__(self, connection: Redis, tick_seconds: float = 1.0) -> None:
        super().__init__(name="tollgate-periodic-clock", daemon=True)
        self.connection = connection
        self.tick_seconds = tick_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                for name in enqueue_due(self.connection):
                    log.info("enqueued periodic job %s", name)
            except Exception:  # keep ticking through a Redis blip; the error is logged
                log.exception("periodic clock tick failed")
            self.stopped.wait(self.tick_seconds)


def _ingest(connection: Redis) -> int:
    """Drain the usage stream now, as a recorded run of its periodic job; returns the entries read."""
    name = next((job.name for job in schedule.PERIODIC_JOBS if job.func is jobs.ingest), "ingest-usage")
    return history.run_recorded(connection, name, jobs.ingest)["entries"]


def run_worker(app: Flask, burst: bool = False, log_level: str = "INFO") -> bool:
    """Run the worker until stopped, or with ``burst`` until no work is left. True if it did work."""
    connection = get_redis(app)
    if not burst:
        _wait_for(connection)  # started before Redis (or during an outage): wait for it
    worker = _new_worker(app, connection)
    if burst:
        # The usage stream is work too: drain it whether or not its periodic run is due.
        with app.app_context():
            drained = _ingest(connection)
        enqueue_due(connection)
        worked = worker.work(burst=True, with_scheduler=True, logging_level=log_level)
        with app.app_context():
            drained += _ingest(connection)
        return worked or bool(drained)
    clock = PeriodicClock(connection)
    clock.start()
    try:
        while True:
            try:
                return worker.work(with_scheduler=True, logging_level=log_level)
            except RedisError:
                # Redis went away in the middle of a job: RQ's loop gives up. Nothing read is
                # lost (unacknowledged stream entries stay pending), so work on once it is back.
                log.exception("Redis unreachable: the worker waits for it and works on")
                _wait_for(connection)
                worker = _new_worker(app, connection)
    finally:
        clock.stopped.set()


def _new_worker(app: Flask, connection: Redis) -> AppWorker:
    worker = AppWorker([Queue(name, connection=connection) for name in queues.ALL], connection=connection)
    worker.flask_app = app
    return worker


def _wait_for(connection: Redis, pause: float = 1.0) -> None:
    """Return once Redis answers."""
    while True:
        try:
            connection.ping()
            return
        except RedisError:
            time.sleep(pause)
