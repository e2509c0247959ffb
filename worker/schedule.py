"""The periodic jobs, declared in one place with stable names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import jobs, queues


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    func: Callable[[], dict]
    every_seconds: int
    description: str
    result_ttl: int = queues.RESULT_TTL  # seconds a run's result is kept


PERIODIC_JOBS: tuple[PeriodicJob, ...] = (
    PeriodicJob("ingest-usage", jobs.ingest, 2, "store metered calls from the usage stream", result_ttl=60),
    PeriodicJob("evaluate-alerts", jobs.evaluate_alerts, 60, "evaluate alert rules and notify what changed"),
    PeriodicJob(
        "deliver-notifications",
        jobs.deliver_notifications,
        5,
        "send due e-mail, Slack and webhook notices",
        result_ttl=60,  # a run every 5 s: its result matters for a minute (the last run is in jobs list)
    ),
    PeriodicJob("close-periods", jobs.close_periods, 600, "close ended billing periods into statements"),
    PeriodicJob("cleanup", jobs.cleanup, 3600, "delete usage data past each plan's retention"),
    PeriodicJob("recompute-costs", jobs.recompute_costs, 600, "price outside calls stored before their price existed"),
)


def find(name: str) -> PeriodicJob:
    for job in PERIODIC_JOBS:
        if job.name == name:
            return job
    names = ", ".join(j.name for j in PERIODIC_JOBS)
    raise LookupError(f"no periodic job {name!r}; jobs are: {names}")
