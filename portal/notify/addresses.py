"""Where Tollgate may send a tenant's Slack and webhook notifications: public http(s) addresses
only, checked when a channel is saved and again on every send.

The send goes through ``requests-hardened``: it resolves the host once, refuses a private,
loopback or link-local answer, connects to the address it checked (a second DNS answer cannot
swap in an internal one), never follows a redirect and always has a timeout. With the
``ALLOW_PRIVATE_WEBHOOKS`` setting on (tests, a receiver on this machine) nothing is refused.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from flask import current_app
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import EXTRA_BLOCKED_NET_RANGES, InvalidIPAddress

__all__ = ["AddressRefused", "InvalidIPAddress", "check_address", "check_url", "private_allowed", "tenant_session"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ValueError):
    """A target Tollgate does not send to; the message says why."""


def private_allowed() -> bool:
    return bool(current_app.config.get("ALLOW_PRIVATE_WEBHOOKS", False))


def refused_ip(ip: IPAddress) -> bool:
    """Whether requests-hardened's filter refuses ``ip`` (the same ranges, the same mapping)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_multicast or any(ip in net for net in EXTRA_BLOCKED_NET_RANGES)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def refusal(host: str, ip: IPAddress) -> str:
    shown = "" if str(ip) == host else f" resolves to {ip}, which"
    return (
        f"{host}{shown} is a private, loopback, link-local or otherwise internal address; "
        "Tollgate sends notifications to public addresses only"
    )


def check_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) ``url``; raises :class:`AddressRefused` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AddressRefused("not a valid URL") from None
    if parts.scheme not in {"http", "https"}:
        raise AddressRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_address(url: str, *, resolve: bool = True) -> None:
    """Refuse ``url`` unless it is http(s) and its host is public (or private ones are allowed).

    With ``resolve`` a host name is looked up and every address it has now must be public; a
    name that does not resolve at the moment is let through (the send checks again and
    connects only to an address it checked). Without it, only an IP address in the URL is
    judged (the send's own lookup judges a name).
    """
    host, port = check_url(url)
    if private_allowed():
        return
    literal = _literal(host)
    if literal is not None:
        if refused_ip(literal):
            raise AddressRefused(refusal(host, literal))
        return
    if not resolve:
        return
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return  # no answer now: judged again, by the same rules, when it is sent
    for *_, sockaddr in answers:
        ip = _literal(str(sockaddr[0]))
        if ip is not None and refused_ip(ip):
            raise AddressRefused(refusal(host, ip))


def tenant_session() -> requests.Session:
    """An HTTP session for tenant URLs: address filter (unless private ones are allowed), no
    redirects, timeouts, no proxy or .netrc from the environment (a proxy would bypass the filter)."""
    config = current_app.config
    session = HTTPSession(
        Config(
            ip_filter_enable=not private_allowed(),
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,
            default_timeout=(config["NOTIFY_CONNECT_TIMEOUT"], config["NOTIFY_READ_TIMEOUT"]),
            user_agent_override="Tollgate-Notifications/1.0",
        )
    )
    session.trust_env = False
    return session
