"""Two-factor sign-in: a TOTP authenticator (RFC 6238, ``pyotp``), ten single-use recovery codes
and remembered devices.

Setting it up draws a new secret, shown as a QR code (inline SVG drawn by ``segno``) and as text;
it is stored only once the user confirms it with a code from the app. A code is accepted in the
30-second step it belongs to and one step either side (clocks drift), and never twice: the step
of the last code accepted is kept, and a code of that step or an earlier one is refused.

Recovery codes are 10 random base32 characters (50 bits), of which only a sha256 is stored; each
signs in once. A remembered device is a random token in a cookie (only its hash kept) that skips
the second factor after the password for 30 days at most; a new password, signing out
everywhere, turning two-factor off or an owner resetting it forgets every one of them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import segno
from markupsafe import Markup
from sqlalchemy import delete, func, select, update

from ..extensions import db
from ..kernel.audit import record_event
from ..models import RecoveryCode, TrustedDevice, User

RECOVERY_CODES = 10
DEVICE_LIFETIME = timedelta(days=30)
# The time steps either side of now whose codes still count (the phone's clock may drift).
VALID_WINDOW = 1
CODE_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: read off paper, typed by hand
CODE_LENGTH = 10
REQUIRED_ROLES = frozenset({"owner", "admin"})


class TwoFactorError(ValueError):
    """A code refused; the message says why."""


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _audit(action: str, user: User, ip: str | None, now: datetime, **details: object) -> None:
    record_event(action, user.tenant_id, user.id, ip, **details).created_at = now


# -- the authenticator ------------------------------------------------------------------------------


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(user: User, secret: str, issuer: str) -> str:
    """The ``otpauth://`` link an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer)


def qr_svg(uri: str) -> Markup:
    """The QR code of ``uri`` as an inline ``<svg>`` (no script, no style attribute). Screen
    readers skip it: the secret shown as text beside it says the same."""
    code = segno.make(uri, error="m")
    svg = code.svg_inline(scale=4, border=4, dark="#111", light="#fff", svgclass="totp-qr")
    # segno writes only path data (the URI is encoded in modules, never written as text).
    hidden = svg.replace("<svg ", '<svg aria-hidden="true" focusable="false" ', 1)
    return Markup(hidden)  # noqa: S704


def spaced(secret: str) -> str:
    """The secret in groups of four, for typing it into an app by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _digits(code: str) -> str:
    return "".join(ch for ch in code if not ch.isspace())


def matching_step(secret: str, code: str, now: datetime, after_step: int | None = None) -> int | None:
    """The time step whose code ``code`` is (now's, or one either side), or None; a step at or
    before ``after_step`` (the last code accepted) does not count."""
    code = _digits(code)
    if len(code) != 6 or not (code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        if after_step is not None and step <= after_step:
            continue
        if secrets.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def enable(user: User, secret: str, code: str, now: datetime, ip: str | None) -> list[str]:
    """Turn two-factor on with ``secret`` once ``code`` proves the app has it; returns the new
    recovery codes (shown once). The caller commits."""
    step = matching_step(secret, code, now)
    if step is None:
        raise TwoFactorError("That code does not match: check the app's clock and type the 6 digits it shows now.")
    user.totp_secret = secret
    user.totp_enabled_at = now
    user.totp_last_step = step
    codes = _new_recovery_codes(user, now)
    _audit("two_factor.enabled", user, ip, now)
    return codes


def turn_off(user: User, now: datetime, ip: str | None, by: User | None = None) -> None:
    """Turn two-factor off: the secret, the recovery codes and the remembered devices go. ``by``:
    the owner who reset it for ``user`` (audited as theirs). The caller commits."""
    user.totp_secret = None
    user.totp_enabled_at = None
    user.totp_last_step = None
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    forget_devices(user.id)
    if by is None:
        _audit("two_factor.disabled", user, ip, now)
    else:
        record_event(
            "two_factor.reset", by.tenant_id, by.id, ip, member_id=user.id, member_email=user.email
        ).created_at = now


def must_set_up(user: User) -> bool:
    """An owner or admin of a tenant that requires two-factor, who has none yet."""
    return user.tenant.require_two_factor and user.role in REQUIRED_ROLES and not user.has_two_factor


# -- recovery codes ---------------------------------------------------------------------------------


def _normalise(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def _new_recovery_codes(user: User, now: datetime) -> list[str]:
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        db.session.add(RecoveryCode(tenant_id=user.tenant_id, user_id=user.id, code_hash=_hash(raw), created_at=now))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def renew_recovery_codes(user: User, now: datetime, ip: str | None) -> list[str]:
    """Ten new codes; the old ones stop working. The caller commits."""
    codes = _new_recovery_codes(user, now)
    _audit("two_factor.codes_renewed", user, ip, now)
    return codes


def recovery_codes_left(user: User) -> int:
    return db.session.scalar(
        select(func.count()).where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
    )


# -- the second step of signing in ------------------------------------------------------------------


@dataclass(frozen=True)
class SecondFactor:
    method: str  # "authenticator" or "recovery code"
    codes_left: int | None = None  # recovery codes still unused, after one was


def check_second_factor(user: User, code: str, now: datetime, ip: str | None) -> SecondFactor | None:
    """Accept an authenticator code or an unused recovery code of ``user`` (using it up), or None.
    The caller commits."""
    if not user.has_two_factor:
        return None
    step = matching_step(user.totp_secret, code, now, after_step=user.totp_last_step)
    if step is not None:
        # Conditional, so that two requests racing with one code cannot both pass.
        claimed = db.session.execute(
            update(User)
            .where(User.id == user.id, (User.totp_last_step.is_(None)) | (User.totp_last_step < step))
            .values(totp_last_step=step)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed:
            user.totp_last_step = step
            return SecondFactor("authenticator")
        return None
    normalised = _normalise(code)
    if len(normalised) != CODE_LENGTH:
        return None
    used = db.session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == _hash(normalised),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not used:
        return None
    left = recovery_codes_left(user)
    _audit("two_factor.recovery_used", user, ip, now, codes_left=left)
    return SecondFactor("recovery code", left)


# -- remembered devices -----------------------------------------------------------------------------


def remember_device(user: User, browser: str, now: datetime) -> str:
    """A new remembered device for ``user``; returns the token its cookie carries. Expired
    devices of the user go. The caller commits."""
    db.session.execute(delete(TrustedDevice).where(TrustedDevice.user_id == user.id, TrustedDevice.expires_at <= now))
    token = secrets.token_urlsafe(32)
    db.session.add(
        TrustedDevice(
            tenant_id=user.tenant_id,
            user_id=user.id,
            token_hash=_hash(token),
            browser=browser[:200],
            created_at=now,
            expires_at=now + DEVICE_LIFETIME,
        )
    )
    return token


def device_remembered(user: User, token: str | None, now: datetime) -> bool:
    """True when ``token`` is a live remembered device of ``user``."""
    if not token or len(token) > 100:
        return False
    device = db.session.scalar(
        select(TrustedDevice).where(
            TrustedDevice.user_id == user.id,
            TrustedDevice.token_hash == _hash(token),
            TrustedDevice.expires_at > now,
        )
    )
    if device is None:
        return False
    device.last_used_at = now
    return True


def remembered_devices(user: User, now: datetime) -> list[TrustedDevice]:
    return list(
        db.session.scalars(
            select(TrustedDevice)
            .where(TrustedDevice.user_id == user.id, TrustedDevice.expires_at > now)
            .order_by(TrustedDevice.created_at.desc())
        )
    )


def forget_all_devices(user: User, now: datetime, ip: str | None) -> int:
    """The user forgets every remembered device of theirs (audited); returns how many."""
    forgotten = forget_devices(user.id)
    _audit("two_factor.devices_forgotten", user, ip, now, devices=forgotten)
    return forgotten


def forget_devices(user_id: int) -> int:
    """Forget every remembered device of a user; returns how many."""
    return db.session.execute(delete(TrustedDevice).where(TrustedDevice.user_id == user_id)).rowcount
