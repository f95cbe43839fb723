"""Golden billing for ``bedrock/`` deployments through the proxy: the official openai SDK
on the chat route and the Responses door, the anthropic SDK on the Messages door,
google-genai on the Gemini door, against the SigV4-checking Bedrock stand-in, each call's
Lago event compared with a cost worked out by hand.

Claude Sonnet 4.5 through the ``us.`` cross-region profile is priced by genai-prices
("aws", the regional price) at, per million tokens: $3.30 input, $16.50 output, $0.33
cache reads, $4.125 5-minute cache writes, $6.60 1-hour cache writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.bedrock_support import CLAUDE, PROFILE_ARN, aws_env_fixture, bedrock_entry
from tests.fakes.bedrock_server import FakeBedrock, FakeToolCall, run_in_thread
from tests.fakes.lago_server import FakeLago
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    RunningProxy,
    await_for,
    billed,
    config_dict,
    gemini_client,
    lago_env,
    lago_fixture,
    leave_stream,
    openai_client_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

__all__ = ["aws_env_fixture"]

MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]
MTOK = Decimal(1_000_000)


def claude_cost(*, input: int = 0, output: int = 0, read: int = 0, write_5m: int = 0,
                write_1h: int = 0) -> Decimal:
    return (input * Decimal("3.3") + output * Decimal("16.5") + read * Decimal("0.33")
            + write_5m * Decimal("4.125") + write_1h * Decimal("6.6")) / MTOK


@pytest.fixture(name="fake")
def fake_fixture(aws_env: Path) -> Iterator[FakeBedrock]:
    with run_in_thread(FakeBedrock()) as fake:
        yield fake


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, fake: FakeBedrock) -> Iterator[RunningProxy]:
    cfg = config_dict([
        bedrock_entry("claude", fake),
        {**bedrock_entry("profiled", fake, PROFILE_ARN),
         "model_info": {"base_model": f"bedrock/{CLAUDE}"}},
        bedrock_entry("unpriced", fake, PROFILE_ARN),
        bedrock_entry("titan", fake, "amazon.titan-embed-text-v2:0"),
        bedrock_entry("cohere", fake, "cohere.embed-english-v3",
                      input_cost_per_token="0.0000001"),
    ], tmp_path)
    # Bedrock's own answers, errors included, as a client sees them when the gateway does
    # not retry (the router has its own tests).
    cfg["router_settings"] = {"num_retries": 0}
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def assert_billed(lago: FakeLago, call_id: str, customer: str, cost: Decimal, *,
                  uncached: int, output: int, read: int = 0, written: int = 0,
                  written_1h: int = 0) -> dict[str, Any]:
    ev = billed(lago, call_id, customer)
    p = ev.properties
    assert p["provider"] == "bedrock" and p["usage_source"] == "provider"
    assert (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"], p["output_tokens"]) == (
        uncached, read, written, output)
    assert p.get("cache_creation_1h_input_tokens", 0) == written_1h
    assert p["input_tokens"] == uncached + read + written  # all input, as LiteLLM counts it
    assert p["unknown_price"] == "false"
    assert Decimal(p["response_cost"]) == cost
    return dict(p)


def test_chat_answered_and_billed(client: openai.OpenAI, fake: FakeBedrock,
                                  lago: FakeLago) -> None:
    fake.input_tokens, fake.output_tokens = 1200, 85
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-1", max_tokens=300, temperature=0.3)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake Bedrock."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 1200
    expected = claude_cost(input=1200, output=85)  # 0.00396 + 0.0014025
    assert Decimal(raw.headers[COST_HEADER]) == expected == Decimal("0.0053625")
    props = assert_billed(lago, raw.headers[CALL_ID_HEADER], "cust-1", expected,
                          uncached=1200, output=85)
    assert props["model"] == CLAUDE and props["model_group"] == "claude"
    body = fake.requests[-1]
    assert body["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.3}
    assert fake.checks[-1].access_key is not None and not fake.auth_failures


def test_stream_answered_and_billed(client: openai.OpenAI, fake: FakeBedrock,
                                    lago: FakeLago) -> None:
    fake.input_tokens, fake.output_tokens, fake.stream_chunks = 640, 33, 5
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-2", stream=True,
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake Bedrock."
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (640, 33)
    props = assert_billed(lago, raw.headers[CALL_ID_HEADER], "cust-2",
                          claude_cost(input=640, output=33), uncached=640, output=33)
    assert "stream" in props["flags"].split(",")
    assert fake.raw_paths[-1].endswith("/converse-stream")


@pytest.mark.parametrize("stream", [False, True])
def test_cached_with_5_minute_and_1_hour_writes(client: openai.OpenAI, fake: FakeBedrock,
                                                lago: FakeLago, stream: bool) -> None:
    fake.input_tokens, fake.output_tokens = 200, 40
    fake.cache_read_tokens, fake.cache_write_tokens, fake.cache_write_1h_tokens = 3000, 500, 700
    messages: Any = [
        {"role": "system", "content": [
            {"type": "text", "text": "A long manual.", "cache_control": {"type": "ephemeral",
                                                                         "ttl": "1h"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Chapter 1?", "cache_control": {"type": "ephemeral"}}]}]
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=messages, user="cust-3", stream=stream)
    if stream:
        list(raw.parse())
    body = fake.requests[-1]
    assert body["system"] == [{"text": "A long manual."},
                              {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert body["messages"][0]["content"][-1] == {"cachePoint": {"type": "default"}}
    expected = claude_cost(input=200, output=40, read=3000, write_5m=500, write_1h=700)
    # 0.00066 + 0.00066 + 0.00099 + 0.0020625 + 0.00462
    assert expected == Decimal("0.0089925")
    assert_billed(lago, raw.headers[CALL_ID_HEADER], "cust-3", expected, uncached=200,
                  output=40, read=3000, written=1200, written_1h=700)


def test_reasoning(client: openai.OpenAI, fake: FakeBedrock, lago: FakeLago) -> None:
    fake.reasoning_text = "The user greets me; greet back."
    fake.input_tokens, fake.output_tokens = 30, 410  # thinking is billed as output
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-4", reasoning_effort="high",
        max_tokens=8000)
    message = raw.parse().choices[0].message
    assert message.content == "Hello from the fake Bedrock."
    assert (message.model_extra or {})["reasoning_content"] == fake.reasoning_text
    assert fake.requests[-1]["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 4096}}
    assert_billed(lago, raw.headers[CALL_ID_HEADER], "cust-4",
                  claude_cost(input=30, output=410), uncached=30, output=410)
    # streamed, the thinking arrives as reasoning_content deltas
    sraw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-4", reasoning_effort="low", stream=True)
    chunks = list(sraw.parse())
    thought = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                      for c in chunks if c.choices)
    assert thought == fake.reasoning_text
    assert_billed(lago, sraw.headers[CALL_ID_HEADER], "cust-4",
                  claude_cost(input=30, output=410), uncached=30, output=410)


WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call(client: openai.OpenAI, fake: FakeBedrock, lago: FakeLago,
                   stream: bool) -> None:
    fake.reply_text = ""
    fake.tool_call = FakeToolCall("get_weather", {"city": "Lisbon"}, id="tooluse_abc")
    fake.input_tokens, fake.output_tokens = 310, 52
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-5", tools=[WEATHER],
        tool_choice="required", stream=stream)
    if stream:
        chunks = list(raw.parse())
        calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
        assert calls[0].id == "tooluse_abc" and calls[0].function is not None
        assert calls[0].function.name == "get_weather"
        arguments = "".join(t.function.arguments or "" for t in calls if t.function)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        choice = raw.parse().choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        call = choice.message.tool_calls[0]
        assert call.id == "tooluse_abc" and call.function.name == "get_weather"
        arguments = call.function.arguments
    assert arguments.replace(" ", "") == '{"city":"Lisbon"}'
    assert fake.requests[-1]["toolConfig"]["toolChoice"] == {"any": {}}
    assert_billed(lago, raw.headers[CALL_ID_HEADER], "cust-5",
                  claude_cost(input=310, output=52), uncached=310, output=52)
    # the answer of the tool goes back as a toolResult turn
    client.chat.completions.create(model="claude", user="cust-5", tools=[WEATHER], messages=[
        *MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "tooluse_abc", "content": "21C and sunny"}])
    assert fake.requests[-1]["messages"][2]["content"][0] == {"toolResult": {
        "toolUseId": "tooluse_abc", "content": [{"text": "21C and sunny"}]}}


async def test_stream_aborted_by_the_client(proxy: RunningProxy, fake: FakeBedrock,
                                            lago: FakeLago) -> None:
    fake.reply_text = "word " * 100
    fake.stream_chunks, fake.chunk_delay = 100, 0.02  # two seconds if nobody leaves
    call_id = await leave_stream(proxy.base_url + "/v1/chat/completions", {
        "model": "claude", "messages": MESSAGES, "user": "leaver", "stream": True}, count=5)
    await await_for(lambda: call_id in lago.events, timeout=10)
    p = lago.events[call_id].properties
    assert {"client_disconnected", "estimated_usage", "stream"} <= set(p["flags"].split(","))
    assert p["usage_source"] == "estimated" and 0 < p["output_tokens"] < 100
    # estimated output at Claude's output price, estimated input at its input price
    assert Decimal(p["response_cost"]) == claude_cost(input=p["uncached_input_tokens"],
                                                      output=p["output_tokens"])
    await await_for(lambda: fake.stream_aborted, timeout=5)  # upstream read stopped
    assert fake.frames_sent < fake.frames_total
    await asyncio.sleep(0.2)
    assert lago.count(call_id) == 1


def test_throttled_keeps_429_and_retry_after_and_bills_nothing(
        client: openai.OpenAI, fake: FakeBedrock, lago: FakeLago) -> None:
    fake.fail(429, "Too many requests, please wait before trying again.",
              headers={"Retry-After": "2"})
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="claude", messages=MESSAGES, user="cust-6")
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "2"
    assert "Too many requests" in info.value.message
    call_id = info.value.response.headers[CALL_ID_HEADER]
    fake.fail(503, "Model is not ready", error_type="ModelNotReadyException")
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="claude", messages=MESSAGES, user="cust-6",
                                       stream=True)
    assert unavailable.value.status_code == 503
    ok = client.chat.completions.with_raw_response.create(model="claude", messages=MESSAGES,
                                                          user="cust-6")
    billed(lago, ok.headers[CALL_ID_HEADER], "cust-6")  # delivered: the failures were not
    assert len(lago.stored) == 1 and call_id not in lago.events


def test_mid_stream_exception_bills_what_was_produced(client: openai.OpenAI,
                                                      fake: FakeBedrock,
                                                      lago: FakeLago) -> None:
    fake.stream_exception = "modelStreamErrorException"
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-7", stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == "Hello from"  # what came before the exception reached the client
    assert "fake in-stream failure" in info.value.message
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "cust-7")
    p = ev.properties
    assert "estimated_usage" in p["flags"].split(",") and p["usage_source"] == "estimated"
    assert p["output_tokens"] == 3  # "Hello from": 10 characters at 4 a token
    assert Decimal(p["response_cost"]) == claude_cost(input=p["uncached_input_tokens"],
                                                      output=3)


def test_application_profile_priced_by_base_model(client: openai.OpenAI, fake: FakeBedrock,
                                                  lago: FakeLago) -> None:
    fake.input_tokens, fake.output_tokens = 100, 10
    raw = client.chat.completions.with_raw_response.create(
        model="profiled", messages=MESSAGES, user="cust-8")
    assert fake.model_ids[-1] == PROFILE_ARN
    assert_billed(lago, raw.headers[CALL_ID_HEADER], "cust-8",
                  claude_cost(input=100, output=10), uncached=100, output=10)
    raw = client.chat.completions.with_raw_response.create(
        model="unpriced", messages=MESSAGES, user="cust-8")
    p = billed(lago, raw.headers[CALL_ID_HEADER], "cust-8").properties
    assert p["unknown_price"] == "true" and "response_cost" not in p


def test_embeddings_titan_and_cohere(client: openai.OpenAI, fake: FakeBedrock,
                                     lago: FakeLago) -> None:
    raw = client.embeddings.with_raw_response.create(model="titan", input="three short words",
                                                     dimensions=256, user="cust-9")
    result = raw.parse()
    assert len(result.data) == 1 and len(result.data[0].embedding) == 256
    assert result.usage.prompt_tokens == 4
    p = billed(lago, raw.headers[CALL_ID_HEADER], "cust-9").properties
    assert p["kind"] == "embedding" and p["input_tokens"] == 4
    assert Decimal(p["response_cost"]) == 4 * Decimal("0.02") / MTOK  # Titan v2: $0.02/MTok
    assert fake.raw_paths[-1].endswith("/invoke")
    # Titan embeds one text per request: a list goes as one request each, in order
    before = len(fake.raw_paths)
    raw = client.embeddings.with_raw_response.create(
        model="titan", input=["one", "two words", "and three words"], user="cust-9")
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1, 2] and len(fake.raw_paths) == before + 3
    assert sorted(b["inputText"] for b in fake.requests[-3:]) == [
        "and three words", "one", "two words"]
    p = billed(lago, raw.headers[CALL_ID_HEADER], "cust-9").properties
    assert p["input_tokens"] == 2 + 3 + 4 and p["usage_source"] == "provider"
    assert Decimal(p["response_cost"]) == 9 * Decimal("0.02") / MTOK
    fake.fail(429, "Too many requests")  # one of them throttled: the call fails, unbilled
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="titan", input=["x", "y"], user="cust-9")
    failed_id = info.value.response.headers[CALL_ID_HEADER]
    raw = client.embeddings.with_raw_response.create(model="cohere", input=["a b", "c d e f"],
                                                     user="cust-9")
    assert [len(d.embedding) for d in raw.parse().data] == [4, 4]
    p = billed(lago, raw.headers[CALL_ID_HEADER], "cust-9").properties
    # Cohere's answer has no token count: estimated from the texts, and flagged
    assert p["usage_source"] == "estimated" and p["input_tokens"] == 1 + 2
    assert Decimal(p["response_cost"]) == 3 * Decimal("0.0000001")
    assert fake.requests[-1] == {"texts": ["a b", "c d e f"], "input_type": "search_document"}
    assert failed_id not in lago.events


# --- the Messages door --------------------------------------------------------------------

def test_messages_door_to_bedrock(proxy: RunningProxy, fake: FakeBedrock,
                                  lago: FakeLago) -> None:
    fake.input_tokens, fake.output_tokens = 150, 20
    fake.cache_read_tokens, fake.cache_write_1h_tokens = 1000, 400
    client = anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0)
    system: Any = [{"type": "text", "text": "A long manual.",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    raw = client.messages.with_raw_response.create(
        model="claude", max_tokens=200, system=system, messages=MESSAGES,
        metadata={"user_id": "door-1"})
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake Bedrock."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens, message.usage.output_tokens) == (
        150, 1000, 400, 20)
    assert fake.requests[-1]["system"][-1] == {"cachePoint": {"type": "default", "ttl": "1h"}}
    assert "cache_control" not in raw.headers.get("x-tallygate-dropped-params", "")
    expected = claude_cost(input=150, output=20, read=1000, write_1h=400)
    assert Decimal(raw.headers[COST_HEADER]) == expected
    assert_billed(lago, raw.headers[CALL_ID_HEADER], "door-1", expected, uncached=150,
                  output=20, read=1000, written=400, written_1h=400)
    with client.messages.stream(model="claude", max_tokens=200, messages=MESSAGES,
                                metadata={"user_id": "door-2"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        call_id = stream.response.headers[CALL_ID_HEADER]
    assert text == "Hello from the fake Bedrock."
    assert final.usage.output_tokens == 20 and final.usage.cache_read_input_tokens == 1000
    assert_billed(lago, call_id, "door-2", expected, uncached=150, output=20, read=1000,
                  written=400, written_1h=400)
    # Claude Code's breakpoint on the last tool result: a cachePoint after the toolResult
    client.messages.create(model="claude", max_tokens=50, tools=[{
        "name": "ls", "input_schema": {"type": "object"}}], messages=[
        {"role": "user", "content": "List files"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "ls",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "a.txt", "cache_control": {
                                          "type": "ephemeral"}}]}])
    assert fake.requests[-1]["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "a.txt"}]}},
        {"cachePoint": {"type": "default"}}]
    client.close()


# --- the Responses door -------------------------------------------------------------------

def test_responses_door_to_bedrock(client: openai.OpenAI, fake: FakeBedrock,
                                   lago: FakeLago) -> None:
    fake.input_tokens, fake.output_tokens = 75, 12
    raw = client.responses.with_raw_response.create(model="claude", input="Say hi",
                                                    instructions="Be brief.", user="resp-1")
    response = raw.parse()
    assert response.output_text == "Hello from the fake Bedrock."
    assert fake.requests[-1]["system"] == [{"text": "Be brief."}]
    assert_billed(lago, raw.headers[CALL_ID_HEADER], "resp-1",
                  claude_cost(input=75, output=12), uncached=75, output=12)
    sraw = client.responses.with_raw_response.create(model="claude", input="Say hi",
                                                     user="resp-2", stream=True)
    events = list(sraw.parse())
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the fake Bedrock."
    assert events[-1].type == "response.completed"
    assert fake.raw_paths[-1].endswith("/converse-stream")
    assert_billed(lago, sraw.headers[CALL_ID_HEADER], "resp-2",
                  claude_cost(input=75, output=12), uncached=75, output=12)


# --- the Gemini door ----------------------------------------------------------------------

def test_gemini_door_to_bedrock(proxy: RunningProxy, fake: FakeBedrock, lago: FakeLago) -> None:
    from google.genai import types

    fake.input_tokens, fake.output_tokens = 64, 9
    gemini = gemini_client(proxy.base_url)
    config = types.GenerateContentConfig(system_instruction="Be brief.",
                                         labels={"user": "gem-1"})
    answer = gemini.models.generate_content(model="claude", contents="Say hi", config=config)
    assert answer.text == "Hello from the fake Bedrock."
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.prompt_token_count == 64
    assert fake.requests[-1]["system"] == [{"text": "Be brief."}]
    text = "".join(c.text or "" for c in gemini.models.generate_content_stream(
        model="claude", contents="Say hi", config=config))
    assert text == "Hello from the fake Bedrock."
    assert fake.raw_paths[-1].endswith("/converse-stream")
    def billed_to_gem() -> list[Any]:
        return [ev for ev in lago.stored if ev.external_subscription_id == "gem-1"]

    wait_for(lambda: len(billed_to_gem()) >= 2)
    events = billed_to_gem()
    assert len(events) == 2
    for ev in events:
        assert ev.properties["provider"] == "bedrock"
        assert Decimal(ev.properties["response_cost"]) == claude_cost(input=64, output=9)
