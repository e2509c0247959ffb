"""What a model call used, read from its response: OpenAI chat completions, the Responses API,
Anthropic messages (a JSON body, or the events of a stream), and Tollgate's own
``X-Tollgate-Usage`` header. Tollgate's gateway meters its routes with this same reader, and
:func:`tollgate_client.event_from_openai` turns its result into event fields.

Every count is a whole number from 0 to :data:`MAX_COUNT`; anything else counts as 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

MAX_COUNT = 10**9
MAX_MODEL_LENGTH = 120
# The header an upstream may answer with instead of a ``usage`` object: one JSON object.
USAGE_HEADER = "X-Tollgate-Usage"


@dataclass(frozen=True)
class Usage:
    tokens_in: int = 0  # cached tokens included
    tokens_out: int = 0
    cached_tokens: int = 0
    model: str = ""
    # Billable units other than tokens (an outside service's quota units, say).
    units: int = 0
    # The endpoint of the response's shape: /v1/chat/completions, /v1/responses or /v1/messages.
    endpoint: str = "/v1/chat/completions"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cached_tokens": self.cached_tokens,
            "model": self.model,
            "units": self.units,
        }


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: Any, name: str) -> int:
    value = _get(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return 0
    return int(min(max(value, 0), MAX_COUNT))


def _has(obj: Any, name: str) -> bool:
    return (name in obj) if isinstance(obj, Mapping) else hasattr(obj, name)


def _model(obj: Any) -> str:
    model = _get(obj, "model")
    if not isinstance(model, str):
        return ""
    # No NUL and no lone surrogate: neither can be stored (PostgreSQL, UTF-8).
    return "".join(ch for ch in model[:MAX_MODEL_LENGTH] if ch != "\x00" and not "\ud800" <= ch <= "\udfff")


def usage_of(response: Any) -> Usage | None:
    """The usage of a model response (an SDK object or its dict), or None when it has none.

    Reads OpenAI chat completions (``prompt_tokens``, ``completion_tokens``,
    ``prompt_tokens_details.cached_tokens``), the Responses API (``input_tokens``,
    ``output_tokens``, ``input_tokens_details.cached_tokens``) and Anthropic messages, whose
    ``input_tokens`` leaves out ``cache_read_input_tokens`` and ``cache_creation_input_tokens``.
    """
    usage = _get(response, "usage")
    if usage is None or not (isinstance(usage, Mapping) or hasattr(usage, "__dict__")):
        return None
    if _has(usage, "prompt_tokens") or _has(usage, "completion_tokens"):
        endpoint = "/v1/chat/completions"
        tokens_in = _count(usage, "prompt_tokens")
        tokens_out = _count(usage, "completion_tokens")
        cached = _count(_get(usage, "prompt_tokens_details"), "cached_tokens")
    elif _has(usage, "cache_read_input_tokens") or _has(usage, "cache_creation_input_tokens"):
        endpoint = "/v1/messages"
        cached = _count(usage, "cache_read_input_tokens")
        tokens_in = min(
            _count(usage, "input_tokens") + cached + _count(usage, "cache_creation_input_tokens"), MAX_COUNT
        )
        tokens_out = _count(usage, "output_tokens")
    else:
        endpoint = "/v1/responses"
        tokens_in = _count(usage, "input_tokens")
        tokens_out = _count(usage, "output_tokens")
        cached = _count(_get(usage, "input_tokens_details"), "cached_tokens")
    return Usage(tokens_in, tokens_out, min(cached, tokens_in), _model(response), 0, endpoint)


def usage_from_header(value: str | None) -> Usage | None:
    """The ``X-Tollgate-Usage`` header's usage (``model``, ``tokens_in``, ``tokens_out``,
    ``cached_tokens``, ``units``), or None when it is absent or not one JSON object."""
    if not value:
        return None
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    tokens_in = _count(data, "tokens_in")
    return Usage(
        tokens_in=tokens_in,
        tokens_out=_count(data, "tokens_out"),
        cached_tokens=min(_count(data, "cached_tokens"), tokens_in),
        model=_model(data),
        units=_count(data, "units"),
        endpoint="",
    )


def usage_from_body(body: bytes) -> Usage | None:
    """The usage of a JSON response body, or None."""
    if b'"usage"' not in body:
        return None
    try:
        return usage_of(json.loads(body))
    except (ValueError, RecursionError):
        return None


class BodyUsage:
    """Reads usage from a JSON body fed chunk by chunk. A body up to ``max_whole`` bytes is read
    whole; of a larger one the last ``tail`` bytes are kept and the last ``usage`` object in
    them is read (with the last ``model`` there)."""

    def __init__(self, max_whole: int = 4 * 2**20, tail: int = 2**20) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._tail = b""
        self._max_whole = max_whole
        self._keep_tail = tail

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._max_whole:
            self._parts.append(chunk)
            return
        if self._parts:
            self._tail = b"".join(self._parts)
            self._parts = []
        self._tail = (self._tail + chunk)[-self._keep_tail :]

    @property
    def usage(self) -> Usage | None:
        if self._size <= self._max_whole:
            return usage_from_body(b"".join(self._parts))
        return _usage_in_fragment(self._tail)


def _usage_in_fragment(text: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object of a piece of JSON (and the last ``"model"`` in it)."""
    at = text.rfind(b'"usage"')
    if at < 0:
        return None
    decoder = json.JSONDecoder()
    try:
        rest = text[at + len(b'"usage"') :].decode("utf-8", "replace").lstrip()
        if not rest.startswith(":"):
            return None
        value, _ = decoder.raw_decode(rest[1:].lstrip())
        response: dict[str, Any] = {"usage": value}
        model_at = text.rfind(b'"model"')
        if model_at >= 0:
            tail = text[model_at + len(b'"model"') :].decode("utf-8", "replace").lstrip()
            if tail.startswith(":"):
                model, _ = decoder.raw_decode(tail[1:].lstrip())
                response["model"] = model
        return usage_of(response)
    except (ValueError, RecursionError):
        return None


class StreamUsage:
    """Reads usage from a server-sent-event stream fed chunk by chunk, as it passes.

    OpenAI streams carry it in the last data event (``stream_options.include_usage``);
    Anthropic streams in ``message_start`` (input tokens, model) and ``message_delta`` (output
    tokens so far). Only events that mention usage are decoded; an event longer than
    ``max_event_bytes`` is skipped.
    """

    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self.usage: Usage | None = None
        self._buffer = b""
        self._skipping = False
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> None:
        buffer = self._buffer + chunk
        while True:
            end, size = _event_end(buffer)
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + size :]
            if self._skipping:
                self._skipping = False
            elif b"usage" in event:
                self._event(event)
        if len(buffer) > self._max:
            buffer, self._skipping = b"", True
        self._buffer = buffer

    def _event(self, event: bytes) -> None:
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")
        )
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "message_start" and isinstance(message.get("message"), dict):
            start = usage_of(message["message"])
            if start is not None:
                self.usage = start
            return
        found = usage_of(message)
        if found is None:
            return
        if message.get("type") == "message_delta" and self.usage is not None:
            # Anthropic: the running output count, the input count and model from message_start.
            self.usage = replace(self.usage, tokens_out=found.tokens_out)
        elif found.model or self.usage is None:
            self.usage = found
        else:
            self.usage = replace(found, model=self.usage.model)


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Where the first event of ``buffer`` ends and the separator's length, or (-1, 0)."""
    ends = [(i, len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else (-1, 0)
