"""Forms of the team pages: inviting, changing a role, accepting an invitation, and the audit
page's filters (a GET form: its state lives in the URL)."""

from __future__ import annotations

from datetime import UTC, datetime, time

from flask_wtf import FlaskForm
from wtforms import DateField, EmailField, Form, HiddenField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, Optional, ValidationError

from ..models.audit import ACTIONS
from ..models.tenancy import ROLES
from ..tenancy.members import AuditFilter
from ..tenancy.passwords import MIN_LENGTH, password_problem
from .filters import DayField
from .once import new_submission_token

# What each role may do, as the team page and the invitation say it; portal.web.roles enforces it.
ROLE_LABELS = {
    "owner": "Owner: everything, including the plan and who is an owner",
    "admin": "Admin: change keys, settings and the team, but not the plan",
    "member": "Member: read everything, change nothing",
}

# Short enough for a phone's select.
ROLE_CHOICES = {
    "owner": "Owner (everything, the plan too)",
    "admin": "Admin (makes changes, not the plan)",
    "member": "Member (reads only)",
}


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


class InviteForm(FlaskForm):
    email = EmailField("E-mail address", filters=[_strip], validators=[DataRequired(), Length(max=254)])
    role = SelectField("Role", default="member")
    # A reload or a double click makes one invitation, not two (see portal.web.once).
    submission = HiddenField(default=new_submission_token)

    def __init__(self, roles: tuple[str, ...], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.role.choices = [SelectChoice(role, ROLE_CHOICES[role]) for role in roles]


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=[SelectChoice(role, role) for role in ROLES])


class AcceptInviteForm(FlaskForm):
    name = StringField("Your name", filters=[_strip], validators=[DataRequired(), Length(max=120)])
    password = PasswordField(
        "Choose a password",
        validators=[DataRequired()],
        description=f"At least {MIN_LENGTH} characters, not easy to guess: a few unrelated words make a good one.",
    )
    confirm = PasswordField(
        "Repeat the password", validators=[DataRequired(), EqualTo("password", message="The two passwords differ.")]
    )

    def validate_password(self, field: PasswordField) -> None:
        # The policy hash_password enforces, checked here too so it shows beside the other errors
        # (accept_invite judges it again against the invited address and the tenant's name).
        problem = password_problem(field.data or "", [self.name.data or ""])
        if problem is not None:
            raise ValidationError(problem)


def action_choices() -> list[SelectChoice]:
    """Any action, each family of actions (``invite.*``) and each action, in that order."""
    families = sorted({action.split(".", 1)[0] for action in ACTIONS})
    choices = [SelectChoice("", "Any action")]
    for family in families:
        choices.append(SelectChoice(f"{family}.*", f"{family}: any"))
        choices.extend(SelectChoice(action, action) for action in sorted(ACTIONS) if action.split(".", 1)[0] == family)
    return choices


class AuditFilterForm(Form):
    """Read from the query string; no CSRF (it changes nothing)."""

    action = SelectField("Action", default="")
    user = SelectField("User", default="")
    since = DayField("From (UTC)", validators=[Optional()])
    until = DayField("To (UTC)", validators=[Optional()])

    def __init__(self, formdata, users, *args, **kwargs) -> None:
        super().__init__(formdata, *args, **kwargs)
        self.action.choices = action_choices()
        self.user.choices = [SelectChoice("", "Anyone")] + [
            SelectChoice(str(user.id), user.email + ("" if user.is_enabled else " (removed)")) for user in users
        ]

    def validate_until(self, field: DateField) -> None:
        if field.data and self.since.data and field.data < self.since.data:
            raise ValidationError("Choose a day on or after the first day.")

    @property
    def active(self) -> bool:
        return bool(self.action.data or self.user.data or self.since.data or self.until.data)

    def audit_filter(self) -> AuditFilter:
        def start(day):
            return None if day is None else datetime.combine(day, time.min, tzinfo=UTC)

        return AuditFilter(
            action=self.action.data or None,
            user_id=int(self.user.data) if self.user.data else None,
            since=start(self.since.data),
            until=start(self.until.data),
        )

    def query_args(self) -> dict[str, str]:
        """The filter as URL arguments (for the export and the page links)."""
        args = {"action": self.action.data, "user": self.user.data}
        args["since"] = self.since.data.isoformat() if self.since.data else ""
        args["until"] = self.until.data.isoformat() if self.until.data else ""
        return {name: value for name, value in args.items() if value}
