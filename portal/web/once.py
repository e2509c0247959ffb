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

from ..kernel.redis_keys import once_key
from ..redis_store import get_redis

FIELD = "submission"
CLAIM_SECONDS = 86400
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")
log = logging.getLogger("tollgate.web")


def new_submission_token() -> str:
    return secrets.token_urlsafe(18)


def first_submission() -> bool | None:
    """True the first time this form's token arrives from this user, False on a repeat, and None
    when the form carries no valid token (a page from before the token, or a forged form)."""
    token = request.form.get(FIELD, "")
    if not _TOKEN.fullmatch(token):
        return None
    try:
        return bool(get_redis().set(once_key(current_user.id, token), 1, nx=True, ex=CLAIM_SECONDS))
    except RedisError:
        # Without Redis a repeat cannot be told apart; acting is better than refusing the admin.
        log.warning("Redis unreachable: a form submission is not checked for repeats", exc_info=True)
        return True


def claim_form(form) -> bool | None:
    """:func:`first_submission` for a form with a ``submission`` field: on None (no valid token)
    the form says it expired and carries a new token, ready to be shown again."""
    first = first_submission()
    if first is None:
        form.form_errors.append("This form has expired. Please fill it in again.")
        form.submission.data = new_submission_token()
    return first


def init_app(app: Flask) -> None:
    app.add_template_global(new_submission_token, "submission_token")
