"""Configuration from the environment, and the embedded Redis."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from portal.config import ConfigError, load_config
from portal.embedded_redis import ensure_embedded_redis, stop_embedded_redis

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_configuration(tmp_path):
    config = load_config(tmp_path, {})
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'tollgate.db'}"
    assert config["REDIS_URL"] is None  # the embedded Redis
    assert config["PORTAL_BASE_URL"] == "http://127.0.0.1:5000"
    assert config["ALLOW_PRIVATE_WEBHOOKS"] is False
    assert config["API_WHEN_REDIS_DOWN"] == "serve"


def test_secret_key_is_generated_once_into_the_instance_folder(tmp_path):
    first = load_config(tmp_path, {})["SECRET_KEY"]
    second = load_config(tmp_path, {})["SECRET_KEY"]
    assert first == second
    assert len(first) >= 48
    key_file = tmp_path / "secret_key"
    assert key_file.read_text() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_config(tmp_path, {"SECRET_KEY": "given-in-the-environment"})["SECRET_KEY"] == "given-in-the-environment"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1/tollgate", "postgresql+psycopg://postgres@127.0.0.1/tollgate"),
        ("postgres://u:p@db.internal:5433/t", "postgresql+psycopg://u:p@db.internal:5433/t"),
        ("sqlite:////var/lib/tollgate.db", "sqlite:////var/lib/tollgate.db"),
    ],
)
def test_plain_database_urls_map_to_the_drivers(tmp_path, url, expected):
    assert load_config(tmp_path, {"DATABASE_URL": url})["SQLALCHEMY_DATABASE_URI"] == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/db"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://127.0.0.1:6379/fourteen"),
        ("SECRET_KEY", "short"),
        ("SMTP_URL", "mail.example.com:25"),
        ("PORTAL_BASE_URL", "billing.example.com"),
        ("ALLOW_PRIVATE_WEBHOOKS", "maybe"),
        ("SESSION_COOKIE_SECURE", "sometimes"),
        ("USAGE_CLAIM_IDLE_MS", "soon"),
        ("API_WHEN_REDIS_DOWN", "panic"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(tmp_path, variable, value):
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, {variable: value})
    assert error.value.variable == variable
    assert variable in str(error.value)


def test_flask_command_with_bad_setting_prints_the_variable_not_a_traceback(tmp_path):
    env = {**os.environ, "DATABASE_URL": "mysql://root@localhost/db", "TOLLGATE_INSTANCE_PATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "jobs", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Configuration error: DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def redis_folder():
    folder = Path(tempfile.mkdtemp(prefix="tg-rd-"))
    yield folder
    stop_embedded_redis(folder)


def test_embedded_redis_is_shared_by_processes(redis_folder):
    url = ensure_embedded_redis(redis_folder)
    assert url == f"unix://{redis_folder.resolve() / 'redis' / 'redis.sock'}"
    client = redis.Redis.from_url(url)
    client.set("shared", "from the first process")
    assert ensure_embedded_redis(redis_folder) == url  # already running: the same server
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, redis; from portal.embedded_redis import ensure_embedded_redis;"
            "c = redis.Redis.from_url(ensure_embedded_redis(sys.argv[1])); print(c.get('shared').decode())",
            str(redis_folder),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.stdout.strip() == "from the first process"
    assert (redis_folder / "redis" / "redis.log").exists()


def test_embedded_redis_keeps_its_data_across_a_restart(redis_folder):
    client = redis.Redis.from_url(ensure_embedded_redis(redis_folder))
    client.set("kept", "yes")
    assert stop_embedded_redis(redis_folder) is True
    client = redis.Redis.from_url(ensure_embedded_redis(redis_folder))
    assert client.get("kept") == b"yes"


def test_embedded_redis_socket_path_too_long_names_redis_url(tmp_path):
    deep = tmp_path / ("x" * 120)
    with pytest.raises(ConfigError) as error:
        ensure_embedded_redis(deep)
    assert error.value.variable == "REDIS_URL"
