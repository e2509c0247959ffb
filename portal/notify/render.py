"""What a notification says, worked out from the delivery's stored payload alone, so every attempt
(and every channel) says the same thing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Notice:
    """A notification in words: a subject line, a summary and labelled facts."""

    # "CRITICAL", "WARNING", "RESOLVED" or "TEST": what the subject starts with.
    label: str
    subject: str
    title: str
    summary: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    url: str | None = None
    tenant: str = ""
    timestamp: str = ""
    event_type: str = ""


def one_line(text: str, limit: int = 200) -> str:
    """``text`` as a single line of at most ``limit`` characters (a header cannot hold a newline)."""
    line = re.sub(r"\s+", " ", text or "").strip()
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def _shown(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def notice(payload: dict) -> Notice:
    event_type = payload.get("type", "")
    data = payload.get("data") or {}
    tenant = (data.get("tenant") or {}).get("name") or ""
    timestamp = payload.get("timestamp") or ""
    if event_type == "test":
        channel = data.get("channel") or {}
        title = "Tollgate test notification"
        where = f" ({channel['name']})" if channel.get("name") else ""
        kind = channel.get("kind", "")
        summary = data.get("message") or f"This is a test of the {kind} channel{where}: alerts will arrive here."
        facts = [("Channel", f"{kind}{where}"), ("Tenant", tenant)]
        subject = one_line(f"[TEST] {title}{where}")
        return Notice("TEST", subject, title, summary, facts, None, tenant, timestamp, "test")
    alert = data.get("alert") or {}
    severity = str(alert.get("severity") or "warning")
    title = one_line(alert.get("title") or alert.get("type") or "Alert")
    if event_type == "alert.resolved":
        label, subject = "RESOLVED", f"[RESOLVED] {title}"
    elif event_type == "alert.escalated":
        label, subject = severity.upper(), f"[{severity.upper()}] Escalated: {title}"
    else:
        label, subject = severity.upper(), f"[{severity.upper()}] {title}"
    facts = [
        ("Severity", severity),
        ("Status", str(alert.get("status") or "")),
        ("Value", _shown(alert.get("value"))),
        ("Threshold", _shown(alert.get("threshold"))),
        ("Occurrences", _shown(alert.get("occurrences"))),
        ("First triggered", str(alert.get("first_triggered_at") or "—")),
    ]
    if alert.get("resolved_at"):
        facts.append(("Resolved", str(alert["resolved_at"])))
    if tenant:
        facts.append(("Tenant", tenant))
    return Notice(
        label,
        one_line(subject, 250),
        title,
        alert.get("message") or "",
        facts,
        alert.get("url"),
        tenant,
        timestamp,
        event_type,
    )


def plain_text(n: Notice) -> str:
    lines = [n.subject, ""]
    if n.summary:
        lines += [n.summary, ""]
    lines += [f"{name}: {value}" for name, value in n.facts]
    if n.url:
        lines += ["", f"View it in Tollgate: {n.url}"]
    lines += ["", f"Sent by Tollgate at {n.timestamp}." if n.timestamp else "Sent by Tollgate."]
    return "\n".join(lines) + "\n"
