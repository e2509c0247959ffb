"""Queries of the notification operations (the channel bodies are :mod:`portal.notify.bodies`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from .schemas import Query


def whole_number_text(value: Any) -> Any:
    """A query's number as sent: digits only (" 8", "8_0", "+8" are no numbers in a URL)."""
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
        raise ValueError("expected a whole number")
    return value


class DeliveriesQuery(Query):
    status: Literal["pending", "sent", "failed"] | None = Field(None, description="only deliveries in this state")
    channel_id: int | None = Field(None, ge=1, le=2**31 - 1, description="only this channel's deliveries")
    limit: int = Field(50, ge=1, le=200, description="deliveries to list, newest first")

    @field_validator("channel_id", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        return whole_number_text(value)
