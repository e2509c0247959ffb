"""The embedded Redis: a real redis-server under the instance folder, started once and shared by
every process that points at that folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from portal.config import ConfigError
from portal.embedded_redis import MAX_SOCKET_PATH, ensure_embedded_redis, stop_embedded_redis

ROOT = Path(__file__).resolve().parents[2]
SOCKET_TAIL = "/redis/redis.sock"

# Run in another process: start (or find) the embedded Redis of a folder, INCR a counter.
OTHER_PROCESS = """
import sys, redis
from portal.embedded_redis import ensure_embedded_redis
client = redis.Redis.from_url(ensure_embedded_redis(sys.argv[1]))
print(client.info("server")["run_id"], client.incr("visits"))
"""


def _kill_leftover_server(folder: Path) -> None:
    # A server the code under test started but can no longer reach, so cannot stop; its data
    # is of no use (and a SIGTERM'd Redis refuses to exit once its folder is gone).
    pid_file = folder / "redis" / "redis.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


@pytest.fixture
def home() -> Iterator[Path]:
    """A short instance folder (a unix socket path is limited to 107 bytes); its Redis stopped after."""
    folder = Path(tempfile.mkdtemp(prefix="tg-")).resolve()
    yield folder
    for candidate in [folder, *folder.iterdir()]:
        if candidate.is_dir():
            stop_embedded_redis(candidate)
            _kill_leftover_server(candidate)
    shutil.rmtree(folder, ignore_errors=True)


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def one_try_client(folder: Path) -> redis.Redis:
    """A client that asks once, without retries: is a server there at all?"""
    return redis.Redis(
        unix_socket_path=str(folder / "redis" / "redis.sock"), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def other_process(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", OTHER_PROCESS, str(folder)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[str, int]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    run_id, visits = out.split()
    return run_id, int(visits)


def test_returns_the_unix_url_of_a_server_that_answers(home):
    url = ensure_embedded_redis(home)
    assert url == f"unix://{home / 'redis' / 'redis.sock'}"
    assert client_for(url).ping() is True


def test_a_second_call_reaches_the_same_server(home):
    url = ensure_embedded_redis(home)
    first = client_for(url)
    first.set("greeting", "hello")
    assert ensure_embedded_redis(home) == url
    second = client_for(ensure_embedded_redis(home))
    assert second.get("greeting") == b"hello"
    assert second.info("server")["run_id"] == first.info("server")["run_id"]


def test_another_process_reaches_the_same_server_and_data(home):
    client = client_for(ensure_embedded_redis(home))
    assert client.incr("visits") == 1
    run_id, visits = finish(other_process(home))
    assert visits == 2
    assert run_id == client.info("server")["run_id"]
    assert client.get("visits") == b"2"


def test_processes_arriving_together_start_one_server(home):
    # The web processes and the worker start at once on a fresh instance folder.
    processes = [other_process(home) for _ in range(6)]
    results = [finish(process) for process in processes]
    assert len({run_id for run_id, _ in results}) == 1
    assert sorted(visits for _, visits in results) == [1, 2, 3, 4, 5, 6]
    client = client_for(ensure_embedded_redis(home))
    assert client.info("server")["run_id"] == results[0][0]
    assert int((home / "redis" / "redis.pid").read_text()) == client.info("server")["process_id"]


def test_socket_and_data_files_live_under_the_folder(home):
    client = client_for(ensure_embedded_redis(home))
    folder = home / "redis"
    assert client.config_get("dir") == {"dir": str(folder)}
    assert client.config_get("unixsocket") == {"unixsocket": str(folder / "redis.sock")}
    assert client.config_get("port") == {"port": "0"}  # no TCP port open to anyone
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.xadd("usage", {"call": "1"})
    assert (folder / "redis.sock").is_socket()
    assert stop_embedded_redis(home) is True
    assert (folder / "redis.rdb").is_file()
    assert any(path.name.startswith("appendonly") for path in folder.iterdir())


def test_stop_shuts_the_server_down(home):
    ensure_embedded_redis(home)
    assert one_try_client(home).ping() is True
    assert stop_embedded_redis(home) is True
    with pytest.raises(redis.ConnectionError):
        one_try_client(home).ping()
    assert not (home / "redis" / "redis.sock").exists()
    assert stop_embedded_redis(home) is False  # nothing left to stop


def test_data_is_kept_across_a_stop_and_start(home):
    client_for(ensure_embedded_redis(home)).xadd("usage", {"call": "kept"})
    stop_embedded_redis(home)
    entries = client_for(ensure_embedded_redis(home)).xrange("usage")
    assert [fields for _, fields in entries] == [{b"call": b"kept"}]


def test_a_killed_server_is_started_again_with_every_acknowledged_write(home):
    url = ensure_embedded_redis(home)
    client = client_for(url)
    client.xadd("usage", {"call": "before the crash"})
    old = client.info("server")
    client.close()
    os.kill(old["process_id"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:  # until the dead server's socket refuses (it is left on disk)
        try:
            one_try_client(home).ping()
        except redis.ConnectionError:
            break
        assert time.monotonic() < deadline, "the killed server still answers"
    assert (home / "redis" / "redis.sock").exists()
    assert ensure_embedded_redis(home) == url
    client = client_for(url)
    assert client.info("server")["run_id"] != old["run_id"]
    assert [fields for _, fields in client.xrange("usage")] == [{b"call": b"before the crash"}]


def _folder_with_socket_path_of(home: Path, length: int, prefix: str = "") -> Path:
    padding = length - len(str(home)) - 1 - len(SOCKET_TAIL)
    folder = home / (prefix + "p" * (padding - len(prefix)))
    assert len(str(folder) + SOCKET_TAIL) == length
    return folder


def test_a_socket_path_of_107_bytes_works(home):
    folder = _folder_with_socket_path_of(home, MAX_SOCKET_PATH)
    assert client_for(ensure_embedded_redis(folder)).ping() is True


def test_a_socket_path_too_long_names_redis_url(home):
    folder = _folder_with_socket_path_of(home, MAX_SOCKET_PATH + 1)
    with pytest.raises(ConfigError) as error:
        ensure_embedded_redis(folder)
    assert error.value.variable == "REDIS_URL"
    assert "too long" in str(error.value)
    assert not (folder / "redis" / "redis.pid").exists()  # no server was started


def test_a_socket_path_over_107_bytes_in_fewer_characters_is_refused_up_front(home):
    # 107 characters, 111 bytes: the kernel counts bytes. Redis would truncate the path
    # and listen where nobody looks.
    folder = _folder_with_socket_path_of(home, MAX_SOCKET_PATH, prefix="éééé")
    assert len(os.fsencode(str(folder) + SOCKET_TAIL)) == MAX_SOCKET_PATH + 4
    with pytest.raises(ConfigError) as error:
        ensure_embedded_redis(folder, timeout=2)
    assert error.value.variable == "REDIS_URL"
    assert "too long" in str(error.value)
    assert not (folder / "redis" / "redis.pid").exists()  # no unreachable server left running
