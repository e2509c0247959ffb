"""The API's statement operations: closed statements (JSON or CSV), the period so far, and plan
changes."""

from __future__ import annotations

from typing import Literal

from flask import Response, request
from pydantic import Field

from ..billing.changes import PlanChangeError, change_plan, upcoming
from ..billing.export import statement_csv, statement_json, statement_summary, statements_csv
from ..billing.plans import UnknownPlan
from ..billing.statements import get_statement, tenant_statements
from ..extensions import db
from ..kernel.bodies import Body
from ..models import Tenant
from ..tenancy.members import key_may_change_plan
from . import bp
from .guard import api_error
from .operations import operation
from .schemas import Query
from .views import caller, tenant_id, utcnow

NOT_PLAN_KEY = (
    "Only an owner changes the plan: this admin key was made by someone who is not an owner now; "
    "use a key an owner made"
)


class FormatQuery(Query):
    format: Literal["json", "csv"] = Field("json", description="json or csv")


class PlanChangeBody(Body):
    plan: Literal["free", "starter", "professional", "enterprise"] = Field(
        description="an upgrade applies at once, a downgrade at the end of the period"
    )


def _csv(text: str, name: str) -> Response:
    return Response(text, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/billing/statements")
@operation("Closed statements, newest first", category="billing", tag="billing", query=FormatQuery, budget_exempt=True)
def list_statements(params: FormatQuery):
    statements = tenant_statements(tenant_id())
    if params.format == "csv":
        return _csv(statements_csv(statements), "statements.csv")
    return {"success": True, "statements": [statement_summary(s) for s in statements]}


@bp.get("/billing/statements/<record_id:statement_id>")
@operation(
    "One closed statement with its lines",
    category="billing",
    tag="billing",
    query=FormatQuery,
    responses={404: "no such statement in this account"},
    budget_exempt=True,
)
def show_statement(statement_id: str, params: FormatQuery):
    statement = get_statement(tenant_id(), int(statement_id)) if int(statement_id) < 2**31 else None
    if statement is None:
        return api_error(404, f"No statement {statement_id}")
    if params.format == "csv":
        return _csv(statement_csv(statement), f"statement-{statement.period_start:%Y-%m}.csv")
    return {"success": True, "statement": statement_json(statement)}


@bp.get("/billing/upcoming")
@operation(
    "The period so far: the statement it would get now, and a forecast at the run rate",
    category="billing",
    tag="billing",
    budget_exempt=True,
)
def upcoming_statement():
    return {"success": True, "upcoming": upcoming(tenant_id(), utcnow())}


@bp.put("/billing/subscription")
@operation(
    "Change plan: an upgrade applies at once (fee prorated), a downgrade at the period end",
    category="billing",
    tag="billing",
    body=PlanChangeBody,
    scope="admin",
    responses={
        403: "API key is inactive, or not of the admin scope, or made by someone who is not an owner now",
        409: "the account is on that plan already",
    },
    budget_exempt=True,
)
def change_subscription(payload: PlanChangeBody):
    if not key_may_change_plan(caller()["api_key_id"]):
        return api_error(403, NOT_PLAN_KEY)
    tenant = db.session.get(Tenant, tenant_id())
    try:
        change = change_plan(tenant, payload.plan, utcnow(), ip_address=request.remote_addr)
    except UnknownPlan as error:
        db.session.rollback()
        return api_error(422, f"plan: {error}")
    except PlanChangeError as error:
        db.session.rollback()
        return api_error(409, str(error))
    db.session.commit()
    return {"success": True, "change": change}
