"""Example product: a deterministic AI chatbot that an operator puts behind Tollgate's gateway.

It is an example, not part of the portal. ``POST /api/chat`` with ``{"message": "Hello",
"botId": "test"}`` answers the same JSON for the same input::

    {"id": "chat-<12 hex>", "botId": "test", "model": "chatbot-mini", "reply": "Bot test heard: Hello",
     "usage": {"prompt_tokens": P, "completion_tokens": C, "total_tokens": P + C},
     "caller": {"tenant": ..., "keyId": ..., "endUser": ...}}

Usage is OpenAI-shaped: a text counts ``max(1, ceil(len(text) / 4))`` tokens, the prompt adds 8
for the system prompt. ``"caller"`` repeats the ``X-Tollgate-Tenant``, ``X-Tollgate-Key-Id`` and
``X-Tollgate-End-User`` headers the gateway adds. With ``"stream": true`` the answer is
server-sent events: one ``{"delta": "<word> "}`` per reply word, then ``{"model", "usage"}``,
then ``[DONE]``. If ``CHATBOT_TOKEN`` is set when the app is created, every request must carry
``X-Chatbot-Token`` with that value. ``GET /health`` answers ``{"ok": true}``.

Run it with ``python -m examples.chatbot --port 5055`` or ``gunicorn examples.chatbot.app:app``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

MODEL = "chatbot-mini"
SYSTEM_PROMPT_TOKENS = 8
MAX_BOT_ID = 64
DEFAULT_BOT_ID = "default"


class BadRequest(Exception):
    """A request the chatbot refuses with 400 and this message."""


def count_tokens(text: str) -> int:
    """The chatbot's token count for a text: one per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


def chat_reply(bot_id: str, message: str) -> dict:
    """The deterministic answer for a message to a bot, without the caller."""
    reply = f"Bot {bot_id} heard: {message}"
    prompt_tokens = count_tokens(message) + SYSTEM_PROMPT_TOKENS
    completion_tokens = count_tokens(reply)
    return {
        "id": "chat-" + hashlib.sha256((bot_id + message).encode()).hexdigest()[:12],
        "botId": bot_id,
        "model": MODEL,
        "reply": reply,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _sse(data: object) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def stream_events(answer: dict) -> Iterator[str]:
    """Server-sent events for an answer: a delta per reply word, then the usage, then [DONE]."""
    for word in answer["reply"].split():
        yield _sse({"delta": word + " "})
    yield _sse({"model": answer["model"], "usage": answer["usage"]})
    yield _sse("[DONE]")


def _parse_chat(body: object) -> tuple[str, str, bool]:
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object with a "message"')
    message = body.get("message")
    if message is None or (isinstance(message, str) and not message.strip()):
        raise BadRequest("message is required")
    if not isinstance(message, str):
        raise BadRequest("message must be a string")
    bot_id = body.get("botId")
    if bot_id is None:
        bot_id = DEFAULT_BOT_ID
    if not isinstance(bot_id, str) or not bot_id:
        raise BadRequest("botId must be a non-empty string")
    if len(bot_id) > MAX_BOT_ID:
        raise BadRequest(f"botId must be at most {MAX_BOT_ID} characters")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    return bot_id, message, stream


def create_app() -> Flask:
    """The chatbot app; reads ``CHATBOT_TOKEN`` from the environment now."""
    app = Flask(__name__)
    token = os.environ.get("CHATBOT_TOKEN") or None

    @app.before_request
    def check_token():
        if token is None:
            return None
        given = request.headers.get("X-Chatbot-Token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return jsonify(error="bad or missing X-Chatbot-Token"), 401
        return None

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return jsonify(error=str(exc)), 400

    @app.get("/health")
    def health():
        return jsonify(ok=True)

    @app.post("/api/chat")
    def chat():
        bot_id, message, stream = _parse_chat(request.get_json(silent=True))
        answer = chat_reply(bot_id, message)
        if stream:
            return Response(
                stream_events(answer),
                mimetype="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        answer["caller"] = {
            "tenant": request.headers.get("X-Tollgate-Tenant"),
            "keyId": request.headers.get("X-Tollgate-Key-Id"),
            "endUser": request.headers.get("X-Tollgate-End-User"),
        }
        return jsonify(answer)

    return app


app = create_app()
