"""Tollgate: a multi-tenant usage-billing and API-usage portal."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import load_config

MAX_BODY_BYTES = 16 * 2**20

# Keys of ``config`` that are settings read from the environment (they go through the same
# checks as the environment does); anything else is set on ``app.config`` as given.
ENVIRONMENT_SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "SMTP_URL",
    "PORTAL_BASE_URL",
    "ALLOW_PRIVATE_WEBHOOKS",
    "SESSION_COOKIE_SECURE",
    "LOGIN_RATE_LIMIT",
    "RATELIMIT_KEY_PREFIX",
    "API_WHEN_REDIS_DOWN",
    "USAGE_CLAIM_IDLE_MS",
    "USAGE_ABANDON_SECONDS",
    "MAIL_FROM",
    "NOTIFY_CONNECT_TIMEOUT",
    "NOTIFY_READ_TIMEOUT",
    "RETENTION_EXPORT_DIR",
    "TRUSTED_PROXY_HOPS",
    "PRODUCT_BLUEPRINTS",
)


def register_product_blueprints(app: Flask) -> None:
    """Register the operator's protected views named by ``PRODUCT_BLUEPRINTS``."""
    from importlib import import_module

    from .config import ConfigError
    from .extensions import csrf
    from .product import ProductBlueprint

    for spec in app.config["PRODUCT_BLUEPRINTS"]:
        module_name, _, name = spec.partition(":")
        try:
            blueprint = getattr(import_module(module_name), name)
        except (ImportError, AttributeError) as error:
            raise ConfigError("PRODUCT_BLUEPRINTS", f"cannot load {spec}: {error}") from None
        if not isinstance(blueprint, ProductBlueprint):
            raise ConfigError("PRODUCT_BLUEPRINTS", f"{spec} is not a portal.product.ProductBlueprint")
        # Authenticated by API key only, never by the session cookie: no CSRF token to check.
        csrf.exempt(blueprint)
        app.register_blueprint(blueprint)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Tollgate application. ``config`` overrides the environment (tests use it)."""
    overrides = dict(config or {})
    app = Flask(
        __name__,
        instance_path=overrides.pop("INSTANCE_PATH", None) or os.environ.get("TOLLGATE_INSTANCE_PATH"),
        template_folder="../templates",
        static_folder="../static",
    )
    env = dict(os.environ)
    env.update({k: str(overrides.pop(k)) for k in ENVIRONMENT_SETTINGS if k in overrides})
    app.config.update(load_config(app.instance_path, env))
    # The largest body any request needs (1,000 events with their full metadata) is under 10 MiB:
    # a larger one is refused (413) before it is read into memory.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config.update(overrides)
    if app.config["TRUSTED_PROXY_HOPS"]:
        # The client's address and scheme as the trusted proxies saw them; the Host header stays.
        hops = app.config["TRUSTED_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    from .request import TollgateRequest
    from .sessions import PortalSessionInterface

    app.request_class = TollgateRequest
    app.session_interface = PortalSessionInterface()

    from . import errors, redis_store
    from .extensions import csrf, db, limiter, login_manager, migrate
    from .kernel import clock
    from .limits import compat as limits_compat

    clock.init_app(app)
    limits_compat.install()
    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=os.path.join(app.root_path, "..", "migrations"),
        compare_type=True,
        user_module_prefix="tg_types.",
    )
    redis_store.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    errors.init_app(app)

    from . import api, auth, web

    api.init_app(app)  # registers its admission hook before any limiter's check
    limiter.init_app(app)
    auth.init_app(app)
    web.init_app(app)
    register_product_blueprints(app)

    from . import cli

    cli.init_app(app)
    return app
