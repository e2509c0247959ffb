"""Portal pages: alerts — the open ones with their statistics, the history and one alert (the
rules and settings that raise them are in ``alert_rules``). Members read; owners and admins
acknowledge and resolve. Every change is in the audit log, with who made it and from where."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from ..alerts import service
from ..alerts.rules import METRICS
from ..extensions import db
from ..kernel.clock import now
from ..models import Alert, AlertRule, NotificationDelivery, User
from ..notify.channels import list_channels
from . import bp
from .alert_forms import AlertFilterForm, HistoryFilterForm, filter_form, type_label
from .filters import query_id
from .roles import admin_required, can_change
from .tenancy import get_owned_or_404, owned

OPEN_LIMIT = 100  # open alerts listed (the API's default)
PAGE_SIZE = 50  # history rows a page
MAX_PAGES = 20  # the newest 1,000 alerts of a period (the API's history limit)
STATS_DAYS = 30
MAX_ID = 2**31 - 1


def owned_or_404(model, object_id: int):
    """The tenant's object with this id, or 404 (an id past any row's is no row)."""
    if object_id > MAX_ID:
        abort(404)
    return get_owned_or_404(model, object_id)


def who() -> dict:
    """The signed-in user and their address, for the audit event of a change."""
    return {"user_id": current_user.id, "ip_address": request.remote_addr}


# -- figures in words -------------------------------------------------------------------------------
def number_text(value) -> str:
    if value is None:
        return "—"
    value = Decimal(value)
    if value == value.to_integral_value():
        return f"{int(value):,}"
    return f"{value.normalize():,f}"


def unit_of(rule: AlertRule) -> str:
    metric = METRICS.get(rule.metric)
    if metric is None:
        return ""
    if rule.threshold_unit == "absolute" and "percent" in metric.units:
        return "calls"
    return metric.unit


def reading(value, unit: str) -> str:
    """A value in its unit: 12.5%, 1,000 ms, $50.00, 2×, 4 calls."""
    if value is None:
        return "—"
    if unit == "$":
        return f"${Decimal(value):,.2f}"
    text = number_text(value)
    if unit.endswith("s") and Decimal(value) == 1:
        unit = unit[:-1]  # 1 call, 1 attempt
    return {"%": f"{text}%", "×": f"{text}×", "": text}.get(unit, f"{text} {unit}")


def duration(seconds: float | None) -> str:
    """A time to acknowledge or resolve: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{round(seconds)} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    if hours == 0:
        return f"{minutes} min"
    days, hours = divmod(hours, 24)
    if days == 0:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{days} d {hours} h" if hours else f"{days} d"


# -- alerts -----------------------------------------------------------------------------------------
@bp.get("/alerts")
@login_required
def alerts():
    form = filter_form(AlertFilterForm, request.args)
    chosen = form.params()
    tenant_id = current_user.tenant_id
    rows = service.list_alerts(
        tenant_id, chosen.get("type"), chosen.get("severity"), chosen.get("status"), limit=OPEN_LIMIT
    )
    page = render_template(
        "web/alerts.html",
        form=form,
        chosen=chosen,
        alerts=rows,
        limited=len(rows) == OPEN_LIMIT,
        stats=service.alert_stats(tenant_id, now(), STATS_DAYS),
        stats_days=STATS_DAYS,
        can_manage=can_change(),
        type_label=type_label,
        duration=duration,
    )
    return page, 400 if form.errors else 200


@bp.get("/alerts/history")
@login_required
def alerts_history():
    form = filter_form(HistoryFilterForm, request.args)
    chosen = form.params()
    page_arg = request.args.get("page", "1")
    page = query_id(page_arg, MAX_PAGES)
    bad_page = page is None
    page = page or 1
    since = now() - timedelta(days=chosen.get("days", 30))
    rows = service.list_alerts(
        current_user.tenant_id,
        chosen.get("type"),
        chosen.get("severity"),
        "all",
        since=since,
        limit=page * PAGE_SIZE + 1,
    )
    more = len(rows) > page * PAGE_SIZE
    html = render_template(
        "web/alerts_history.html",
        form=form,
        alerts=rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        first_row=(page - 1) * PAGE_SIZE + 1,
        page=page,
        bad_page=bad_page,
        since=since,
        capped=more and page == MAX_PAGES,
        shown_most=MAX_PAGES * PAGE_SIZE,
        newer_url=url_for("web.alerts_history", **chosen, page=page - 1) if page > 1 else None,
        older_url=url_for("web.alerts_history", **chosen, page=page + 1) if more and page < MAX_PAGES else None,
        type_label=type_label,
    )
    return html, 400 if form.errors or bad_page else 200


@bp.get("/alerts/<int:alert_id>")
@login_required
def alerts_detail(alert_id: int):
    alert = owned_or_404(Alert, alert_id)
    rule = db.session.get(AlertRule, alert.rule_id) if alert.rule_id else None
    deliveries = db.session.scalars(
        owned(NotificationDelivery)
        .where(NotificationDelivery.alert_id == alert.id)
        .order_by(NotificationDelivery.created_at.desc(), NotificationDelivery.id.desc())
        .limit(50)
    ).all()
    people_ids = {i for i in (alert.acknowledged_by_id, alert.resolved_by_id) if i is not None}
    people = {}
    if people_ids:
        people = dict(db.session.execute(select(User.id, User.email).where(User.id.in_(people_ids))).all())
    unit = unit_of(rule) if rule else ""
    return render_template(
        "web/alerts/detail.html",
        alert=alert,
        rule=rule,
        value=reading(alert.value, unit),
        threshold=reading(alert.threshold, unit),
        deliveries=deliveries,
        channels={c.id: c for c in list_channels(current_user.tenant_id)},
        people=people,
        can_manage=can_change(),
        type_label=type_label,
    )


def _back_to(alert: Alert):
    if request.args.get("back") == "detail":
        return redirect(url_for("web.alerts_detail", alert_id=alert.id))
    return redirect(url_for("web.alerts", **filter_form(AlertFilterForm, request.args).params()))


@bp.post("/alerts/<int:alert_id>/acknowledge")
@admin_required
def alerts_acknowledge(alert_id: int):
    alert = owned_or_404(Alert, alert_id)
    if alert.status == "acknowledged":
        flash(f"“{alert.title}” is already acknowledged.", "info")
        return _back_to(alert)
    try:
        service.acknowledge(alert, now(), **who())
    except service.AlertError:
        flash(f"“{alert.title}” is resolved already: there is nothing to acknowledge.", "error")
        return _back_to(alert)
    db.session.commit()
    flash(f"Acknowledged “{alert.title}”: its repeat notices stop. It still resolves and escalates.", "success")
    return _back_to(alert)


@bp.post("/alerts/<int:alert_id>/resolve")
@admin_required
def alerts_resolve(alert_id: int):
    alert = owned_or_404(Alert, alert_id)
    try:
        service.resolve(alert, now(), **who())
    except service.AlertError:
        flash(f"“{alert.title}” is resolved already.", "info")
        return _back_to(alert)
    db.session.commit()
    flash(f"Resolved “{alert.title}”.", "success")
    return _back_to(alert)
