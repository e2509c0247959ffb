"""The OpenAPI 3.1 document of the API, built from the operations' own declarations."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from .operations import Operation

RATE_LIMIT_HEADERS = {
    **{
        f"X-RateLimit-{window}-{field}": {
            "description": f"{window} window: {text}",
            "schema": {"type": "integer"},
        }
        for window in ("Minute", "Hour", "Day")
        for field, text in (
            ("Limit", "calls allowed"),
            ("Remaining", "calls left"),
            ("Reset", "seconds until the window starts afresh"),
        )
    },
    "X-RateLimit-Limit": {
        "description": "monthly quota (or 'unlimited')",
        "schema": {"oneOf": [{"type": "integer"}, {"const": "unlimited"}]},
    },
    "X-RateLimit-Remaining": {
        "description": "calls left this billing period (or 'unlimited')",
        "schema": {"oneOf": [{"type": "integer"}, {"const": "unlimited"}]},
    },
    "X-RateLimit-Reset": {
        "description": "when the monthly quota resets (ISO 8601, UTC)",
        "schema": {"type": "string", "format": "date-time"},
    },
}
ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str, extra_headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if extra_headers:
        response["headers"] = extra_headers
    return response


def query_parameters(model) -> list[dict]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        parameters.append(
            {"name": name, "in": "query", "required": name in required, "description": description, "schema": prop}
        )
    return parameters


def _path(rule: str) -> tuple[str, list[str]]:
    names = re.findall(r"<(?:[^:>]+:)?([^>]+)>", rule)
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule), names


def _operation(endpoint: str, op: Operation, path_names: list[str]) -> dict:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path_names]
    if op.query is not None:
        parameters += query_parameters(op.query)
    responses = {
        "200": {
            "description": op.summary,
            "headers": RATE_LIMIT_HEADERS,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "401": _error("Missing API key / Invalid API key"),
        "403": _error("API key is inactive"),
        "429": _error(
            "a plan window or the monthly quota is used up",
            {**RATE_LIMIT_HEADERS, "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        ),
        "500": _error("Internal server error"),
    }
    if op.query is not None:
        responses["422"] = _error("a query parameter is invalid; the detail names it")
    if path_names:
        responses["404"] = _error("nothing of that name")
    return {
        "operationId": endpoint.removeprefix("api."),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters,
        "responses": responses,
        "security": [{"ApiKeyHeader": []}, {"BearerAuth": []}],
    }


def build_openapi(app: Flask) -> dict:
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = getattr(app.view_functions.get(rule.endpoint), "operation", None)
        if not rule.endpoint.startswith("api.") or op is None:
            continue
        path, names = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, op, names)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate API",
            "version": "1",
            "description": "Usage, rate limits and billing of a Tollgate tenant. Every call needs an API key, "
            "counts against the tenant's plan windows and monthly quota, and is metered.",
        },
        "servers": [{"url": app.config["PORTAL_BASE_URL"]}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerAuth": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                }
            },
        },
    }
