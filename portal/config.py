"""Settings read once from the environment, typed and checked.

Every setting has a working default so a fresh clone runs with no configuration: a SQLite file
and an embedded Redis under ``instance/``, and a secret key generated once into ``instance/``.
A bad value stops start-up with a message that names the variable.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

_BLUEPRINT_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def product_blueprints(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("PRODUCT_BLUEPRINTS", "")
    specs = tuple(part.strip() for part in raw.split(",") if part.strip())
    for spec in specs:
        if not _BLUEPRINT_SPEC.fullmatch(spec):
            raise ConfigError("PRODUCT_BLUEPRINTS", f"expected package.module:blueprint, comma-separated; got {spec!r}")
    return specs


class ConfigError(SystemExit):
    """A setting is missing or malformed; exits with a message naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        super().__init__(f"Configuration error: {variable}: {problem}")

    def __str__(self) -> str:
        return str(self.code)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"expected one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number; got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}; got {value}")
    return value


def env_directory(env: Mapping[str, str], name: str) -> str | None:
    """An absolute path to a folder Tollgate may write into (made when first needed), or None
    when unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise ConfigError(name, f"expected an absolute path to a folder; got {raw!r}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(name, f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(name, f"{existing} is not writable")
    return str(path)


def database_uri(env: Mapping[str, str], instance_path: Path) -> str:
    """Map the plain ``DATABASE_URL`` forms onto the drivers Tollgate ships with."""
    raw = env.get("DATABASE_URL", "").strip()
    if not raw:
        return f"sqlite:///{instance_path / 'tollgate.db'}"
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError("DATABASE_URL", f"not a database URL: {shown(raw)!r}") from None
    except ValueError:
        raise ConfigError("DATABASE_URL", f"bad port in {shown(raw)!r}") from None
    backend = url.get_backend_name()
    if backend == "postgres":  # the Heroku-style spelling
        backend = "postgresql"
    if backend == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        url = url.set(drivername="sqlite")
    else:
        raise ConfigError("DATABASE_URL", f"unsupported database {backend!r}; use sqlite:/// or postgresql://")
    return url.render_as_string(hide_password=False)


def shown(url: str) -> str:
    """``url`` fit for an error message: the password, if any, masked."""
    return _PASSWORD.sub(r"\1***@", url)


_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")


def redis_url(env: Mapping[str, str]) -> str | None:
    """The Redis server's URL, or None for the embedded Redis."""
    raw = env.get("REDIS_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError("REDIS_URL", f"expected redis://, rediss:// or unix://; got {shown(raw)!r}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("REDIS_URL", f"no socket path in {shown(raw)!r}; e.g. unix:///run/redis.sock")
        db = parse_qs(parts.query).get("db", [""])[0]
    else:
        if not parts.hostname:
            raise ConfigError("REDIS_URL", f"no host in {shown(raw)!r}")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ConfigError("REDIS_URL", f"bad port in {shown(raw)!r}") from None
        db = parts.path.strip("/") or parse_qs(parts.query).get("db", [""])[0]
    if db and not db.isdigit():
        raise ConfigError("REDIS_URL", f"the database number must be a whole number; got {db!r}")
    return raw


def secret_key(env: Mapping[str, str], instance_path: Path) -> str:
    """``SECRET_KEY`` from the environment, else one generated once into ``instance/``."""
    raw = env.get("SECRET_KEY")
    if raw is not None:
        if len(raw) < 16:
            raise ConfigError("SECRET_KEY", "must be at least 16 characters long")
        return raw
    key_file = instance_path / "secret_key"
    if not key_file.exists():
        # Written whole to a private file, then linked into place: os.link fails when another
        # process got there first, so every process reads one complete key, never a half-written one.
        instance_path.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=instance_path, prefix=".secret_key.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
            with suppress(FileExistsError):
                os.link(scratch, key_file)
        finally:
            os.unlink(scratch)
    key = key_file.read_text().strip()
    if len(key) < 16:
        raise ConfigError("SECRET_KEY", f"{key_file} holds no usable key; delete it or set SECRET_KEY")
    return key


def smtp_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("SMTP_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ConfigError("SMTP_URL", f"expected smtp://host:port or smtps://host:port; got {shown(raw)!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError("SMTP_URL", f"bad port in {shown(raw)!r}") from None
    return raw


def base_url(env: Mapping[str, str]) -> str:
    raw = env.get("PORTAL_BASE_URL", "").strip() or "http://127.0.0.1:5000"
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError("PORTAL_BASE_URL", f"expected an http:// or https:// URL; got {shown(raw)!r}")
    return raw.rstrip("/")


def mail_from(env: Mapping[str, str], portal_url: str) -> str:
    """The From address of alert e-mails: ``MAIL_FROM``, else tollgate@ the portal's host name."""
    raw = env.get("MAIL_FROM", "").strip()
    if not raw:
        host = urlsplit(portal_url).hostname or "localhost"
        # An IP address is written as a domain literal in an e-mail address.
        return f"tollgate@[{host}]" if re.fullmatch(r"[0-9.]+|.*:.*", host) else f"tollgate@{host}"
    _, address = parseaddr(raw)
    if "@" not in address or any(c in raw for c in "\r\n"):
        raise ConfigError("MAIL_FROM", f"expected an e-mail address, e.g. alerts@example.com; got {raw!r}")
    return raw


def redis_down_policy(env: Mapping[str, str]) -> str:
    """What the API does while Redis is unreachable: serve (and spool usage) or refuse."""
    value = env.get("API_WHEN_REDIS_DOWN", "serve").strip().lower()
    if value not in {"serve", "refuse"}:
        raise ConfigError("API_WHEN_REDIS_DOWN", f"expected serve or refuse; got {value!r}")
    return value


def load_config(instance_path: str | Path, env: Mapping[str, str]) -> dict:
    """Read every setting from ``env`` and return Flask config keys."""
    instance = Path(instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    portal_url = base_url(env)
    parts = urlsplit(portal_url)
    # Secure cookies everywhere but a plain-http portal on this machine (the demo set-up).
    local_http = parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}
    cookie_secure = env_bool(env, "SESSION_COOKIE_SECURE", not local_http)
    return {
        "SECRET_KEY": secret_key(env, instance),
        "SQLALCHEMY_DATABASE_URI": database_uri(env, instance),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "REDIS_URL": redis_url(env),
        "SMTP_URL": smtp_url(env),
        "MAIL_FROM": mail_from(env, portal_url),
        # Notifications to tenant URLs: seconds to connect, and to wait for each read of the answer.
        "NOTIFY_CONNECT_TIMEOUT": env_int(env, "NOTIFY_CONNECT_TIMEOUT", 3, minimum=1),
        "NOTIFY_READ_TIMEOUT": env_int(env, "NOTIFY_READ_TIMEOUT", 5, minimum=1),
        "PORTAL_BASE_URL": portal_url,
        "ALLOW_PRIVATE_WEBHOOKS": env_bool(env, "ALLOW_PRIVATE_WEBHOOKS", False),
        "SESSION_COOKIE_SECURE": cookie_secure,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": cookie_secure,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        # "Keep me signed in" lasts at most this long; the server-side session ends with it.
        "REMEMBER_COOKIE_DURATION": timedelta(days=30),
        "PERMANENT_SESSION_LIFETIME": 12 * 3600,
        "LOGIN_RATE_LIMIT": env.get("LOGIN_RATE_LIMIT", "10/minute;50/hour"),
        # Sign-in attempts per account (the e-mail tried), from however many addresses.
        "LOGIN_ACCOUNT_RATE_LIMIT": "5/minute;20/hour",
        # "Forgot your password?": per client, and per address asked for (whoever asks).
        "PASSWORD_RESET_RATE_LIMIT": "5/minute;20/hour",
        "PASSWORD_RESET_ADDRESS_RATE_LIMIT": "3/hour",
        # Current-password checks on the account page, per signed-in user.
        "ACCOUNT_CHECK_RATE_LIMIT": "10/hour",
        # Codes tried at the second step of signing in, per account (a recovery code counts too).
        "TWO_FACTOR_RATE_LIMIT": "5/minute;20/hour",
        # Reverse proxies in front of the portal whose X-Forwarded-For/-Proto are believed; 0: none.
        "TRUSTED_PROXY_HOPS": env_int(env, "TRUSTED_PROXY_HOPS", 0),
        "RATELIMIT_HEADERS_ENABLED": False,
        "RATELIMIT_STRATEGY": "fixed-window",
        "RATELIMIT_KEY_PREFIX": env.get("RATELIMIT_KEY_PREFIX", "tollgate"),
        # A stream entry unacknowledged this long belongs to a dead reader and is taken over.
        "USAGE_CLAIM_IDLE_MS": env_int(env, "USAGE_CLAIM_IDLE_MS", 30_000),
        # A call whose completion has not arrived after this long is stored with status unknown.
        "USAGE_ABANDON_SECONDS": env_int(env, "USAGE_ABANDON_SECONDS", 120),
        "API_WHEN_REDIS_DOWN": redis_down_policy(env),
        # Raw usage past retention is first exported here (gzip JSON Lines per tenant and day); unset: not exported.
        "RETENTION_EXPORT_DIR": env_directory(env, "RETENTION_EXPORT_DIR"),
        # The operator's own protected views: "package.module:blueprint", comma-separated.
        "PRODUCT_BLUEPRINTS": product_blueprints(env),
    }
