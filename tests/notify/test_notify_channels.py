"""Saving a notification channel (in the domain and through ``add-channel``): what a target, a
secret and a severity may be, and the private, loopback and link-local addresses refused when a
Slack or webhook channel is saved."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from standardwebhooks import Webhook

from portal.extensions import db as _db
from portal.models import NotificationChannel
from portal.notify.channels import (
    EMAIL,
    MAX_CHANNELS,
    SECRET,
    SLACK_URL,
    WEBHOOK_URL,
    ChannelError,
    TooManyChannels,
    channel_json,
    check_email,
    check_hook_url,
    check_secret,
    create_channel,
    generate_secret,
)
from tests.notify_helpers import add_channel, app_config


@pytest.fixture
def public_only(app):
    with app_config(app, ALLOW_PRIVATE_WEBHOOKS=False):
        yield


def refused(field: str, *args, **kwargs) -> str:
    with pytest.raises(ChannelError) as caught:
        create_channel(*args, **kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    return caught.value.problem


INTERNAL = [
    "http://10.0.0.1/hook",
    "https://10.20.30.40:8443/services/T/B/X",
    "http://172.16.0.5/hook",
    "http://192.168.1.10/hook",
    "http://127.0.0.1:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[fc00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
    "http://localhost/hook",
    "http://localhost:5000/services/T/B/X",
]


@pytest.mark.parametrize("kind", ["slack", "webhook"])
@pytest.mark.parametrize("target", INTERNAL)
def test_internal_addresses_are_refused_when_saved(db, tenant_id, public_only, kind, target):
    problem = refused("target", tenant_id, kind, target)
    assert "private, loopback, link-local or otherwise internal address" in problem
    assert problem.endswith("Tollgate sends notifications to public addresses only")
    if "localhost" in target:
        assert problem.startswith("localhost resolves to 127.0.0.1")


def test_with_private_addresses_allowed_a_loopback_receiver_is_accepted(db, tenant_id):
    # The test settings allow them (ALLOW_PRIVATE_WEBHOOKS=1), so receivers on 127.0.0.1 work.
    channel = add_channel(tenant_id, "slack", "http://127.0.0.1:9999/anything")
    assert channel.target == "http://127.0.0.1:9999/anything" and channel.name == "Slack"


def test_public_targets_are_accepted(db, tenant_id, public_only):
    slack = add_channel(tenant_id, "slack", "https://hooks.slack.com/services/T0001/B0001/abcdefXYZ")
    hook = add_channel(tenant_id, "webhook", "https://hooks.example.com/tollgate?source=alerts")
    assert (slack.kind, hook.kind, hook.name) == ("slack", "webhook", "hooks.example.com")
    assert channel_json(slack)["target"] == "https://hooks.slack.com/…fXYZ"  # the hook URL is a credential
    # A webhook's URL may carry a token too: whole only for admins.
    assert channel_json(hook)["target"] == "https://hooks.example.com/…erts"
    assert channel_json(hook, full=True)["target"] == "https://hooks.example.com/tollgate?source=alerts"


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [
        ("slack", "https://example.com/services/T/B/X", "expected a Slack incoming-webhook URL"),
        ("slack", "http://hooks.slack.com/services/T/B/X", "expected a Slack incoming-webhook URL"),
        ("webhook", "ftp://files.example.com/hook", "must be an http:// or https:// URL"),
        ("webhook", "https://8.8.8.8/hook", "public host name"),
        ("webhook", "https://intranet/hook", "public host name"),
        ("webhook", "https://hooks.example.com/a b", "no spaces"),
        ("webhook", "https://hooks.example.com:99999/x", "not a valid URL"),
        ("webhook", "https:///nohost", "the URL has no host"),
        ("webhook", "https://hooks.example.com/" + "x" * 500, "at most 500 characters"),
    ],
)
def test_malformed_targets_are_refused_naming_the_target(db, tenant_id, public_only, kind, target, message):
    assert message in refused("target", tenant_id, kind, target)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("not-an-address", "expected an e-mail address"),
        ("ops@localhost", "expected an e-mail address"),
        ("ops@ab--cd.example.com", "expected an e-mail address"),
        ("ops@example.test", "special-use or reserved name"),
        ("", "required"),
    ],
)
def test_bad_email_addresses_are_refused(db, tenant_id, target, message):
    assert message in refused("target", tenant_id, "email", target)


def test_an_email_address_is_stored_normalised(db, tenant_id):
    channel = add_channel(tenant_id, "email", "  Ops.Team@Example.COM ")
    assert channel.target == "Ops.Team@example.com" and channel.name == "Ops.Team@example.com"


def test_a_webhook_gets_a_generated_standard_webhooks_secret(db, tenant_id):
    channel, secret = create_channel(tenant_id, "webhook", "http://127.0.0.1:9/hook")
    assert re.fullmatch(SECRET, secret) and channel.signing_secret == secret
    Webhook(secret).sign("msg_1", datetime.now(UTC), "{}")
    assert channel_json(channel)["secret_hint"] == f"whsec_…{secret[-4:]}"
    assert secret not in str(channel_json(channel))


@pytest.mark.parametrize(
    ("kind", "options", "field", "message"),
    [
        ("webhook", {"secret": "whsec_tooshort"}, "secret", "Standard Webhooks secret"),
        ("webhook", {"secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}, "secret", "whsec_"),
        ("email", {"secret": generate_secret()}, "secret", "only a webhook channel"),
        ("webhook", {"min_severity": "info"}, "min_severity", "warning or critical"),
        ("webhook", {"name": "n" * 121}, "name", "at most 120"),
        ("sms", {}, "kind", "email, slack or webhook"),
    ],
)
def test_other_fields_are_checked_and_named(db, tenant_id, kind, options, field, message):
    target = "ops@example.com" if kind == "email" else "http://127.0.0.1:9/hook"
    assert message in refused(field, tenant_id, kind, target, **options)


def test_a_given_secret_is_kept(db, tenant_id):
    secret = generate_secret()
    channel, returned = create_channel(tenant_id, "webhook", "http://127.0.0.1:9/hook", secret=secret)
    assert channel.signing_secret == returned == secret


def test_a_tenant_has_a_bounded_number_of_channels(db, tenant_id):
    for n in range(MAX_CHANNELS):
        create_channel(tenant_id, "email", f"ops{n}@example.com")
    with pytest.raises(TooManyChannels):
        create_channel(tenant_id, "email", "one-more@example.com")


# The API's document states these patterns; everything they match must be accepted as it is
# (the fuzz test sends such values and expects no 422).
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.from_regex(f"^{EMAIL}$", fullmatch=True))
def test_every_address_the_email_pattern_matches_is_accepted(ctx, target):
    check_email(target)


# Each example looks its host name up (a random one: the resolver is asked each time).
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.from_regex(f"^{WEBHOOK_URL}$", fullmatch=True), st.from_regex(f"^{SLACK_URL}$", fullmatch=True))
def test_every_url_the_patterns_match_is_accepted_with_private_addresses_refused(app, ctx, webhook, slack):
    with app_config(app, ALLOW_PRIVATE_WEBHOOKS=False):
        assert check_hook_url("webhook", webhook) == webhook
        assert check_hook_url("slack", slack) == slack


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.from_regex(f"^{SECRET}$", fullmatch=True))
def test_every_secret_the_pattern_matches_signs(ctx, secret):
    check_secret(secret)
    Webhook(secret)


# -- add-channel ----------------------------------------------------------------------------------
@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def channels_of(app, tenant_id: int) -> list[NotificationChannel]:
    with app.app_context():
        query = select(NotificationChannel).where(NotificationChannel.tenant_id == tenant_id)
        rows = list(_db.session.scalars(query))
        _db.session.expunge_all()
        _db.session.remove()
    return rows


def test_add_channel_adds_an_email_channel(app, cli, make_tenant):
    slug, _, tenant_id = make_tenant("Cli Co")
    result = cli("add-channel", slug, "email", "ops@example.com", "--min-severity", "critical", "--name", "Ops")
    assert result.exit_code == 0, result.output
    assert "critical alerts only" in result.output
    [channel] = channels_of(app, tenant_id)
    assert (channel.kind, channel.target, channel.name, channel.min_severity) == (
        "email",
        "ops@example.com",
        "Ops",
        "critical",
    )


def test_add_channel_prints_a_generated_webhook_secret_last(app, cli, make_tenant):
    slug, _, tenant_id = make_tenant("Cli Co")
    result = cli("add-channel", slug, "webhook", "http://127.0.0.1:9/hook")
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    assert re.fullmatch(SECRET, secret)
    [channel] = channels_of(app, tenant_id)
    assert channel.signing_secret == secret
    Webhook(secret)  # a usable Standard Webhooks secret


def test_add_channel_keeps_a_given_secret_without_printing_it(app, cli, make_tenant):
    slug, _, tenant_id = make_tenant("Cli Co")
    secret = generate_secret()
    result = cli("add-channel", slug, "webhook", "http://127.0.0.1:9/hook", "--secret", secret)
    assert result.exit_code == 0 and secret not in result.output
    assert channels_of(app, tenant_id)[0].signing_secret == secret


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("no-such-tenant", "email", "ops@example.com"), "no tenant with slug 'no-such-tenant'"),
        (("{slug}", "email", "not-an-address"), "target: expected an e-mail address"),
        (("{slug}", "webhook", "http://127.0.0.1:9/hook", "--secret", "whsec_x"), "secret: expected a Standard"),
        (("{slug}", "slack", "https://hooks.slack.com/services/T/B/X", "--secret", generate_secret()), "secret:"),
    ],
)
def test_add_channel_refuses_what_is_wrong_naming_it(app, cli, make_tenant, args, message):
    slug, _, tenant_id = make_tenant("Cli Co")
    result = cli("add-channel", *(a.format(slug=slug) for a in args))
    assert result.exit_code == 1 and message in result.output
    assert channels_of(app, tenant_id) == []


def test_add_channel_refuses_a_private_address_when_they_are_not_allowed(app, cli, make_tenant):
    slug, _, _ = make_tenant("Cli Co")
    with app_config(app, ALLOW_PRIVATE_WEBHOOKS=False):
        result = cli("add-channel", slug, "webhook", "http://169.254.169.254/latest/meta-data/")
    assert result.exit_code == 1 and "169.254.169.254 is a private" in result.output


def test_add_channel_knows_only_three_kinds(cli, make_tenant):
    slug, _, _ = make_tenant("Cli Co")
    assert cli("add-channel", slug, "sms", "+15550100").exit_code == 2
