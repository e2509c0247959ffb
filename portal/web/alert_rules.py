"""Portal pages: the alert rules and settings — the default rules with their inline threshold
forms, each custom rule on its own page, adding, switching and deleting rules, and the settings
every rule shares. Members read; owners and admins change. The domain records each change in the
audit log with the signed-in user and address."""

from __future__ import annotations

from dataclasses import dataclass

from flask import flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from ..alerts import rules as rule_domain
from ..alerts import service
from ..alerts.rules import METRICS, RuleError
from ..extensions import db
from ..models import AlertRule, ApiKey
from . import bp
from .alert_forms import COMPARATOR_WORDS, AlertSettingsForm, RuleForm, editable_fields, has_errors, show_error
from .alerts import owned_or_404, reading, unit_of, who
from .roles import admin_required, can_change


# -- rules in words ---------------------------------------------------------------------------------
def minutes_text(minutes: int) -> str:
    if minutes and minutes % 1440 == 0:
        days = minutes // 1440
        return f"{days} day{'s' if days > 1 else ''}"
    if minutes and minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours > 1 else ''}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


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


# -- the pages -------------------------------------------------------------------------------------
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
            rule = rule_domain.create_custom_rule(current_user.tenant_id, fields, **who())
        except RuleError as error:
            db.session.rollback()
            show_error(form, str(error))
    if fields is None or has_errors(form):
        return _rules_page(400, new_form=form)
    db.session.commit()
    flash(f"Added the rule “{rule.name}”. It is evaluated every minute.", "success")
    return _to_rule(rule.id)


@bp.post("/alerts/rules/<int:rule_id>")
@admin_required
def alerts_rule_change(rule_id: int):
    rule = owned_or_404(AlertRule, rule_id)
    form = RuleForm().set_keys(_keys(current_user.tenant_id))
    changes = form.changes(rule)
    changed = []
    if changes is not None:
        try:
            changed = rule_domain.change_rule(rule, changes, **who())
        except RuleError as error:
            db.session.rollback()
            show_error(form, str(error))
    if changes is None or has_errors(form):
        if rule.kind == "custom":
            return _rule_page(rule, form, 400)
        return _rules_page(400, bound=form, bound_id=rule_id)
    if not changed:
        flash(f"“{rule.name}” already has those settings.", "info")
        return _to_rule(rule.id)
    db.session.commit()
    flash(f"Saved “{rule.name}”.", "success")
    return _to_rule(rule.id)


def _switch(rule_id: int, enabled: bool):
    rule = owned_or_404(AlertRule, rule_id)
    if rule.is_enabled == enabled:
        flash(f"“{rule.name}” is already {'on' if enabled else 'off'}.", "info")
        return _to_rule(rule.id)
    try:
        rule_domain.change_rule(rule, {"is_enabled": enabled}, **who())
    except RuleError as error:
        db.session.rollback()
        flash(f"Could not change “{rule.name}”: {error}.", "error")
        return _to_rule(rule_id)
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
    rule_domain.delete_rule(rule, **who())
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
    service.change_settings(
        current_user.tenant_id, None, body.resolve_after_evaluations, body.notify_on_resolve, **who()
    )
    db.session.commit()
    flash("Saved the alert settings.", "success")
    return redirect(url_for("web.alerts_rules") + "#settings")
