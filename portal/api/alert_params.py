"""Query strings and bodies of the alert operations (seed 001), validated with pydantic; the
OpenAPI document describes these same models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..alerts.bodies import AlertType, Severity
from .schemas import Query


class AlertsQuery(Query):
    type: AlertType | None = Field(None, description="only alerts of this type")
    severity: Severity | None = Field(None, description="only this severity")
    status: Literal["active", "acknowledged", "resolved", "all"] | None = Field(
        None, description="default: the open ones (active and acknowledged)"
    )
    limit: int = Field(100, ge=1, le=500, description="alerts to return, newest first")


class HistoryQuery(Query):
    type: AlertType | None = Field(None, description="only alerts of this type")
    severity: Severity | None = Field(None, description="only this severity")
    days: int = Field(30, ge=1, le=366, description="alerts triggered in the last days")
    limit: int = Field(200, ge=1, le=1000, description="alerts to return, newest first")


class StatsQuery(Query):
    days: int = Field(30, ge=1, le=366, description="alerts first triggered in the last days")
