"""RQ job functions. They run inside the application context the worker pushes, take plain
values (never model objects) and return plain dictionaries for the job result."""

from __future__ import annotations

from dataclasses import asdict

from portal.models import utcnow
from portal.retention import delete_expired_usage


def cleanup() -> dict:
    """Delete usage data past each tenant's retention."""
    return asdict(delete_expired_usage(utcnow()))
