"""A local spool for usage records while Redis is unreachable.

Each server process appends the calls it served without Redis to its own file under
``instance/spool/`` (one JSON line per call, written after the response, with the real status and
duration). When Redis answers again, any process replays the files — its own, and those of
processes that died — into the usage stream, then deletes them. A record replayed twice (a crash
between the replay and the delete) is stored once: records are unique per tenant and id. A call
that cannot be spooled (a full disk) leaves no part of its line behind and is logged at ERROR; a
line torn by a crash is kept aside in ``unreadable-<file>`` (logged) and the rest replayed.

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
        data = (line + "\n").encode()
        with self._lock:
            fd = end = None
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._own_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                end = os.fstat(fd).st_size
                while data:
                    data = data[os.write(fd, data) :]
            except OSError as error:
                if end is not None:  # a full disk took part of the line: cut it off, whole lines only
                    os.ftruncate(fd, end)
                log.error("cannot spool a call served without Redis under %s: %s", self.folder, error)
                raise
            finally:
                if fd is not None:
                    os.close(fd)

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
                target = path.with_name(f"{path.name}.replay-{os.getpid()}")
                if target.exists():
                    # A replay of ours that Redis cut short: finish it before its name is reused
                    # (a rename onto it would drop the calls it holds).
                    moved += _replay_file(redis, target)
                    if target.exists():
                        continue
                # Take our own file out of the way of further appends first.
                with self._lock:
                    if not path.exists():
                        continue
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
    try:
        spool = open(path, "r+", encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:  # listed before another replay of it removed it
        return 0
    with spool:
        try:
            fcntl.flock(spool, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another process is replaying it
        entries, unreadable = [], []
        for line in spool:
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except ValueError:  # torn by a crash mid-append: kept aside, the others go on
                    unreadable.append(line if line.endswith("\n") else line + "\n")
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
        if unreadable:
            kept = path.with_name(f"unreadable-{path.name}")
            with open(kept, "a", encoding="utf-8") as out:
                out.writelines(unreadable)
            log.error("spool file %s: %d unreadable lines kept in %s", path, len(unreadable), kept)
        path.unlink()
    if entries:
        log.info("replayed %d spooled calls from %s", len(entries), path.name)
    return len(entries)
