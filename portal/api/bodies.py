"""JSON bodies of the API's changes, validated with pydantic; the OpenAPI document describes
these same models."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from ..kernel.bodies import Body, decimal_text

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ID = r"^[A-Za-z0-9._:-]+$"
MAX_EVENTS = 1000
MAX_METADATA_BYTES = 8192
# An event may be dated this far ahead of the server's clock (clocks drift).
FUTURE_SLACK = timedelta(minutes=5)
# An event may arrive this late (as Stripe's meter events): an older one would land in a period
# long closed, and stay past every retention.
LATE_ARRIVAL = timedelta(days=35)
# The largest count a limit or a setting takes.
BIG = 10**12
# The most tokens or units one call or event may count. A day's rollup of calls at the
# enterprise plan's windows (1,000 events a call) still sums inside a 64-bit column, and so
# does a day's window counter in Redis.
PER_CALL = 10**9
# Metadata nests at most this deep.
MAX_METADATA_DEPTH = 20


def check_json_value(value: Any, depth: int = 0) -> None:
    """Refuse what no column can store: NaN and infinities (not JSON numbers), integers past 64
    bits, strings that are not text (a lone surrogate), and nesting deeper than
    :data:`MAX_METADATA_DEPTH`."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity are not JSON numbers")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} lies outside the 64-bit integers")
    elif isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("holds a lone surrogate (an escape like \\ud800 alone), which is not text") from None
    elif isinstance(value, dict | list):
        if depth >= MAX_METADATA_DEPTH:
            raise ValueError(f"nests deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(value, dict):
            for key in value:
                check_json_value(key, depth + 1)
        for item in value.values() if isinstance(value, dict) else value:
            check_json_value(item, depth + 1)


def whole_number(value: Any) -> Any:
    """JSON Schema's integer: 3 and 3.0, never true or "3"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def text_time(value: Any) -> Any:
    """A time is an ISO 8601 string (a bare number is not one)."""
    if value is not None and not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time with a time zone, e.g. 2026-11-18T12:30:00Z")
    return value


class UsageEventFields(BaseModel):
    """A reported event's fields and checks, without a :class:`Body`'s reading of NUL and 3.0: a
    batch valid as sent is validated with these straight from its JSON bytes."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, min_length=1, max_length=60, pattern=ID, description="your id of the event: the same id counts once"
    )
    service: str = Field(
        validation_alias=AliasChoices("service", "service_name"),
        min_length=1,
        max_length=64,
        pattern=NAME,
        description="the outside service (openai, groq, twitter, youtube, apify...)",
    )
    endpoint: str = Field("", max_length=255)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "POST"
    status_code: int = Field(strict=True, default=200, ge=100, le=599)
    duration_ms: int = Field(strict=True, default=0, ge=0, le=86_400_000)
    user_id: str | None = Field(None, max_length=120, description="your end user who made the call")
    tokens_used: int | None = Field(
        strict=True, default=None, ge=0, le=PER_CALL, description="tokens, when not split into in and out"
    )
    tokens_in: int | None = Field(
        strict=True, default=None, ge=0, le=PER_CALL, description="input tokens, cached ones included"
    )
    tokens_out: int | None = Field(strict=True, default=None, ge=0, le=PER_CALL)
    cached_tokens: int | None = Field(
        strict=True, default=None, ge=0, le=PER_CALL, description="of tokens_in, those read from cache"
    )
    units: int | None = Field(
        strict=True, default=None, ge=0, le=PER_CALL, description="quota units (YouTube) or compute units (Apify)"
    )
    model: str | None = Field(None, max_length=120)
    category: str | None = Field(None, max_length=64)
    error_message: str | None = Field(None, max_length=2000)
    metadata: dict[str, Any] | None = None
    occurred_at: Annotated[AwareDatetime, BeforeValidator(text_time)] | None = Field(
        None,
        validation_alias=AliasChoices("occurred_at", "created_at"),
        description="when the call happened (default: now)",
    )
    permit_id: str | None = Field(
        None, min_length=1, max_length=64, pattern=ID, description="the permit of its acquire: counted then"
    )

    @field_validator("service", mode="after")
    @classmethod
    def lower_service(cls, value: str) -> str:
        return value.lower()

    @field_validator("metadata")
    @classmethod
    def small_metadata(cls, value: dict | None) -> dict | None:
        if value is None:
            return value
        check_json_value(value)
        if len(json.dumps(value, default=str)) > MAX_METADATA_BYTES:
            raise ValueError(f"at most {MAX_METADATA_BYTES} bytes of JSON")
        quota_cost = value.get("quota_cost")
        # Read as the event's units when it gives none (seed 002's YouTube example): bounded as units are.
        if isinstance(quota_cost, int) and not isinstance(quota_cost, bool) and not 0 <= quota_cost <= PER_CALL:
            raise ValueError(f"quota_cost: a whole number from 0 to {PER_CALL:,} (it counts as the event's units)")
        return value

    @model_validator(mode="after")
    def consistent(self) -> UsageEventFields:
        if self.tokens_used is not None and (self.tokens_in is not None or self.tokens_out is not None):
            raise ValueError("give tokens_used or tokens_in/tokens_out, not both")
        if (self.cached_tokens or 0) > (self.tokens_in or self.tokens_used or 0):
            raise ValueError("cached_tokens cannot exceed the input tokens (tokens_in counts cached ones too)")
        return self

    def as_event(self, now: float) -> dict[str, Any]:
        """The plain event :func:`portal.costs.events.report_events` takes."""
        meta = self.metadata or {}
        model = self.model or (meta.get("model") if isinstance(meta.get("model"), str) else None) or ""
        units = self.units
        quota_cost = meta.get("quota_cost")
        if units is None and isinstance(quota_cost, int) and not isinstance(quota_cost, bool) and quota_cost >= 0:
            units = quota_cost  # seed 002's YouTube example reports its quota cost so
        tokens_in = self.tokens_used if self.tokens_used is not None else (self.tokens_in or 0)
        return {
            "id": self.id,
            "permit_id": self.permit_id,
            "service": self.service,
            "endpoint": self.endpoint,
            "method": self.method,
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "end_user": self.user_id or "",
            "tokens_in": tokens_in,
            "tokens_out": self.tokens_out or 0,
            "cached_tokens": self.cached_tokens or 0,
            "quota_units": units or 0,
            "model": model[:120],
            "category": self.category or ("llm" if tokens_in or self.tokens_out else ""),
            "error_message": self.error_message,
            "meta": self.metadata,
            "occurred_at": self.occurred_at.timestamp() if self.occurred_at else now,
        }


class UsageEvent(Body, UsageEventFields):
    """A call the tenant made to an outside service (seed 002's ``log_api_call``).

    ``tokens_in`` counts every input token, cached ones included (as OpenAI's ``prompt_tokens``);
    ``cached_tokens`` may not exceed it. Give ``tokens_used`` (priced at the input price) or the
    split, not both. ``occurred_at`` may not lie more than 5 minutes ahead, nor more than 35
    days back (the late-arrival window, as Stripe's meter events allow: a period is billed
    within days of its end), nor before the account was made; such an event is refused with
    a 422 naming it and the earliest time accepted. Every number is bounded: counts up to
    10^9 (``metadata.quota_cost`` too, which counts as the event's ``units``), integers in
    ``metadata`` within 64 bits; NaN and Infinity are not JSON numbers and are refused.
    """


class UsageEventBatch(Body):
    events: list[UsageEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class _BatchAsSent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[UsageEventFields] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsBody(RootModel[UsageEventBatch | UsageEvent]):
    """One event, or ``{"events": [...]}`` of up to 1,000."""

    @classmethod
    def parse_json(cls, data: Any) -> list[UsageEvent]:
        # Validated as the one shape it claims to be, so errors name that shape's fields.
        if isinstance(data, dict) and "events" in data:
            return UsageEventBatch.model_validate(data).events
        return [UsageEvent.model_validate(data)]

    @classmethod
    def parse_batch_bytes(cls, raw: bytes) -> list[UsageEventFields] | None:
        """A batch's events validated straight from its JSON bytes (a third of the cost of
        decoding first), or None when only :meth:`parse_json` can tell: not a valid batch as
        sent, or a NUL escape in it. A batch valid as sent has no float where an integer goes,
        so reading 3.0 as 3 would change nothing in it; the answer is the same either way."""
        if b"\\u0000" in raw:
            return None
        try:
            return _BatchAsSent.model_validate_json(raw).events
        except ValidationError:
            return None


class AcquireBody(Body):
    units: int = Field(
        strict=True, default=1, ge=1, le=PER_CALL, description="quota units the call will use (requests count 1)"
    )
    model: str | None = Field(None, max_length=120, description="the model, for limits on one model")
    user_id: str | None = Field(None, max_length=120, description="your end user, for per-user budgets")


class ServiceLimitBody(Body):
    limit_type: Literal["minute", "hour", "day", "month"]
    limit_value: int = Field(strict=True, ge=1, le=BIG)
    unit: Literal["requests", "quota_units"] = "requests"
    model: str = Field("", max_length=120, description="'' limits every model of the service")


# Dollars and cents, as a JSON number or a string ("12.50").
MONEY_TEXT = "^(0\\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,9}(\\.[0-9]{1,2})?)$"
Money = Annotated[
    Decimal,
    Field(
        gt=0,
        le=Decimal("9999999999.99"),
        decimal_places=2,
        json_schema_extra={
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 9999999999.99, "multipleOf": 0.01},
                {"type": "string", "pattern": MONEY_TEXT},
            ]
        },
    ),
    # After the Field: it checks the text first, and the limits stay pydantic's own (and the schema's).
    decimal_text(MONEY_TEXT, '"12.50"'),
]
Percent = Annotated[int, Field(strict=True, ge=1, le=1000), BeforeValidator(whole_number)]


class BudgetBody(Body):
    name: str = Field(min_length=1, max_length=120)
    amount: Money = Field(description="dollars a month")
    service: str | None = Field(None, max_length=64, pattern=NAME)
    api_key_id: int | None = Field(strict=True, default=None, ge=1, le=2**31 - 1)
    user_id: str | None = Field(None, min_length=1, max_length=120)
    warning_percentages: list[Percent] | None = Field(None, min_length=1, max_length=10)
    hard_stop: bool = Field(False, strict=True)


class BudgetChange(Body):
    name: str | None = Field(None, min_length=1, max_length=120)
    amount: Money | None = None
    service: str | None = Field(None, max_length=64, pattern=NAME)
    api_key_id: int | None = Field(strict=True, default=None, ge=1, le=2**31 - 1)
    user_id: str | None = Field(None, min_length=1, max_length=120)
    warning_percentages: list[Percent] | None = Field(None, min_length=1, max_length=10)
    hard_stop: bool | None = Field(None, strict=True)


class AccountSettingsBody(Body):
    limits_when_redis_down: Literal["open", "closed"] = Field(
        description="acquires with Redis unreachable: allowed (best effort) or refused"
    )
