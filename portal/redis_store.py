"""The Redis connection Tollgate uses for limits, quota counters, the usage stream and RQ."""

from __future__ import annotations

import hashlib
import os
import threading

import redis
from flask import Flask, current_app
from redis.backoff import ExponentialBackoff
from redis.connection import Connection
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .embedded_redis import ensure_embedded_redis
from .limits import limiter_storage

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
        # Each gunicorn thread keeps a connection for the admission script (ThreadScript) and
        # borrows pooled ones: 256 threads a worker (gunicorn.conf.py) need more than redis-py's
        # default of 100.
        max_connections=2048,
        socket_connect_timeout=2,
        socket_timeout=10,
        # Fail fast when Redis is down (the API then serves or refuses, as configured); one
        # quick retry covers a pooled connection that a Redis restart closed.
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=2),
    )


def get_redis(app: Flask | None = None) -> redis.Redis:
    """The application's Redis client (one connection pool per process)."""
    return (app or current_app).extensions[EXTENSION_KEY]


class ThreadScript:
    """A Lua script called over a connection its calling thread keeps for itself.

    The admission script runs on every API call. Through ``Redis.register_script`` each call
    passes redis-py's client machinery (connection pool checkout and release, retry wrapper,
    command lookup), about 60 µs of CPU against 15 µs for sending the command on a connection
    and reading its reply. This keeps one connection per thread (and per process, after a fork),
    made by the client's own pool, so timeouts, health checks and socket settings stay the
    client's.

    Before sending, a connection the server closed since its last use (e.g. a Redis restart)
    is noticed (a zero-timeout poll, about 2 µs) and replaced, so a restart costs no call. A
    command that was sent is never repeated: its script may have run, and running it twice would
    count a call twice, so a failure after sending is raised. A Redis that lost its script cache
    gets the script again with ``EVAL``.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._local = threading.local()

    def _connection(self) -> Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.connection = self.client.connection_pool.make_connection()
            local.pid = os.getpid()
        return local.connection

    def __call__(self, keys: list, args: list):
        connection = self._connection()
        try:
            if connection.can_read(timeout=0):  # bytes nobody asked for: start afresh
                connection.disconnect()
        except redis.ConnectionError:  # closed by the server since the last call
            connection.disconnect()
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        connection.send_command(*command)
        try:
            try:
                return connection.read_response()
            except NoScriptError:
                connection.send_command("EVAL", self.source, *command[2:])
                return connection.read_response()
        except redis.RedisError as error:
            if not isinstance(error, redis.ResponseError):
                connection.disconnect()  # a late reply must not be read as the next call's
            raise
