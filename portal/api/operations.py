"""Declaring an API operation once: its usage category, its parameters, its body, the key scope
it needs and its documentation.

:func:`operation` validates the query string (and a JSON body) with the operation's pydantic
models and hands the view the parsed values; :mod:`portal.api.openapi` describes the same models
in the OpenAPI document. One declaration serves both, so the description cannot drift from the
validation.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from ..kernel.audit import act_as
from .schemas import describe_errors

# The endpoints that manage the account: they count toward the monthly quota and keep the
# per-minute, per-hour and per-day windows, but a used-up quota never refuses them, so a tenant
# past it can still read its bill, mend its alerts, channels and budgets, and upgrade.
ACCOUNT_PATHS = re.compile(r"/api/v1/(billing/|alerts|notification-|budgets|account/settings|credits)")


def manages_account(path: str) -> bool:
    return ACCOUNT_PATHS.match(path) is not None


ADMIN_ONLY = "This API key's scope is usage; changing settings needs a key with the admin scope"


class InvalidQuery(HTTPException):
    code = 422


class InvalidBody(HTTPException):
    code = 422


class ScopeRequired(HTTPException):
    code = 403
    description = ADMIN_ONLY


@dataclass(frozen=True)
class Operation:
    summary: str
    category: str
    query: type[BaseModel] | None
    tag: str
    description: str = ""
    body: type[BaseModel] | None = None
    # "admin": a change (budgets, limits, settings); a usage key gets 403.
    scope: str = "usage"
    status: int = 200
    # Further documented answers, e.g. {402: "a budget's hard stop"}.
    responses: dict[int, str] = field(default_factory=dict)
    # A hard-stopped budget does not refuse it (reporting events, mending budgets).
    budget_exempt: bool = False


NOT_JSON = "the body must be JSON (Content-Type: application/json)"


class _RefusedNumber(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _RefusedNumber(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedNumber(f"{text[:40]} is too large a number")
    return value


def request_json() -> Any:
    """The request's body as strict JSON: 422 for a body that is not JSON, NaN or Infinity
    (which Python's reader accepts and no database stores), or one nested past what the reader
    can follow."""
    if not request.is_json:
        raise InvalidBody(NOT_JSON)
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidBody("the body nests too deeply") from None
    except _RefusedNumber as error:
        raise InvalidBody(f"body: {error}") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidBody(NOT_JSON) from None


def parse_body(model: type[BaseModel]) -> BaseModel:
    """The request's JSON body validated by ``model`` (422 naming what is wrong)."""
    data = request_json()
    try:
        return getattr(model, "parse_json", model.model_validate)(data)
    except ValidationError as error:
        raise InvalidBody(describe_errors(error, "body")) from None


def operation(
    summary: str,
    *,
    category: str,
    tag: str,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    scope: str = "usage",
    status: int = 200,
    responses: dict[int, str] | None = None,
    budget_exempt: bool = False,
    description: str = "",
) -> Callable:
    """Declare a view as an API operation; with ``query`` the view receives ``params``, with
    ``body`` it receives ``payload``; ``scope="admin"`` refuses usage keys with 403."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            if scope == "admin":
                if not g.api_call.entry.is_admin:
                    raise ScopeRequired()
                act_as(api_key_id=g.api_call.entry.key_id)  # what it changes is audited as this key's
            if query is not None:
                repeated = sorted(name for name, values in request.args.lists() if len(values) > 1)
                if repeated:
                    raise InvalidQuery("; ".join(f"{name}: give it once" for name in repeated))
                try:
                    kwargs["params"] = query.model_validate(request.args.to_dict())
                except ValidationError as error:
                    raise InvalidQuery(describe_errors(error)) from None
            if body is not None:
                kwargs["payload"] = parse_body(body)
            return view(*args, **kwargs)

        wrapper.operation = Operation(
            summary, category, query, tag, description, body, scope, status, dict(responses or {}), budget_exempt
        )
        # The admission hook meters each call under its operation's category.
        wrapper.usage_category = category
        wrapper.budget_exempt = budget_exempt
        return wrapper

    return decorate
