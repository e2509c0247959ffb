"""Property: every event body the API accepts is stored by the worker, exactly once.

Hypothesis writes the bodies — one event or a batch, every field at and around its bounds, any
JSON in ``metadata`` (NUL and other control characters, huge and tiny floats, deep-ish
nesting). A body is refused (422) or accepted (202); an accepted one's events are all stored,
none set aside, nothing else in the stream. Runs on SQLite and on PostgreSQL like every test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from portal.extensions import db
from portal.metering.stream import STREAM
from portal.models import UsageDeadLetter, UsageRecord
from tests.api_helpers import drain
from tests.factories import new_tenant

EVENTS = "/api/v1/usage/events"
NOW = datetime(2026, 11, 18, 12, 30, 10, tzinfo=UTC)  # the clock fixture's time
PER_CALL = 10**9  # the most tokens or units one event counts
INT64 = 2**63

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-INT64, max_value=INT64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
count = st.integers(min_value=0, max_value=PER_CALL) | st.sampled_from([0, 1, PER_CALL])
when = st.datetimes(
    min_value=(NOW - timedelta(days=35) + timedelta(seconds=1)).replace(tzinfo=None),
    max_value=(NOW + timedelta(minutes=4)).replace(tzinfo=None),
    timezones=st.just(UTC),
).map(lambda at: at.isoformat().replace("+00:00", "Z"))

event = st.fixed_dictionaries(
    {"service": st.sampled_from(["openai", "anthropic", "youtube", "groq", "apify", "in-house_2"])},
    optional={
        "endpoint": st.text(max_size=255),
        "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        "status_code": st.integers(min_value=100, max_value=599),
        "duration_ms": st.integers(min_value=0, max_value=86_400_000),
        "user_id": st.text(max_size=120),
        "tokens_in": count,
        "tokens_out": count,
        "units": count,
        "model": st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", ""]) | st.text(max_size=120),
        "category": st.text(max_size=64),
        "error_message": st.text(max_size=200),
        "metadata": st.dictionaries(st.text(max_size=8), json_value, max_size=4)
        | st.fixed_dictionaries({"quota_cost": count}),
        "occurred_at": when,
    },
)
body = event | st.lists(event, min_size=1, max_size=8).map(lambda events: {"events": events})


def stored_count(app, tenant_id: int) -> tuple[int, int]:
    with app.app_context():
        records = db.session.scalar(
            select(func.count()).where(UsageRecord.tenant_id == tenant_id, UsageRecord.source == "external")
        )
        aside = db.session.scalar(select(func.count()).select_from(UsageDeadLetter))
        db.session.remove()
    return records, aside


def test_every_event_body_the_api_accepts_is_stored(app, clock, redis):
    tenant = new_tenant(app, "Property Co", plan="enterprise", key=True)
    client = app.test_client()
    expected = {"stored": 0}

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(body)
    def accepted_means_stored(sent):
        clock.advance(0.01)
        response = client.post(EVENTS, json=sent, headers=tenant.headers)
        assert response.status_code in (202, 422), response.text
        if response.status_code == 422:
            assert isinstance(response.json["detail"], str) and response.json["detail"]
            return
        expected["stored"] += response.json["accepted"]
        drain(app)
        assert stored_count(app, tenant.tenant_id) == (expected["stored"], 0)
        assert redis.xlen(STREAM) == 0

    accepted_means_stored()
    assert expected["stored"] > 100  # most bodies written are valid ones
