"""The Redis connection Tollgate uses for limits, quota counters, the usage stream and RQ."""

from __future__ import annotations

import redis
from flask import Flask, current_app
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import limiter_storage
from .embedded_redis import ensure_embedded_redis

EXTENSION_KEY = "tollgate.redis"


def init_app(app: Flask) -> None:
    """Resolve the Redis URL (embedded when ``REDIS_URL`` is unset) and connect lazily."""
    url = app.config["REDIS_URL"] or ensure_embedded_redis(app.instance_path)
    app.config["REDIS_URL_RESOLVED"] = url
    # Flask-Limiter (the ``limits`` package) spells a unix socket ``redis+unix://``.
    if url.startswith("unix://"):
        storage_uri = "redis+unix://" + url[len("unix://") :]
    else:
        storage_uri = url
    # Flask-Limiter's storage: API windows from the admission decision, the rest in Redis.
    app.config.setdefault("RATELIMIT_STORAGE_URI", limiter_storage.storage_uri(storage_uri))
    app.extensions[EXTENSION_KEY] = redis.Redis.from_url(
        url,
        health_check_interval=30,
        socket_connect_timeout=2,
        socket_timeout=10,
        # Fail fast when Redis is down (the API then serves or refuses, as configured); one
        # quick retry covers a pooled connection that a Redis restart closed.
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=2),
    )


def get_redis(app: Flask | None = None) -> redis.Redis:
    """The application's Redis client (one connection pool per process)."""
    return (app or current_app).extensions[EXTENSION_KEY]
