"""The bodies of alert settings and rules, shared by the API and the portal's forms (validated
with pydantic; the OpenAPI document describes these same models)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from ..kernel.bodies import Body
from .rules import COMPARATORS, DEFAULT_RULES, METRICS, THRESHOLD_UNITS

# The default rules' kinds whose thresholds seed 001's settings carry (budgets carry their own).
THRESHOLD_KINDS = tuple(rule.kind for rule in DEFAULT_RULES if rule.kind != "budget")
AlertType = Literal[(*THRESHOLD_KINDS, "budget", *sorted(METRICS))]  # custom rules' alerts carry their metric
Severity = Literal["warning", "critical"]
# A threshold in the metric's unit, as a JSON number or a string ("0.05"); kept to 6 decimals.
Threshold = Annotated[
    Decimal,
    Field(
        ge=0,
        le=10**9,
        allow_inf_nan=False,
        json_schema_extra={
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 10**9},
                {"type": "string", "pattern": "^[0-9]{1,9}(\\.[0-9]{1,6})?$"},
            ]
        },
    ),
]
CustomMetric = Literal[tuple(m for m in METRICS if m != "budget")]
Comparator = Literal[tuple(COMPARATORS)]
ThresholdUnit = Literal[THRESHOLD_UNITS]


class LevelChange(Body):
    warning: Threshold | None = None
    critical: Threshold | None = None
    enabled: bool | None = Field(None, strict=True, description="null leaves it as it is")


class AlertSettingsBody(Body):
    """Thresholds in seed 001's units: response_time in seconds, error_rate as a fraction
    (0.05 = 5%), usage_spike as times the normal rate, quota_usage and day_window in percent,
    rate_limited and unauthorized_access in calls an hour, daily_cost in dollars."""

    alert_thresholds: (
        dict[
            Literal[THRESHOLD_KINDS],
            LevelChange,
        ]
        | None
    ) = None
    resolve_after_evaluations: int | None = Field(
        None, strict=True, ge=1, le=1440, description="clear evaluations (one a minute) before an alert resolves itself"
    )
    notify_on_resolve: bool | None = Field(None, strict=True)


class RuleBody(Body):
    """A custom rule: a metric over a window, optionally narrowed to a service, endpoint, key or
    end user, compared with a warning and a critical threshold.

    Refused with 422: a rule with neither threshold; a critical threshold on the near side of
    the warning one (below it for gt/gte, above it for lt/lte); a threshold unit the metric does
    not take (error_rate is percent only; quota_usage and day_window take either); a filter on
    a metric that is not read per call (quota_usage, day_window, daily_cost, usage_spike,
    failed_auth); a key that is not the account's."""

    name: str = Field(min_length=1, max_length=120)
    metric: CustomMetric
    comparator: Comparator = "gt"
    threshold_unit: ThresholdUnit | None = Field(None, description="percent or absolute (default: the metric's)")
    warning_threshold: Threshold | None = None
    critical_threshold: Threshold | None = None
    window_minutes: int = Field(60, strict=True, ge=1, le=10080)
    min_volume: int = Field(0, strict=True, ge=0, le=10**9)
    cooldown_minutes: int = Field(60, strict=True, ge=0, le=10080)
    service: str | None = Field(None, min_length=1, max_length=64)
    endpoint: str | None = Field(None, min_length=1, max_length=255)
    api_key_id: int | None = Field(None, strict=True, ge=1, le=2**31 - 1)
    end_user: str | None = Field(None, min_length=1, max_length=120)
    is_enabled: bool = Field(True, strict=True)


class RuleChange(Body):
    """Fields to change. A filter or threshold set to null is removed; any other field set to
    null stays as it is. A default rule takes changes to its thresholds, threshold unit, window,
    minimum volume, cooldown and is_enabled only (422 otherwise), and the result must still be
    a valid rule (see creating one)."""

    name: str | None = Field(None, min_length=1, max_length=120)
    metric: CustomMetric | None = None
    comparator: Comparator | None = None
    threshold_unit: ThresholdUnit | None = None
    warning_threshold: Threshold | None = None
    critical_threshold: Threshold | None = None
    window_minutes: int | None = Field(None, strict=True, ge=1, le=10080)
    min_volume: int | None = Field(None, strict=True, ge=0, le=10**9)
    cooldown_minutes: int | None = Field(None, strict=True, ge=0, le=10080)
    service: str | None = Field(None, min_length=1, max_length=64)
    endpoint: str | None = Field(None, min_length=1, max_length=255)
    api_key_id: int | None = Field(None, strict=True, ge=1, le=2**31 - 1)
    end_user: str | None = Field(None, min_length=1, max_length=120)
    is_enabled: bool | None = Field(None, strict=True)

    # Fields that null removes; for the others null is no change.
    REMOVABLE: ClassVar[frozenset[str]] = frozenset(
        {"warning_threshold", "critical_threshold", "service", "endpoint", "api_key_id", "end_user"}
    )

    def changes(self) -> dict:
        given = self.model_dump(exclude_unset=True)
        return {k: v for k, v in given.items() if v is not None or k in self.REMOVABLE}
