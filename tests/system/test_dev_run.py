"""``python3 dev.py run`` as a new user runs it: the demo, the example chat product behind the
gateway as /api/chat, and the README's first call answered with the rate-limit headers and
metered with its tokens and cost."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from tests.api_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _wait_for_banner(process: subprocess.Popen, seconds: float) -> str:
    """The output up to the 'Tollgate is running' banner and the curl line after it."""
    deadline = time.monotonic() + seconds
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if line.strip().startswith("curl ") and any("Tollgate is running" in seen for seen in lines):
            return "".join(lines)
    raise AssertionError("dev.py run did not start:\n" + "".join(lines))


def test_dev_run_serves_the_chat_product_behind_the_gateway(tmp_path):
    port, chat_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL", "CHATBOT_TOKEN")}
    env.update(
        TOLLGATE_INSTANCE_PATH=str(tmp_path / "instance"),
        TOLLGATE_PORT=str(port),
        CHATBOT_PORT=str(chat_port),
        TOLLGATE_DEMO_DAYS="2",
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "dev.py", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = _wait_for_banner(process, 240)
        secret = re.search(r"X-API-Key: (tg_[A-Za-z0-9_-]+)", output).group(1)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # gunicorn binds a moment after the banner
            try:
                response = requests.post(
                    f"{base}/api/chat",
                    headers={"X-API-Key": secret},
                    json={"message": "Hello", "botId": "test"},
                    timeout=10,
                )
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["reply"], answer["usage"]["total_tokens"]) == ("Bot test heard: Hello", 16)
        assert answer["caller"]["tenant"] == "acme-analytics"
        assert response.headers["X-RateLimit-Minute-Limit"] == "1000"
        assert "X-RateLimit-Remaining" in response.headers
        # The worker stores it with its tokens, priced at the demo's $0.50 / $1.50 per 1M tokens.
        database = tmp_path / "instance" / "tollgate.db"
        deadline = time.monotonic() + 30
        row = None
        while row is None and time.monotonic() < deadline:
            with sqlite3.connect(database) as conn:
                row = conn.execute(
                    "SELECT tokens_in, tokens_out, model, cost, category FROM usage_records "
                    "WHERE service = 'chatbot' AND endpoint = '/api/chat'"
                ).fetchone()
            time.sleep(0.5)
        assert row is not None
        assert row[:3] == (10, 6, "chatbot-mini")
        assert Decimal(str(row[3])) == Decimal("0.000014")
        assert row[4] == "Chat"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
