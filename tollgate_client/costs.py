"""Outside-service calls: the events reported for them, permits of acquires, and the usage of
OpenAI-style and Anthropic responses as event fields."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .usage import Usage, usage_of

if TYPE_CHECKING:
    from .client import TollgateClient

log = logging.getLogger("tollgate_client")

EVENTS_PER_REQUEST = 1000  # the server's limit on one batch
MAX_ERROR_MESSAGE = 2000
# What an event may carry (``service_name`` and ``created_at`` are the server's other names).
EVENT_FIELDS = frozenset(
    {
        "id",
        "service",
        "service_name",
        "endpoint",
        "method",
        "status_code",
        "duration_ms",
        "user_id",
        "tokens_used",
        "tokens_in",
        "tokens_out",
        "cached_tokens",
        "units",
        "model",
        "category",
        "error_message",
        "metadata",
        "occurred_at",
        "created_at",
        "permit_id",
    }
)
# Fields a permit's report takes from the call; its service and permit are the acquire's.
RECORDABLE = EVENT_FIELDS - {"id", "service", "service_name", "permit_id"}


def new_event_id() -> str:
    """A fresh event id: the server counts an id once, so a resent event is not counted twice."""
    return uuid.uuid4().hex


def iso_time(value: datetime | str) -> str:
    """An event time as ISO 8601; a naive datetime is refused (its zone would be a guess)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("occurred_at must be an aware datetime (give it a tzinfo, e.g. UTC)")
    return value.isoformat()


def prepared_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` ready to send: None values dropped, an ``id`` when it had none, the
    time as ISO 8601."""
    body = {name: value for name, value in event.items() if value is not None}
    body.setdefault("id", new_event_id())
    for name in ("occurred_at", "created_at"):
        if name in body:
            body[name] = iso_time(body[name])
    return body


def _status_of(exc: BaseException) -> int:
    """The HTTP status an exception carries (``status_code`` or ``status``), else 500."""
    for name in ("status_code", "status"):
        value = getattr(exc, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return 500


class Permit:
    """A permit to call an outside service, from :meth:`TollgateClient.acquire`.

    As a context manager it reports one event for the call on exit: ``duration_ms`` measured
    around the block, status 200, or if the block raised, the exception's ``status_code`` /
    ``status`` (else 500) and ``error_message``; plus what :meth:`record` set. The block's
    exception is re-raised. Without ``with``, call :meth:`report` once the call is done.
    """

    def __init__(
        self,
        client: TollgateClient,
        permit_id: str | None,
        service: str,
        units: int,
        limits: list[dict] | None = None,
        *,
        model: str | None = None,
        user_id: str | None = None,
        degraded: bool = False,
    ) -> None:
        self.client = client
        self.permit_id = permit_id
        self.service = service
        self.units = units
        self.limits = list(limits or [])
        #: True when the server could not check the limits (its Redis was down) and let the call go.
        self.degraded = degraded
        #: The id of the call's event: reporting it again counts it once.
        self.event_id = new_event_id()
        #: The server's answer to the report (None until reported).
        self.reported: dict | None = None
        self._fields: dict[str, Any] = {"model": model, "user_id": user_id}
        self._started: float | None = None

    def __repr__(self) -> str:
        return f"Permit({self.service!r}, permit_id={self.permit_id!r}, units={self.units})"

    def record(self, fields: Mapping[str, Any] | None = None, /, **more: Any) -> Permit:
        """Add fields to the call's event (tokens, model, units, endpoint, metadata...), from a
        dict such as :func:`event_from_openai`'s and/or keywords. Later values win; metadata
        is merged. ``service`` and ``permit_id`` stay the acquire's."""
        given = {**(fields or {}), **more}
        unknown = set(given) - EVENT_FIELDS
        if unknown:
            raise TypeError(f"not event fields: {', '.join(sorted(unknown))}")
        for name, value in given.items():
            if name not in RECORDABLE or value is None:
                continue
            if name == "metadata" and isinstance(self._fields.get("metadata"), dict):
                value = {**self._fields["metadata"], **value}
            self._fields[name] = value
        return self

    def event(self, **fields: Any) -> dict[str, Any]:
        """The call's event: what was recorded, then ``fields``."""
        self.record(fields)
        event = {**self._fields, "id": self.event_id, "service": self.service, "permit_id": self.permit_id}
        return {name: value for name, value in event.items() if value is not None}

    def report(self, **fields: Any) -> dict:
        """Report the call (``POST /usage/events``) with what was recorded and ``fields``."""
        self.reported = self.client.report_events([self.event(**fields)])
        return self.reported

    def __enter__(self) -> Permit:
        self._started = time.monotonic()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self.reported is not None:
            return False  # reported inside the block already
        started = self._started if self._started is not None else time.monotonic()
        outcome: dict[str, Any] = {"status_code": 200}
        if "duration_ms" not in self._fields:
            outcome["duration_ms"] = max(0, round((time.monotonic() - started) * 1000))
        if exc is not None:
            outcome["status_code"] = _status_of(exc)
            outcome["error_message"] = (str(exc) or type(exc).__name__)[:MAX_ERROR_MESSAGE]
        elif "status_code" in self._fields:
            outcome.pop("status_code")
        try:
            self.report(**outcome)
        except Exception as failure:
            if exc is None:
                raise
            # The block's own exception goes on; the lost report is logged and noted on it.
            log.warning("could not report the %s call of permit %s: %s", self.service, self.permit_id, failure)
            exc.add_note(f"tollgate: the call's event was not reported: {failure}")
        return False


def event_from_openai(response: Any, *, service: str = "openai", endpoint: str | None = None) -> dict[str, Any]:
    """The event fields of a model response (an SDK object or its dict): ``model``,
    ``tokens_in`` (cached tokens included), ``tokens_out`` and ``cached_tokens``.

    Reads OpenAI chat completions (``prompt_tokens``, ``completion_tokens``,
    ``prompt_tokens_details.cached_tokens``), the Responses API (``input_tokens``,
    ``output_tokens``, ``input_tokens_details.cached_tokens``) and Anthropic messages, whose
    ``input_tokens`` leaves out ``cache_read_input_tokens`` and ``cache_creation_input_tokens``.
    ``endpoint`` defaults to the shape's: /v1/chat/completions, /v1/responses or /v1/messages.
    """
    usage = usage_of(response) or Usage(endpoint="/v1/chat/completions")
    event: dict[str, Any] = {
        "service": service,
        "endpoint": usage.endpoint if endpoint is None else endpoint,
        "tokens_in": usage.tokens_in,
        "tokens_out": usage.tokens_out,
        "cached_tokens": usage.cached_tokens,
    }
    model = getattr(response, "model", None) if not isinstance(response, Mapping) else response.get("model")
    if isinstance(model, str) and model:
        event["model"] = model
    return event
