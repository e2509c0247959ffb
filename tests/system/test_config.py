"""Configuration read from the environment: defaults that need nothing, the plain database URL
forms, and a bad value stopping start-up with a message that names the variable."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from portal import ENVIRONMENT_SETTINGS, create_app
from portal.config import ConfigError, load_config, secret_key
from portal.embedded_redis import stop_embedded_redis
from portal.extensions import db, limiter
from portal.redis_store import get_redis

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Short: an embedded Redis's unix socket may end up in here.
    folder = Path(tempfile.mkdtemp(prefix="tg-"))
    yield folder
    stop_embedded_redis(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Tollgate setting in the process environment (create_app reads it)."""
    for name in (*ENVIRONMENT_SETTINGS, "TOLLGATE_INSTANCE_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def restore_limiter(app: Flask) -> Iterator[None]:
    yield
    # Flask-Limiter keeps one storage per limiter: a second app took it, give it back.
    limiter.init_app(app)


# --- defaults ---------------------------------------------------------------------------------


def test_with_nothing_set_the_database_is_a_sqlite_file_in_the_instance_folder(tmp_path):
    config = load_config(tmp_path, {})
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'tollgate.db'}"


def test_with_nothing_set_redis_is_the_embedded_one(tmp_path):
    assert load_config(tmp_path, {})["REDIS_URL"] is None
    assert load_config(tmp_path, {"REDIS_URL": ""})["REDIS_URL"] is None


def test_with_nothing_set_webhooks_to_private_addresses_are_off(tmp_path):
    assert load_config(tmp_path, {})["ALLOW_PRIVATE_WEBHOOKS"] is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), (" YES ", True), ("on", True), ("0", False), ("off", False), ("", False)],
)
def test_allow_private_webhooks_reads_the_usual_spellings(tmp_path, value, expected):
    assert load_config(tmp_path, {"ALLOW_PRIVATE_WEBHOOKS": value})["ALLOW_PRIVATE_WEBHOOKS"] is expected


def test_secret_key_is_generated_once_into_the_instance_folder(tmp_path):
    first = load_config(tmp_path, {})["SECRET_KEY"]
    key_file = tmp_path / "secret_key"
    assert len(first) >= 32
    assert key_file.read_text() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A restart (or a second process) signs sessions with the same key.
    assert load_config(tmp_path, {})["SECRET_KEY"] == first
    assert load_config(tmp_path, {})["SECRET_KEY"] == first


def test_secret_key_from_the_environment_is_used_and_not_written_down(tmp_path):
    config = load_config(tmp_path, {"SECRET_KEY": "given-in-the-environment"})
    assert config["SECRET_KEY"] == "given-in-the-environment"
    assert not (tmp_path / "secret_key").exists()


def test_each_instance_folder_gets_its_own_secret_key(tmp_path):
    one = load_config(tmp_path / "one", {})["SECRET_KEY"]
    two = load_config(tmp_path / "two", {})["SECRET_KEY"]
    assert one != two


def test_an_empty_secret_key_file_is_never_used_as_the_key(tmp_path):
    # What a process finds when it reads the file between another one creating and filling it
    # (or after a crash at that moment): the key must not silently become "".
    (tmp_path / "secret_key").write_text("")
    try:
        key = load_config(tmp_path, {})["SECRET_KEY"]
    except ConfigError as error:
        assert error.variable == "SECRET_KEY"
    else:
        assert len(key) >= 16


def _load_key(folder: str, start, results) -> None:
    start.wait()
    results.put(secret_key({}, Path(folder)))


def test_processes_starting_together_on_a_fresh_instance_agree_on_one_secret_key(tmp_path):
    # The web processes and the worker start at the same moment on a fresh install; a process
    # with a different (or empty) key cannot read the others' session cookies.
    forked = multiprocessing.get_context("fork")
    for round_number in range(20):
        folder = tmp_path / f"instance-{round_number}"
        folder.mkdir()
        start, results = forked.Barrier(6), forked.Queue()
        processes = [forked.Process(target=_load_key, args=(str(folder), start, results)) for _ in range(6)]
        for process in processes:
            process.start()
        keys = [results.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        on_disk = (folder / "secret_key").read_text()
        assert keys == [on_disk] * 6, f"round {round_number}: key lengths {[len(k) for k in keys]}"
        assert len(on_disk) >= 32


# --- database URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://tollgate@db.internal/tollgate", "postgresql+psycopg://tollgate@db.internal/tollgate"),
        (
            "postgres://tollgate:pw@db.internal:5433/tollgate",
            "postgresql+psycopg://tollgate:pw@db.internal:5433/tollgate",
        ),
        ("postgresql+psycopg2://tollgate@db.internal/tollgate", "postgresql+psycopg://tollgate@db.internal/tollgate"),
        (
            "postgres://tollgate@db.internal/tollgate?sslmode=require",
            "postgresql+psycopg://tollgate@db.internal/tollgate?sslmode=require",
        ),
        (
            "postgresql://tollgate:p%40ss@db.internal/tollgate",
            "postgresql+psycopg://tollgate:p%40ss@db.internal/tollgate",
        ),
        ("sqlite:////var/lib/tollgate/tollgate.db", "sqlite:////var/lib/tollgate/tollgate.db"),
    ],
    ids=["postgresql", "postgres", "other driver", "query kept", "escaped password kept", "sqlite"],
)
def test_plain_database_urls_map_to_the_shipped_driver(tmp_path, url, expected):
    assert load_config(tmp_path, {"DATABASE_URL": url})["SQLALCHEMY_DATABASE_URI"] == expected


# --- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/tollgate"),
        ("DATABASE_URL", "not a database url"),
        ("DATABASE_URL", "postgresql://tollgate@db.internal:five432/tollgate"),
        ("REDIS_URL", "http://127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://127.0.0.1:6379/fourteen"),
        ("REDIS_URL", "redis://127.0.0.1:6379?db=fourteen"),
        ("REDIS_URL", "redis://127.0.0.1:63a9/0"),
        ("REDIS_URL", "redis:///0"),
        ("REDIS_URL", "unix://"),
        ("SECRET_KEY", "too-short"),
        ("SECRET_KEY", "x" * 15),
        ("SMTP_URL", "mail.example.com:25"),
        ("SMTP_URL", "smtp://mail.example.com:twentyfive"),
        ("PORTAL_BASE_URL", "billing.example.com"),
        ("PORTAL_BASE_URL", "ftp://billing.example.com"),
        ("ALLOW_PRIVATE_WEBHOOKS", "maybe"),
    ],
    ids=[
        "DATABASE_URL mysql",
        "DATABASE_URL garbage",
        "DATABASE_URL bad port",
        "REDIS_URL http",
        "REDIS_URL db not a number",
        "REDIS_URL db query not a number",
        "REDIS_URL bad port",
        "REDIS_URL no host",
        "REDIS_URL unix without path",
        "SECRET_KEY short",
        "SECRET_KEY 15 characters",
        "SMTP_URL no scheme",
        "SMTP_URL bad port",
        "PORTAL_BASE_URL no scheme",
        "PORTAL_BASE_URL ftp",
        "ALLOW_PRIVATE_WEBHOOKS maybe",
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, variable, value):
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, {variable: value})
    assert error.value.variable == variable
    assert f"Configuration error: {variable}:" in str(error.value)


def test_the_secret_key_is_not_repeated_in_its_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, {"SECRET_KEY": "hunter2-secret"})
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_URL", "smtp://mailer:hunter2-secret@mail.example.com:twentyfive"),
        ("REDIS_URL", "http://:hunter2-secret@redis.internal:6379/0"),
        ("DATABASE_URL", "postgresql://tollgate:hunter2-secret@db.internal:five432/tollgate"),
    ],
)
def test_a_password_in_a_bad_url_is_not_printed(tmp_path, variable, value):
    # The message goes to the terminal, the service log and CI output.
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, {variable: value})
    assert variable in str(error.value)
    assert "hunter2" not in str(error.value)


# --- create_app -------------------------------------------------------------------------------


def test_create_app_with_no_configuration_runs_from_the_instance_folder(
    app, clean_environment, restore_limiter, short_dir
):
    from flask_migrate import upgrade

    fresh = create_app({"INSTANCE_PATH": str(short_dir)})
    try:
        assert fresh.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{short_dir / 'tollgate.db'}"
        assert fresh.config["REDIS_URL"] is None
        assert fresh.config["REDIS_URL_RESOLVED"] == f"unix://{short_dir.resolve() / 'redis' / 'redis.sock'}"
        assert get_redis(fresh).ping() is True
        assert fresh.secret_key == (short_dir / "secret_key").read_text()
        with fresh.app_context():
            upgrade()
            assert db.session.scalar(sa.text("SELECT count(*) FROM plans")) == 4
            db.session.remove()
            db.engine.dispose()
        assert (short_dir / "tollgate.db").is_file()
    finally:
        get_redis(fresh).close()


def test_create_app_settings_override_the_environment(app, clean_environment, restore_limiter, short_dir, monkeypatch):
    monkeypatch.setenv("PORTAL_BASE_URL", "https://from-the-environment.example")
    monkeypatch.setenv("SMTP_URL", "smtp://mail.example.com:2525")
    fresh = create_app(
        {
            "INSTANCE_PATH": str(short_dir),
            "DATABASE_URL": "postgres://tollgate@db.internal/tollgate",
            "REDIS_URL": app.config["REDIS_URL_RESOLVED"],
            "SECRET_KEY": "a-secret-key-given-by-the-test",
            "PORTAL_BASE_URL": "https://given.example/",
            "ALLOW_PRIVATE_WEBHOOKS": True,
            "TESTING": True,
        }
    )
    assert fresh.config["PORTAL_BASE_URL"] == "https://given.example"
    assert fresh.config["SMTP_URL"] == "smtp://mail.example.com:2525"  # not overridden: environment
    assert fresh.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://tollgate@db.internal/tollgate"
    assert fresh.config["ALLOW_PRIVATE_WEBHOOKS"] is True
    assert fresh.secret_key == "a-secret-key-given-by-the-test"
    assert fresh.config["TESTING"] is True
    assert not (short_dir / "secret_key").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DATABASE_URL", "mysql://root@localhost/tollgate"), ("REDIS_URL", "http://127.0.0.1:6379/0")],
)
def test_create_app_checks_the_settings_it_is_given(clean_environment, short_dir, variable, value):
    settings = {"INSTANCE_PATH": str(short_dir), "SECRET_KEY": "a-secret-key-given-by-the-test", variable: value}
    with pytest.raises(ConfigError) as error:
        create_app(settings)
    assert error.value.variable == variable


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/tollgate"),
        ("DATABASE_URL", "postgresql://tollgate@db.internal:five432/tollgate"),
        ("REDIS_URL", "http://127.0.0.1:6379/0"),
        ("REDIS_URL", "redis://127.0.0.1:63a9/0"),
        ("SECRET_KEY", "too-short"),
    ],
    ids=["DATABASE_URL mysql", "DATABASE_URL bad port", "REDIS_URL http", "REDIS_URL bad port", "SECRET_KEY short"],
)
def test_a_flask_command_with_a_bad_setting_names_it_without_a_traceback(short_dir, variable, value):
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_SETTINGS}
    env.update({variable: value, "TOLLGATE_INSTANCE_PATH": str(short_dir)})
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"Configuration error: {variable}:" in result.stderr
    assert "Traceback" not in result.stderr
