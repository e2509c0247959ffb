"""Forms of the costs and billing pages: the costs filter, a budget, a plan change."""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, HiddenField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from ..costs.budgets import DEFAULT_PERCENTAGES, MAX_AMOUNT
from ..costs.overview import GROUPS, MAX_DAYS, month_bounds
from .filters import FIRST_DAY, LAST_DAY, DayField

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_PERCENTAGES = 10
SCOPES = (
    SelectChoice("account", "The whole account"),
    SelectChoice("service", "One outside service"),
    SelectChoice("key", "One API key"),
    SelectChoice("end_user", "One end user"),
)


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


def month_label(first: date) -> str:
    return f"{first:%B %Y}"


def _in_calendar(year: int, month: int) -> bool:
    return FIRST_DAY.year <= year <= LAST_DAY.year and 1 <= month <= 12


class CostFilterForm(FlaskForm):
    """The costs page's filter, read from the URL: a month, or a range of days."""

    class Meta:
        csrf = False

    month = SelectField("Month", validate_choice=False, default="")
    start = DayField("From (UTC)", validators=[Optional()])
    end = DayField("To (UTC)", validators=[Optional()])
    group = HiddenField(default="service")

    def __init__(self, today: date, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.today = today
        first = today.replace(day=1)
        months = []
        for _ in range(13):
            months.append((f"{first:%Y-%m}", month_label(first)))
            first = (first - timedelta(days=1)).replace(day=1)
        chosen = self.month.data
        match = _MONTH.fullmatch(chosen or "")
        if match and chosen not in dict(months) and _in_calendar(int(match.group(1)), int(match.group(2))):
            months.append((chosen, month_label(date(int(match.group(1)), int(match.group(2)), 1))))
        self.month.choices = [SelectChoice(value, label) for value, label in [*months, ("", "Custom dates")]]
        if not any(field.raw_data and field.raw_data[0] for field in (self.month, self.start, self.end)):
            self.month.data = months[0][0]  # nothing chosen: this month

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        if self.month.data and not self.month.errors:
            # A month chosen: the dates are not used, whatever they hold.
            self.start.errors, self.end.errors = [], []
            valid = not self.errors
        return valid

    def validate_month(self, field: SelectField) -> None:
        if not field.data:
            return
        match = _MONTH.fullmatch(field.data)
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise ValidationError("Choose a month from the list (YYYY-MM).")
        if not _in_calendar(int(match.group(1)), int(match.group(2))):
            raise ValidationError(f"Choose a month from {FIRST_DAY:%Y-%m} to {LAST_DAY:%Y-%m}.")

    def validate_group(self, field: HiddenField) -> None:
        if field.data not in dict(GROUPS):
            field.data = "service"

    def validate_end(self, field: DateField) -> None:
        if self.month.data or field.data is None or self.start.data is None:
            return
        if field.data < self.start.data:
            raise ValidationError("The end date is before the start date.")
        if (field.data - self.start.data).days + 1 > MAX_DAYS:
            raise ValidationError(f"Choose at most {MAX_DAYS} days.")

    def days(self) -> tuple[date, date]:
        """The days the filter chose (both included); the current month when it chose none."""
        if self.month.data and not self.month.errors:
            year, month = map(int, _MONTH.fullmatch(self.month.data).groups())
            return month_bounds(year, month)
        start, end = self.start.data, self.end.data
        if self.errors or (start is None and end is None):
            return month_bounds(self.today.year, self.today.month)
        if start is None:
            start = end.replace(day=1)
        if end is None:
            end = max(start, self.today)
        if (end - start).days + 1 > MAX_DAYS:
            end = start
        return start, end

    @property
    def group_by(self) -> str:
        return self.group.data if self.group.data in dict(GROUPS) else "service"


def parse_amount(text: str | None) -> Decimal:
    """Dollars and cents as typed (``$1,250.50`` too), or ValidationError saying what is wrong."""
    cleaned = (text or "").strip().replace(",", "").removeprefix("$").strip()
    if not cleaned:
        raise ValidationError("Enter the monthly amount in dollars.")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise ValidationError("Enter an amount in dollars, like 250 or 99.50.") from None
    if not amount.is_finite():
        raise ValidationError("Enter an amount in dollars, like 250 or 99.50.")
    if amount <= 0:
        raise ValidationError("The amount must be more than $0.")
    if amount > MAX_AMOUNT:
        raise ValidationError(f"The amount must be at most ${MAX_AMOUNT:,}.")
    if amount != amount.quantize(Decimal("0.01")):
        raise ValidationError("Use dollars and cents: at most two decimal places.")
    return amount.quantize(Decimal("0.01"))


def parse_percentages(text: str | None) -> list[int]:
    """Warning percentages as typed (``50, 80, 100``), or ValidationError."""
    parts = [part for part in re.split(r"[\s,;]+", (text or "").strip()) if part]
    if not parts:
        raise ValidationError("Give at least one warning percentage, like 50, 80, 100.")
    values = []
    for part in parts:
        number = part.removesuffix("%")
        if not re.fullmatch(r"[0-9]{1,9}", number):
            raise ValidationError(f"“{part}” is not a whole number: give percentages like 50, 80, 100.")
        value = int(number)
        if not 1 <= value <= 1000:
            raise ValidationError(f"Each warning percentage must be from 1 to 1000 (got {value}).")
        values.append(value)
    values = sorted(set(values))
    if len(values) > MAX_PERCENTAGES:
        raise ValidationError(f"Give at most {MAX_PERCENTAGES} warning percentages.")
    return values


class BudgetForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[DataRequired("Give the budget a name."), Length(max=120)])
    amount = StringField("Monthly amount (USD)", filters=[_strip])
    warning_percentages = StringField(
        "Warn at (% of the amount)", filters=[_strip], default=", ".join(map(str, DEFAULT_PERCENTAGES))
    )
    scope = SelectField("Applies to", choices=SCOPES, default="account")
    service = StringField("Service", filters=[_strip, lambda v: v.lower() if isinstance(v, str) else v])
    api_key_id = SelectField("API key", coerce=lambda v: int(v) if v not in (None, "") else None, validate_choice=False)
    end_user = StringField("End user", filters=[_strip], validators=[Length(max=120)])
    hard_stop = BooleanField("Hard stop: refuse outside-service calls once the amount is spent")

    def __init__(self, keys=(), *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.api_key_id.choices = [SelectChoice("", "Choose a key")] + [
            SelectChoice(key.id, key.name + (" (revoked)" if key.revoked_at else "")) for key in keys
        ]
        self._key_ids = {key.id for key in keys}

    def validate_amount(self, field: StringField) -> None:
        self.monthly_amount = parse_amount(field.data)

    def validate_warning_percentages(self, field: StringField) -> None:
        self.percentages = parse_percentages(field.data)

    def validate_service(self, field: StringField) -> None:
        if self.scope.data != "service":
            return
        if not field.data:
            raise ValidationError("Name the service, e.g. openai.")
        if len(field.data) > 64 or not _SERVICE.fullmatch(field.data):
            raise ValidationError("A service name is letters, digits, dots, dashes or underscores (at most 64).")

    def validate_api_key_id(self, field: SelectField) -> None:
        if self.scope.data != "key":
            return
        if field.data is None:
            raise ValidationError("Choose the API key the budget covers.")
        if field.data not in self._key_ids:
            raise ValidationError("Choose one of your API keys.")

    def validate_end_user(self, field: StringField) -> None:
        if self.scope.data == "end_user" and not field.data:
            raise ValidationError("Give the end user id, as your calls report it.")

    def budget_fields(self) -> dict:
        """The validated form as budget fields (one scope at most)."""
        scope = self.scope.data
        return {
            "name": self.name.data,
            "amount": self.monthly_amount,
            "warning_percentages": self.percentages,
            "hard_stop": bool(self.hard_stop.data),
            "service": self.service.data if scope == "service" else None,
            "api_key_id": self.api_key_id.data if scope == "key" else None,
            "end_user": self.end_user.data if scope == "end_user" else None,
        }

    def fill_from(self, budget) -> None:
        """Show a stored budget in the form (for its edit page)."""
        self.name.data = budget.name
        self.amount.data = f"{budget.monthly_amount:.2f}"
        self.warning_percentages.data = ", ".join(str(p) for p in budget.warning_percentages)
        self.hard_stop.data = budget.hard_stop
        self.scope.data = (
            "service"
            if budget.service
            else "key"
            if budget.api_key_id
            else "end_user"
            if budget.end_user
            else "account"
        )
        self.service.data = budget.service or ""
        self.api_key_id.data = budget.api_key_id
        self.end_user.data = budget.end_user or ""


class PlanChangeForm(FlaskForm):
    plan = HiddenField("Plan", validators=[DataRequired("Choose a plan.")])

    def __init__(self, codes=(), *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._codes = set(codes)

    def validate_plan(self, field: HiddenField) -> None:
        if field.data not in self._codes:
            raise ValidationError("There is no such plan.")
