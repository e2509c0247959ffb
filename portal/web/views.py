from __future__ import annotations

from flask import current_app, redirect, render_template, url_for
from flask_login import current_user, login_required

from ..analytics import charts
from ..analytics import dashboard as figures
from ..kernel import clock
from ..redis_store import get_redis
from . import bp


@bp.route("/")
def index():
    if current_user.is_authenticated:
        return redirect(url_for("web.dashboard"))
    return redirect(url_for("auth.login"))


@bp.route("/health")
def health():
    return {"status": "ok"}


@bp.route("/dashboard")
@login_required
def dashboard():
    now = clock.now()
    board = figures.build(get_redis(), current_user.tenant_id, now)
    views = current_app.view_functions
    return render_template(
        "web/dashboard.html",
        tenant=current_user.tenant,
        board=board,
        bars=charts.daily_bars(board.days),
        quota_countdown=figures.countdown_text(board.period_end, now),
        alerts_url=url_for("web.alerts") if "web.alerts" in views else "/alerts",
        billing_url=url_for("web.billing") if "web.billing" in views else None,
        key_url=(lambda key_id: url_for("web.key_detail", key_id=key_id)) if "web.key_detail" in views else None,
    )
