"""Portal forms."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from ..models import utcnow
from ..tenancy.key_search import PAGE_SIZES, STATES, KeyQuery
from .once import new_submission_token
from .tenancy import DEFAULT_ID_LIMIT


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


PAGE_LINK_MESSAGE = "That page link is not valid. Start again from the first page."


class KeyFilterForm(FlaskForm):
    """The keys page's GET form: its state lives in the URL."""

    class Meta:
        csrf = False

    q = StringField("Search", filters=[_strip], validators=[Optional(), Length(max=120)])
    state = SelectField(
        "State", choices=[SelectChoice("", "any state")] + [SelectChoice(s, s) for s in STATES], default=""
    )
    scope = SelectField(
        "Scope",
        choices=[SelectChoice("", "any scope"), SelectChoice("usage", "usage"), SelectChoice("admin", "admin")],
        default="",
    )
    per_page = SelectField(
        "Per page", choices=[SelectChoice(str(n), str(n)) for n in PAGE_SIZES], default="50", coerce=str
    )
    # A page link's place: a key's id, within its column.
    before = IntegerField(validators=[Optional(), NumberRange(min=1, max=DEFAULT_ID_LIMIT, message=PAGE_LINK_MESSAGE)])
    after = IntegerField(validators=[Optional(), NumberRange(min=1, max=DEFAULT_ID_LIMIT, message=PAGE_LINK_MESSAGE)])

    def query(self) -> KeyQuery:
        return KeyQuery(
            text=self.q.data or "",
            state=self.state.data or "",
            scope=self.scope.data or "",
            per_page=int(self.per_page.data or 50),
            before=self.before.data,
            after=self.after.data if self.before.data is None else None,
        )
