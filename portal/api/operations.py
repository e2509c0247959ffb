"""Declaring an API operation once: its usage category, its query model and its documentation.

:func:`operation` validates the query string with the operation's pydantic model and hands the
view the parsed parameters; :mod:`portal.api.openapi` describes the same model in the OpenAPI
document. One declaration serves both, so the description cannot drift from the validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from .schemas import describe_errors


class InvalidQuery(HTTPException):
    code = 422


@dataclass(frozen=True)
class Operation:
    summary: str
    category: str
    query: type[BaseModel] | None
    tag: str
    description: str = ""


def operation(
    summary: str, *, category: str, tag: str, query: type[BaseModel] | None = None, description: str = ""
) -> Callable:
    """Declare a view as an API operation; with ``query``, the view receives ``params``."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args, **kwargs):
            if query is not None:
                try:
                    kwargs["params"] = query.model_validate(request.args.to_dict())
                except ValidationError as error:
                    raise InvalidQuery(describe_errors(error)) from None
            return view(*args, **kwargs)

        wrapper.operation = Operation(summary, category, query, tag, description)
        # The admission hook meters each call under its operation's category.
        wrapper.usage_category = category
        return wrapper

    return decorate
