"""The OpenAPI document: valid, public, and built from the models that validate requests."""

from __future__ import annotations

from openapi_spec_validator import validate

from portal.api.schemas import AccountUsageQuery, LogsQuery, StatsQuery
from tests.factories import new_tenant

EXPECTED_PATHS = {
    "/api/v1/ping",
    "/api/v1/usage/stats",
    "/api/v1/usage/logs",
    "/api/v1/usage/summary",
    "/api/v1/usage/rate-limits",
    "/api/v1/usage/rate-limits/{service}",
    "/api/v1/account/usage",
    "/api/v1/billing/usage",
    "/api/v1/billing/subscription",
    "/api/v1/billing/api-usage",
}


def parameters(document, path, method="get"):
    return {p["name"]: p for p in document["paths"][path][method]["parameters"]}


def test_document_is_public_and_valid_openapi(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json
    validate(document)
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= EXPECTED_PATHS
    assert document["components"]["securitySchemes"]["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def test_parameters_come_from_the_validating_models(client):
    document = client.get("/api/v1/openapi.json").json
    logs = parameters(document, "/api/v1/usage/logs")
    assert set(logs) == set(LogsQuery.model_fields)
    assert logs["limit"]["schema"]["default"] == LogsQuery.model_fields["limit"].default == 50
    assert logs["limit"]["schema"]["maximum"] == 1000
    assert logs["offset"]["schema"]["minimum"] == 0
    stats = parameters(document, "/api/v1/usage/stats")
    assert set(stats) == set(StatsQuery.model_fields)
    account = parameters(document, "/api/v1/account/usage")
    assert set(account) == set(AccountUsageQuery.model_fields)
    assert account["interval"]["schema"]["enum"] == ["hourly", "daily", "weekly", "monthly"]
    assert parameters(document, "/api/v1/usage/rate-limits/{service}")["service"]["in"] == "path"


def test_every_documented_bound_is_enforced(client, app):
    # Values just past each documented bound are refused with a 422 naming the parameter.
    from tests.api_helpers import drain

    tenant = new_tenant(app, "Spec Co", key=True)
    document = client.get("/api/v1/openapi.json").json
    checked = 0
    for path, item in document["paths"].items():
        if "{" in path or "get" not in item:
            continue
        for name, parameter in parameters(document, path).items():
            schema = parameter["schema"]
            for bound, past in (("maximum", 1), ("minimum", -1)):
                if bound in schema:
                    response = client.get(path, query_string={name: schema[bound] + past}, headers=tenant.headers)
                    assert response.status_code == 422, (path, name)
                    assert name in response.json["detail"]
                    checked += 1
    assert checked >= 6
    drain(app)


def test_error_responses_are_documented(client):
    document = client.get("/api/v1/openapi.json").json
    ping = document["paths"]["/api/v1/ping"]["get"]
    assert {"200", "401", "403", "429", "500"} <= set(ping["responses"])
    assert "Retry-After" in ping["responses"]["429"]["headers"]
    assert "X-RateLimit-Minute-Remaining" in ping["responses"]["200"]["headers"]


def test_a_budgets_amount_is_described_by_json_schema_keywords_only(client):
    document = client.get("/api/v1/openapi.json").get_json()
    body = document["paths"]["/api/v1/budgets"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    amount = body["properties"]["amount"]
    assert set(amount) == {"anyOf", "description", "title"}
    assert [branch["type"] for branch in amount["anyOf"]] == ["number", "string"]
