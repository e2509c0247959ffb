"""The OpenAPI 3.1 document of the API, built from the operations' own declarations."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from . import RecordId, ServiceName
from .operations import Operation, manages_account

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
RETRY_AFTER = {"description": "seconds to wait", "schema": {"type": "integer"}}


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


def _path(rule: str) -> tuple[str, list[tuple[str, str]]]:
    """The rule as an OpenAPI path, and each parameter's name and converter."""
    names = [(name, converter or "default") for converter, name in re.findall(r"<(?:([^:>]+):)?([^>]+)>", rule)]
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule), names


def body_schema(model, definitions: dict) -> dict:
    """The model's JSON schema, its sub-models moved into ``definitions`` (components)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions.update(schema.pop("$defs", {}))
    return schema


def _success(op: Operation) -> dict:
    content = {"application/json": {"schema": {"type": "object"}}}
    if op.query is not None and "format" in op.query.model_fields:
        content["text/csv"] = {"schema": {"type": "string"}}
    return {"description": op.summary, "headers": RATE_LIMIT_HEADERS, "content": content}


# What each path parameter may be (a value outside it matches no route, or names nothing: 404).
PATH_SCHEMAS = {
    "service": {"type": "string", "pattern": f"^{ServiceName.regex}$"},
    "record_id": {"type": "string", "pattern": f"^{RecordId.regex}$"},
}


QUOTA_REFUSES = "A used-up monthly quota refuses it (429)."
QUOTA_COUNTS = (
    "It manages the account: it counts toward the monthly quota and keeps the per-minute, per-hour and "
    "per-day windows, but a used-up quota never refuses it."
)


def _operation(endpoint: str, op: Operation, path: str, path_names: list[tuple[str, str]], definitions: dict) -> dict:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": PATH_SCHEMAS.get(converter, {"type": "string"})}
        for name, converter in path_names
    ]
    if op.query is not None:
        parameters += query_parameters(op.query)
    responses = {
        str(op.status): _success(op),
        "401": _error("Missing API key / Invalid API key"),
        "403": _error("API key is inactive" + (", or not of the admin scope" if op.scope == "admin" else "")),
        "429": _error(
            "a plan window is used up" if manages_account(path) else "a plan window or the monthly quota is used up",
            {**RATE_LIMIT_HEADERS, "Retry-After": RETRY_AFTER},
        ),
        "500": _error("Internal server error"),
    }
    if op.query is not None or op.body is not None:
        responses["422"] = _error("a parameter or the body is invalid; the detail names it")
    if path_names:
        responses["404"] = _error("nothing of that name")
    if not op.budget_exempt:
        responses["402"] = _error("a budget's hard stop refuses calls; the detail names the budget and its reset")
    responses["503"] = _error("Redis is unreachable and the API is set to refuse", {"Retry-After": RETRY_AFTER})
    # Refused by the HTTP server before the application sees it (no JSON body).
    responses["414"] = {"description": "the request line is longer than the server accepts (about 4 KB)"}
    for status, text in op.responses.items():
        responses[str(status)] = _error(text)
    described = {
        "operationId": endpoint.removeprefix("api.").replace("api_verify.", "verify_"),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters,
        "responses": responses,
        "security": [{"ApiKeyHeader": []}, {"BearerAuth": []}],
    }
    if endpoint.startswith("api_verify."):
        # Called by the operator's services with a service token, for their customers' calls.
        described["security"] = [{"ServiceToken": []}]
        described["description"] = (
            "Needs a service token (flask create-service-token), never a customer key. " + (op.description or "")
        ).strip()
        described.pop("x-quota", None)
        for status in ("402", "403", "429"):
            responses.pop(status, None)
        responses["401"] = _error("Missing service token / Invalid service token")
    described["description"] = " ".join(
        filter(None, [op.description, QUOTA_COUNTS if manages_account(path) else QUOTA_REFUSES])
    )
    described["x-quota"] = "counted" if manages_account(path) else "refuses"
    if op.body is not None:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema(op.body, definitions)}},
        }
    return described


def build_openapi(app: Flask) -> dict:
    paths: dict[str, dict] = {}
    definitions: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = getattr(app.view_functions.get(rule.endpoint), "operation", None)
        if not rule.endpoint.startswith(("api.", "api_verify.")) or op is None:
            continue
        path, names = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, op, rule.rule, names, definitions)
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
                "ServiceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a service token (tgs_…) for /api/v1/verify",
                },
            },
            "schemas": {
                **definitions,
                "Error": {
                    "type": "object",
                    "properties": {"detail": {"type": "string"}},
                    "required": ["detail"],
                },
            },
        },
    }
