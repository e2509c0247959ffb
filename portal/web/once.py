"""Forms that must act once: creating and rotating an API key.

Reloading the page that shows a new secret sends its POST again, and so does a double click;
either would make a second key, or rotate the key again and void the secret just shown. Each such
form carries a random submission token. The first POST with a token claims it in Redis (per user,
kept a day); a repeat is told what happened instead of acting again.
"""

from __future__ import annotations

import logging
import re
import secrets

from flask import Flask, request
from flask_login import current_user
from redis import RedisError

from ..redis_store import get_redis

FIELD = "submission"
CLAIM_SECONDS = 86400
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
log = logging.getLogger("tollgate.web")


def new_submission_token() -> str:
    return secrets.token_urlsafe(18)


def submitted_token() -> str | None:
    """The form's submission token, or None when it is missing or malformed."""
    token = request.form.get(FIELD, "")
    return token if _TOKEN.fullmatch(token) else None


def claim(token: str) -> bool:
    """True the first time ``token`` is presented by this user; False on a repeat."""
    try:
        return bool(get_redis().set(f"tollgate:once:{current_user.id}:{token}", 1, nx=True, ex=CLAIM_SECONDS))
    except RedisError:
        # Without Redis a repeat cannot be told apart; acting is better than refusing the admin.
        log.warning("Redis unreachable: a form submission is not checked for repeats", exc_info=True)
        return True


def init_app(app: Flask) -> None:
    app.add_template_global(new_submission_token, "submission_token")
