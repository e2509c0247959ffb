"""The alert pages' forms: filters, rules, alert settings and notification channels.

A form's text is checked by the bodies the API checks too (``portal.alerts.bodies``,
``portal.notify.bodies``) and then by the domain (``portal.alerts.rules``,
``portal.notify.channels``), so the page refuses exactly what the API refuses, with the same
reasons; a reason is shown beside the field it names.
"""

from __future__ import annotations

import re
from typing import get_args

from flask_wtf import FlaskForm
from pydantic import BaseModel, ValidationError
from wtforms import BooleanField, HiddenField, SelectField, StringField
from wtforms.fields.choices import SelectChoice

from ..alerts.bodies import AlertSettingsBody, AlertType, CustomMetric, RuleBody, RuleChange
from ..alerts.rules import COMPARATORS, DEFAULT_RULES, METRICS, RULE_FIELDS
from ..models.alerts import CHANNEL_KINDS, DELIVERY_STATUSES
from ..notify.bodies import ChannelBody
from .once import new_submission_token

KIND_NAMES = {rule.kind: rule.name for rule in DEFAULT_RULES}


def type_label(alert_type: str) -> str:
    """What an alert type is called: a default rule's name, or a custom rule's metric."""
    if alert_type in KIND_NAMES:
        return KIND_NAMES[alert_type]
    metric = METRICS.get(alert_type)
    return f"{metric.label} (custom rule)" if metric else alert_type


# The default rules' kinds first, in their order, then the metrics custom rules' alerts carry.
TYPE_CHOICES = [SelectChoice(t, type_label(t)) for t in dict.fromkeys(get_args(AlertType))]
SEVERITY_CHOICES = [SelectChoice("warning", "Warning"), SelectChoice("critical", "Critical")]
STATUS_CHOICES = [
    SelectChoice("", "Open (not resolved)"),
    SelectChoice("active", "Active"),
    SelectChoice("acknowledged", "Acknowledged"),
    SelectChoice("resolved", "Resolved"),
    SelectChoice("all", "All"),
]
HISTORY_DAYS = [
    SelectChoice(7, "Last 7 days"),
    SelectChoice(30, "Last 30 days"),
    SelectChoice(90, "Last 90 days"),
    SelectChoice(366, "Last year"),
]
COMPARATOR_WORDS = {"gt": "above", "gte": "at or above", "lt": "below", "lte": "at or below"}
METRIC_CHOICES = [SelectChoice(m, METRICS[m].label) for m in get_args(CustomMetric)]


class _Filters(FlaskForm):
    """A GET form: its state lives in the URL, so it carries no CSRF token."""

    class Meta:
        csrf = False

    def params(self) -> dict[str, object]:
        """The valid, non-empty filter values (for links and redirects)."""
        return {name: field.data for name, field in self._fields.items() if field.data and not field.errors}


class AlertFilterForm(_Filters):
    type = SelectField("Type", choices=[SelectChoice("", "All types"), *TYPE_CHOICES], default="")
    severity = SelectField("Severity", choices=[SelectChoice("", "Any severity"), *SEVERITY_CHOICES], default="")
    status = SelectField("Status", choices=STATUS_CHOICES, default="")


class HistoryFilterForm(_Filters):
    type = SelectField("Type", choices=[SelectChoice("", "All types"), *TYPE_CHOICES], default="")
    severity = SelectField("Severity", choices=[SelectChoice("", "Any severity"), *SEVERITY_CHOICES], default="")
    days = SelectField("Triggered in", choices=HISTORY_DAYS, coerce=int, default=30)


class DeliveryFilterForm(_Filters):
    status = SelectField(
        "Delivery status",
        choices=[SelectChoice("", "Any status"), *(SelectChoice(s, s.capitalize()) for s in DELIVERY_STATUSES)],
        default="",
    )
    channel = SelectField("Channel", choices=[SelectChoice("", "Every channel")], default="")


def filter_form(form_class: type[_Filters], args, **choices) -> _Filters:
    """The filter form read from the query string (its defaults when there is none);
    ``choices`` gives fields their choices first (e.g. the tenant's channels)."""
    form = form_class(formdata=args if args else None)
    for name, options in choices.items():
        form[name].choices = [*form[name].choices[:1], *options]
    if args:
        form.validate()
    return form


# -- field messages ---------------------------------------------------------------------------------
def _sentence(text: str) -> str:
    text = text.strip().removeprefix("Value error, ")
    if text in ("Field required", "String should have at least 1 character"):
        return "Required."
    first = text.split(" ", 1)[0]
    if first.isalpha() and first.islower():  # a field's or metric's name keeps its spelling
        text = text[:1].upper() + text[1:]
    return text + ("" if text.endswith(".") else ".")


def show_error(form: FlaskForm, message: str) -> None:
    """Put a ``"field: problem"`` message (the API's and the domain's form) beside its field,
    or above the form when it names no field of it."""
    name, sep, problem = message.partition(": ")
    field = form._fields.get(name.split(".")[0]) if sep else None
    if field is None or isinstance(field, HiddenField):
        form.form_errors.append(_sentence(message))
        return
    field.errors = [*field.errors, _sentence(problem)]


def _pydantic(form: FlaskForm, model: type[BaseModel], data: dict) -> BaseModel | None:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        for item in error.errors():
            loc = [str(p) for p in item["loc"]]
            show_error(form, f"{loc[0] if loc else ''}: {item['msg']}")
        return None


def has_errors(form: FlaskForm) -> bool:
    return bool(form.form_errors) or any(field.errors for field in form)


def _whole(form: FlaskForm, name: str, data: dict, required: bool = True) -> None:
    text = (form[name].data or "").strip()
    if not text:
        if required:
            show_error(form, f"{name}: Required")
        return
    if not re.fullmatch(r"[0-9]{1,12}", text.replace(",", "")):
        show_error(form, f"{name}: must be a whole number")
        return
    data[name] = int(text.replace(",", ""))


# -- rules ------------------------------------------------------------------------------------------
# A custom rule's form: every rule field but on/off (which has its own buttons).
CUSTOM_FIELDS = tuple(name for name in RULE_FIELDS if name != "is_enabled")
INT_FIELDS = ("window_minutes", "min_volume", "cooldown_minutes")
FILTER_FIELDS = ("service", "endpoint", "end_user")


def editable_fields(rule) -> tuple[str, ...]:
    """The fields a rule's form offers: everything for a custom rule; for a default rule its
    thresholds (a budget's come from the budget), its unit where the metric takes two, its
    window where it is not a period, its minimum volume where it applies, and its cooldown."""
    if rule.kind == "custom":
        return CUSTOM_FIELDS
    metric = METRICS[rule.metric]
    fields = [] if rule.metric == "budget" else ["warning_threshold", "critical_threshold"]
    if len(metric.units) > 1:
        fields.append("threshold_unit")
    if metric.period is None:
        fields.append("window_minutes")
    if metric.volume:
        fields.append("min_volume")
    fields.append("cooldown_minutes")
    return tuple(fields)


def plain_number(value) -> str:
    """A stored threshold as typed: 1000.000000 reads 1000, 12.500000 reads 12.5."""
    if value is None:
        return ""
    return format(value.normalize(), "f")


class RuleForm(FlaskForm):
    name = StringField("Name")
    metric = SelectField("Metric", choices=METRIC_CHOICES)
    comparator = SelectField(
        "Fires when the value is",
        choices=[SelectChoice(c, f"{COMPARATOR_WORDS[c]} ({sign})") for c, sign in COMPARATORS.items()],
    )
    threshold_unit = SelectField(
        "Threshold unit",
        choices=[
            SelectChoice("", "The metric's own"),
            SelectChoice("percent", "Percent"),
            SelectChoice("absolute", "Absolute"),
        ],
        default="",
    )
    warning_threshold = StringField("Warning threshold")
    critical_threshold = StringField("Critical threshold")
    window_minutes = StringField("Window (minutes)", default="60")
    min_volume = StringField("Minimum calls", default="0")
    cooldown_minutes = StringField("Cooldown (minutes)", default="60")
    service = StringField("Only the service")
    endpoint = StringField("Only the endpoint")
    api_key_id = SelectField("Only the API key", choices=[SelectChoice("", "Any key")], default="")
    end_user = StringField("Only the end user")
    is_enabled = BooleanField("Evaluate it from now on", default=True)

    def set_keys(self, keys) -> RuleForm:
        """Offer the tenant's keys (id, name, prefix) for the key filter."""
        self.api_key_id.choices = [SelectChoice("", "Any key")] + [
            SelectChoice(str(key_id), f"{name} ({prefix}…)") for key_id, name, prefix in keys
        ]
        return self

    @classmethod
    def of_rule(cls, rule, keys) -> RuleForm:
        """A form showing ``rule`` as it is now."""
        form = cls(formdata=None).set_keys(keys)
        for name in CUSTOM_FIELDS:
            value = getattr(rule, name)
            if name in ("warning_threshold", "critical_threshold"):
                value = plain_number(value)
            elif value is None:
                value = ""
            form[name].data = str(value) if not isinstance(value, str) else value
        return form

    def rule_fields(self, shown: tuple[str, ...]) -> dict:
        """The typed values of the fields in ``shown`` (strings as sent; whole numbers parsed;
        a blank threshold or filter is None); errors go on the fields."""
        data: dict = {}
        for name in shown:
            if name in INT_FIELDS:
                _whole(self, name, data)
            elif name == "api_key_id":
                key = self.api_key_id.data or ""
                if key and not re.fullmatch(r"[0-9]{1,10}", key):
                    show_error(self, "api_key_id: no such key")  # not an id at all: typed past the select
                    continue
                data[name] = int(key) if key else None
            elif name in ("warning_threshold", "critical_threshold"):
                text = (self[name].data or "").strip().replace(",", "")
                data[name] = text or None
            elif name in FILTER_FIELDS:
                data[name] = (self[name].data or "").strip() or None
            elif name == "name":
                data[name] = (self.name.data or "").strip()
            else:
                data[name] = self[name].data
        return data

    def new_rule(self) -> dict | None:
        """A custom rule's fields checked as ``POST /api/v1/alerts/rules`` checks them, or None."""
        data = self.rule_fields(CUSTOM_FIELDS)
        data = {k: v for k, v in data.items() if v is not None and v != ""}
        data["name"] = (self.name.data or "").strip()
        data["is_enabled"] = bool(self.is_enabled.data)
        if has_errors(self):
            return None
        body = _pydantic(self, RuleBody, data)
        if body is None:
            return None
        fields = body.model_dump(exclude_unset=True)
        if fields.get("threshold_unit") is None:
            fields.pop("threshold_unit", None)
        return fields

    def changes(self, rule) -> dict | None:
        """The changes to ``rule`` checked as ``PUT /api/v1/alerts/rules/<id>`` checks them."""
        data = self.rule_fields(editable_fields(rule))
        if has_errors(self):
            return None
        if data.get("threshold_unit") == "":
            data.pop("threshold_unit")
        body = _pydantic(self, RuleChange, data)
        return None if body is None else body.changes()


class AlertSettingsForm(FlaskForm):
    resolve_after_evaluations = StringField("Resolve an alert after this many clear evaluations")
    notify_on_resolve = BooleanField("Tell the channels when an alert resolves")

    @classmethod
    def of_settings(cls, settings) -> AlertSettingsForm:
        form = cls(formdata=None)
        form.resolve_after_evaluations.data = str(settings.resolve_after_evaluations)
        form.notify_on_resolve.data = bool(settings.notify_on_resolve)
        return form

    def checked(self) -> AlertSettingsBody | None:
        """The settings checked as ``PUT /api/v1/alerts/settings`` checks them, or None."""
        data: dict = {}
        _whole(self, "resolve_after_evaluations", data)
        data["notify_on_resolve"] = bool(self.notify_on_resolve.data)
        if has_errors(self):
            return None
        return _pydantic(self, AlertSettingsBody, data)


# -- channels ---------------------------------------------------------------------------------------
class ChannelForm(FlaskForm):
    kind = SelectField(
        "Kind",
        choices=[
            SelectChoice("email", "E-mail"),
            SelectChoice("slack", "Slack incoming webhook"),
            SelectChoice("webhook", "Webhook (signed)"),
        ],
        default="email",
    )
    name = StringField("Name")
    target = StringField("Address or URL")
    min_severity = SelectField(
        "Tell it about",
        choices=[
            SelectChoice("warning", "Warnings and critical"),
            SelectChoice("critical", "Critical only"),
        ],
        default="warning",
    )
    secret = StringField("Signing secret (webhooks)")
    # Lets a reload or a double click add one channel, not two (see portal.web.once).
    submission = HiddenField(default=new_submission_token)

    def checked(self) -> dict | None:
        """The channel's fields checked as ``POST /api/v1/notification-channels`` checks them
        (the target's address is the domain's to judge), or None."""
        kind = self.kind.data if self.kind.data in CHANNEL_KINDS else None
        data = {
            "kind": kind,
            "target": (self.target.data or "").strip(),
            "name": (self.name.data or "").strip() or None,
            "min_severity": self.min_severity.data,
        }
        secret = (self.secret.data or "").strip() or None
        if not data["target"]:
            show_error(self, "target: Required")
        if kind == "webhook" and secret is not None:
            data["secret"] = secret
        if has_errors(self):
            return None
        try:
            ChannelBody.parse_json(data)
        except ValidationError as error:
            for item in error.errors():
                loc = [str(p) for p in item["loc"]]
                show_error(self, f"{loc[0] if loc else 'kind'}: {item['msg']}")
            return None
        data["secret"] = secret  # the domain refuses a secret on any other kind, and says so
        return data
