"""Protecting an operator's own Flask views with Tollgate, inside the same application.

A :class:`ProductBlueprint` is a Flask blueprint whose every request is a protected call: the
API key (``X-API-Key`` or ``Authorization: Bearer``) is admitted against the tenant's plan —
windows, monthly quota and budget stops, one bucket per tenant shared with the JSON API and the
gateway — answered with the ``X-RateLimit-*`` headers, and metered once. A view reports what it
used with :func:`record_usage`, and reads who calls with :func:`current_caller`::

    # myproduct/chat.py
    from portal.product import ProductBlueprint, current_caller, record_usage

    bp = ProductBlueprint("chat", __name__, url_prefix="/api/assistant", category="Chat", service="chatbot")

    @bp.post("/ask")
    def ask():
        answer = my_model.answer(request.json["message"], user=current_caller().end_user)
        record_usage(tokens_in=answer.prompt_tokens, tokens_out=answer.completion_tokens, model=answer.model)
        return {"reply": answer.text}

Tollgate registers the blueprints named by ``PRODUCT_BLUEPRINTS`` (``myproduct.chat:bp``,
comma-separated) when it starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, g


class ProductBlueprint(Blueprint):
    """A blueprint of protected product views (see the module's documentation).

    ``category`` is the calls' category in the portal, ``service`` the service what they use is
    priced under ("tollgate": not priced), ``plans`` the plan codes that may call them (empty:
    every plan).
    """

    def __init__(
        self,
        name: str,
        import_name: str,
        *args: Any,
        category: str = "",
        service: str = "tollgate",
        plans: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(name, import_name, *args, **kwargs)
        self.usage_category = category
        self.usage_service = service
        self.plans = frozenset(plans)


@dataclass(frozen=True)
class CurrentCaller:
    tenant_id: int
    tenant_slug: str
    key_id: int
    plan: str
    end_user: str


USAGE_FIELDS = ("tokens_in", "tokens_out", "cached_tokens", "model", "units")


def record_usage(
    tokens_in: int = 0, tokens_out: int = 0, cached_tokens: int = 0, model: str = "", units: int = 0
) -> None:
    """Report what the current protected call used; it is metered with the call (and priced
    under the blueprint's service). Called again, the latest report wins."""
    if g.get("api_call") is None:
        raise RuntimeError("record_usage() reports the usage of a protected call: call it from a ProductBlueprint view")
    for name, value in (
        ("tokens_in", tokens_in),
        ("tokens_out", tokens_out),
        ("cached_tokens", cached_tokens),
        ("units", units),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} is a whole number of 0 or more; got {value!r}")
    if not isinstance(model, str):
        raise ValueError(f"model is a text; got {model!r}")
    g.call_usage = {
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cached_tokens": min(cached_tokens, tokens_in),
        "model": str(model or ""),
        "units": units,
    }


def current_caller() -> CurrentCaller:
    """Who makes the current protected call."""
    call = g.get("api_call")
    if call is None:
        raise RuntimeError("current_caller() is only known inside a protected call")
    entry = call.entry
    return CurrentCaller(entry.tenant_id, entry.tenant_slug, entry.key_id, entry.limits.plan_code, call.end_user)
