"""Where one protected API call spends its CPU, measured in-process (no HTTP server, no load tool).

Calls ``GET /api/v1/ping`` through ``app.wsgi_app`` with a prepared environ, N times, and prints
the CPU time per call next to a bare Flask JSON endpoint's; ``--profile`` adds cProfile's
heaviest functions. ``--route`` measures a call through a gateway route instead
(``GET /api/fast/ping`` to ``bench/bare_app.py`` under its own gunicorn, a child process whose CPU
is not counted), next to the ping. It complements ``bench/api_bench.py``: that one measures throughput under
load, this one says which part of the call to trim.

    .venv/bin/python bench/profile_call.py [--calls 2000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def environ(path: str, headers: dict[str, str]) -> dict:
    from werkzeug.test import EnvironBuilder

    return EnvironBuilder(path=path, headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()


def drive(app, path: str, headers: dict[str, str], calls: int) -> float:
    """CPU seconds per call of ``calls`` requests (the response body is read and closed)."""
    base = environ(path, headers)

    def start_response(status, response_headers, exc_info=None):
        return None

    started = time.process_time()
    for _ in range(calls):
        body = app(dict(base), start_response)
        for _chunk in body:
            pass
        if hasattr(body, "close"):
            body.close()
    return (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print cProfile's heaviest functions")
    parser.add_argument("--sort", default="cumulative", help="cProfile order: cumulative or tottime")
    parser.add_argument("--redis-url", default=None, help="a Redis server (default: the embedded Redis)")
    parser.add_argument("--route", action="store_true", help="measure a call through a gateway route")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tg-prof-") as folder:
        env = {"TOLLGATE_INSTANCE_PATH": folder, "DATABASE_URL": f"sqlite:///{folder}/bench.db"}
        if args.redis_url:
            env["REDIS_URL"] = args.redis_url
        from bench.api_bench import prepare
        from bench.bare_app import app as bare

        secret, _ = prepare(Path(folder), env)
        from portal import create_app

        app = create_app()
        protected = app.wsgi_app
        headers = {"X-API-Key": secret}
        upstream = None
        if args.route:
            upstream = routed(app, env)
            baseline, baseline_name, path, name = (protected, "protected call:", "/api/fast/ping", "routed call:  ")
        else:
            baseline, baseline_name, path, name = (bare.wsgi_app, "bare Flask:    ", "/api/v1/ping", "protected call:")
        baseline_path, baseline_headers = ("/api/v1/ping", headers) if args.route else ("/ping", {})
        try:
            drive(protected, path, headers, 200)  # warm caches and the script
            drive(baseline, baseline_path, baseline_headers, 200)
            # Alternating rounds, best of each kept (as timeit does): other tenants of the
            # machine only ever add time.
            baseline_cpu = measured_cpu = float("inf")
            for _ in range(args.rounds):
                baseline_cpu = min(baseline_cpu, drive(baseline, baseline_path, baseline_headers, args.calls))
                measured_cpu = min(measured_cpu, drive(protected, path, headers, args.calls))
            print(f"{baseline_name} {baseline_cpu * 1e6:7.1f} µs CPU per call (best of {args.rounds} x {args.calls})")
            print(f"{name} {measured_cpu * 1e6:7.1f} µs CPU per call ({measured_cpu / baseline_cpu:.2f}x)")
            if args.profile:
                profile(protected, path, headers, args)
        finally:
            if upstream is not None:
                from bench.gateway_bench import stop_group

                stop_group(upstream)
        if not args.redis_url:
            from portal.embedded_redis import stop_embedded_redis

            stop_embedded_redis(folder)
    os._exit(0)  # the admission's flush thread is a daemon; nothing else to wait for


def routed(app, env: dict):
    """Serve ``bench/bare_app.py`` in a child gunicorn and route ``/api/fast`` to it."""
    from bench.api_bench import free_port
    from bench.gateway_bench import serve
    from portal.extensions import db
    from portal.gateway.routes import add_route

    port = free_port()
    upstream = serve("bench.bare_app:app", port, {**os.environ, **env}, workers=1, threads=8)
    with app.app_context():
        add_route("/api/fast", f"http://127.0.0.1:{port}", [rule.rule for rule in app.url_map.iter_rules()], "GET")
        db.session.commit()
    return upstream


def profile(protected, path: str, headers: dict[str, str], args) -> None:
    profiler = cProfile.Profile(time.process_time)  # CPU, not the time spent waiting
    profiler.enable()
    drive(protected, path, headers, args.calls)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(45)
    print(out.getvalue())


if __name__ == "__main__":
    main()
