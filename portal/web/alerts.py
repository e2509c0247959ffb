"""Portal pages: alerts — the open ones with their statistics, the history, one alert, and the
rules and settings that raise them. Members read; owners and admins acknowledge, resolve and
change rules. Every change is in the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from ..alerts import rules as rule_domain
from ..alerts import service
from ..alerts.rules import METRICS, RuleError
from ..extensions import db
from ..models import Alert, AlertRule, ApiKey, AuditEvent, NotificationDelivery, User
from ..notify.channels import list_channels
from ..tenancy.audit import record_event
from . import bp
from .alert_forms import (
    COMPARATOR_WORDS,
    AlertFilterForm,
    AlertSettingsForm,
    HistoryFilterForm,
    RuleForm,
    editable_fields,
    filter_form,
    has_errors,
    show_error,
    type_label,
)
from .clock import now
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


def audit(action: str, **details: object) -> None:
    record_event(action, current_user.tenant_id, current_user.id, request.remote_addr, **details)


@contextmanager
def credited(*actions: str) -> Iterator[None]:
    """Audit events the domain records inside the block without who made the change or from
    where get the signed-in user and address (kept unflushed until then, so they are at hand)."""
    with db.session.no_autoflush:
        yield
        for obj in db.session.new:
            if isinstance(obj, AuditEvent) and obj.action in actions:
                obj.user_id = obj.user_id or current_user.id
                obj.ip_address = obj.ip_address or request.remote_addr


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


def minutes_text(minutes: int) -> str:
    if minutes and minutes % 1440 == 0:
        days = minutes // 1440
        return f"{days} day{'s' if days > 1 else ''}"
    if minutes and minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours > 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


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


@dataclass
class RuleView:
    """A rule as its page shows it: what it watches and when it fires, in words."""

    rule: AlertRule
    metric: str
    unit: str
    levels: list[str]
    scope: str
    filters: list[str]
    repeats: str
    fields: tuple[str, ...]
    form: RuleForm | None

    @property
    def failed(self) -> bool:
        return self.form is not None and has_errors(self.form)


def describe(rule: AlertRule, keys: dict[int, object], form: RuleForm | None) -> RuleView:
    metric = METRICS.get(rule.metric)
    unit, word = unit_of(rule), COMPARATOR_WORDS.get(rule.comparator, rule.comparator)
    if rule.metric == "budget":
        levels = ["each budget's own warning percentages (below 100% warns, 100% and over is critical)"]
    else:
        levels = [
            f"{level} {word} {reading(value, unit)}"
            for level, value in (("warning", rule.warning_threshold), ("critical", rule.critical_threshold))
            if value is not None
        ]
    label = metric.label if metric else rule.metric
    period = metric.period if metric else None
    if period == "month":
        scope = "in the billing month"
    elif period == "day":
        label, scope = label.removesuffix(" today"), "today (UTC)"
    else:
        scope = f"over the last {minutes_text(rule.window_minutes)}"
    if metric and metric.volume and rule.min_volume:
        scope += f", once there are at least {rule.min_volume:,} calls"
    filters = [f"service {rule.service}"] if rule.service else []
    filters += [f"endpoint {rule.endpoint}"] if rule.endpoint else []
    if rule.api_key_id is not None:
        key = keys.get(rule.api_key_id)
        filters.append(f"key {key.name} ({key.prefix}…)" if key else f"key {rule.api_key_id}")
    filters += [f"end user {rule.end_user}"] if rule.end_user else []
    cooldown = rule.cooldown_minutes
    repeats = f"unacknowledged alerts are told again after {minutes_text(cooldown)}" if cooldown else "no cooldown"
    return RuleView(rule, label, unit, levels, scope, filters, repeats, editable_fields(rule), form)


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
    bad_page = not (page_arg.isdigit() and 1 <= int(page_arg) <= MAX_PAGES)
    page = 1 if bad_page else int(page_arg)
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
        with credited("alert.acknowledged"):
            service.acknowledge(alert, now(), current_user.id)
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
        with credited("alert.resolved"):
            service.resolve(alert, now(), current_user.id)
    except service.AlertError:
        flash(f"“{alert.title}” is resolved already.", "info")
        return _back_to(alert)
    db.session.commit()
    flash(f"Resolved “{alert.title}”.", "success")
    return _back_to(alert)


# -- rules and settings -----------------------------------------------------------------------------
def _keys(tenant_id: int) -> list:
    query = select(ApiKey.id, ApiKey.name, ApiKey.prefix).where(ApiKey.tenant_id == tenant_id)
    return db.session.execute(query.order_by(ApiKey.name, ApiKey.id)).all()


def _rules_page(status: int = 200, bound: RuleForm | None = None, bound_id: int | None = None, **forms):
    tenant_id = current_user.tenant_id
    keys = _keys(tenant_id)
    by_id = {key.id: key for key in keys}
    manage = can_change()
    views = []
    for rule in rule_domain.tenant_rules(tenant_id):
        form = None
        if manage and rule.kind != "custom":  # a custom rule's (longer) form is on its own page
            form = bound if rule.id == bound_id else RuleForm.of_rule(rule, keys)
        views.append(describe(rule, by_id, form))
    settings = rule_domain.settings_for(tenant_id)
    page = render_template(
        "web/alert_rules.html",
        defaults=[v for v in views if v.rule.kind != "custom"],
        custom=[v for v in views if v.rule.kind == "custom"],
        new_form=forms.get("new_form") or RuleForm(formdata=None).set_keys(keys),
        settings=settings,
        settings_form=forms.get("settings_form") or AlertSettingsForm.of_settings(settings),
        can_manage=manage,
    )
    return page, status


def _to_rule(rule_id: int):
    return redirect(url_for("web.alerts_rules") + f"#rule-{rule_id}")


def _rule_page(rule: AlertRule, form: RuleForm | None = None, status: int = 200):
    keys = _keys(current_user.tenant_id)
    manage = can_change()
    if manage and form is None:
        form = RuleForm.of_rule(rule, keys)
    view = describe(rule, {key.id: key for key in keys}, form if manage else None)
    return render_template("web/alerts/rule_edit.html", view=view, can_manage=manage), status


@bp.get("/alerts/rules")
@login_required
def alerts_rules():
    return _rules_page()


@bp.get("/alerts/rules/<int:rule_id>")
@login_required
def alerts_rule(rule_id: int):
    return _rule_page(owned_or_404(AlertRule, rule_id))


@bp.post("/alerts/rules")
@admin_required
def alerts_rule_create():
    form = RuleForm().set_keys(_keys(current_user.tenant_id))
    fields = form.new_rule()
    if fields is not None:
        try:
            rule = rule_domain.create_custom_rule(current_user.tenant_id, fields)
            db.session.flush()
        except RuleError as error:
            db.session.rollback()
            show_error(form, str(error))
    if fields is None or has_errors(form):
        return _rules_page(400, new_form=form)
    audit("alert_rule.created", rule_id=rule.id, name=rule.name, metric=rule.metric)
    db.session.commit()
    flash(f"Added the rule “{rule.name}”. It is evaluated every minute.", "success")
    return _to_rule(rule.id)


@bp.post("/alerts/rules/<int:rule_id>")
@admin_required
def alerts_rule_change(rule_id: int):
    rule = owned_or_404(AlertRule, rule_id)
    form = RuleForm().set_keys(_keys(current_user.tenant_id))
    changes = form.changes(rule)
    before = {name: getattr(rule, name) for name in changes or {}}
    if changes is not None:
        try:
            rule_domain.apply_changes(rule, changes)
        except RuleError as error:
            db.session.rollback()
            show_error(form, str(error))
    if changes is None or has_errors(form):
        if rule.kind == "custom":
            return _rule_page(rule, form, 400)
        return _rules_page(400, bound=form, bound_id=rule_id)
    changed = sorted(name for name, value in before.items() if getattr(rule, name) != value)
    if not changed:
        flash(f"“{rule.name}” already has those settings.", "info")
        return _to_rule(rule.id)
    audit(
        "alert_rule.changed",
        rule_id=rule.id,
        name=rule.name,
        changes={name: None if getattr(rule, name) is None else str(getattr(rule, name)) for name in changed},
    )
    db.session.commit()
    flash(f"Saved “{rule.name}”.", "success")
    return _to_rule(rule.id)


def _switch(rule_id: int, enabled: bool):
    rule = owned_or_404(AlertRule, rule_id)
    if rule.is_enabled == enabled:
        flash(f"“{rule.name}” is already {'on' if enabled else 'off'}.", "info")
        return _to_rule(rule.id)
    try:
        rule_domain.apply_changes(rule, {"is_enabled": enabled})
    except RuleError as error:
        db.session.rollback()
        flash(f"Could not change “{rule.name}”: {error}.", "error")
        return _to_rule(rule_id)
    audit("alert_rule.enabled" if enabled else "alert_rule.disabled", rule_id=rule.id, name=rule.name)
    db.session.commit()
    if enabled:
        flash(f"“{rule.name}” is on: it is evaluated every minute.", "success")
    else:
        flash(f"“{rule.name}” is off: it raises no new alerts until you turn it on.", "success")
    return _to_rule(rule.id)


@bp.post("/alerts/rules/<int:rule_id>/enable")
@admin_required
def alerts_rule_enable(rule_id: int):
    return _switch(rule_id, True)


@bp.post("/alerts/rules/<int:rule_id>/disable")
@admin_required
def alerts_rule_disable(rule_id: int):
    return _switch(rule_id, False)


@bp.post("/alerts/rules/<int:rule_id>/delete")
@admin_required
def alerts_rule_delete(rule_id: int):
    rule = owned_or_404(AlertRule, rule_id)
    if rule.kind != "custom":
        flash(f"“{rule.name}” is a default rule and cannot be deleted; turn it off instead.", "error")
        return _to_rule(rule.id)
    audit("alert_rule.deleted", rule_id=rule.id, name=rule.name, metric=rule.metric)
    db.session.delete(rule)
    db.session.commit()
    flash(f"Deleted the rule “{rule.name}”. Its past alerts stay in the history.", "success")
    return redirect(url_for("web.alerts_rules") + "#custom-rules")


@bp.post("/alerts/settings")
@admin_required
def alerts_settings():
    form = AlertSettingsForm()
    body = form.checked()
    if body is None:
        return _rules_page(400, settings_form=form)
    with credited("alerts.settings_changed"):
        service.change_settings(current_user.tenant_id, None, body.resolve_after_evaluations, body.notify_on_resolve)
    db.session.commit()
    flash("Saved the alert settings.", "success")
    return redirect(url_for("web.alerts_rules") + "#settings")
