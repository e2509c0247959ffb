"""Benchmark of the gateway: what a route adds to a call, streams, slow upstreams, and verify.

One run, every load loop bounded in time, each figure against a baseline measured in the same run:

1. Added cost: the same wrk load (``--connections``, then ``--low-connections`` to see the
   latency a call gains without queueing) to a fast upstream (``bench/bare_app.py`` under its own
   gunicorn, gthread with keep-alive) directly and through a Tollgate route to it, alternating with
   ``GET /api/v1/ping``: requests/s, p50/p99, the CPU Tollgate's gunicorn (master and workers)
   spends per call, and the share of the machine other processes took meanwhile.
2. Stream first byte: sequential calls through a route to ``tests.gateway.upstreams.Upstream``'s
   ``/stream`` (in this process, so its send times share this clock), read with a raw socket:
   the time from the upstream writing its first event to the caller receiving it. Beside it the
   same through a route to that upstream with TCP_NODELAY, and straight to the upstream over a
   kept-alive connection as Tollgate's pool has (the upstream's own share of any stall).
3. 200 slow calls: 200 concurrent calls through a route to ``slow?seconds=2`` (the upstream and
   the 200 callers in a child process, so their threads never hold this process's GIL), and while
   all 200 are in flight, sequential ``GET /api/v1/ping`` and ``GET /dashboard`` (signed in as the
   tenant's owner) timed from here; the same with no load as the baseline.
4. Verify: ``POST /api/v1/verify`` then ``POST /api/v1/verify/<callId>/complete`` pairs per
   second from a Python loop of ``--loop-threads`` threads (a ``requests.Session`` each),
   alternating with ``GET /api/v1/ping`` from the same loop. Skipped, with a note, where the
   verify API answers 404.

    .venv/bin/python bench/gateway_bench.py [--rounds 3] [--seconds 10] [--connections 16]
        [--database-url postgresql://postgres@127.0.0.1/tollgate_gateway_bench]
        [--redis-url redis://127.0.0.1:6379/10]

The database is SQLite in a temporary folder unless ``--database-url`` names a PostgreSQL
database, which is dropped and created again. The Redis db (default 10: no test or other
benchmark uses it) is flushed before and after. Tollgate runs ``gunicorn --workers 2`` with the
threads of ``gunicorn.conf.py`` (256 a worker, gthread); the setup is the operator's commands
(``flask --app wsgi db upgrade``, ``set-plan``, ``create-tenant``, ``create-api-key``,
``gateway add``, ``create-service-token``). Needs Debian's ``wrk``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_bench import Result, ensure_wrk, free_port, measured, metered, redis_server, run_wrk  # noqa: E402
from tests.gateway.upstreams import Upstream  # noqa: E402

DEFAULT_REDIS = "redis://127.0.0.1:6379/10"
OWNER_EMAIL = "owner@gateway-bench.example"
OWNER_PASSWORD = "gateway bench password 2026"
STREAM_QUERY = "stream?events=5&interval=0.2&usage=openai"
SLOW_CALLS = 200
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


def note(message: str) -> None:
    """Progress, on stderr (the figures go to stdout at the end)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------


def flask(env: dict, *args: str) -> str:
    """Run ``flask --app wsgi ARGS`` as an operator would; its output's last line."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def serve(app_spec: str, port: int, env: dict, workers: int, threads: int | None = None) -> subprocess.Popen:
    """gunicorn in its own process group (read ``gunicorn.conf.py`` from the checkout; the
    command line wins), once it answers ``/health``."""
    command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{port}"]
    command += ["--log-level", "warning", "--no-control-socket"]
    if threads is not None:
        command += ["--threads", str(threads)]
    process = subprocess.Popen([*command, app_spec], cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_group(process)
    raise RuntimeError(f"{app_spec} did not start")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the gunicorn's process group, then SIGKILL to any of its workers left."""
    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for worker in workers:
        with suppress(psutil.NoSuchProcess):
            worker.kill()


def server_processes(master: subprocess.Popen) -> list[psutil.Process]:
    """The gunicorn master and its workers."""
    process = psutil.Process(master.pid)
    return [process, *process.children(recursive=True)]


def busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "steal", 0.0)


def measured_round(run, parts: dict[str, list[psutil.Process]]) -> Result:
    """``measured`` (api_bench), and the share of the machine's CPU that processes other than
    ``parts`` (and wrk) used meanwhile, as ``result.others`` (other people's work on the machine)."""
    busy, clock = busy_seconds(), time.monotonic()
    result = measured(run, parts)
    elapsed = time.monotonic() - clock
    ours = sum(result.cpu_us.values()) * result.requests / 1e6
    result.others = max(0.0, (busy_seconds() - busy - ours) / (elapsed * psutil.cpu_count()))
    return result


# -- 1. the added cost ------------------------------------------------------------------------


@dataclass
class Loads:
    """The rounds of each load of part 1, by name."""

    runs: dict[str, list[Result]] = field(default_factory=dict)

    def add(self, name: str, result: Result) -> None:
        self.runs.setdefault(name, []).append(result)

    def median(self, name: str, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.runs[name])

    def cpu(self, name: str, part: str) -> list[float]:
        return [r.cpu_us[part] for r in self.runs[name]]


def added_cost(args, wrk: str, urls: dict[str, str], headers: dict[str, str], parts: dict) -> Loads:
    """Alternate the loads of part 1, ``args.rounds`` times, each ``args.seconds`` long."""
    loads = Loads()
    plan = [
        ("direct", urls["direct"], {}, args.connections),
        ("through", urls["through"], headers, args.connections),
        ("ping", urls["ping"], headers, args.connections),
    ]
    if args.low_connections:
        plan += [
            ("direct-low", urls["direct"], {}, args.low_connections),
            ("through-low", urls["through"], headers, args.low_connections),
            ("ping-low", urls["ping"], headers, args.low_connections),
        ]
    for _, url, sent, connections in plan[:3]:  # warm-up: imports, connections, the key cache
        run_wrk(wrk, url, 2, connections, sent)
    for round_number in range(args.rounds):
        for name, url, sent, connections in plan:
            note(f"part 1, round {round_number + 1}/{args.rounds}: {name} ({connections} connections)")
            loads.add(
                name,
                measured_round(
                    lambda url=url, sent=sent, c=connections: run_wrk(wrk, url, args.seconds, c, sent), parts
                ),
            )
    return loads


# -- 2. a stream's first event ----------------------------------------------------------------


def first_event_ms(port: int, target: str, headers: dict[str, str], upstream: Upstream) -> tuple[float, int, int]:
    """One streamed call over a raw socket: (ms from the upstream's first write to its arrival
    here, status, events received)."""
    index = len(upstream.sent)
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += "Connection: close\r\n\r\n"
    arrived = None
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            if arrived is None:
                _, _, body = received.partition(b"\r\n\r\n")
                if b"data:" in body:
                    arrived = time.perf_counter()
    status = int(received.split(b" ", 2)[1])
    if arrived is None or len(upstream.sent) <= index:
        return float("nan"), status, 0
    return (arrived - upstream.sent[index][0]) * 1000, status, received.count(b"data: ")


class NoDelayUpstream(Upstream):
    """The tests' upstream with Nagle's algorithm off on its connections, as gunicorn and urllib3
    set theirs. It writes a response's head and each event apart; with Nagle on, a small write
    waits until the one before is acknowledged, which on a kept-alive connection the peer may
    put off for its delayed ACK (40 ms on Linux)."""

    def _track(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._track(conn)


def pooled_first_event_ms(pool: urllib3.PoolManager, upstream: Upstream) -> float:
    """The same call straight to the upstream over a kept-alive urllib3 connection, as
    Tollgate's pool makes it."""
    index = len(upstream.sent)
    response = pool.urlopen("GET", f"{upstream.url}/{STREAM_QUERY}", preload_content=False, redirect=False)
    response.read1(65536)
    arrived = time.perf_counter()
    while response.read1(65536):
        pass
    response.release_conn()
    return (arrived - upstream.sent[index][0]) * 1000


def stream_first_event(port: int, headers: dict[str, str], upstreams: dict[str, Upstream], calls: int) -> dict:
    """``calls`` calls one after the other through the route to the tests' upstream; then as many
    through the route to the same upstream with TCP_NODELAY; then as many straight to the tests'
    upstream over a kept-alive connection."""
    plain, nodelay = upstreams["plain"], upstreams["nodelay"]
    results: dict = {"through": [], "through-nodelay": [], "pooled": [], "statuses": Counter(), "events": Counter()}
    for name, path, upstream in (
        ("through", "/api/stream-route", plain),
        ("through-nodelay", "/api/stream-nodelay", nodelay),
    ):
        first_event_ms(port, f"{path}/{STREAM_QUERY}", headers, upstream)  # warm-up: the pool's connection
        for _ in range(calls):
            delay, status, events = first_event_ms(port, f"{path}/{STREAM_QUERY}", headers, upstream)
            results[name].append(delay)
            results["statuses"][status] += 1
            results["events"][events] += 1
    pool = urllib3.PoolManager(retries=False)
    pooled_first_event_ms(pool, plain)
    results["pooled"] = [pooled_first_event_ms(pool, plain) for _ in range(calls)]
    pool.clear()
    return results


# -- 3. 200 slow calls ------------------------------------------------------------------------


def slow_load(conn) -> None:
    """Child process: the slow upstream and the slow calls' callers. Their 400 threads wake
    together when the calls start and end; here they never hold the measuring process's GIL."""
    with Upstream() as upstream:
        conn.send(upstream.url)
        while (order := conn.recv()) is not None:
            url, headers, calls = order
            before = len(upstream.requests)
            statuses = [0] * calls
            finished: list[float] = []
            lock = threading.Lock()

            def call(i: int, url=url, headers=headers, statuses=statuses, finished=finished, lock=lock) -> None:
                try:
                    statuses[i] = requests.get(url, headers=headers, timeout=60).status_code
                except requests.RequestException:
                    statuses[i] = -1
                with lock:
                    finished.append(time.monotonic())

            threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(calls)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            deadline = started + 30
            arrived = 0
            while time.monotonic() < deadline and not finished:
                arrived = len(upstream.requests) - before
                if arrived >= calls:
                    break
                time.sleep(0.002)
            all_in = time.monotonic() if arrived >= calls and not finished else None
            conn.send(("in flight", started, all_in))
            while not finished and time.monotonic() < deadline:
                time.sleep(0.002)
            conn.send(("first done", min(finished) if finished else time.monotonic()))
            for thread in threads:
                thread.join(timeout=60)
            ends = finished or [time.monotonic()]
            conn.send(("done", Counter(statuses), min(ends) - started, max(ends) - started, all_in))


def receive(conn, timeout: float = 90):
    """The slow-load child's next message (it is never more than a wave's time away)."""
    if not conn.poll(timeout):
        raise RuntimeError("the slow-load child process stopped answering")
    return conn.recv()


@dataclass
class Probe:
    """Sequential ``/api/v1/ping`` and ``/dashboard`` calls, timed from this process."""

    base: str
    headers: dict[str, str]
    portal: requests.Session
    api: requests.Session = field(default_factory=requests.Session)

    def ping(self) -> tuple[float, float, int]:
        started = time.monotonic()
        status = self.api.get(f"{self.base}/api/v1/ping", headers=self.headers, timeout=30).status_code
        ended = time.monotonic()
        return (ended - started) * 1000, ended, status

    def dashboard(self) -> tuple[float, float, int]:
        started = time.monotonic()
        response = self.portal.get(f"{self.base}/dashboard", timeout=30, allow_redirects=False)
        ended = time.monotonic()
        return (ended - started) * 1000, ended, response.status_code


def signed_in(base: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/login", timeout=30)
    match = CSRF.search(page.text)
    if match is None:
        raise RuntimeError("no csrf_token on /login")
    token = match.group(1) or match.group(2)
    answer = session.post(
        f"{base}/login", data={"email": OWNER_EMAIL, "password": OWNER_PASSWORD, "csrf_token": token}, timeout=30
    )
    dashboard = session.get(f"{base}/dashboard", timeout=30, allow_redirects=False)
    if answer.status_code != 200 or dashboard.status_code != 200:
        raise RuntimeError(f"sign-in failed: /login {answer.status_code}, /dashboard {dashboard.status_code}")
    return session


def probe_baseline(probe: Probe, count: int) -> dict[str, list]:
    samples: dict[str, list] = {"ping": [], "dashboard": []}
    for _ in range(3):  # warm-up
        probe.ping()
        probe.dashboard()
    for _ in range(count):
        for name in ("ping", "dashboard"):
            samples[name].append(getattr(probe, name)())
    return samples


def slow_calls(conn, probe: Probe, url: str, headers: dict[str, str], count: int, waves: int) -> dict:
    """Waves of ``SLOW_CALLS`` concurrent slow calls until ``count`` pings and dashboards have
    been timed while every call of a wave was in flight (at most ``waves`` waves)."""
    samples: dict[str, list] = {"ping": [], "dashboard": []}
    report: dict = {"waves": [], "samples": samples, "late": 0}
    for wave in range(waves):
        note(f"part 3, wave {wave + 1}: {SLOW_CALLS} calls to slow?seconds=2")
        conn.send((url, headers, SLOW_CALLS))
        _, started, all_in = receive(conn)
        taken = []
        if all_in is not None:
            while not conn.poll() and min(len(s) for s in samples.values()) + len(taken) // 2 < count:
                for name in ("ping", "dashboard"):
                    taken.append((name, *getattr(probe, name)()))
        _, first_done = receive(conn)
        _, statuses, first, last, all_in = receive(conn)
        for name, latency, ended, status in taken:
            if ended <= first_done and len(samples[name]) < count:
                samples[name].append((latency, ended, status))
            else:
                report["late"] += 1
        report["waves"].append(
            {
                "statuses": statuses,
                "all in flight after ms": None if all_in is None else (all_in - started) * 1000,
                "first done s": first,
                "last done s": last,
            }
        )
        if min(len(s) for s in samples.values()) >= count:
            break
    return report


# -- 4. verify --------------------------------------------------------------------------------


def python_load(seconds: float, threads: int, one_call) -> Result:
    """``one_call(session) -> bool`` from ``threads`` threads until ``seconds`` have passed."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures = [0] * threads
    deadline = time.monotonic() + seconds

    def loop(n: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                ok = one_call(session)
                latencies[n].append((time.perf_counter() - started) * 1000)
                failures[n] += not ok

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    every = sorted(x for per_thread in latencies for x in per_thread)
    p50 = every[len(every) // 2]
    p99 = every[min(len(every) - 1, int(len(every) * 0.99))]
    return Result(len(every) / elapsed, p50, p99, sum(failures), len(every))


def verify_pairs(args, base: str, key_headers: dict, token: str | None, key: str, parts: dict) -> dict:
    """Alternate rounds of verify+complete pairs and of pings from the same Python loop."""
    if token is None:
        return {"skipped": "create-service-token is not a command of this Tollgate"}
    bearer = {"Authorization": f"Bearer {token}"}
    body = {"key": key, "endpoint": "/api/chat", "method": "POST"}
    probe = requests.post(f"{base}/api/v1/verify", json=body, headers=bearer, timeout=30)
    if probe.status_code == 404:
        return {"skipped": "POST /api/v1/verify answers 404: the verify API is not there yet"}
    if probe.status_code != 200 or not probe.json().get("valid"):
        return {"skipped": f"POST /api/v1/verify answers {probe.status_code}: {probe.text[:200]}"}
    call_id = probe.json()["callId"]
    done = requests.post(
        f"{base}/api/v1/verify/{call_id}/complete", json={"status_code": 200, "duration_ms": 5}, headers=bearer
    )
    if done.status_code != 200:
        return {"skipped": f"POST /api/v1/verify/<callId>/complete answers {done.status_code}: {done.text[:200]}"}

    def pair(session: requests.Session) -> bool:
        verdict = session.post(f"{base}/api/v1/verify", json=body, headers=bearer, timeout=30)
        if verdict.status_code != 200:
            return False
        answer = verdict.json()
        if not answer.get("valid"):
            return False
        completed = session.post(
            f"{base}/api/v1/verify/{answer['callId']}/complete",
            json={"status_code": 200, "duration_ms": 5},
            headers=bearer,
            timeout=30,
        )
        return completed.status_code == 200

    def ping(session: requests.Session) -> bool:
        return session.get(f"{base}/api/v1/ping", headers=key_headers, timeout=30).status_code == 200

    python_load(2, args.loop_threads, pair)  # warm-up
    python_load(2, args.loop_threads, ping)
    runs: dict[str, list[Result]] = {"pairs": [], "ping": []}
    for round_number in range(args.rounds):
        note(f"part 4, round {round_number + 1}/{args.rounds}: verify+complete, then ping")
        runs["pairs"].append(measured_round(lambda: python_load(args.seconds, args.loop_threads, pair), parts))
        runs["ping"].append(measured_round(lambda: python_load(args.seconds, args.loop_threads, ping), parts))
    return {"runs": runs}


# -- the report -------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def over(values: list[float], limit: float) -> str:
    return f"{sum(value > limit for value in values)} of {len(values)} over {limit:g} ms"


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_report(args, loads: Loads, stream: dict, baseline: dict, slow: dict, verify: dict, extra: dict) -> None:
    print()
    print(
        f"machine: {platform.node()} · {psutil.cpu_count()} cores · Python {platform.python_version()} · "
        f"load average before {extra['load']}"
    )
    print(
        f"Tollgate: gunicorn -w {args.workers} (gthread, gunicorn.conf.py's threads) · upstream: bench/bare_app.py, "
        f"gunicorn -w {args.workers} {'sync' if args.upstream_threads == 1 else f'gthread {args.upstream_threads}'}"
        f" · {extra['database']} · Redis {extra['redis']} · code {extra['code']}"
    )
    print(f"{args.rounds} rounds of {args.seconds} s, medians of the rounds (min–max where shown)")
    print(f"load average after: {extra['load after']}")

    print("\n1. Added cost of the gateway: wrk -t2 --latency, the same load direct and through /api/fast")
    print(f"{'load':<34}{'req/s':>8}{'(rounds)':>14}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'others':>8}")
    rows = [
        ("direct to the upstream", "direct", args.connections),
        ("through Tollgate's route", "through", args.connections),
        ("Tollgate GET /api/v1/ping", "ping", args.connections),
    ]
    if args.low_connections:
        rows += [
            ("direct to the upstream", "direct-low", args.low_connections),
            ("through Tollgate's route", "through-low", args.low_connections),
            ("Tollgate GET /api/v1/ping", "ping-low", args.low_connections),
        ]
    for label, name, connections in rows:
        runs = loads.runs[name]
        rates = [r.rps for r in runs]
        print(
            f"{label + f' (-c{connections})':<34}{statistics.median(rates):>8.0f}"
            f"{f'{min(rates):.0f}–{max(rates):.0f}':>14}{loads.median(name, 'p50_ms'):>9.2f}"
            f"{loads.median(name, 'p99_ms'):>9.2f}{sum(r.non_2xx for r in runs):>9}"
            f"{loads.median(name, 'others'):>8.0%}"
        )
    print("  (others: the share of the machine's CPU that processes outside this benchmark used meanwhile)")
    pairs = list(zip(loads.runs["direct"], loads.runs["through"], strict=True))
    added_p50 = [t.p50_ms - d.p50_ms for d, t in pairs]
    added_p99 = [t.p99_ms - d.p99_ms for d, t in pairs]
    print(
        f"added by the gateway at -c{args.connections} (each through round against the direct one before it): "
        f"p50 {spread(added_p50, 2)} ms, p99 {spread(added_p99, 2)} ms — target p50 ≤ 2 ms: "
        f"{met(statistics.median(added_p50) <= 2)}"
    )
    if args.low_connections:
        low = list(zip(loads.runs["direct-low"], loads.runs["through-low"], strict=True))
        low_p50 = [t.p50_ms - d.p50_ms for d, t in low]
        print(
            f"added by the gateway at -c{args.low_connections} (no queueing): p50 {spread(low_p50, 2)} ms, "
            f"p99 {spread([t.p99_ms - d.p99_ms for d, t in low], 2)} ms — target p50 ≤ 2 ms: "
            f"{met(statistics.median(low_p50) <= 2)}"
        )
    print("CPU per call, µs (Tollgate master+workers / upstream master+workers / Redis server / wrk), steal:")
    for label, name, connections in rows:
        parts = " / ".join(f"{statistics.median(loads.cpu(name, part)):.0f}" for part in extra["parts"])
        print(f"  {label + f' (-c{connections})':<34}{parts:>24}    steal {loads.median(name, 'steal'):.0%}")
    for suffix, connections in (("", args.connections), ("-low", args.low_connections)):
        if not connections:
            continue
        through_cpu, ping_cpu = loads.cpu("through" + suffix, "tollgate"), loads.cpu("ping" + suffix, "tollgate")
        forwarding = [t - p for t, p in zip(through_cpu, ping_cpu, strict=True)]
        print(
            f"-c{connections}: Tollgate CPU per gateway call {spread(through_cpu)} µs against its ping's "
            f"{spread(ping_cpu)} µs (forwarding beyond a ping: {spread(forwarding)} µs) — target gateway ≤ ping: "
            f"{met(statistics.median(through_cpu) <= statistics.median(ping_cpu))}"
        )

    print(f"\n2. Stream first event: {len(stream['through'])} calls one after the other, GET …/{STREAM_QUERY}")
    print("   ms from the upstream's first write to its arrival at the caller, median / max")
    for label, name in (
        ("through Tollgate (raw socket) to tests.gateway.upstreams.Upstream", "through"),
        ("through Tollgate (raw socket) to the same with TCP_NODELAY", "through-nodelay"),
        ("straight to the Upstream, kept-alive urllib3 connection", "pooled"),
    ):
        print(f"   {label:<70}{ms(stream[name]):>14}   ({over(stream[name], 10)})")
    print(
        f"   statuses {dict(stream['statuses'])}, events received per call {dict(stream['events'])} — "
        f"target ≤ 10 ms: {met(max(stream['through']) <= 10)} (with TCP_NODELAY upstream: "
        f"{met(max(stream['through-nodelay']) <= 10)})"
    )

    print(f"\n3. {SLOW_CALLS} concurrent calls to slow?seconds=2 through /api/slow-route")
    for number, wave in enumerate(slow["waves"], 1):
        arrived = wave["all in flight after ms"]
        print(
            f"   wave {number}: statuses {dict(wave['statuses'])}; all {SLOW_CALLS} at the upstream "
            f"{'never' if arrived is None else f'{arrived:.0f} ms'} after the start; "
            f"completed {wave['first done s']:.2f}–{wave['last done s']:.2f} s after the start"
        )
    samples = slow["samples"]
    print(f"   ({slow['late']} probe calls ended after the first slow call did and are left out)")
    print(f"   {'ms, median / max (count)':<36}{'no load':>22}{'200 in flight':>22}")
    worst = 0.0
    for name, label in (("ping", "GET /api/v1/ping"), ("dashboard", "GET /dashboard")):
        quiet = [s[0] for s in baseline[name]]
        loaded = [s[0] for s in samples[name]]
        statuses = Counter(s[2] for s in baseline[name] + samples[name])
        worst = max([worst, *loaded])
        loaded_text = f"{ms(loaded)} ({len(loaded)})" if loaded else "none"
        print(f"   {label:<36}{f'{ms(quiet)} ({len(quiet)})':>22}{loaded_text:>22}   statuses {dict(statuses)}")
    complete = all(wave["statuses"] == Counter({200: SLOW_CALLS}) for wave in slow["waves"])
    print(
        f"   every slow call 200: {'yes' if complete else 'NO'} — target ≤ 100 ms during the load: "
        f"{met(complete and worst <= 100 and all(samples.values()))}"
    )

    print(f"\n4. Verify + complete against ping, the same Python loop ({args.loop_threads} threads, a Session each)")
    if "skipped" in verify:
        print(f"   SKIPPED: {verify['skipped']}")
    else:
        runs = verify["runs"]
        for label, name in (("verify+complete pairs", "pairs"), ("GET /api/v1/ping", "ping")):
            rs = runs[name]
            print(
                f"   {label:<24}{spread([r.rps for r in rs]):>18}/s   p50 {spread([r.p50_ms for r in rs], 2)} ms"
                f"   p99 {spread([r.p99_ms for r in rs], 2)} ms   failed {sum(r.non_2xx for r in rs)}"
                f"   Tollgate CPU {spread([r.cpu_us['tollgate'] for r in rs])} µs each"
                f"   others {statistics.median(r.others for r in rs):.0%}"
            )
        ratios = [p.rps / q.rps for p, q in zip(runs["pairs"], runs["ping"], strict=True)]
        print(
            f"   pairs/s ÷ pings/s: {spread(ratios, 2)} (a pair is two requests: "
            f"{spread([2 * r for r in ratios], 2)} in requests/s)"
        )
    print(f"\nmetered calls in Redis: {extra['metered']} (stream plus in flight; calls measured: "
          f"{extra['calls']}, plus warm-ups and probes)")  # fmt: skip


# -- main -------------------------------------------------------------------------------------


def code_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--", "portal")
    return f"{git('rev-parse', '--short', 'HEAD')}{' + uncommitted changes in portal/' if changed else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each load in parts 1 and 4")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of each load")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections of part 1")
    parser.add_argument(
        "--low-connections", type=int, default=2, help="also with this few, at least 2: wrk's two threads (0: not)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of Tollgate and of the upstream")
    parser.add_argument(
        "--upstream-threads", type=int, default=4, help="the fast upstream's threads (gthread, keep-alive; 1: sync)"
    )
    parser.add_argument("--stream-calls", type=int, default=20)
    parser.add_argument("--probes", type=int, default=20, help="pings and dashboards timed in part 3")
    parser.add_argument("--slow-waves", type=int, default=4, help="at most this many waves of slow calls")
    parser.add_argument("--loop-threads", type=int, default=8, help="threads of part 4's Python loop")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="flushed before and after")
    args = parser.parse_args()
    if args.low_connections == 1:
        parser.error("--low-connections is 0 or at least 2 (wrk runs two threads, each with a connection at least)")
    wrk = ensure_wrk()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())

    import redis

    redis_client = redis.Redis.from_url(args.redis_url)
    redis_client.flushdb()
    instance = Path(tempfile.mkdtemp(prefix="tg-gateway-bench-"))
    database = args.database_url or f"sqlite:///{instance / 'bench.db'}"
    if database.startswith("postgres"):
        from bench.ingest_bench import fresh_postgres

        fresh_postgres(database)
    env = dict(os.environ)
    env.update(
        TOLLGATE_INSTANCE_PATH=str(instance),
        DATABASE_URL=database,
        REDIS_URL=args.redis_url,
        SECRET_KEY="gateway-benchmark-secret-key-0123456789",
        PYTHONPATH=str(ROOT),
    )
    env.pop("WEB_CONCURRENCY", None)

    started: list[subprocess.Popen] = []
    child = None
    parent_conn, child_conn = multiprocessing.Pipe()
    stream_upstreams = {"plain": Upstream().start(), "nodelay": NoDelayUpstream().start()}
    try:
        note("starting the upstreams")
        upstream_port, tollgate_port = free_port(), free_port()
        started.append(serve("bench.bare_app:app", upstream_port, env, args.workers, args.upstream_threads))
        upstream = started[-1]
        child = multiprocessing.get_context("spawn").Process(target=slow_load, args=(child_conn,), daemon=True)
        child.start()
        slow_url = receive(parent_conn)

        note("setting up Tollgate with its commands")
        flask(env, "db", "upgrade")
        windows = ("--per-minute", "10000000", "--per-hour", "100000000", "--per-day", "1000000000")
        flask(env, "set-plan", "enterprise", *windows)
        slug = flask(
            env, "create-tenant", "Gateway Bench", "--plan", "enterprise", "--admin-email", OWNER_EMAIL,
            "--password", OWNER_PASSWORD,
        )  # fmt: skip
        key = flask(env, "create-api-key", slug, "--name", "bench")
        for path, url in (
            ("/api/fast", f"http://127.0.0.1:{upstream_port}"),
            ("/api/stream-route", stream_upstreams["plain"].url),
            ("/api/stream-nodelay", stream_upstreams["nodelay"].url),
            ("/api/slow-route", slow_url),
        ):
            flask(env, "gateway", "add", path, url, "--methods", "GET,POST", "--service", "chatbot")
        try:
            token = flask(env, "create-service-token", "gateway-bench")
        except RuntimeError as error:
            note(f"no service token: {error}")
            token = None

        note("starting Tollgate")
        started.append(serve("wsgi:app", tollgate_port, env, args.workers))
        tollgate = started[-1]
        base = f"http://127.0.0.1:{tollgate_port}"
        headers = {"X-API-Key": key}
        check = requests.get(f"{base}/api/fast/ping", headers=headers, timeout=30)
        if check.status_code != 200 or check.json() != {"ok": True}:
            raise RuntimeError(f"the route to the fast upstream answers {check.status_code}: {check.text[:200]}")
        parts = {
            "tollgate": server_processes(tollgate),
            "upstream": server_processes(upstream),
            "redis": redis_server(args.redis_url),
        }

        urls = {
            "direct": f"http://127.0.0.1:{upstream_port}/ping",
            "through": f"{base}/api/fast/ping",
            "ping": f"{base}/api/v1/ping",
        }
        loads = added_cost(args, wrk, urls, headers, parts)

        note(f"part 2: {args.stream_calls} streamed calls each way")
        stream = stream_first_event(tollgate_port, headers, stream_upstreams, args.stream_calls)

        note("part 3: the baseline, then the slow calls")
        probe = Probe(base, headers, signed_in(base))
        baseline = probe_baseline(probe, args.probes)
        slow = slow_calls(
            parent_conn, probe, f"{base}/api/slow-route/slow?seconds=2", headers, args.probes, args.slow_waves
        )

        verify_parts = {"tollgate": parts["tollgate"], "redis": parts["redis"], "client": [psutil.Process()]}
        verify = verify_pairs(args, base, headers, token, key, verify_parts)
        if "skipped" in verify:
            note(f"part 4 skipped: {verify['skipped']}")

        time.sleep(1.5)  # the idle flush sends the last completions
        tollgate_loads = ("through", "through-low", "ping", "ping-low")
        calls = sum(r.requests for name in tollgate_loads for r in loads.runs.get(name, []))
        calls += 2 * len(stream["through"]) + sum(sum(w["statuses"].values()) for w in slow["waves"])
        calls += sum(r.requests for r in verify.get("runs", {}).get("pairs", []))
        extra = {
            "load": load,
            "load after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "database": "PostgreSQL" if database.startswith("postgres") else "SQLite",
            "redis": args.redis_url,
            "code": code_state(),
            "parts": ("tollgate", "upstream", "redis", "wrk"),
            "metered": metered(args.redis_url),
            "calls": calls,
        }
    finally:
        note("stopping")
        if child is not None:
            with suppress(OSError, ValueError):
                parent_conn.send(None)
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)
        for process in reversed(started):
            stop_group(process)
        for stream_upstream in stream_upstreams.values():
            stream_upstream.stop()
        redis_client.flushdb()
        shutil.rmtree(instance, ignore_errors=True)
    print_report(args, loads, stream, baseline, slow, verify, extra)


if __name__ == "__main__":
    main()
