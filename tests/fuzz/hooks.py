"""Schemathesis hooks for the API fuzz run: the rules the OpenAPI document states in words but
JSON Schema cannot express (one field against another, or against stored state). A request that
breaks one is answered 422, as documented; only that refusal is forgiven. Every other failure
stands."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import schemathesis

FUTURE = timedelta(minutes=5)
LATE_ARRIVAL = timedelta(days=35)


def _date(value):
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _instant(value):
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return at if at is not None and at.tzinfo is not None else None


def _number(value) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _event_ok(event) -> bool:
    if not isinstance(event, dict):
        return True
    split = event.get("tokens_in") is not None or event.get("tokens_out") is not None
    if event.get("tokens_used") is not None and split:
        return False
    given = _number(event.get("tokens_in")) or _number(event.get("tokens_used"))
    if _number(event.get("cached_tokens")) > given:
        return False
    at = _instant(event.get("occurred_at"))
    if at is not None and at > datetime.now(UTC) + FUTURE:
        return False
    if at is not None and at < datetime.now(UTC) - LATE_ARRIVAL:
        return False  # past the late-arrival window (or before the tenant): refused with 422
    return len(str(event.get("metadata") or "")) < 4000


def follows_the_rules(case) -> bool:
    query = case.query or {}
    start = _date(query.get("startDate"))
    end = _date(query.get("endDate")) or datetime.now(UTC).date()  # endDate's default: today
    if start and end and start > end:
        return False
    body = case.body if isinstance(case.body, dict) else {}
    path = case.path
    if path.endswith("/usage/events") and body:
        events = body.get("events") if isinstance(body.get("events"), list) else [body]
        return all(_event_ok(e) for e in events)
    if path.endswith("/acquire") and isinstance(body.get("units"), int) and body["units"] > 10_000:
        return False  # more than YouTube's whole day: refused with 422, no wait helps
    if "/budgets" in path and body:
        scopes = [body.get(name) for name in ("service", "api_key_id", "user_id")]
        if sum(1 for s in scopes if s) > 1 or body.get("api_key_id"):
            return False  # one scope at most; a key id must be one of the account's keys
    return True


@schemathesis.hook
def filter_case(context, case) -> bool:
    return follows_the_rules(case)


def exceeds_a_whole_window(case, response) -> bool:
    """An acquire of more units than a window allows at all: 422, whatever limit the run set."""
    return case.path.endswith("/acquire") and "exceed the" in (response.text or "")


# An alert rule's fields against each other and against the stored rule (its kind, its other
# threshold), as the rule operations' descriptions state.
RULE_CONFLICTS = (
    "a rule needs a warning or a critical threshold",
    "the warning threshold",
    " thresholds",  # "error_rate takes percent thresholds"
    "cannot be narrowed",
    "cannot be set on the default rule",
    "api_key_id: no such key",
)


def breaks_a_rule_constraint(case, response) -> bool:
    return "/alerts/" in case.path and any(text in (response.text or "") for text in RULE_CONFLICTS)


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    # The coverage phase builds its cases without filter_case: forgive its documented 422s.
    if response.status_code != 422 or type(failure).__name__ != "RejectedPositiveData":
        return True
    if breaks_a_rule_constraint(case, response):
        return False
    return follows_the_rules(case) and not exceeds_a_whole_window(case, response)
