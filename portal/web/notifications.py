"""Portal pages: where alerts are told — the notification channels with a test send and the log of
their deliveries, and each user's in-portal notifications.

A test send goes through the outbox like an alert's notice: the deliver-notifications job sends
it within seconds, and its outcome shows in the delivery log. A webhook's signing secret is shown
once, in the response that made the channel; it never goes into the session, a flash or a URL.
"""

from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import update

from ..extensions import db
from ..kernel.clock import now
from ..models import Notification, NotificationChannel, NotificationDelivery
from ..notify import channels as channel_domain
from ..notify.deliver import channel_test_event
from ..notify.outbox import enqueue_delivery, record_test_send
from . import bp
from .alert_forms import ChannelForm, DeliveryFilterForm, filter_form, has_errors, show_error
from .alerts import MAX_ID, owned_or_404, who
from .filters import query_id
from .nav import unread_notifications
from .once import first_submission, new_submission_token
from .roles import admin_required, can_change
from .tenancy import owned

DELIVERY_LOG = 50  # deliveries listed, newest first
INBOX_PAGE = 50  # notifications a page


# -- channels and their deliveries -------------------------------------------------------------------
def _channels_page(form: ChannelForm | None = None, status: int = 200, created=None, secret: str | None = None):
    tenant_id = current_user.tenant_id
    channels = channel_domain.list_channels(tenant_id)
    filters = filter_form(
        DeliveryFilterForm, request.args, channel=[(str(c.id), f"{c.name} ({c.kind})") for c in channels]
    )
    chosen = filters.params()
    d = NotificationDelivery
    query = owned(d)
    if chosen.get("status"):
        query = query.where(d.status == chosen["status"])
    if chosen.get("channel"):
        query = query.where(d.channel_id == int(chosen["channel"]))
    deliveries = db.session.scalars(query.order_by(d.created_at.desc(), d.id.desc()).limit(DELIVERY_LOG)).all()
    page = render_template(
        "web/alert_channels.html",
        channels=channels,
        by_id={c.id: c for c in channels},
        shown_target=lambda channel: channel_domain.shown_target(channel, full=can_change()),
        secret_hint=channel_domain.secret_hint,
        deliveries=deliveries,
        filters=filters,
        log_size=DELIVERY_LOG,
        form=form or ChannelForm(formdata=None),
        can_manage=can_change(),
        max_channels=channel_domain.MAX_CHANNELS,
        created=created,
        secret=secret,
    )
    response = make_response(page, 400 if status == 200 and filters.errors else status)
    if secret is not None:
        # The page holds a secret: no browser or proxy may keep a copy.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/alerts/channels")
@login_required
def alerts_channels():
    return _channels_page()


@bp.post("/alerts/channels")
@admin_required
def alerts_channel_create():
    form = ChannelForm()
    fields = form.checked()
    if fields is not None:
        first = first_submission()
        if first is None:
            form.form_errors.append("This form has expired. Please send it again.")
        elif not first:
            flash("That form was already sent, and its channel was added then.", "info")
            return redirect(url_for("web.alerts_channels"))
    if fields is not None and not has_errors(form):
        try:
            channel, secret = channel_domain.create_channel(
                current_user.tenant_id,
                fields["kind"],
                fields["target"],
                name=fields["name"],
                secret=fields["secret"],
                min_severity=fields["min_severity"],
                **who(),
            )
        except channel_domain.ChannelError as error:
            db.session.rollback()
            show_error(form, str(error))
    if fields is None or has_errors(form):
        form.submission.data = new_submission_token()
        return _channels_page(form, 400)
    db.session.commit()
    if channel.kind == "webhook":
        # Shown here, once: a redirect would have to carry it.
        return _channels_page(status=201, created=channel, secret=secret)
    flash(f"Added the {channel.kind} channel “{channel.name}”. Send it a test to check it.", "success")
    return redirect(url_for("web.alerts_channels") + f"#channel-{channel.id}")


@bp.post("/alerts/channels/<int:channel_id>/test")
@admin_required
def alerts_channel_test(channel_id: int):
    channel = owned_or_404(NotificationChannel, channel_id)
    if not channel.is_active:
        reason = channel.disabled_reason or "deactivated"
        flash(f"“{channel.name}” is turned off ({reason}); nothing was sent.", "error")
        return redirect(url_for("web.alerts_channels") + f"#channel-{channel.id}")
    at = now()
    delivery = enqueue_delivery(channel, channel_test_event(channel, at), at)
    record_test_send(delivery, **who())
    db.session.commit()
    flash(
        f"A test message to “{channel.name}” is on its way: it is sent within seconds, and the delivery "
        "log below shows how it went (reload to see).",
        "success",
    )
    return redirect(url_for("web.alerts_channels") + "#deliveries")


# -- in-portal notifications ------------------------------------------------------------------------
def _mine():
    return owned(Notification).where(Notification.user_id == current_user.id)


@bp.get("/notifications")
@login_required
def notifications():
    before = request.args.get("before", "")
    if before and query_id(before, MAX_ID) is None:
        abort(400)
    query = _mine()
    if before:
        query = query.where(Notification.id < int(before))
    rows = db.session.scalars(query.order_by(Notification.id.desc()).limit(INBOX_PAGE + 1)).all()
    shown = rows[:INBOX_PAGE]
    older = url_for("web.notifications", before=shown[-1].id) if len(rows) > INBOX_PAGE else None
    return render_template(
        "web/notifications.html",
        notifications=shown,
        unread=unread_notifications(),
        older_url=older,
        newer_url=url_for("web.notifications") if before else None,
    )


@bp.post("/notifications/read")
@login_required
def notifications_read_all():
    # Reading one's own notifications changes nothing of the tenant's: members may.
    n = Notification
    marked = db.session.execute(
        update(n)
        .where(n.user_id == current_user.id, n.tenant_id == current_user.tenant_id, n.read_at.is_(None))
        .values(read_at=now())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if marked:
        flash(f"Marked {marked:,} notification{'s' if marked != 1 else ''} read.", "success")
    else:
        flash("There was nothing unread.", "info")
    return redirect(url_for("web.notifications"))


@bp.post("/notifications/<int:notification_id>/read")
@login_required
def notifications_read(notification_id: int):
    if notification_id > MAX_ID:
        abort(404)
    notice = db.session.scalar(_mine().where(Notification.id == notification_id))
    if notice is None:  # another tenant's, or another user's
        abort(404)
    if notice.read_at is None:
        notice.read_at = now()
        db.session.commit()
    return redirect(url_for("web.notifications") + f"#notification-{notice.id}")
