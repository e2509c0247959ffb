from __future__ import annotations

from datetime import timedelta

from flask import redirect, render_template, url_for
from flask_login import current_user, login_required

from ..analytics import charts
from ..analytics.totals import calls_per_day
from ..analytics.totals import totals as usage_totals
from ..billing.plans import billing_period
from ..models import utcnow
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
    tenant = current_user.tenant
    subscription = tenant.subscription
    plan = subscription.plan
    now = utcnow()
    start, end = billing_period(now)
    api = usage_totals(tenant.id, start, end, source="api")
    # Refused calls (429) are metered but use no quota.
    used = api.calls - api.rate_limited
    everything = usage_totals(tenant.id, start, end)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    chart_start = today - timedelta(days=29)
    days = calls_per_day(tenant.id, chart_start, today + timedelta(days=1), source="api")
    quota = plan.monthly_quota
    return render_template(
        "web/dashboard.html",
        tenant=tenant,
        subscription=subscription,
        plan=plan,
        period_start=start,
        period_end=end,
        period_last_day=end - timedelta(days=1),
        api=api,
        everything=everything,
        quota=quota,
        quota_used=used,
        quota_remaining=None if quota is None else max(quota - used, 0),
        quota_fraction=None if not quota else min(used / quota, 1.0),
        bars=charts.daily_bars(days),
    )
