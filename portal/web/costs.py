"""The costs page: spend by service, model, key, end user or endpoint over a month or a range of
days, spend per day, budgets (with their progress, created and changed here), the month's
forecast, unpriced calls, and the prices in force."""

from __future__ import annotations

from decimal import Decimal

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ..costs import budgets as budget_domain
from ..costs.overview import GROUPS, DayCost, budget_rows, cost_overview, tenant_keys
from ..costs.prices import current_price_book
from ..kernel.clock import now
from ..models import Budget
from ..redis_store import get_redis
from . import bp
from .filters import fine_money
from .money_forms import BudgetForm, CostFilterForm
from .roles import admin_required, can_change
from .tenancy import get_owned_or_404

FILTER_FIELDS = ("month", "start", "end", "group")
CENT = Decimal("0.01")


def _unpriced_note(calls: int) -> str:
    return f", {calls:,} unpriced" if calls else ""


def cost_chart(days: list[DayCost]) -> dict:
    """The spend-per-day chart's bars (values to the cent) and the figures of its data table."""
    return {
        "bars": [
            (
                f"{d.day:%b} {d.day.day}",
                d.cost.quantize(CENT),
                f"{d.day:%a %b} {d.day.day}: {fine_money(d.cost)}, {d.calls:,} calls{_unpriced_note(d.unpriced)}",
            )
            for d in days
        ],
        "shown": [fine_money(d.cost) + (f" ({d.unpriced:,} calls unpriced)" if d.unpriced else "") for d in days],
    }


def _filter_form() -> CostFilterForm:
    form = CostFilterForm(now().date(), formdata=request.args)
    form.validate()
    return form


def _filter_args(form: CostFilterForm) -> dict:
    """The filter as URL arguments (for the group tabs and the redirects after a budget change)."""
    start, end = form.days()
    if form.month.data and not form.month.errors:
        return {"month": form.month.data}
    return {"month": "", "start": start.isoformat(), "end": end.isoformat()}


def _overview(tenant_id: int, start, end, group: str, at):
    return cost_overview(current_price_book(get_redis()), tenant_id, start, end, group, at)


def _render_costs(budget_form: BudgetForm | None = None, status: int = 200):
    tenant_id = current_user.tenant_id
    filters = _filter_form()
    start, end = filters.days()
    if not filters.month.data and not filters.errors:
        # The range shown, written back into the form (a missing end is today).
        filters.start.data, filters.end.data = start, end
    at = now()
    overview = _overview(tenant_id, start, end, filters.group_by, at)
    if budget_form is None:
        budget_form = BudgetForm(keys=overview.keys, formdata=None)
    args = _filter_args(filters)
    tabs = [(group, label, url_for("web.costs", **args, group=group)) for group, label in GROUPS]
    page = render_template(
        "web/costs.html",
        overview=overview,
        filters=filters,
        form=budget_form,
        tabs=tabs,
        chart=cost_chart(overview.days),
        group_label=dict(GROUPS)[overview.group],
        filter_args={**args, "group": overview.group},
        can_manage=can_change(current_user),
        now=at,
    )
    return page, 400 if filters.errors and status == 200 else status


@bp.get("/costs")
@login_required
def costs():
    return _render_costs()


def _back_to_costs():
    args = {k: v for k, v in request.args.items() if k in FILTER_FIELDS}
    return redirect(url_for("web.costs", **args, _anchor="budgets"))


def _owned_budget(budget_id: int) -> Budget:
    if budget_id >= 2**31:
        abort(404)
    return get_owned_or_404(Budget, budget_id)


def _actor() -> budget_domain.Actor:
    return budget_domain.Actor(user_id=current_user.id, ip_address=request.remote_addr)


@bp.post("/costs/budgets")
@admin_required
def costs_create_budget():
    tenant_id = current_user.tenant_id
    form = BudgetForm(keys=tenant_keys(tenant_id))
    if not form.validate_on_submit():
        return _render_costs(form, 400)
    fields = form.budget_fields()
    name, amount = fields.pop("name"), fields.pop("amount")
    try:
        budget = budget_domain.add_budget(tenant_id, name, amount, _actor(), get_redis(), now(), **fields)
    except budget_domain.BudgetError as error:
        form.form_errors.append(f"The budget could not be saved: {error}.")
        return _render_costs(form, 400)
    flash(f"Budget “{budget.name}” created: ${budget.monthly_amount:,.2f} a month.", "success")
    return _back_to_costs()


def _render_budget(budget: Budget, form: BudgetForm | None = None, status: int = 200):
    keys = tenant_keys(current_user.tenant_id)
    [row] = budget_rows([budget], keys, now())
    if form is None:
        form = BudgetForm(keys=keys, formdata=None)
        form.fill_from(budget)
    page = render_template("web/budget_edit.html", row=row, form=form, can_manage=can_change(current_user))
    return page, status


@bp.get("/costs/budgets/<int:budget_id>")
@login_required
def costs_budget(budget_id: int):
    return _render_budget(_owned_budget(budget_id))


@bp.post("/costs/budgets/<int:budget_id>")
@admin_required
def costs_update_budget(budget_id: int):
    budget = _owned_budget(budget_id)
    form = BudgetForm(keys=tenant_keys(current_user.tenant_id))
    if not form.validate_on_submit():
        return _render_budget(budget, form, 400)
    try:
        budget_domain.change_budget(budget, form.budget_fields(), _actor(), get_redis(), now())
    except budget_domain.BudgetError as error:
        form.form_errors.append(f"The budget could not be saved: {error}.")
        return _render_budget(budget, form, 400)
    flash(f"Budget “{budget.name}” saved: ${budget.monthly_amount:,.2f} a month.", "success")
    return redirect(url_for("web.costs_budget", budget_id=budget.id))


@bp.post("/costs/budgets/<int:budget_id>/delete")
@admin_required
def costs_delete_budget(budget_id: int):
    budget = _owned_budget(budget_id)
    name = budget.name
    budget_domain.delete_budget(budget, _actor(), get_redis(), now())
    flash(f"Budget “{name}” deleted. Any hard stop it held is lifted.", "success")
    return _back_to_costs()
