"""tollgate_client's outside-service costs against a live Tollgate server (gunicorn, the test
database and Redis): reported events and their ids, batches, acquires and their permits as
context managers, an exhausted service window; then ``event_from_openai`` and the event helpers
on their own.

Waiting goes through a recording ``sleep`` that returns at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
import requests

from portal.models import UsageRecord
from tests.api.test_client import Recorder, client_for, live_env
from tests.api_helpers import Servers, drain, free_port
from tests.api_helpers import external_records as stored_external_records
from tollgate_client import (
    BudgetExceeded,
    ConnectionFailed,
    InvalidRequest,
    Permit,
    RateLimited,
    ServiceLimitExceeded,
    TollgateClient,
    event_from_openai,
)
from tollgate_client.errors import error_for

live = pytest.mark.slow  # starts a gunicorn

GROQ_70B = {"endpoint": "/v1/chat/completions", "model": "llama-3.1-70b-versatile"}


@pytest.fixture(scope="module")
def server(app, tmp_path_factory) -> Iterator[str]:
    servers = Servers(live_env(app, str(tmp_path_factory.mktemp("client-costs-server"))), 1)
    yield servers.urls[0]
    servers.stop()


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    for session in recorder.sessions:
        session.close()


def external_records(app, tenant_id: int) -> list[UsageRecord]:
    drain(app)
    return stored_external_records(app, tenant_id)


def clear_of_minute_edge(margin: float = 5.0) -> None:
    """The server counts service windows on the real clock: keep the minute from turning."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def chat_completion(**usage_extra) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "llama-3.1-70b-versatile",
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500, **usage_extra},
    }


def as_object(value):
    """A dict as SDK-like objects with attributes (nested dicts too)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{name: as_object(item) for name, item in value.items()})
    return value


class LosesFirstResponse(requests.Session):
    """Sends each request, but the first response "never arrives" (the connection drops)."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.hooks["response"].append(recorder._hook)
        self.lost = False

    def request(self, method, url, *args, **kwargs):
        response = super().request(method, url, *args, **kwargs)
        if not self.lost:
            self.lost = True
            raise requests.ConnectionError("connection reset by peer")
        return response


# -- reporting events ---------------------------------------------------------------------------


@live
def test_report_event_stores_one_record_priced_as_seed_002(app, server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    body = client.report_event("groq", **GROQ_70B, tokens_used=400_000, user_id="u-7", duration_ms=840)
    assert body["success"] is True and (body["accepted"], body["duplicates"]) == (1, 0)
    [event_id] = body["ids"]
    assert re.fullmatch(r"[0-9a-f]{32}", event_id)  # made by the client
    [record] = external_records(app, tenant.tenant_id)
    assert record.cost == Decimal("0.236")
    assert (record.service, record.model, record.tokens_in, record.end_user) == (
        "groq",
        "llama-3.1-70b-versatile",
        400_000,
        "u-7",
    )
    assert (record.status_code, record.duration_ms, record.method) == (200, 840, "POST")
    assert rec.statuses == [202] and rec.sleeps == []


@live
def test_a_report_sent_twice_with_its_id_is_stored_once(app, server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    when = datetime.now(UTC) - timedelta(minutes=2)
    first = client.report_event("groq", **GROQ_70B, tokens_used=400_000, id="call-42", occurred_at=when)
    again = client.report_event("groq", **GROQ_70B, tokens_used=400_000, id="call-42", occurred_at=when)
    assert (first["duplicates"], again["duplicates"]) == (0, 1)
    assert first["ids"] == again["ids"] == ["call-42"]
    [record] = external_records(app, tenant.tenant_id)
    assert record.cost == Decimal("0.236")
    assert abs(record.occurred_at - when) < timedelta(seconds=1)


@live
def test_a_report_whose_response_was_lost_is_resent_and_counted_once(app, server, tenant, rec):
    session = LosesFirstResponse(rec)
    client = TollgateClient(tenant.secret, base_url=server, sleep=rec.sleep, session=session, jitter=lambda: 1.0)
    body = client.report_event("groq", **GROQ_70B, tokens_used=400_000)
    # The POST went out twice (the first answer was lost), with the same id.
    assert rec.statuses == [202, 202] and rec.sleeps == [0.5]
    assert body["duplicates"] == 1
    assert len(external_records(app, tenant.tenant_id)) == 1
    session.close()


@live
def test_report_events_sends_2500_events_in_three_requests(app, server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    events = [{"service": "groq", **GROQ_70B, "tokens_in": 100, "tokens_out": 10} for _ in range(2_500)]
    body = client.report_events(iter(events))
    assert rec.statuses == [202, 202, 202]
    assert (body["accepted"], body["duplicates"]) == (2_500, 0)
    assert len(set(body["ids"])) == 2_500
    assert all("id" not in event for event in events)  # the caller's dicts are left alone
    assert len(external_records(app, tenant.tenant_id)) == 2_500
    assert client.report_events([]) == {"accepted": 0, "duplicates": 0, "ids": []}
    assert rec.statuses == [202, 202, 202]


@live
def test_a_bad_event_in_a_batch_stores_nothing(app, server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    good = {"service": "groq", **GROQ_70B, "tokens_used": 10}
    bad = {"service": "groq", "tokens_in": 1, "cached_tokens": 5}
    with pytest.raises(InvalidRequest) as info:
        client.report_events([good, bad])
    assert info.value.status == 422 and "events[1]" in info.value.detail
    assert rec.statuses == [422]  # not retried
    assert external_records(app, tenant.tenant_id) == []


# -- acquire and its permit ---------------------------------------------------------------------


@live
def test_acquire_as_a_context_manager_reports_its_call_once(app, server, tenant, rec):
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec)
    with client.acquire("groq", model="llama-3.1-70b-versatile", user_id="u-1") as call:
        assert isinstance(call, Permit) and call.permit_id
        assert (call.service, call.units) == ("groq", 1)
        assert {limit["limit_type"] for limit in call.limits} >= {"minute", "day"}
        time.sleep(0.02)
        call.record(event_from_openai(as_object(chat_completion())), metadata={"attempt": 1})
    assert call.reported["accepted"] == 1 and call.reported["ids"] == [call.event_id]
    assert client.rate_limit("groq", limit_type="minute")["current_count"] == 1
    [record] = external_records(app, tenant.tenant_id)
    assert (record.service, record.endpoint, record.model, record.end_user) == (
        "groq",
        "/v1/chat/completions",
        "llama-3.1-70b-versatile",
        "u-1",
    )
    assert (record.tokens_in, record.tokens_out, record.cached_tokens) == (1200, 300, 0)
    assert record.status_code == 200 and record.error_message is None
    assert 20 <= record.duration_ms < 5_000
    assert record.meta == {"attempt": 1}
    assert record.cost is not None and record.cost > 0
    # Still counted once after the record is stored.
    assert client.rate_limit("groq", limit_type="minute")["current_count"] == 1


@live
def test_an_exception_in_the_block_is_reraised_and_still_reported(app, server, tenant, rec):
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec)

    class UpstreamError(Exception):
        status_code = 503

    with pytest.raises(UpstreamError, match="upstream overloaded"), client.acquire("groq") as call:
        call.record(model="llama-3.1-70b-versatile")
        raise UpstreamError("upstream overloaded")
    with pytest.raises(ValueError, match="bad prompt"), client.acquire("groq"):
        raise ValueError("bad prompt")
    assert client.rate_limit("groq", limit_type="minute")["current_count"] == 2
    first, second = external_records(app, tenant.tenant_id)
    assert (first.status_code, first.error_message, first.model) == (
        503,
        "upstream overloaded",
        "llama-3.1-70b-versatile",
    )
    assert (second.status_code, second.error_message) == (500, "bad prompt")


@live
def test_permit_report_without_with(app, server, tenant, rec):
    client = client_for(server, tenant.secret, rec)
    permit = client.acquire("youtube", units=100)
    assert permit.units == 100
    permit.report(endpoint="/youtube/v3/search", method="GET", units=100, duration_ms=120)
    [record] = external_records(app, tenant.tenant_id)
    assert (record.service, record.quota_units, record.duration_ms) == ("youtube", 100, 120)
    status = client.rate_limit("youtube", limit_type="day")
    assert status["current_count"] == 100 and status["unit"] == "quota_units"


@live
def test_an_exhausted_service_window_waits_retry_after_then_raises(app, server, tenant, rec):
    clear_of_minute_edge()
    client = client_for(server, tenant.secret, rec)
    for _ in range(30):
        client.acquire("groq", wait=False)
    rec.clear()

    with pytest.raises(ServiceLimitExceeded) as info:
        client.acquire("groq")
    error = info.value
    assert isinstance(error, RateLimited) and error.status == 429
    assert (error.service, error.window) == ("groq", "minute")
    assert 0 < error.retry_after <= 60
    minute = next(limit for limit in error.limits if limit["limit_type"] == "minute")
    assert (minute["current_count"], minute["remaining"], minute["can_call"]) == (30, 0, False)
    # Four refusals, each but the last followed by a wait of its Retry-After (max_retries=3).
    assert rec.kinds == ["response", "sleep"] * 3 + ["response"]
    assert rec.statuses == [429] * 4
    for (_, _, retry_after, _), (_, slept) in zip(rec.events[0::2], rec.events[1::2], strict=False):
        assert slept == float(retry_after)

    rec.clear()
    with pytest.raises(ServiceLimitExceeded):
        client.acquire("groq", wait=False)
    assert rec.statuses == [429] and rec.sleeps == []
    with pytest.raises(ServiceLimitExceeded):
        client.acquire("groq", max_wait=0.5)  # Retry-After is longer than the wait allowed
    assert rec.statuses == [429, 429] and rec.sleeps == []
    assert client.rate_limit("groq", limit_type="minute")["current_count"] == 30


# -- on their own -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [dict, as_object], ids=["dict", "object"])
def test_event_from_openai_reads_chat_completions(shape):
    response = shape(chat_completion(prompt_tokens_details={"cached_tokens": 1000}))
    assert event_from_openai(response) == {
        "service": "openai",
        "endpoint": "/v1/chat/completions",
        "model": "llama-3.1-70b-versatile",
        "tokens_in": 1200,
        "tokens_out": 300,
        "cached_tokens": 1000,
    }
    # No details: nothing cached.
    assert event_from_openai(shape(chat_completion()), service="groq")["cached_tokens"] == 0
    assert event_from_openai(shape(chat_completion()), service="groq")["service"] == "groq"


@pytest.mark.parametrize("shape", [dict, as_object], ids=["dict", "object"])
def test_event_from_openai_reads_the_responses_api(shape):
    response = shape(
        {
            "object": "response",
            "model": "gpt-4o-2024-08-06",
            "usage": {
                "input_tokens": 900,
                "input_tokens_details": {"cached_tokens": 400},
                "output_tokens": 120,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 1020,
            },
        }
    )
    assert event_from_openai(response) == {
        "service": "openai",
        "endpoint": "/v1/responses",
        "model": "gpt-4o-2024-08-06",
        "tokens_in": 900,
        "tokens_out": 120,
        "cached_tokens": 400,
    }
    assert event_from_openai(response, endpoint="/v1/chat/completions")["endpoint"] == "/v1/chat/completions"


@pytest.mark.parametrize("shape", [dict, as_object], ids=["dict", "object"])
def test_event_from_openai_reads_anthropic_messages(shape):
    response = shape(
        {
            "type": "message",
            "model": "claude-sonnet-4-5",
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 300,
                "output_tokens": 80,
            },
        }
    )
    assert event_from_openai(response, service="anthropic") == {
        "service": "anthropic",
        "endpoint": "/v1/messages",
        "model": "claude-sonnet-4-5",
        "tokens_in": 2350,  # input + cache reads + cache writes
        "tokens_out": 80,
        "cached_tokens": 2000,
    }
    # The SDK's objects carry None for the cache fields when nothing was cached.
    bare = shape(
        {
            "model": "claude-sonnet-4-5",
            "usage": {
                "input_tokens": 50,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": None,
                "output_tokens": 8,
            },
        }
    )
    assert event_from_openai(bare, service="anthropic")["tokens_in"] == 50
    assert event_from_openai(bare, service="anthropic")["cached_tokens"] == 0


def test_event_from_openai_without_usage():
    assert event_from_openai(SimpleNamespace(model="gpt-4o")) == {
        "service": "openai",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o",
        "tokens_in": 0,
        "tokens_out": 0,
        "cached_tokens": 0,
    }


def test_occurred_at_must_be_aware():
    client = TollgateClient("tg_unused", base_url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    with pytest.raises(ValueError, match="aware"):
        client.report_event("groq", occurred_at=datetime(2026, 11, 1, 12, 0))
    with pytest.raises(ValueError, match="aware"):
        client.report_events([{"service": "groq", "occurred_at": datetime(2026, 11, 1, 12, 0)}])
    from tollgate_client.costs import prepared_event

    event = prepared_event({"service": "groq", "occurred_at": datetime(2026, 11, 1, 12, 0, tzinfo=UTC)})
    assert event["occurred_at"] == "2026-11-01T12:00:00+00:00" and len(event["id"]) == 32
    assert "user_id" not in prepared_event({"service": "groq", "user_id": None})


def test_a_failed_report_on_exit_does_not_hide_the_blocks_exception(caplog, monkeypatch):
    # A migration's logging.config.fileConfig may have disabled the loggers that existed then.
    monkeypatch.setattr(logging.getLogger("tollgate_client"), "disabled", False)
    client = TollgateClient("tg_unused", base_url=f"http://127.0.0.1:{free_port()}", max_retries=0)
    with pytest.raises(KeyError) as info, Permit(client, "permit-1", "groq", 1):
        raise KeyError("missing")
    assert any("not reported" in note for note in info.value.__notes__)
    assert "could not report" in caplog.text
    # Without an exception in the block, the failed report is the error.
    with pytest.raises(ConnectionFailed), Permit(client, "permit-2", "groq", 1):
        pass


def test_record_refuses_unknown_fields_and_keeps_the_permits_service():
    permit = Permit(TollgateClient("tg_unused"), "permit-1", "groq", 1, model="llama-3.1-8b-instant")
    with pytest.raises(TypeError, match="tokens"):
        permit.record(tokens=5)
    permit.record(event_from_openai(chat_completion()), metadata={"a": 1})
    permit.record(metadata={"b": 2}, status_code=201)
    event = permit.event()
    assert (event["service"], event["permit_id"], event["id"]) == ("groq", "permit-1", permit.event_id)
    assert event["model"] == "llama-3.1-70b-versatile"  # the response's model wins
    assert event["metadata"] == {"a": 1, "b": 2} and event["status_code"] == 201


def test_a_402_is_budget_exceeded():
    error = error_for(402, "Budget 'Groq' ($5.00) is used up until 2026-12-01")
    assert isinstance(error, BudgetExceeded) and error.status == 402
