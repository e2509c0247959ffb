"""Query parameters of the API, validated with pydantic; the OpenAPI document is built from
these same models, so the description and the validation cannot drift apart."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..models import utcnow


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class StatsQuery(Query):
    service: str | None = Field(None, max_length=64, description="only this service (e.g. groq)")
    days: int = Field(30, ge=1, le=366, description="days to look back, today included")


class LogsQuery(Query):
    service: str | None = Field(None, max_length=64, description="only this service")
    limit: int = Field(50, ge=1, le=1000, description="records per page")
    offset: int = Field(0, ge=0, description="records to skip")


class RateLimitsQuery(Query):
    service: str | None = Field(None, max_length=64, description="only this service")


class RateLimitQuery(Query):
    limit_type: Literal["minute", "hour", "day", "month"] = Field("minute", description="the window")


class AccountUsageQuery(Query):
    startDate: date | None = Field(None, description="first day (UTC), default 30 days ago")  # noqa: N815
    endDate: date | None = Field(None, description="last day (UTC), default today")  # noqa: N815
    interval: Literal["hourly", "daily", "weekly", "monthly"] = Field("daily", description="bucket size")
    category: str | None = Field(None, max_length=64, description="only this category")

    @model_validator(mode="after")
    def dates_in_order(self) -> AccountUsageQuery:
        today = utcnow().date()
        self.endDate = self.endDate or today
        self.startDate = self.startDate or self.endDate - timedelta(days=30)
        if self.startDate > self.endDate:
            raise ValueError("startDate must not be after endDate")
        if (self.endDate - self.startDate).days > 366:
            raise ValueError("the range may span at most 366 days")
        if self.interval == "hourly" and (self.endDate - self.startDate).days > 31:
            raise ValueError("hourly usage covers at most 31 days")
        return self


class ApiUsageQuery(Query):
    days: int = Field(30, ge=1, le=366, description="days of trends to include")


def describe_errors(error: ValidationError) -> str:
    """One line naming each bad parameter and what is wrong with it."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "query"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
