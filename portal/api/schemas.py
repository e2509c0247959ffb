"""Query parameters of the API, validated with pydantic; the OpenAPI document is built from
these same models, so the description and the validation cannot drift apart."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..models import utcnow


def iso_day(value: Any) -> Any:
    """A day given as YYYY-MM-DD (a bare number is not a day)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected a date as YYYY-MM-DD")
    return value


Day = Annotated[date, BeforeValidator(iso_day)]


def days_before(day: date, count: int) -> date:
    """``count`` days before ``day``, or the first day there is."""
    try:
        return day - timedelta(days=count)
    except OverflowError:
        return date.min


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        plain = {}
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is not None and field.annotation is int and not re.fullmatch(r"-?[0-9]+", value):
                value = "not a number"  # " 80" or "8_0" are no whole numbers in a URL: refused as such
            # PostgreSQL stores and compares no NUL characters: U+0000 is read as U+FFFD.
            plain[name] = value.replace("\x00", "\ufffd") if isinstance(value, str) else value
        return plain


class StatsQuery(Query):
    service: str | None = Field(None, max_length=64, description="only this service (e.g. groq)")
    days: int = Field(30, ge=1, le=366, description="days to look back, today included")


class LogsQuery(Query):
    service: str | None = Field(None, max_length=64, description="only this service")
    limit: int = Field(50, ge=1, le=1000, description="records per page")
    offset: int = Field(0, ge=0, le=10**9, description="records to skip")


class RateLimitsQuery(Query):
    service: str | None = Field(None, max_length=64, description="only this service")


class RateLimitQuery(Query):
    limit_type: Literal["minute", "hour", "day", "month"] = Field("minute", description="the window")
    model: str | None = Field(None, max_length=120, description="a limit on one model of the service")


class AccountUsageQuery(Query):
    startDate: Day | None = Field(None, description="first day (UTC), default 30 days ago")  # noqa: N815
    endDate: Day | None = Field(None, description="last day (UTC), default today")  # noqa: N815
    interval: Literal["hourly", "daily", "weekly", "monthly"] = Field("daily", description="bucket size")
    category: str | None = Field(None, max_length=64, description="only this category")

    @model_validator(mode="after")
    def dates_in_order(self) -> AccountUsageQuery:
        today = utcnow().date()
        self.endDate = self.endDate or today
        self.startDate = self.startDate or days_before(self.endDate, 30)
        if self.startDate > self.endDate:
            raise ValueError("startDate must not be after endDate")
        # Any range is fine: it reads rollups, which hold only days with calls (and hourly ones
        # only within the plan's retention).
        return self


class CostReportQuery(Query):
    group_by: Literal["service", "model", "endpoint", "key", "end_user", "day"] = Field(
        "service", description="what to group the spend by"
    )
    startDate: Day | None = Field(None, description="first day (UTC); default: `days` ago")  # noqa: N815
    endDate: Day | None = Field(None, description="last day (UTC), default today")  # noqa: N815
    days: int = Field(30, ge=1, le=3660, description="days up to endDate, when startDate is not given")
    service: str | None = Field(None, max_length=64, description="only this service")
    source: Literal["external", "api", "all"] = Field(
        "external", description="outside services (default), Tollgate's own API, or both"
    )
    format: Literal["json", "csv"] = Field("json", description="json or csv")

    @model_validator(mode="after")
    def dates_in_order(self) -> CostReportQuery:
        self.endDate = self.endDate or utcnow().date()
        self.startDate = self.startDate or days_before(self.endDate, self.days - 1)
        if self.startDate > self.endDate:
            raise ValueError("startDate must not be after endDate")
        return self


class ApiUsageQuery(Query):
    days: int = Field(30, ge=1, le=366, description="days of trends to include")


def describe_errors(error: ValidationError, whole: str = "query") -> str:
    """One line naming each bad parameter and what is wrong with it."""
    parts = []
    for item in error.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"]).lstrip(".") or whole
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
