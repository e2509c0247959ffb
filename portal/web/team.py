"""Portal pages: the team and its audit trail."""

from __future__ import annotations

from flask import render_template
from flask_login import login_required

from ..extensions import db
from ..models import AuditEvent
from . import bp
from .tenancy import owned


@bp.route("/activity")
@login_required
def activity():
    events = db.session.scalars(owned(AuditEvent).order_by(AuditEvent.created_at.desc()).limit(100)).all()
    return render_template("web/activity.html", events=events)
