"""Declaring an API operation once: its usage category, its parameters, its body, the key scope
it needs and its documentation.

:func:`operation` validates the query string (and a JSON body) with the operation's pydantic
models and hands the view the parsed values; :mod:`portal.api.openapi` describes the same models
in the OpenAPI document. One declaration serves both, so the description cannot drift from the
validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps

from flask import g, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from .schemas import describe_errors

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


def parse_body(model: type[BaseModel]) -> BaseModel:
    """The request's JSON body validated by ``model`` (422 naming what is wrong)."""
    data = request.get_json(silent=True)
    if data is None:
        raise InvalidBody("the body must be JSON (Content-Type: application/json)")
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
            if scope == "admin" and not g.api_call.entry.is_admin:
                raise ScopeRequired()
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
