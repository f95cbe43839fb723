"""Golden tests for Ollama through the proxy: the official openai and anthropic SDKs call
``ollama_chat/`` and ``ollama/`` deployments on the Ollama stand-in, and each call's Lago
event is checked against a cost worked out by hand from the deployment's own prices
(self-hosted models have no library price; without an override the price is unknown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from tallygate.estimate import estimate_prompt_tokens
from tests.fakes.lago_server import FakeLago
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.server_base import FakeToolCall, run_in_thread
from tests.golden_support import (  # noqa: F401  (the client fixture)
    MESSAGES,
    WEATHER_TOOL,
    client_fixture,
    event_after_stream_error,
    leave_mid_stream,
    messages_door_calls,
    read_chat_stream,
    reset_fake,
    stream_chat,
)
from tests.proxy_harness import (
    CALL_ID_HEADER,
    COST_HEADER,
    RunningProxy,
    await_for,
    billed,
    config_dict,
    gemini_client,
    lago_env,
    proxy_settings,
    run_proxy,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

# The operator's own prices for the GPU box, in LiteLLM's names (USD per token).
INPUT_PRICE = Decimal("0.0000001")
OUTPUT_PRICE = Decimal("0.0000004")
EMBED_PRICE = Decimal("0.00000002")


@dataclass
class World:
    proxy: RunningProxy
    lago: FakeLago
    ollama: FakeOllama


def ollama_entry(name: str, base: str, model: str, prefix: str = "ollama_chat",
                 **prices: str) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"{prefix}/{model}", "api_base": base, **prices}}


PRICED = {"input_cost_per_token": str(INPUT_PRICE), "output_cost_per_token": str(OUTPUT_PRICE)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("ollama-golden")
    with FakeLago() as lago, run_in_thread(FakeOllama()) as fake:
        cfg = config_dict([
            ollama_entry("llama", fake.url, "llama3.2", **PRICED),
            ollama_entry("llama-gen", fake.url + "/api/generate", "llama3.2", "ollama",
                         **PRICED),
            ollama_entry("llama-free", fake.url, "llama3.2"),
            ollama_entry("minilm", fake.url, "all-minilm", "ollama",
                         input_cost_per_token=str(EMBED_PRICE)),
        ], tmp)
        # One upstream attempt per call: the error tests count what the provider saw.
        cfg["router_settings"] = {"num_retries": 0}
        with run_proxy(proxy_settings(tmp, cfg, lago_env(lago))) as proxy:
            yield World(proxy, lago, fake)
        assert lago.schema_violations == []


@pytest.fixture(autouse=True)
def fresh_fake(world: World) -> None:
    reset_fake(world.ollama, FakeOllama())


def cost(input_tokens: int, output_tokens: int) -> Decimal:
    return input_tokens * INPUT_PRICE + output_tokens * OUTPUT_PRICE


def check_event(ev: Any, model: str, provider: str, input_tokens: int, output_tokens: int,
                expected: Decimal | None, source: str = "provider") -> None:
    p = ev.properties
    assert (p["model_group"], p["model"], p["provider"], p["provider_model"]) \
        == (model, "llama3.2", provider, "llama3.2")
    assert (p["input_tokens"], p["uncached_input_tokens"], p["output_tokens"]) \
        == (input_tokens, input_tokens, output_tokens)
    assert p["usage_source"] == source
    if expected is None:
        assert p["unknown_price"] == "true" and "response_cost" not in p
    else:
        assert p["unknown_price"] == "false" and p["price_source"] == "config"
        assert Decimal(p["response_cost"]) == expected


# --- non-stream, stream, tool call -------------------------------------------------------

@pytest.mark.parametrize(("model", "provider", "route"), [
    ("llama", "ollama_chat", "/api/chat"), ("llama-gen", "ollama", "/api/generate")])
def test_plain_call_bills_the_counts_at_the_override(
        world: World, client: openai.OpenAI, model: str, provider: str, route: str) -> None:
    world.ollama.prompt_eval_count, world.ollama.eval_count = 40, 15
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, user="lab", max_tokens=64, temperature=0.1, seed=3)
    reply = raw.parse()
    assert reply.choices[0].message.content == world.ollama.reply_text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (40, 15)
    expected = cost(40, 15)
    assert expected == Decimal("0.00001")
    assert Decimal(raw.headers[COST_HEADER]) == expected
    check_event(billed(world.lago, raw.headers[CALL_ID_HEADER], "lab"), model, provider,
                40, 15, expected)
    got = world.ollama.received[-1]
    sent = world.ollama.requests[-1]
    assert got.path == route and sent["stream"] is False
    assert sent["options"] == {"temperature": 0.1, "seed": 3, "num_predict": 64}
    if provider == "ollama":
        assert sent["system"] == "Be brief."
        assert sent["prompt"] == "What is the weather in Paris?"


@pytest.mark.parametrize(("model", "provider"), [("llama", "ollama_chat"),
                                                 ("llama-gen", "ollama")])
def test_ndjson_stream_billed_on_the_done_line(world: World, client: openai.OpenAI,
                                               model: str, provider: str) -> None:
    world.ollama.prompt_eval_count, world.ollama.eval_count = 31, 22
    world.ollama.stream_chunks = 5
    call_id, chunks = stream_chat(client, model=model, messages=MESSAGES, user="lab",
                                  stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == world.ollama.reply_text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 53
    ev = billed(world.lago, call_id, "lab")
    check_event(ev, model, provider, 31, 22, cost(31, 22))
    assert "stream" in ev.properties["flags"].split(",")
    assert world.ollama.requests[-1]["stream"] is True


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_call_billed(world: World, client: openai.OpenAI, stream: bool) -> None:
    world.ollama.tool_call = FakeToolCall("get_weather", {"city": "Paris"})
    world.ollama.prompt_eval_count, world.ollama.eval_count = 122, 33
    if stream:
        call_id, chunks = stream_chat(client, model="llama", messages=MESSAGES, user="lab",
                                      tools=[WEATHER_TOOL])
        deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert len(deltas) == 1 and deltas[0].function is not None
        assert deltas[0].function.name == "get_weather"
        assert deltas[0].function.arguments == '{"city":"Paris"}'
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="llama", messages=MESSAGES, user="lab", tools=[WEATHER_TOOL])
        call_id = raw.headers[CALL_ID_HEADER]
        reply = raw.parse()
        call = (reply.choices[0].message.tool_calls or [])[0]
        assert call.function.name == "get_weather"
        assert call.function.arguments == '{"city":"Paris"}'
        assert reply.choices[0].finish_reason == "tool_calls"
    assert world.ollama.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
    check_event(billed(world.lago, call_id, "lab"), "llama", "ollama_chat", 122, 33,
                cost(122, 33))


def test_tool_result_names_its_tool(world: World, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="llama", user="lab", tools=[WEATHER_TOOL], messages=[
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_7", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "18C"}])
    sent = world.ollama.requests[-1]["messages"]
    assert sent[2]["tool_calls"] == [{"function": {"name": "get_weather",
                                                   "arguments": {"city": "Paris"}}}]
    assert sent[3] == {"role": "tool", "content": "18C", "tool_name": "get_weather"}


# --- estimates and unknown prices --------------------------------------------------------

def test_missing_prompt_count_is_estimated_never_zero(world: World,
                                                      client: openai.OpenAI) -> None:
    world.ollama.prompt_eval_count = None  # the whole prompt came from Ollama's cache
    raw = client.chat.completions.with_raw_response.create(model="llama", messages=MESSAGES,
                                                           user="lab")
    estimate = estimate_prompt_tokens(MESSAGES)
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "lab")
    check_event(ev, "llama", "ollama_chat", estimate, 12, cost(estimate, 12), "estimated")
    assert "estimated_usage" in ev.properties["flags"].split(",")
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == estimate  # what the bill says
    call_id, chunks = stream_chat(client, model="llama", messages=MESSAGES, user="lab",
                                  stream_options={"include_usage": True})
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == estimate
    check_event(billed(world.lago, call_id, "lab"), "llama", "ollama_chat", estimate, 12,
                cost(estimate, 12), "estimated")


def test_without_an_override_the_price_is_unknown(world: World, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="llama-free",
                                                           messages=MESSAGES, user="lab")
    assert COST_HEADER not in raw.headers
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "lab")
    check_event(ev, "llama-free", "ollama_chat", 26, 12, None)
    assert "unknown_price" in ev.properties["flags"].split(",")


# --- a client that leaves mid-stream -----------------------------------------------------

async def test_stream_aborted_by_the_client_is_billed_once(world: World) -> None:
    fake = world.ollama
    fake.reply_text = "word " * 200
    fake.stream_chunks = 200
    fake.chunk_delay = 0.02
    call_id = await leave_mid_stream(world.proxy, "llama", "leaver")
    await await_for(lambda: call_id in world.lago.events, timeout=10)
    ev = world.lago.events[call_id]
    p = ev.properties
    assert {"client_disconnected", "estimated_usage", "stream"} <= set(p["flags"].split(","))
    # The counts come on the done line, which never came: both sides are estimates.
    assert p["input_tokens"] == estimate_prompt_tokens(MESSAGES)
    assert 0 < p["output_tokens"] < 200
    check_event(ev, "llama", "ollama_chat", p["input_tokens"], p["output_tokens"],
                cost(p["input_tokens"], p["output_tokens"]), "estimated")
    await asyncio.sleep(0.3)
    assert world.lago.count(call_id) == 1


# --- embeddings --------------------------------------------------------------------------

def test_embeddings_billed_on_prompt_eval_count(world: World, client: openai.OpenAI) -> None:
    world.ollama.embed_count = 8
    raw = client.embeddings.with_raw_response.create(model="minilm", input=["a", "b"],
                                                     user="lab", dimensions=3)
    reply = raw.parse()
    assert [len(d.embedding) for d in reply.data] == [3, 3]
    assert reply.usage.prompt_tokens == 8
    assert world.ollama.received[-1].path == "/api/embed"
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "lab")
    p = ev.properties
    assert (p["kind"], p["provider"], p["provider_model"], p["input_tokens"]) \
        == ("embedding", "ollama", "all-minilm", 8)
    assert Decimal(p["response_cost"]) == 8 * EMBED_PRICE == Decimal("0.00000016")
    world.ollama.embed_count = None  # no count: estimated from the input, flagged
    raw = client.embeddings.with_raw_response.create(model="minilm", input="hello world",
                                                     user="lab")
    p = billed(world.lago, raw.headers[CALL_ID_HEADER], "lab").properties
    assert p["usage_source"] == "estimated" and p["input_tokens"] == 3


# --- errors ------------------------------------------------------------------------------

def test_errors_keep_status_and_bill_nothing(world: World, client: openai.OpenAI) -> None:
    before = len(world.lago.stored)
    world.ollama.fail(404, "model 'llama3.2' not found, try pulling it first")
    with pytest.raises(openai.NotFoundError, match="try pulling it first"):
        client.chat.completions.create(model="llama", messages=MESSAGES, user="lab")
    world.ollama.fail(500, "llama runner process has terminated")
    with pytest.raises(openai.InternalServerError) as broke:
        client.chat.completions.create(model="llama-gen", messages=MESSAGES, user="lab",
                                       stream=True)
    assert broke.value.status_code == 502
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="llama", messages=MESSAGES, user="lab",
                                       tools=[WEATHER_TOOL], tool_choice="required")
    assert refused.value.body["param"] == "tool_choice"  # type: ignore[index]
    # /api/generate takes no tools: refused as LiteLLM refuses them (or dropped on request).
    with pytest.raises(openai.BadRequestError) as no_tools:
        client.chat.completions.create(model="llama-gen", messages=MESSAGES, user="lab",
                                       tools=[WEATHER_TOOL])
    assert no_tools.value.body["param"] == "tools"  # type: ignore[index]
    assert len(world.lago.stored) == before
    raw = client.chat.completions.with_raw_response.create(
        model="llama-gen", messages=MESSAGES, user="lab", tools=[WEATHER_TOOL],
        extra_body={"drop_params": True})
    assert raw.headers["x-tallygate-dropped-params"] == "tools"
    assert "tools" not in world.ollama.requests[-1]
    billed(world.lago, raw.headers[CALL_ID_HEADER], "lab")


async def test_error_line_mid_stream_is_in_band_and_billed(world: World) -> None:
    world.ollama.stream_error = "model runner has unexpectedly stopped"
    status, call_id, body = await read_chat_stream(world.proxy, "llama", "lab")
    assert '"error"' in body and "unexpectedly stopped" in body
    ev = await event_after_stream_error(world.lago, status, call_id)
    if ev is None:
        return
    p = ev.properties
    # What streamed before the failure is billed, estimated (the counts never came).
    assert p["usage_source"] == "estimated" and p["output_tokens"] > 0
    assert Decimal(p["response_cost"]) == cost(p["input_tokens"], p["output_tokens"])


# --- the Anthropic Messages door ---------------------------------------------------------

def test_messages_door_reaches_ollama_with_top_k(world: World) -> None:
    world.ollama.prompt_eval_count, world.ollama.eval_count = 19, 6
    raw, message, streamed, stream_call = messages_door_calls(world.proxy, "llama",
                                                              "llama-gen", "lab")
    assert message.content[0].text == world.ollama.reply_text  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (19, 6)
    assert streamed.usage.output_tokens == 6
    sent = world.ollama.requests[-2]
    assert sent["options"] == {"top_k": 5, "num_predict": 100}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    check_event(billed(world.lago, raw.headers[CALL_ID_HEADER], "lab"), "llama",
                "ollama_chat", 19, 6, cost(19, 6))
    check_event(billed(world.lago, stream_call, "lab"), "llama-gen", "ollama", 19, 6,
                cost(19, 6))


# --- the Responses API door ---------------------------------------------------------------

def test_responses_door_reaches_ollama(world: World, client: openai.OpenAI) -> None:
    world.ollama.prompt_eval_count, world.ollama.eval_count = 17, 5
    raw = client.responses.with_raw_response.create(model="llama", input="Hi", user="lab")
    response = raw.parse()
    assert response.output_text == world.ollama.reply_text
    assert response.usage is not None and response.usage.output_tokens == 5
    check_event(billed(world.lago, raw.headers[CALL_ID_HEADER], "lab"), "llama",
                "ollama_chat", 17, 5, cost(17, 5))


# --- legacy completions and the Gemini door -----------------------------------------------

def test_completions_and_gemini_doors_reach_ollama(world: World, client: openai.OpenAI) -> None:
    from google.genai import types

    world.ollama.prompt_eval_count, world.ollama.eval_count = 9, 4
    raw = client.completions.with_raw_response.create(model="llama-gen", prompt="Say hi",
                                                      user="lab", max_tokens=20)
    assert raw.parse().choices[0].text == world.ollama.reply_text
    assert world.ollama.requests[-1]["prompt"] == "Say hi"
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "lab")
    assert ev.properties["kind"] == "completion"
    assert Decimal(ev.properties["response_cost"]) == cost(9, 4)
    gemini = gemini_client(world.proxy.base_url)
    config = types.GenerateContentConfig(labels={"user": "gem-ol"})
    text = "".join(c.text or "" for c in gemini.models.generate_content_stream(
        model="llama", contents="Say hi", config=config))
    assert text == world.ollama.reply_text
    assert world.ollama.requests[-1]["stream"] is True
    [ev] = wait_for(lambda: [e for e in world.lago.stored
                             if e.external_subscription_id == "gem-ol"])
    check_event(ev, "llama", "ollama_chat", 9, 4, cost(9, 4))
