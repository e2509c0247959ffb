"""A local spool for usage records while Redis is unreachable.

Each server process appends the calls it served without Redis to its own file under
``instance/spool/`` (one JSON line per call, written after the response, with the real status and
duration). When Redis answers again, any process replays the files — its own, and those of
processes that died — into the usage stream, then deletes them. A record replayed twice (a crash
between the replay and the delete) is stored once: records are unique per tenant and id.

Calls served without Redis were not counted in the monthly quota counter. After a replay the
counters of the tenants (and periods) they belong to are deleted, so that the next call of each
rebuilds its counter from the records and the stream, replayed calls included
(:mod:`portal.metering.quota`); a second replay of the same file changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from pathlib import Path

from redis import Redis

from ..kernel.redis_keys import quota_key
from .stream import STREAM, call_entry, call_tenant_and_time

log = logging.getLogger("tollgate.spool")


class Spool:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def _own_file(self) -> Path:
        return self.folder / f"usage-{os.getpid()}.jsonl"

    def append(self, record: str, status: int, duration_ms: int, admitted: bool = True) -> None:
        """Keep one finished call (``record`` as packed for the stream); ``admitted`` says whether
        it counts against the monthly quota (a refused key's call does not)."""
        line = json.dumps(call_entry(record, status, duration_ms, admitted), separators=(",", ":"))
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self._own_file(), "a", encoding="utf-8") as spool:
                spool.write(line + "\n")
                spool.flush()

    def pending_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("usage-*.jsonl*"))

    def replay(self, redis: Redis) -> int:
        """Move spooled calls into the usage stream; returns how many were moved."""
        moved = 0
        for path in self.pending_files():
            mine = path == self._own_file()
            if mine:
                # Take our own file out of the way of further appends first.
                with self._lock:
                    if not path.exists():
                        continue
                    target = path.with_name(f"{path.name}.replay-{os.getpid()}")
                    path.rename(target)
                path = target
            elif not _owner_gone(path):
                continue
            moved += _replay_file(redis, path)
        return moved


def _owner_gone(path: Path) -> bool:
    """A file whose writer is no longer running (or a replay left half done)."""
    pid = path.name.split("-", 1)[1].split(".", 1)[0]
    if ".replay-" in path.name:
        pid = path.name.rsplit("-", 1)[1]
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return int(pid) == os.getpid() and ".replay-" in path.name


def _replay_file(redis: Redis, path: Path) -> int:
    with open(path, "r+", encoding="utf-8") as spool:
        try:
            fcntl.flock(spool, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another process is replaying it
        entries = [json.loads(line) for line in spool if line.strip()]
        pipe = redis.pipeline(transaction=False)
        counters = set()
        for entry in entries:
            fields = {"r": entry["r"], "s": entry["s"], "d": entry["d"]}
            if "q" in entry:  # spooled before calls said whether they were admitted: read as such
                fields["q"] = entry["q"]
            pipe.xadd(STREAM, fields)
            admitted = int(entry["q"]) == 1 if "q" in entry else int(entry["s"]) != 429
            if admitted:
                counters.add(quota_key(*call_tenant_and_time(entry["r"])))
        pipe.execute()
        if counters:  # rebuilt, replayed calls included, before each tenant's next call
            redis.delete(*counters)
        path.unlink()
    if entries:
        log.info("replayed %d spooled calls from %s", len(entries), path.name)
    return len(entries)
