"""The SDK reaches gemini/ and vertex_ai/ (Gemini and Claude) with LiteLLM's parameters,
and each call lands in Lago priced exactly: tiers above 200k prompt tokens, safety
blocks, streams, embeddings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

import tallygate
from tallygate.errors import BadRequestError
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.lago_server import FakeLago
from tests.fakes.server_base import run_in_thread
from tests.fakes.vertex_server import FakeVertex
from tests.google_fixtures import (  # noqa: F401  (fixtures)
    rsa_key_fixture,
    vertex_fixture,
)
from tests.proxy_harness import wait_for
from tests.sdk_fixtures import MESSAGES

MTOK = Decimal(1_000_000)
GEMINI_KEY = "AIza-sdk-test"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with run_in_thread(FakeGemini()) as fake:
        fake.require_api_key = GEMINI_KEY
        yield fake


def studio(fake: FakeGemini, **extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "api_base": fake.base_url, "api_key": GEMINI_KEY, **extra}


def on_vertex(fake: FakeVertex, **extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "api_base": fake.url, "vertex_project": "tg-project",
            "vertex_location": "global", "vertex_credentials": fake.service_account(),
            **extra}


def delivered(lago: FakeLago, call_id: str) -> dict[str, Any]:
    tallygate.flush()
    wait_for(lambda: call_id in lago.events)
    assert lago.count(call_id) == 1
    return lago.events[call_id].properties


def test_gemini_chat_billed(lago: FakeLago, gemini: FakeGemini) -> None:
    tallygate.callbacks = ["lago"]
    gemini.script.prompt_tokens, gemini.script.cached_tokens = 2000, 1500
    gemini.script.candidates_tokens, gemini.script.thoughts_tokens = 60, 40
    r = tallygate.completion(model="gemini/gemini-2.5-flash", user="sdk-cust",
                             **studio(gemini))
    assert r.choices[0].message.content == "Hello from the fake Gemini."
    # 500 uncached x $0.3 + 1500 cached x $0.03 + (60 + 40 thinking) x $2.5, per Mtok
    expected = (500 * Decimal("0.3") + 1500 * Decimal("0.03") + 100 * Decimal("2.5")) / MTOK
    assert r.cost == expected
    p = delivered(lago, r.call_id)
    assert Decimal(p["response_cost"]) == expected
    assert (p["uncached_input_tokens"], p["cached_input_tokens"], p["output_tokens"],
            p["reasoning_tokens"]) == (500, 1500, 100, 40)


def test_prompts_over_200k_pay_the_higher_tier(sdk: object, gemini: FakeGemini) -> None:
    gemini.script.prompt_tokens, gemini.script.cached_tokens = 250_000, 50_000
    gemini.script.candidates_tokens = 1000
    r = tallygate.completion(model="gemini/gemini-2.5-pro", **studio(gemini))
    # Above 200k prompt tokens every token of the call is priced at gemini-2.5-pro's
    # upper tier: $2.5 input, $0.25 cache read, $15 output per Mtok.
    expected = (200_000 * Decimal("2.5") + 50_000 * Decimal("0.25")
                + 1000 * Decimal("15")) / MTOK
    assert r.cost == expected
    gemini.script.prompt_tokens, gemini.script.cached_tokens = 150_000, 0
    r = tallygate.completion(model="gemini/gemini-2.5-pro", **studio(gemini))
    assert r.cost == (150_000 * Decimal("1.25") + 1000 * Decimal("10")) / MTOK


def test_tool_use_prompt_tokens_are_input(sdk: object, gemini: FakeGemini) -> None:
    gemini.script.prompt_tokens, gemini.script.tool_use_prompt_tokens = 100, 900
    gemini.script.candidates_tokens = 10
    r = tallygate.completion(model="gemini/gemini-2.5-flash", **studio(gemini))
    assert r.usage_event.usage.input_tokens == 1000
    assert r.cost == (1000 * Decimal("0.3") + 10 * Decimal("2.5")) / MTOK


def test_safety_blocks_are_content_filter_answers_still_billed(
        sdk: object, gemini: FakeGemini) -> None:
    gemini.script.block_reason = "SAFETY"
    gemini.script.prompt_tokens = 42
    r = tallygate.completion(model="gemini/gemini-2.5-flash", **studio(gemini))
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content is None
    assert r.cost == 42 * Decimal("0.3") / MTOK  # the prompt was read and is billed
    gemini.script.block_reason = None
    gemini.script.finish_reason = "SAFETY"
    stream = tallygate.completion(model="gemini/gemini-2.5-flash", stream=True,
                                  **studio(gemini))
    finishes = [c.choices[0].finish_reason for c in stream if c.choices]
    assert finishes[-1] == "content_filter"


def test_vertex_gemini_and_claude_through_the_sdk(lago: FakeLago, vertex: FakeVertex) -> None:
    tallygate.callbacks = ["lago"]
    vertex.script.prompt_tokens, vertex.script.candidates_tokens = 400, 30
    r = tallygate.completion(model="vertex_ai/gemini-2.5-flash", user="v",
                             **on_vertex(vertex))
    assert r.cost == (400 * Decimal("0.3") + 30 * Decimal("2.5")) / MTOK
    assert vertex.received[-1].path == ("/v1/projects/tg-project/locations/global/"
                                        "publishers/google/models/"
                                        "gemini-2.5-flash:generateContent")
    vertex.claude.input_tokens, vertex.claude.cache_write_tokens = 100, 2000
    vertex.claude.output_tokens = 50
    with tallygate.completion(model="vertex_ai/claude-haiku-4-5@20251001", user="v",
                              stream=True, stream_options={"include_usage": True},
                              **on_vertex(vertex)) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake Claude.")
    event = stream.usage_event
    assert event is not None
    # 100 x $1 + 2000 cache writes x $1.25 + 50 x $5, per Mtok (google's Claude prices)
    assert event.cost == (100 * Decimal("1") + 2000 * Decimal("1.25")
                          + 50 * Decimal("5")) / MTOK
    p = delivered(lago, event.call_id)
    assert p["cache_creation_input_tokens"] == 2000 and p["provider"] == "vertex_ai"
    assert vertex.token_fetches == 1


def test_gemini_embeddings(sdk: object, gemini: FakeGemini) -> None:
    r = tallygate.embedding(model="gemini/gemini-embedding-001", input=["one", "two"],
                            api_base=gemini.base_url, api_key=GEMINI_KEY)
    assert [len(d.embedding) for d in r.data] == [4, 4]
    assert r.usage_event.usage.input_tokens == 2  # Google's usageMetadata
    assert r.cost == 2 * Decimal("0.15") / MTOK
    gemini.script.embed_usage = False
    r = tallygate.embedding(model="gemini/gemini-embedding-001", input="a longer text here",
                            api_base=gemini.base_url, api_key=GEMINI_KEY)
    assert gemini.received[-1].path.endswith(":embedContent")
    assert r.usage_event.usage.source == "estimated"
    assert r.usage_event.usage.input_tokens == 5


def test_bad_schema_is_refused_before_sending(sdk: object, gemini: FakeGemini) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}
    with pytest.raises(BadRequestError) as caught:
        tallygate.completion(model="gemini/gemini-2.5-flash", tools=[tool], **studio(gemini))
    assert caught.value.param == "tools[0].function.parameters.properties.a.not"
    assert gemini.received == []


def test_thought_signatures_survive_the_round_trip(sdk: object, gemini: FakeGemini) -> None:
    from tests.fakes.server_base import FakeToolCall

    gemini.script.tool_call = FakeToolCall("get_weather", {"city": "Oslo"})
    gemini.script.thought_signature = "Q2lnbmF0dXJlLTEyMw=="
    first = tallygate.completion(model="gemini/gemini-3-pro-preview", tools=[{
        "type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}],
        **studio(gemini))
    call = first.choices[0].message.tool_calls[0]
    # The next turn only works if the signature comes back (Gemini 3 refuses it without).
    gemini.script.require_signature = "Q2lnbmF0dXJlLTEyMw=="
    gemini.script.tool_call = None
    assistant = {"role": "assistant", "content": None, "tool_calls": [{
        "id": call.id, "type": "function",
        "function": {"name": call.function.name, "arguments": call.function.arguments}}]}
    history = [*MESSAGES, assistant,
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"t": 3})}]
    second = tallygate.completion(model="gemini/gemini-3-pro-preview", api_key=GEMINI_KEY,
                                  api_base=gemini.base_url, messages=history)
    assert second.choices[0].message.content == "Hello from the fake Gemini."
    sent = gemini.received[-1].body
    assert sent is not None
    assert sent["contents"][2]["parts"] == [{"functionResponse": {
        "name": "get_weather", "response": {"t": 3}}}]
