"""Portal forms."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from ..models import utcnow
from .once import new_submission_token


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


def first_expiry_date() -> date:
    """The earliest date a new key may expire on: tomorrow (UTC)."""
    return utcnow().date() + timedelta(days=1)


class ApiKeyForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[DataRequired(), Length(max=120)])
    description = TextAreaField("Description", filters=[_strip], validators=[Optional(), Length(max=500)])
    expires_on = DateField("Expires on (UTC)", validators=[Optional()])
    scope = SelectField(
        "Scope",
        choices=[
            SelectChoice("usage", "usage: call, report, read"),
            SelectChoice("admin", "admin: also change budgets, limits, settings"),
        ],
        default="usage",
    )
    # Lets a reload or a double click of the form make one key, not two (see portal.web.once).
    submission = HiddenField(default=new_submission_token)

    def validate_expires_on(self, field: DateField) -> None:
        if field.data is not None and field.data < first_expiry_date():
            raise ValidationError("Choose a date in the future.")

    @property
    def expires_at(self) -> datetime | None:
        """The key stops working at the start (00:00 UTC) of the chosen day."""
        day = self.expires_on.data
        return None if day is None else datetime.combine(day, time.min, tzinfo=UTC)
