"""The example chatbot product (examples/chatbot) answers deterministically, counts usage, streams."""

from __future__ import annotations

import hashlib
import json

import pytest
from flask.testing import FlaskClient

from examples.chatbot.app import create_app


@pytest.fixture
def bot(monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    monkeypatch.delenv("CHATBOT_TOKEN", raising=False)
    return create_app().test_client()


def test_answer_is_deterministic_with_usage(bot: FlaskClient) -> None:
    first = bot.post("/api/chat", json={"message": "Hello", "botId": "test"})
    second = bot.post("/api/chat", json={"message": "Hello", "botId": "test"})
    assert first.status_code == 200
    assert first.get_json() == second.get_json()
    answer = first.get_json()
    assert answer["id"] == "chat-" + hashlib.sha256(b"testHello").hexdigest()[:12]
    assert answer["botId"] == "test"
    assert answer["model"] == "chatbot-mini"
    assert answer["reply"] == "Bot test heard: Hello"
    # "Hello" is 5 characters: 2 tokens + 8 for the system prompt; the reply is 21 characters: 6.
    assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    assert answer["caller"] == {"tenant": None, "keyId": None, "endUser": None}


def test_other_input_other_answer_and_default_bot(bot: FlaskClient) -> None:
    answer = bot.post("/api/chat", json={"message": "Hi"}).get_json()
    assert answer["botId"] == "default"
    assert answer["reply"] == "Bot default heard: Hi"
    assert answer["usage"]["prompt_tokens"] == 9
    assert answer["id"] != bot.post("/api/chat", json={"message": "Hello"}).get_json()["id"]


def test_caller_comes_from_tollgate_headers(bot: FlaskClient) -> None:
    headers = {"X-Tollgate-Tenant": "acme", "X-Tollgate-Key-Id": "key_123", "X-Tollgate-End-User": "user-9"}
    answer = bot.post("/api/chat", json={"message": "Hello"}, headers=headers).get_json()
    assert answer["caller"] == {"tenant": "acme", "keyId": "key_123", "endUser": "user-9"}


def test_stream_sends_a_delta_per_word_then_usage_and_done(bot: FlaskClient) -> None:
    response = bot.post("/api/chat", json={"message": "Hello there", "botId": "test", "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.is_streamed
    events = [e.removeprefix("data: ") for e in response.get_data(as_text=True).split("\n\n") if e]
    assert [json.loads(e)["delta"] for e in events[:-2]] == ["Bot ", "test ", "heard: ", "Hello ", "there "]
    assert json.loads(events[-2]) == {
        "model": "chatbot-mini",
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
    assert events[-1] == "[DONE]"
    plain = bot.post("/api/chat", json={"message": "Hello there", "botId": "test"}).get_json()
    assert json.loads(events[-2])["usage"] == plain["usage"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "message is required"),
        ({"message": ""}, "message is required"),
        ({"message": "   "}, "message is required"),
        ({"message": 5}, "message must be a string"),
        ({"message": "Hi", "botId": "x" * 65}, "botId must be at most 64 characters"),
        ({"message": "Hi", "botId": 7}, "botId must be a non-empty string"),
        ({"message": "Hi", "stream": "yes"}, "stream must be true or false"),
        (["Hello"], 'body must be a JSON object with a "message"'),
    ],
)
def test_bad_bodies_are_400(bot: FlaskClient, body: object, error: str) -> None:
    response = bot.post("/api/chat", json=body)
    assert response.status_code == 400
    assert response.get_json() == {"error": error}


def test_non_json_body_is_400(bot: FlaskClient) -> None:
    response = bot.post("/api/chat", data="message=Hello", content_type="text/plain")
    assert response.status_code == 400
    assert "error" in response.get_json()


def test_bot_id_of_64_characters_is_fine(bot: FlaskClient) -> None:
    assert bot.post("/api/chat", json={"message": "Hi", "botId": "x" * 64}).status_code == 200


def test_health(bot: FlaskClient) -> None:
    response = bot.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}


def test_chatbot_token_is_required_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATBOT_TOKEN", "s3cret")
    client = create_app().test_client()
    for headers in ({}, {"X-Chatbot-Token": "wrong"}):
        refused = client.post("/api/chat", json={"message": "Hello"}, headers=headers)
        assert refused.status_code == 401
        assert refused.get_json() == {"error": "bad or missing X-Chatbot-Token"}
    accepted = client.post("/api/chat", json={"message": "Hello"}, headers={"X-Chatbot-Token": "s3cret"})
    assert accepted.status_code == 200
    assert accepted.get_json()["reply"] == "Bot default heard: Hello"
