"""An example of an operator's product written inside Tollgate's own Flask application.

Start Tollgate with ``PRODUCT_BLUEPRINTS=examples.assistant:bp`` and ``POST /api/assistant/ask``
``{"message": "Hello"}`` with a customer's API key is admitted, limited, metered and answered
with the rate-limit headers like every protected call; the view reports the tokens it used.
The answer is canned and deterministic: it stands in for a real model.
"""

from __future__ import annotations

from flask import request

from portal.product import ProductBlueprint, current_caller, record_usage

bp = ProductBlueprint("assistant", __name__, url_prefix="/api/assistant", category="Chat", service="chatbot")

MODEL = "chatbot-mini"


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


@bp.post("/ask")
def ask():
    body = request.get_json(silent=True)
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message.strip():
        return {"detail": "message is required"}, 400
    reply = f"Assistant heard: {message.strip()}"
    record_usage(tokens_in=_tokens(message) + 8, tokens_out=_tokens(reply), model=MODEL)
    caller = current_caller()
    return {"reply": reply, "model": MODEL, "tenant": caller.tenant_slug, "endUser": caller.end_user or None}


@bp.get("/status")
def status():
    return {"ok": True}
