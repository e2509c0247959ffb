from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, Length


class LoginForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    remember = BooleanField("Keep me signed in on this device")
    next = HiddenField()


class ForgotPasswordForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Email(), Length(max=254)])


class ResetPasswordForm(FlaskForm):
    new_password = PasswordField("New password", validators=[DataRequired(), Length(max=1000)])
    confirm = PasswordField(
        "New password again", validators=[DataRequired(), EqualTo("new_password", "The two passwords differ.")]
    )


class NameForm(FlaskForm):
    name = StringField("Name", validators=[Length(max=120)])


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired(), Length(max=1000)])
    new_password = PasswordField("New password", validators=[DataRequired(), Length(max=1000)])
    confirm = PasswordField(
        "New password again", validators=[DataRequired(), EqualTo("new_password", "The two passwords differ.")]
    )


class ChangeEmailForm(FlaskForm):
    new_email = EmailField("New e-mail", validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField("Current password", validators=[DataRequired(), Length(max=1000)])


class ConfirmForm(FlaskForm):
    """A button that carries only the CSRF token."""


class TwoFactorForm(FlaskForm):
    """The second step of signing in: a code from the app, or a recovery code."""

    code = StringField("Code", validators=[DataRequired(), Length(max=32)])
    remember_device = BooleanField("Remember this device for 30 days")


class EnableTwoFactorForm(FlaskForm):
    code = StringField("Code from the app", validators=[DataRequired(), Length(max=32)])


class PasswordCheckForm(FlaskForm):
    """A change to two-factor that asks for the current password first."""

    password = PasswordField("Current password", validators=[DataRequired(), Length(max=1000)])
