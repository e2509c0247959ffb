"""The plan and billing page: the plans side by side and changing plan (an upgrade now, a
downgrade at the period end, said plainly before and after), the period so far, the rate-limit
refusals of the last 90 days, the quota forecast with its advice, and the closed statements with
a printable page and a CSV each."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from redis import RedisError

from ..billing.changes import PlanChangeError, change_plan
from ..billing.export import statement_csv
from ..billing.overview import billing_overview
from ..billing.plans import UnknownPlan, get_plan, list_plans
from ..billing.usage import current_subscription
from ..extensions import db
from ..kernel.clock import now
from ..models import Statement
from ..redis_store import get_redis
from . import bp
from .money_forms import PlanChangeForm
from .roles import can_change_plan, plan_manager_required
from .tenancy import get_owned_or_404


def long_date(at: datetime) -> str:
    """A date written out: December 1, 2026."""
    return f"{at:%B} {at.day}, {at:%Y}"


def violation_chart(days) -> dict:
    return {
        "bars": [
            (
                f"{d.day:%b} {d.day.day}",
                d.refused,
                f"{d.day:%a %b} {d.day.day}: {d.refused:,} refused of {d.calls:,} calls",
            )
            for d in days
        ]
    }


def _overview():
    try:
        return billing_overview(get_redis(), current_user.tenant_id, now())
    except RedisError:
        # Without Redis the period's calls are counted from the rollups.
        return billing_overview(None, current_user.tenant_id, now())


def _render(form: PlanChangeForm | None = None, status: int = 200):
    overview = _overview()
    page = render_template(
        "web/billing.html",
        overview=overview,
        form=form or PlanChangeForm(formdata=None),
        chart=violation_chart(overview.violations),
        can_manage=can_change_plan(current_user),
        period_end_text=long_date(overview.subscription.current_period_end),
        long_date=long_date,
        now=now(),
    )
    return page, status


@bp.get("/billing")
@login_required
def billing():
    return _render()


@bp.get("/billing/plan")
@plan_manager_required
def billing_plan():
    """The plans to change to, on the billing page (only owners change the plan)."""
    return redirect(url_for("web.billing", _anchor="plans-heading"))


@bp.post("/billing/plan")
@plan_manager_required
def billing_change_plan():
    form = PlanChangeForm(codes=[plan.code for plan in list_plans()])
    if not form.validate_on_submit():
        return _render(form, 400)
    tenant = current_user.tenant
    subscription = current_subscription(tenant.id)
    before, scheduled = subscription.plan, subscription.scheduled_plan
    at = now()
    try:
        target = get_plan(form.plan.data)
        change = change_plan(tenant, target.code, at, user_id=current_user.id, ip_address=request.remote_addr)
    except (UnknownPlan, PlanChangeError) as error:
        db.session.rollback()
        flash(f"The plan was not changed: {error}.", "error")
        return redirect(url_for("web.billing"))
    db.session.commit()
    if change.get("cancelled"):
        flash(
            f"The change to the {scheduled.name} plan is cancelled: you stay on the {before.name} plan.",
            "success",
        )
    elif change["applies"] == "now":
        flash(
            f"You are on the {target.name} plan from now on ({at:%Y-%m-%d %H:%M} UTC): its limits and quota apply "
            f"to your next call. This period's fee is split between {before.name} and {target.name} by the time "
            "on each.",
            "success",
        )
    else:
        end = subscription.current_period_end
        flash(
            f"Your plan changes to {target.name} on {long_date(end)} at 00:00 UTC, when this billing period ends. "
            f"Until then you keep the {before.name} plan and its limits.",
            "success",
        )
    return redirect(url_for("web.billing"))


def _owned_statement(statement_id: int) -> Statement:
    if statement_id >= 2**31:
        abort(404)
    return get_owned_or_404(Statement, statement_id)


@bp.get("/billing/statements/<int:statement_id>")
@login_required
def billing_statement(statement_id: int):
    statement = _owned_statement(statement_id)
    return render_template(
        "web/statement.html",
        statement=statement,
        lines=statement.lines,
        tenant=current_user.tenant,
        last_day=statement.period_end - timedelta(days=1),
        long_date=long_date,
    )


@bp.get("/billing/statements/<int:statement_id>.csv")
@login_required
def billing_statement_csv(statement_id: int):
    statement = _owned_statement(statement_id)
    name = f"statement-{statement.period_start:%Y-%m}.csv"
    return Response(
        statement_csv(statement), mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
