"""gunicorn's settings for Tollgate, read from the working directory (the command line wins).

Threads: a call to a gateway route holds its thread while the upstream answers, so each worker
runs 256 threads (gunicorn's gthread worker). With two workers, 200 calls in flight to an
upstream that takes 2 seconds leave threads free for ``/api/v1/ping`` and the portal's pages.
The worker count comes from ``--workers`` or ``WEB_CONCURRENCY``.
"""

threads = 256
# Keep-alive connections of API clients stay open this long between calls.
keepalive = 5


def worker_exit(server, worker) -> None:
    """A worker stopping gracefully sends the completions of its last calls before it goes."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {})
    if "tollgate.admission" in extensions:
        extensions["tollgate.admission"].flush_now()
