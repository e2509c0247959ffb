"""The usage explorer: figures per interval over a date range, filtered, compared with the period
before, with the peak hours; and the same figures as CSV and JSON.

The filters live in the URL (one GET form); an export takes the page's query string, so it holds
exactly what the page shows.
"""

from __future__ import annotations

import json
from datetime import date, timedelta

from flask import Response, render_template, request, url_for
from flask_login import current_user, login_required
from wtforms import Form, SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional, ValidationError

from ..analytics import explorer as domain
from ..kernel.clock import now
from ..kernel.periods import day_bounds
from . import bp
from .filters import DayField, query_args, query_id

DEFAULT_DAYS = 30
INTERVAL_CHOICES = [SelectChoice(i, i.capitalize()) for i in domain.INTERVALS]
DATE_MESSAGE = "Enter a date as YYYY-MM-DD, e.g. 2026-11-18."
# Chart axis: a label every this many bars.
LABEL_EVERY = {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 1}


class ExplorerForm(Form):
    """The explorer's filters, read from the query string."""

    start = DayField("From (UTC)", validators=[Optional()], invalid_value_message=DATE_MESSAGE)
    end = DayField("To (UTC)", validators=[Optional()], invalid_value_message=DATE_MESSAGE)
    interval = SelectField(
        "Interval",
        choices=INTERVAL_CHOICES,
        default="daily",
        invalid_choice_message="Choose hourly, daily, weekly or monthly.",
    )
    category = SelectField("Category", choices=[], validate_choice=False)
    service = SelectField("Service", choices=[], validate_choice=False)
    key = SelectField("API key", choices=[], validate_choice=False)
    endpoint = SelectField("Endpoint", choices=[], validate_choice=False)
    end_user = SelectField("End user", choices=[], validate_choice=False)

    def __init__(self, formdata, today: date) -> None:
        super().__init__(formdata)
        self.today = today

    def days(self) -> tuple[date, date]:
        """The range asked for, with the API's defaults: up to today, 30 days long."""
        end = self.end.data or self.today
        return self.start.data or end - timedelta(days=DEFAULT_DAYS - 1), end

    def validate_key(self, field: SelectField) -> None:
        if field.data and query_id(field.data) is None:
            raise ValidationError("Choose a key from the list.")

    def validate(self, extra_validators=None) -> bool:
        if not super().validate(extra_validators):
            return False
        start, end = self.days()
        if end < start:
            self.end.errors.append("The end date is before the start date.")
            return False
        length = (end - start).days + 1
        if length > domain.MAX_DAYS:
            self.end.errors.append(f"Choose at most {domain.MAX_DAYS} days; this range has {length:,}.")
            return False
        if self.interval.data == "hourly" and length > domain.MAX_HOURLY_DAYS:
            self.interval.errors.append(
                f"Hourly figures cover at most {domain.MAX_HOURLY_DAYS} days; this range has {length:,}. "
                "Choose a shorter range or a daily interval."
            )
            return False
        return True

    def filters(self) -> domain.Filters:
        return domain.Filters(
            category=self.category.data or None,
            service=self.service.data or None,
            api_key_id=int(self.key.data) if self.key.data else None,
            endpoint=self.endpoint.data or None,
            end_user=self.end_user.data or None,
        )

    def offer(self, choices: domain.Choices) -> None:
        """Fill the filters' options (a value asked for is offered even without calls)."""
        offer(self.category, "All categories", [(v, v) for v in choices.categories])
        offer(self.service, "All services", [(v, v) for v in choices.services])
        offer(self.key, "All keys", [(str(key_id), name) for key_id, name in choices.keys])
        offer(self.endpoint, "All endpoints", [(v, v) for v in choices.endpoints])
        offer(self.end_user, "All end users", [(v, v) for v in choices.end_users])

    def show_days(self, start: date, end: date) -> None:
        """Write the range used back into the date fields (the defaults too)."""
        for field, value in ((self.start, start), (self.end, end)):
            if not field.errors:
                field.data, field.raw_data = value, None


def offer(field: SelectField, everything: str, pairs: list[tuple[str, str]]) -> None:
    """A select's options: "everything", then the values (and the one asked for, if it is not among them)."""
    if field.data and field.data not in {value for value, _ in pairs}:
        pairs = [*pairs, (field.data, field.data)]
    field.choices = [SelectChoice("", everything), *(SelectChoice(value, label) for value, label in pairs)]


def _form() -> ExplorerForm:
    return ExplorerForm(query_args(), today=now().date())


def _first_error(form: ExplorerForm) -> str:
    return next(f"{form[name].label.text}: {errors[0]}" for name, errors in form.errors.items())


def period_name(at, interval: str) -> str:
    if interval == "hourly":
        return f"{at:%a %b %-d %H}:00–{at.hour + 1:02d}:00"
    if interval == "daily":
        return f"{at:%a %b %-d, %Y}"
    if interval == "weekly":
        return f"Week of {at:%b %-d, %Y}"
    return f"{at:%B %Y}"


def _bars(report: domain.Report) -> list[tuple[str, int, str]]:
    bars = []
    for point in report.series:
        at, f = point.start, point.figures
        if report.interval == "hourly":
            # No colon in the tooltip: the chart's table then names the bar by its label.
            label, name = f"{at:%b %-d} {at:%H}h", f"{at:%a %b %-d} {at:%H}h UTC —"
        elif report.interval == "daily":
            label, name = f"{at:%b %-d}", f"{at:%a %b %-d}:"
        elif report.interval == "weekly":
            label, name = f"{at:%b %-d}", f"Week of {at:%b %-d}:"
        else:
            label, name = f"{at:%b %Y}", f"{at:%B %Y}:"
        bars.append((label, f.calls, f"{name} {f.calls:,} calls, {f.errors:,} errors"))
    return bars


@bp.get("/usage")
@login_required
def explorer():
    form = _form()
    valid = form.validate()
    tenant_id = current_user.tenant_id
    start, end = form.days() if valid else (form.today - timedelta(days=DEFAULT_DAYS - 1), form.today)
    begin, finish = day_bounds(start, end)
    form.offer(domain.filter_choices(tenant_id, begin, finish))
    report = domain.explore(tenant_id, start, end, form.interval.data, form.filters()) if valid else None
    if valid:
        form.show_days(start, end)
    query = request.query_string.decode()
    page = render_template(
        "web/explorer.html",
        form=form,
        report=report,
        figures=domain.FIGURES,
        bars=_bars(report) if report else [],
        label_every=LABEL_EVERY.get(form.interval.data, 7),
        period_name=period_name,
        weekdays=domain.WEEKDAYS,
        hourly_days=domain.retention_days(tenant_id) if report else None,
        csv_url=url_for("web.explorer_export_csv") + (f"?{query}" if query else ""),
        json_url=url_for("web.explorer_export_json") + (f"?{query}" if query else ""),
    )
    return page, 200 if valid else 400


def _export_name(report: domain.Report, extension: str) -> str:
    return f"usage-{report.start.isoformat()}-to-{report.end.isoformat()}-{report.interval}.{extension}"


def _export(render, mimetype: str, extension: str) -> Response:
    form = _form()
    if not form.validate():
        body = json.dumps({"detail": _first_error(form)}) if extension == "json" else _first_error(form) + "\n"
        return Response(body, status=400, mimetype="application/json" if extension == "json" else "text/plain")
    start, end = form.days()
    report = domain.explore(current_user.tenant_id, start, end, form.interval.data, form.filters())
    return Response(
        render(report),
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{_export_name(report, extension)}"'},
    )


@bp.get("/usage/export.csv")
@login_required
def explorer_export_csv():
    return _export(domain.report_csv, "text/csv", "csv")


@bp.get("/usage/export.json")
@login_required
def explorer_export_json():
    return _export(lambda report: json.dumps(domain.report_json(report), indent=2), "application/json", "json")
