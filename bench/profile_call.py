"""Where one protected API call spends its CPU, measured in-process (no HTTP server, no load tool).

Calls ``GET /api/v1/ping`` through ``app.wsgi_app`` with a prepared environ, N times, and prints
the CPU time per call next to a bare Flask JSON endpoint's; ``--profile`` adds cProfile's
heaviest functions. It complements ``bench/api_bench.py``: that one measures throughput under
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
        drive(protected, "/api/v1/ping", headers, 200)  # warm caches and the script
        drive(bare.wsgi_app, "/ping", {}, 200)
        # Alternating rounds, best of each kept (as timeit does): other tenants of the machine
        # only ever add time.
        bare_cpu = protected_cpu = float("inf")
        for _ in range(args.rounds):
            bare_cpu = min(bare_cpu, drive(bare.wsgi_app, "/ping", {}, args.calls))
            protected_cpu = min(protected_cpu, drive(protected, "/api/v1/ping", headers, args.calls))
        print(f"bare Flask:     {bare_cpu * 1e6:7.1f} µs CPU per call (best of {args.rounds} x {args.calls})")
        print(f"protected call: {protected_cpu * 1e6:7.1f} µs CPU per call ({protected_cpu / bare_cpu:.1f}x)")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            drive(protected, "/api/v1/ping", headers, args.calls)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(45)
            print(out.getvalue())
        if not args.redis_url:
            from portal.embedded_redis import stop_embedded_redis

            stop_embedded_redis(folder)
    os._exit(0)  # the admission's flush thread is a daemon; nothing else to wait for


if __name__ == "__main__":
    main()
