"""The README quick start, as a user runs it: LAGO_* in the environment, "lago" switched
on at module level, ``tallygate.completion`` against a provider, ``tallygate.flush()``.
Everything is real: the SDK's loop thread, the SQLite outbox, the delivery worker, HTTP
to a fake OpenAI and to the Lago stand-in."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

import tallygate
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.sdk_fixtures import EVENT_CODE, MESSAGES, SdkPaths, openai_kwargs

pytestmark = pytest.mark.timeout(30)  # a hang (deadlock) fails, not blocks

# Published per-token prices of gpt-4o-mini (USD), checked against genai-prices' data.
GPT_4O_MINI_INPUT = Decimal("0.15") / 1_000_000
GPT_4O_MINI_CACHED = Decimal("0.075") / 1_000_000
GPT_4O_MINI_OUTPUT = Decimal("0.60") / 1_000_000

TOKEN_PROPERTIES = ("input_tokens", "output_tokens", "prompt_tokens", "completion_tokens",
                    "total_tokens", "cached_input_tokens", "cache_creation_input_tokens",
                    "reasoning_tokens")


def batch_bodies(lago: FakeLago) -> list[dict[str, Any]]:
    """Every event body tallygate posted to Lago, as sent (before Lago's permit list)."""
    out: list[dict[str, Any]] = []
    for req in lago.requests:
        if req.path == "/api/v1/events/batch":
            out += req.body["events"]
        elif req.path == "/api/v1/events":
            out.append(req.body["event"])
    return out


@pytest.mark.parametrize("switch", ["success_callback", "callbacks"])
def test_quick_start_bills_each_call_once_with_the_specified_fields(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, switch: str) -> None:
    openai_fake.prompt_tokens, openai_fake.completion_tokens = 1000, 200
    openai_fake.cached_tokens, openai_fake.reasoning_tokens = 800, 50
    setattr(tallygate, switch, ["lago"])

    responses = [tallygate.completion(model="gpt-4o-mini", messages=MESSAGES,
                                      user="customer-42", api_base=openai_fake.base_url,
                                      api_key="sk-test")
                 for _ in range(3)]
    tallygate.flush()

    expected_cost = (200 * GPT_4O_MINI_INPUT + 800 * GPT_4O_MINI_CACHED
                     + 200 * GPT_4O_MINI_OUTPUT)
    assert expected_cost == Decimal("0.00021")
    assert set(lago.events) == {r.call_id for r in responses}
    sent = {b["transaction_id"]: b for b in batch_bodies(lago)}
    for r in responses:
        assert lago.count(r.call_id) == 1
        assert r.cost == expected_cost
        stored = lago.events[r.call_id]
        assert stored.transaction_id == r.call_id
        assert stored.external_subscription_id == "customer-42"
        assert stored.code == EVENT_CODE
        body = sent[r.call_id]
        assert body["external_customer_id"] == "customer-42"
        assert re.fullmatch(r"\d{10}\.\d{3}", body["timestamp"])
        assert body["timestamp"] == r.usage_event.timestamp
        props = stored.properties
        assert props["model"] == "gpt-4o-mini"
        assert props["provider"] == "openai"
        assert props["usage_source"] == "provider"
        assert Decimal(props["response_cost"]) == expected_cost
        assert {k: props[k] for k in TOKEN_PROPERTIES} == {
            "input_tokens": 1000, "prompt_tokens": 1000, "output_tokens": 200,
            "completion_tokens": 200, "total_tokens": 1200, "cached_input_tokens": 800,
            "cache_creation_input_tokens": 0, "reasoning_tokens": 50}
    assert lago.schema_violations == []


def test_the_response_says_what_was_billed(sdk: SdkPaths, lago: FakeLago,
                                           openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    r = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    assert r.choices[0].message.content == "Hello from the fake OpenAI."
    assert r.usage.prompt_tokens == 12 and r.usage.completion_tokens == 7
    dumped = r.model_dump()
    assert dumped["object"] == "chat.completion"
    assert dumped["choices"][0]["message"]["content"] == "Hello from the fake OpenAI."
    dumped["choices"].clear()  # a copy: the response is not changed by it
    assert r.choices[0].message.role == "assistant"
    assert r.usage_event.call_id == r.call_id
    assert r.cost == 12 * GPT_4O_MINI_INPUT + 7 * GPT_4O_MINI_OUTPUT
    with pytest.raises(AttributeError):
        r.model = "other"
    # What went upstream: the caller's model and the end user, with the caller's key.
    sent = openai_fake.received[-1]
    assert sent.body is not None and sent.body["model"] == "gpt-4o-mini"
    assert sent.body["user"] == "customer-42"
    assert sent.headers["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(("charge_by", "metadata", "customer"), [
    ("user_id", {"user_id": "user-7"}, "user-7"),
    ("team_id", {"team_id": "team-3", "user_id": "user-7"}, "team-3"),
    ("user_id", {"user_api_key_user_id": "user-9"}, "user-9"),
])
def test_charge_by_reads_the_customer_from_metadata(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch, charge_by: str, metadata: dict[str, str],
        customer: str) -> None:
    monkeypatch.setenv("LAGO_API_CHARGE_BY", charge_by)
    tallygate.success_callback = ["lago"]
    r = tallygate.completion(model="gpt-4o-mini", user="end-user-1", metadata=metadata,
                             **openai_kwargs(openai_fake))
    tallygate.flush()
    assert r.usage_event.customer == customer
    assert lago.events[r.call_id].external_subscription_id == customer
    assert batch_bodies(lago)[0]["external_customer_id"] == customer
    assert lago.schema_violations == []


def test_a_call_without_a_customer_is_not_sent_to_lago_and_says_why(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
        caplog: pytest.LogCaptureFixture) -> None:
    tallygate.success_callback = ["lago", "jsonl"]
    r = tallygate.completion(model="gpt-4o-mini", **openai_kwargs(openai_fake))
    tallygate.flush()
    assert "unattributed" in r.usage_event.flags
    assert lago.events == {}
    assert any(r.call_id in m and "unattributed" in m for m in caplog.messages)
    # It is still recorded where it can be: the JSONL file.
    assert r.call_id in sdk.jsonl.read_text()


def test_the_same_process_keeps_billing_after_flush(sdk: SdkPaths, lago: FakeLago,
                                                    openai_fake: FakeOpenAI) -> None:
    tallygate.callbacks = ["lago"]
    first = tallygate.completion(model="gpt-4o-mini", user="c1", **openai_kwargs(openai_fake))
    tallygate.flush()
    second = tallygate.completion(model="gpt-4o-mini", user="c2",
                                  **openai_kwargs(openai_fake))
    tallygate.flush()
    assert lago.count(first.call_id) == 1 and lago.count(second.call_id) == 1
    assert lago.events[second.call_id].external_subscription_id == "c2"
