"""The logs: the tenant's raw usage records, filtered, newest first, in keyset pages; and one
record in full.

Filters live in the URL (one GET form). The pager's links carry an opaque cursor (``before`` for
older records, ``after`` for newer ones) next to the filters.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from urllib.parse import urlencode

from flask import redirect, render_template, request, url_for
from flask_login import current_user, login_required
from wtforms import Form, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional, Regexp, ValidationError

from ..analytics import explorer, logs
from ..kernel.clock import now
from ..kernel.periods import day_bounds
from ..models import UsageRecord
from . import bp
from .explorer import DATE_MESSAGE, offer
from .filters import DayField, query_args, query_id
from .tenancy import get_owned_or_404

# Filter options come from the daily rollups of the range given, or else of the days whose raw
# records are kept (at most this many).
CHOICE_DAYS = 366


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class LogsForm(Form):
    """The logs' filters, read from the query string."""

    start = DayField("From (UTC)", validators=[Optional()], invalid_value_message=DATE_MESSAGE)
    end = DayField("To (UTC)", validators=[Optional()], invalid_value_message=DATE_MESSAGE)
    status = StringField(
        "Status",
        filters=[_strip, lambda v: v.lower() if isinstance(v, str) else v],
        validators=[
            Optional(),
            Regexp(logs.STATUS_PATTERN, message="Enter a class such as 2xx, 4xx or 5xx, or a code such as 429."),
        ],
    )
    service = SelectField("Service", choices=[], validate_choice=False)
    endpoint = SelectField("Endpoint", choices=[], validate_choice=False)
    key = SelectField("API key", choices=[], validate_choice=False)
    end_user = SelectField("End user", choices=[], validate_choice=False, validators=[Length(max=120)])
    source = SelectField(
        "Source",
        choices=[
            SelectChoice("", "API and external"),
            SelectChoice("api", "Tollgate API"),
            SelectChoice("external", "External (reported)"),
        ],
        default="",
        invalid_choice_message="Choose the API or external calls.",
    )

    def validate_key(self, field: SelectField) -> None:
        if field.data and query_id(field.data) is None:
            raise ValidationError("Choose a key from the list.")

    def validate(self, extra_validators=None) -> bool:
        if not super().validate(extra_validators):
            return False
        if self.start.data and self.end.data and self.end.data < self.start.data:
            self.end.errors.append("The end date is before the start date.")
            return False
        return True

    def filters(self) -> logs.LogFilters:
        return logs.LogFilters(
            start=self.start.data,
            end=self.end.data,
            status=self.status.data or None,
            service=self.service.data or None,
            endpoint=self.endpoint.data or None,
            api_key_id=int(self.key.data) if self.key.data else None,
            end_user=self.end_user.data or None,
            source=self.source.data or None,
        )

    def args(self) -> dict[str, str]:
        """The filters given, as query arguments (for the pager's links)."""
        values = {
            "start": self.start.data.isoformat() if self.start.data else "",
            "end": self.end.data.isoformat() if self.end.data else "",
            **{name: self[name].data or "" for name in ("status", "service", "endpoint", "key", "end_user", "source")},
        }
        return {name: value for name, value in values.items() if value}

    def offer(self, choices: explorer.Choices) -> None:
        offer(self.service, "All services", [(v, v) for v in choices.services])
        offer(self.endpoint, "All endpoints", [(v, v) for v in choices.endpoints])
        offer(self.key, "All keys", [(str(key_id), name) for key_id, name in choices.keys])
        offer(self.end_user, "All end users", [(v, v) for v in choices.end_users])


def _choice_window(form: LogsForm, today: date, retention: int | None) -> tuple[datetime, datetime]:
    """The days whose filter options to offer: the range asked for, or the days kept."""
    end = form.end.data or today
    start = form.start.data or end - timedelta(days=min(retention or CHOICE_DAYS, CHOICE_DAYS) - 1)
    start, end = min(start, end), max(start, end)
    return day_bounds(max(start, end - timedelta(days=CHOICE_DAYS - 1)), end)


def _cursor(name: str) -> logs.Cursor | None:
    text = request.args.get(name)
    return logs.Cursor.decode(text) if text else None


@bp.get("/logs", endpoint="logs")
@login_required
def logs_page():
    form = LogsForm(query_args())
    valid = form.validate()
    error = None
    try:
        before, after = _cursor("before"), _cursor("after")
    except ValueError:
        before = after = None
        error = "That page link is not valid. Start again from the newest records."
    tenant_id = current_user.tenant_id
    page = None
    if valid and error is None:
        page = logs.log_page(tenant_id, form.filters(), before=before, after=after)
        if page.reached_newest:
            # Nothing newer than a full page: that is the first page.
            query = urlencode(form.args())
            return redirect(url_for("web.logs") + (f"?{query}" if query else ""))
    retention = explorer.retention_days(tenant_id)
    choices = explorer.filter_choices(tenant_id, *_choice_window(form, now().date(), retention))
    form.offer(choices)
    here = url_for("web.logs")

    def page_url(**cursor: str) -> str:
        # Built by hand: the "endpoint" filter would clash with url_for's own argument.
        query = urlencode({**form.args(), **cursor})
        return f"{here}?{query}" if query else here

    html = render_template(
        "web/logs.html",
        form=form,
        page=page,
        error=error,
        keys=dict(choices.keys),
        retention=retention,
        paged=before is not None or after is not None,
        newer_url=page_url(after=page.newer.encode()) if page and page.newer else None,
        older_url=page_url(before=page.older.encode()) if page and page.older else None,
        newest_url=page_url(),
        status_class=logs.status_class,
    )
    return html, 200 if page is not None else 400


@bp.get("/logs/<int:record_id>")
@login_required
def log_detail(record_id: int):
    record = get_owned_or_404(UsageRecord, record_id)
    key_name = explorer.key_names(current_user.tenant_id).get(record.api_key_id) if record.api_key_id else None
    return render_template(
        "web/log_detail.html",
        record=record,
        key_name=key_name,
        event_id=logs.event_id(record),
        status_class=logs.status_class,
        back_url=request.referrer if _from_logs(request.referrer) else url_for("web.logs"),
    )


def _from_logs(referrer: str | None) -> bool:
    """A link back to the list the record was opened from (same site only)."""
    if not referrer:
        return False
    base = request.host_url.rstrip("/") + url_for("web.logs")
    return referrer == base or referrer.startswith(base + "?")
