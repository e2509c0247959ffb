"""Sign-in throttling: per account (the e-mail tried) as well as per client address, and the
client's address behind a configured number of trusted reverse proxies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from portal import create_app
from portal.config import ConfigError, load_config
from portal.extensions import db, limiter
from portal.models import AuditEvent
from tests.conftest import csrf_token
from tests.factories import PASSWORD

WRONG = "wrong password!"


def attempt(client: FlaskClient, email: str, password: str, address: str | None = None, forwarded_for=None):
    """One sign-in through the form, from ``address`` (the connecting peer), optionally with the
    X-Forwarded-For a proxy would send."""
    environ = {"REMOTE_ADDR": address} if address else {}
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    page = client.get("/login", environ_base=environ, headers=headers)
    data = {"email": email, "password": password, "csrf_token": csrf_token(page.text)}
    return client.post("/login", data=data, environ_base=environ, headers=headers)


def first_amount(limit: str) -> int:
    return int(limit.split(";")[0].split("/")[0])


def assert_throttled(response) -> None:
    assert response.status_code == 429
    assert "Too many sign-in attempts" in response.text
    assert int(response.headers["Retry-After"]) > 0
    assert 'name="email"' in response.text  # the form again, to try later


def assert_signed_in(response) -> None:
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard"


# --- per account ------------------------------------------------------------------------------


def test_bad_tries_on_one_account_from_many_addresses_are_throttled_for_that_account(app, client, make_tenant):
    _, email, _ = make_tenant()
    limit = first_amount(app.config["LOGIN_ACCOUNT_RATE_LIMIT"])
    assert limit < first_amount(app.config["LOGIN_RATE_LIMIT"])
    for n in range(limit):
        assert attempt(client, email, WRONG, address=f"203.0.113.{n + 1}").status_code == 401
    # A fresh address, and even the right password: this account waits.
    response = attempt(client, email, PASSWORD, address="198.51.100.200")
    assert_throttled(response)
    assert client.get("/dashboard", environ_base={"REMOTE_ADDR": "198.51.100.200"}).status_code == 302


def test_the_account_bucket_ignores_case_and_spaces_in_the_email(app, client, make_tenant):
    _, email, _ = make_tenant()
    limit = first_amount(app.config["LOGIN_ACCOUNT_RATE_LIMIT"])
    spellings = [email.upper(), f"  {email}  ", email.capitalize()]
    for n in range(limit):
        assert attempt(client, spellings[n % len(spellings)], WRONG, address=f"203.0.113.{n + 1}").status_code == 401
    assert_throttled(attempt(client, email, PASSWORD, address="198.51.100.201"))


def test_another_account_behind_the_same_address_still_signs_in(app, client, make_tenant):
    _, victim, _ = make_tenant()
    _, colleague, _ = make_tenant()
    proxy = "192.0.2.10"
    for _ in range(first_amount(app.config["LOGIN_ACCOUNT_RATE_LIMIT"])):
        assert attempt(client, victim, WRONG, address=proxy).status_code == 401
    assert_throttled(attempt(client, victim, PASSWORD, address=proxy))
    # The address is below its own limit: someone else signing in from it is not locked out.
    assert_signed_in(attempt(app.test_client(), colleague, PASSWORD, address=proxy))


def test_an_unknown_account_is_throttled_like_a_known_one(app, client):
    # The answer must not tell which e-mail addresses have an account.
    for n in range(first_amount(app.config["LOGIN_ACCOUNT_RATE_LIMIT"])):
        assert attempt(client, "nobody@nowhere.example", WRONG, address=f"203.0.113.{n + 1}").status_code == 401
    assert_throttled(attempt(client, "nobody@nowhere.example", WRONG, address="198.51.100.202"))


# --- client address without a proxy setting -------------------------------------------------------


def test_without_trusted_proxies_x_forwarded_for_is_ignored(app, client):
    assert app.config["TRUSTED_PROXY_HOPS"] == 0
    limit = first_amount(app.config["LOGIN_RATE_LIMIT"])
    for n in range(limit):
        # A different account and a made-up forwarded address every time, from one peer.
        response = attempt(client, f"guess{n}@nowhere.example", WRONG, forwarded_for=f"203.0.113.{n + 1}")
        assert response.status_code == 401
    assert_throttled(attempt(client, "guess-last@nowhere.example", WRONG, forwarded_for="198.51.100.99"))


def test_without_trusted_proxies_the_peer_address_is_audited(app, client):
    attempt(client, "nobody@nowhere.example", WRONG, address="192.0.2.33", forwarded_for="203.0.113.66")
    with app.app_context():
        assert db.session.scalar(select(AuditEvent.ip_address)) == "192.0.2.33"
        db.session.remove()


# --- behind a trusted proxy -----------------------------------------------------------------------


@pytest.fixture
def proxied_app(app: Flask, test_settings: dict) -> Iterator[Flask]:
    """The portal behind one trusted reverse proxy, on the test session's database and Redis."""
    settings = {**test_settings, "REDIS_URL": app.config["REDIS_URL_RESOLVED"], "TRUSTED_PROXY_HOPS": 1}
    proxied = create_app(settings)
    yield proxied
    with proxied.app_context():
        db.session.remove()
        db.engine.dispose()
    # Flask-Limiter keeps one storage per limiter: the new app took it, give it back.
    limiter.init_app(app)


PROXY = "10.0.0.5"


def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(proxied_app, make_tenant):
    _, email, _ = make_tenant()
    limit = first_amount(proxied_app.config["LOGIN_RATE_LIMIT"])
    noisy, quiet = proxied_app.test_client(), proxied_app.test_client()
    for n in range(limit):
        response = attempt(noisy, f"guess{n}@nowhere.example", WRONG, address=PROXY, forwarded_for="203.0.113.1")
        assert response.status_code == 401
    assert_throttled(attempt(noisy, "guess-last@nowhere.example", WRONG, address=PROXY, forwarded_for="203.0.113.1"))
    # Another client behind the same proxy signs in.
    assert_signed_in(attempt(quiet, email, PASSWORD, address=PROXY, forwarded_for="203.0.113.2"))


def test_behind_a_trusted_proxy_a_client_cannot_pick_its_address(proxied_app):
    # The proxy appends the address it saw; what the client wrote before it is not believed.
    client = proxied_app.test_client()
    limit = first_amount(proxied_app.config["LOGIN_RATE_LIMIT"])
    for n in range(limit):
        forwarded = f"198.51.100.{n + 1}, 203.0.113.1"
        response = attempt(client, f"guess{n}@nowhere.example", WRONG, address=PROXY, forwarded_for=forwarded)
        assert response.status_code == 401
    forwarded = "198.51.100.250, 203.0.113.1"
    assert_throttled(attempt(client, "guess-last@nowhere.example", WRONG, address=PROXY, forwarded_for=forwarded))


def test_behind_a_trusted_proxy_the_client_address_is_audited(proxied_app):
    attempt(proxied_app.test_client(), "nobody@nowhere.example", WRONG, address=PROXY, forwarded_for="203.0.113.7")
    with proxied_app.app_context():
        assert db.session.scalar(select(AuditEvent.ip_address)) == "203.0.113.7"
        db.session.remove()


def test_behind_a_trusted_proxy_the_scheme_it_was_reached_by_counts(app, proxied_app):
    # HSTS goes out over https only: behind a TLS-terminating proxy that is X-Forwarded-Proto.
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.8"}
    assert "Strict-Transport-Security" in proxied_app.test_client().get("/login", headers=headers).headers
    assert "Strict-Transport-Security" not in app.test_client().get("/login", headers=headers).headers


def test_a_signed_in_client_behind_a_trusted_proxy_stays_signed_in(proxied_app, make_tenant):
    # "Strong" session protection binds a session to the client's address: the forwarded one.
    _, email, _ = make_tenant()
    client = proxied_app.test_client()
    assert_signed_in(attempt(client, email, PASSWORD, address=PROXY, forwarded_for="203.0.113.9"))
    page = client.get(
        "/dashboard", environ_base={"REMOTE_ADDR": "10.0.0.6"}, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert page.status_code == 200


# --- the setting ----------------------------------------------------------------------------------


def test_trusted_proxy_hops_default_to_none(tmp_path):
    assert load_config(tmp_path, {})["TRUSTED_PROXY_HOPS"] == 0


@pytest.mark.parametrize(("value", "hops"), [("0", 0), ("1", 1), (" 2 ", 2), ("", 0)])
def test_trusted_proxy_hops_reads_a_whole_number(tmp_path, value, hops):
    assert load_config(tmp_path, {"TRUSTED_PROXY_HOPS": value})["TRUSTED_PROXY_HOPS"] == hops


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "yes"])
def test_a_bad_trusted_proxy_hops_stops_start_up_naming_it(tmp_path, value):
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, {"TRUSTED_PROXY_HOPS": value})
    assert error.value.variable == "TRUSTED_PROXY_HOPS"
    assert "Configuration error: TRUSTED_PROXY_HOPS:" in str(error.value)
