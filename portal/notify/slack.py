"""Slack notifications through an incoming webhook: JSON with a ``text`` fallback and ``blocks``.

Slack answers 200 ``ok``; 400 ``invalid_payload`` and 403 are final; 404 ``channel_not_found``
and 410 ``channel_is_archived`` are final and turn the channel off; 429 carries Retry-After.
"""

from __future__ import annotations

import json

from ..models import NotificationChannel, NotificationDelivery
from .base import Answer, Outcome, http_outcome, post
from .render import Notice, notice, one_line

GONE = frozenset({404, 410})
EMOJI = {"CRITICAL": ":red_circle:", "WARNING": ":warning:", "RESOLVED": ":white_check_mark:", "TEST": ":test_tube:"}


def escape(text: str) -> str:
    """Text safe in Slack mrkdwn (``<``, ``>`` and ``&`` are its markup)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(n: Notice) -> dict:
    blocks: list[dict] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": one_line(f"{EMOJI.get(n.label, '')} {n.subject}", 150)},
        }
    ]
    if n.summary:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": escape(n.summary)[:3000]}})
    if n.facts:
        fields = [{"type": "mrkdwn", "text": f"*{escape(name)}*\n{escape(value)[:1900]}"} for name, value in n.facts]
        blocks.append({"type": "section", "fields": fields[:10]})
    context = " · ".join(escape(part) for part in (n.tenant, n.timestamp) if part)
    if context:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    if n.url:
        button = {"type": "button", "text": {"type": "plain_text", "text": "View in Tollgate"}, "url": n.url}
        blocks.append({"type": "actions", "elements": [button]})
    return {"text": n.subject, "blocks": blocks}


class SlackSender:
    kind = "slack"

    def send(self, channel: NotificationChannel, delivery: NotificationDelivery) -> Outcome:
        body = json.dumps(slack_message(notice(delivery.payload))).encode()
        answer = post(channel.target, body, {"Content-Type": "application/json"})
        if not isinstance(answer, Answer):
            return answer
        return http_outcome("Slack", answer, GONE)
