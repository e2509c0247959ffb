#!/usr/bin/env python3
"""Set up and run Tollgate from a fresh clone, with nothing but Python 3.11.

    python3 dev.py run    install, migrate, import prices, seed the demo tenant, run the portal, its worker
                          and the example chat product behind the gateway as /api/chat
    python3 dev.py test   install, then run the test suite (extra arguments go to pytest)

Everything is installed into ``.venv/`` from the pinned requirements, and only again when they
change. ``TOLLGATE_HOST``/``TOLLGATE_PORT`` (127.0.0.1:5000), ``CHATBOT_PORT`` (5055) and
``TOLLGATE_DEMO_DAYS`` (90) change where it listens and how much history the demo gets. With no
DATABASE_URL / REDIS_URL set, Tollgate uses a SQLite file and an embedded Redis
under ``instance/``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"
CHROMIUM = Path("/usr/bin/chromium")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def install(requirements: str) -> None:
    """Create .venv and install ``requirements`` unless that exact file is installed already."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"Tollgate needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        say("creating .venv")
        venv.create(VENV, with_pip=True)
    text = (ROOT / requirements).read_text()
    if requirements != "requirements.txt":
        text += (ROOT / "requirements.txt").read_text()
    stamp = VENV / f".installed-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if stamp.exists():
        return
    say(f"installing {requirements}")
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(ROOT / requirements)], check=True)
    stamp.touch()


def flask(*args: str, env: dict | None = None, check: bool = True, capture: bool = False):
    return subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env, check=check, capture_output=capture, text=True
    )


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run() -> int:
    install("requirements.txt")
    env = dict(os.environ)
    host = env.get("TOLLGATE_HOST", "127.0.0.1")
    port = env.get("TOLLGATE_PORT", "5000")
    env.setdefault("PORTAL_BASE_URL", f"http://{host}:{port}")
    chat_port = env.get("CHATBOT_PORT", "5055")
    # The example chat product checks this token; the gateway sends it from the environment.
    env.setdefault("CHATBOT_TOKEN", secrets.token_urlsafe(24))
    say("migrating the database")
    flask("db", "upgrade", env=env)
    say("importing the price catalog (genai-prices' bundled data, offline)")
    flask("prices", "import", env=env)
    say("seeding the demo tenant")
    days = env.get("TOLLGATE_DEMO_DAYS", "90")
    seeded = flask("seed-demo", "--days", days, "--quick-start-key", env=env, check=False, capture=True)
    print(seeded.stdout, end="", flush=True)
    if seeded.returncode:
        sys.exit(seeded.stderr or "seed-demo failed")
    say(f"routing /api/chat to the example chat product (examples/chatbot) on port {chat_port}")
    flask(
        "gateway", "add", "/api/chat", f"http://127.0.0.1:{chat_port}/api/chat", "--replace",
        "--methods", "POST", "--category", "Chat", "--service", "chatbot",
        "--upstream-header", "X-Chatbot-Token=CHATBOT_TOKEN",
        env=env,
    )  # fmt: skip
    say("starting the chat product, the worker and the portal (Ctrl-C stops them)")
    chat = subprocess.Popen(
        [str(PYTHON), "-m", "examples.chatbot", "--host", "127.0.0.1", "--port", chat_port], cwd=ROOT, env=env
    )
    worker = subprocess.Popen([str(BIN / "flask"), "--app", "wsgi", "worker"], cwd=ROOT, env=env)
    portal = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "--workers",
            "2",
            "--bind",
            f"{host}:{port}",
            "--access-logfile",
            "-",
            "--no-control-socket",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
    )
    first_call = next((line.strip() for line in seeded.stdout.splitlines() if line.strip().startswith("curl ")), "")
    print(
        f"\n    Tollgate is running at {env['PORTAL_BASE_URL']}/ — sign in with the e-mail and password above.\n"
        f"    Call the chat product through the gateway with the quick-start key:\n\n    {first_call}\n",
        flush=True,
    )
    # A SIGTERM (a service manager, `timeout`) stops everything as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while portal.poll() is None and worker.poll() is None and chat.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (portal, worker, chat):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (portal, worker, chat):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if not env.get("REDIS_URL"):
            say("stopping the embedded Redis")
            instance = env.get("TOLLGATE_INSTANCE_PATH", "instance")
            stop = f"from portal.embedded_redis import stop_embedded_redis as s; s({instance!r})"
            subprocess.run([str(PYTHON), "-c", stop], cwd=ROOT, check=False)
    return 0


def ensure_chromium() -> None:
    """The browser tests drive Debian's Chromium; install it when this machine lacks it."""
    if CHROMIUM.exists():
        return
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        say("installing Debian's chromium for the browser tests")
        subprocess.run([apt, "update", "-qq"], check=False)
        subprocess.run(
            [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if not CHROMIUM.exists():
        say("no /usr/bin/chromium: the browser tests will fail (install Debian's chromium package)")


def test(pytest_args: list[str]) -> int:
    install("requirements-dev.txt")
    ensure_chromium()
    return subprocess.run([str(PYTHON), "-m", "pytest", *pytest_args], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test"}:
        print(__doc__)
        return 2
    if argv[0] == "run":
        return run()
    return test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
