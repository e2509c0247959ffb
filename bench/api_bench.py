"""Benchmark of the hot path: ``GET /api/v1/ping`` against a bare Flask JSON endpoint.

Both are served by gunicorn with the same settings; the load comes from wrk, a separate process.
Prints requests/s and p50/p99 latency of each, their ratios (each protected round against the
bare round just before it, median of the rounds), the CPU each part spends per request (gunicorn
workers, Redis server, wrk) and the hypervisor's steal, each Tollgate worker's resident memory
after the run, the Redis memory one tenant's windows and quota hold, and a check that every call
was metered.

    python3 bench/api_bench.py [--seconds 10] [--connections 16] [--rounds 5] [--workers 2]

Run it with the project's virtualenv (``.venv/bin/python bench/api_bench.py``); it needs
Debian's ``wrk`` (installed with apt when missing and possible).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int
    # CPU µs per request spent by each part during the run ("workers", "redis", "wrk"), and the
    # share of the machine's time the hypervisor gave to others (steal).
    cpu_us: dict[str, float] | None = None
    steal: float = 0.0


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measured(run, parts: dict[str, list[psutil.Process]]) -> Result:
    """``run()``'s result, with the CPU each of ``parts`` (and wrk, a child) spent per request."""
    before = {name: cpu_seconds(processes) for name, processes in parts.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = psutil.cpu_times()
    result = run()
    machine_after = psutil.cpu_times()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = {name: cpu_seconds(processes) - before[name] for name, processes in parts.items()}
    spent["wrk"] = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    result.cpu_us = {name: seconds / result.requests * 1e6 for name, seconds in spent.items()}
    elapsed = sum(machine_after) - sum(machine_before)
    result.steal = (getattr(machine_after, "steal", 0) - getattr(machine_before, "steal", 0)) / elapsed
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed for the benchmark: apt-get install wrk")
    return found


def gunicorn(app_spec: str, port: int, env: dict, workers: int, threads: int = 1) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--no-control-socket",
            app_spec,
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{app_spec} did not start")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def run_wrk(wrk: str, url: str, seconds: int, connections: int, headers: dict[str, str]) -> Result:
    command = [wrk, "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return Result(rps, percentile("50"), percentile("99"), int(non_2xx.group(1)) if non_2xx else 0, total)


def worker_rss_mb(master: subprocess.Popen) -> list[float]:
    return [round(child.memory_info().rss / 2**20, 1) for child in psutil.Process(master.pid).children()]


def prepare(instance: Path, env: dict) -> tuple[str, int]:
    """Migrate a fresh database and make a tenant whose limits the load cannot reach."""
    os.environ.update(env)
    from flask_migrate import upgrade

    from portal import create_app
    from portal.billing.plans import update_plan_limits
    from portal.extensions import db
    from portal.onboarding import create_tenant
    from portal.tenancy.keys import create_api_key

    app = create_app()
    with app.app_context():
        upgrade()
        update_plan_limits("enterprise", per_minute=10**9, per_hour=10**9, per_day=10**9)
        tenant = create_tenant("Bench", "enterprise", "bench@bench.example", "bench password")
        _, secret = create_api_key(tenant, "bench")
        db.session.commit()
        tenant_id = tenant.id
    return secret, tenant_id


def tenant_redis_bytes(redis_url: str, tenant_id: int) -> tuple[int, int]:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"tollgate:w:{tenant_id}:*")) + list(client.scan_iter(f"tollgate:q:{tenant_id}:*"))
    return sum(client.memory_usage(k) or 0 for k in keys), len(keys)


def redis_server(redis_url: str) -> list[psutil.Process]:
    """The Redis server's process, when it runs on this machine."""
    import redis

    pid = redis.Redis.from_url(redis_url).info("server")["process_id"]
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:  # a Redis in another PID namespace
        return []


def metered(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    return client.xlen("tollgate:usage") + client.hlen("tollgate:inflight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (1: sync workers)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternate bare/protected this many times (rounds are compared in pairs)"
    )
    parser.add_argument("--redis-url", default=None, help="a Redis server (default: the embedded Redis)")
    args = parser.parse_args()
    wrk = ensure_wrk()

    instance = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    env = dict(os.environ)
    env.update(
        TOLLGATE_INSTANCE_PATH=str(instance),
        DATABASE_URL=f"sqlite:///{instance / 'bench.db'}",
        SECRET_KEY="benchmark-secret-key-0123456789",
        PYTHONPATH=str(ROOT),
    )
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    secret, tenant_id = prepare(instance, env)
    from portal import create_app

    redis_url = create_app().config["REDIS_URL_RESOLVED"]
    if args.redis_url:
        import redis

        redis.Redis.from_url(redis_url).delete("tollgate:usage", "tollgate:inflight")

    bare_port, tollgate_port = free_port(), free_port()
    bare = gunicorn("bench.bare_app:app", bare_port, env, args.workers, args.threads)
    tollgate = gunicorn("wsgi:app", tollgate_port, env, args.workers, args.threads)
    headers = {"X-API-Key": secret}
    try:
        # Warm both (imports, first connections, the key cache).
        run_wrk(wrk, f"http://127.0.0.1:{bare_port}/ping", 2, args.connections, {})
        run_wrk(wrk, f"http://127.0.0.1:{tollgate_port}/api/v1/ping", 2, args.connections, headers)
        bare_runs, protected_runs = [], []
        redis_process = redis_server(redis_url)
        bare_parts = {"workers": psutil.Process(bare.pid).children(), "redis": redis_process}
        tollgate_parts = {"workers": psutil.Process(tollgate.pid).children(), "redis": redis_process}
        for _ in range(args.rounds):
            bare_runs.append(
                measured(
                    lambda: run_wrk(wrk, f"http://127.0.0.1:{bare_port}/ping", args.seconds, args.connections, {}),
                    bare_parts,
                )
            )
            protected_runs.append(
                measured(
                    lambda: run_wrk(
                        wrk, f"http://127.0.0.1:{tollgate_port}/api/v1/ping", args.seconds, args.connections, headers
                    ),
                    tollgate_parts,
                )
            )
        rss = worker_rss_mb(tollgate)
        time.sleep(1.5)  # the idle flush sends the last completions
        total_calls = sum(r.requests for r in protected_runs) + 0
        calls_seen = metered(redis_url)
        tenant_bytes, tenant_keys = tenant_redis_bytes(redis_url, tenant_id)
    finally:
        stop(bare)
        stop(tollgate)

    bare_best = max(bare_runs, key=lambda r: r.rps)
    protected_best = max(protected_runs, key=lambda r: r.rps)
    print(f"machine: {platform.node()} · {psutil.cpu_count()} cores · Python {platform.python_version()}")
    kind = "sync" if args.threads == 1 else f"gthread, {args.threads} threads"
    print(
        f"gunicorn -w {args.workers} ({kind}) · wrk -t2 -c{args.connections} -d{args.seconds}s · "
        f"{args.rounds} rounds, best shown"
    )
    print(f"{'':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, result in (("bare Flask /ping", bare_best), ("Tollgate /api/v1/ping", protected_best)):
        print(f"{name:<22}{result.rps:>10.0f}{result.p50_ms:>10.2f}{result.p99_ms:>10.2f}{result.non_2xx:>10}")
    # Each protected run is compared with the bare run just before it: the machine's speed drifts
    # (other tenants of the host), and a pair shares one moment of it.
    ratios = [protected.rps / bare.rps for bare, protected in zip(bare_runs, protected_runs, strict=True)]
    print(
        f"throughput ratio: {statistics.median(ratios):.2f} (target >= 0.40) — median of the rounds' "
        f"{', '.join(f'{ratio:.2f}' for ratio in ratios)}; best of each: {protected_best.rps / bare_best.rps:.2f}"
    )
    print("CPU per request, µs (gunicorn workers / Redis server / wrk), and the hypervisor's steal:")
    for name, result in (("bare Flask /ping", bare_best), ("Tollgate /api/v1/ping", protected_best)):
        parts = " / ".join(f"{result.cpu_us[part]:.0f}" for part in ("workers", "redis", "wrk"))
        print(f"  {name:<22}{parts:>20}    steal {result.steal:.0%}")
    p99_ratios = [protected.p99_ms / bare.p99_ms for bare, protected in zip(bare_runs, protected_runs, strict=True)]
    print(
        f"p99 ratio:        {statistics.median(p99_ratios):.2f} (target <= 3) — median of the rounds' "
        f"{', '.join(f'{ratio:.2f}' for ratio in p99_ratios)}"
    )
    print(f"worker RSS after the run: {', '.join(f'{mb} MB' for mb in rss)} (target <= 120 MB each)")
    print(f"Redis held by one tenant's windows and quota: {tenant_bytes} bytes in {tenant_keys} keys (target <= 2 KB)")
    # Warm-up calls are metered too; every measured call must be in the stream or in flight.
    print(f"metered calls in Redis: {calls_seen} (measured calls: {total_calls}, plus warm-up)")
    if not args.redis_url:
        from portal.embedded_redis import stop_embedded_redis

        stop_embedded_redis(instance)
    shutil.rmtree(instance, ignore_errors=True)


if __name__ == "__main__":
    main()
