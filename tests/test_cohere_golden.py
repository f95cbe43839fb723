"""Golden tests for Cohere through the proxy: the official openai and anthropic SDKs call
``cohere/`` and ``cohere_chat/`` deployments on the Cohere stand-in, and each call's Lago
event is checked against a cost worked out by hand from Cohere's published prices.

What is billed is ``usage.billed_units``; ``usage.tokens`` (the stand-in puts 500 prompt
template tokens there) must never reach the bill.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from tallygate.estimate import estimate_prompt_tokens
from tests.fakes.cohere_server import FakeCohere
from tests.fakes.lago_server import FakeLago
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
    UPSTREAM_KEY,
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

# Cohere's list prices (USD per token): Command A $2.50 / $10.00 per million input /
# output tokens, Embed v4 $0.12 per million input tokens.
COMMAND_A_INPUT = Decimal("2.50") / 1_000_000
COMMAND_A_OUTPUT = Decimal("10.00") / 1_000_000
EMBED_V4_INPUT = Decimal("0.12") / 1_000_000


@dataclass
class World:
    proxy: RunningProxy
    lago: FakeLago
    cohere: FakeCohere


def cohere_entry(name: str, base: str, model: str, prefix: str = "cohere") -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"{prefix}/{model}", "api_base": base, "api_key": UPSTREAM_KEY}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("cohere-golden")
    with FakeLago() as lago, run_in_thread(FakeCohere()) as fake:
        cfg = config_dict([
            cohere_entry("command", fake.url, "command-a-03-2025"),
            cohere_entry("command-chat", fake.url, "command-a-03-2025", "cohere_chat"),
            cohere_entry("embed", fake.url, "embed-v4.0"),
        ], tmp)
        # One upstream attempt per call: the error tests count what the provider saw.
        cfg["router_settings"] = {"num_retries": 0}
        with run_proxy(proxy_settings(tmp, cfg, lago_env(lago))) as proxy:
            yield World(proxy, lago, fake)
        assert lago.schema_violations == []


@pytest.fixture(autouse=True)
def fresh_fake(world: World) -> None:
    """Every test starts from the stand-in's defaults (one server serves the module)."""
    reset_fake(world.cohere, FakeCohere())
    world.cohere.require_api_key = UPSTREAM_KEY


def command_a_cost(input_tokens: int, output_tokens: int) -> Decimal:
    return input_tokens * COMMAND_A_INPUT + output_tokens * COMMAND_A_OUTPUT


def check_event(ev: Any, model: str, input_tokens: int, output_tokens: int,
                cost: Decimal, *, provider: str = "cohere",
                provider_model: str = "command-a-03-2025", source: str = "provider") -> None:
    p = ev.properties
    # ``model`` is the deployment's model, as LiteLLM sends it; the group is model_group.
    assert (p["model_group"], p["model"], p["provider"], p["provider_model"]) \
        == (model, provider_model, provider, provider_model)
    assert (p["input_tokens"], p["uncached_input_tokens"], p["output_tokens"]) \
        == (input_tokens, input_tokens, output_tokens)
    assert p["cached_input_tokens"] == 0 and p["cache_creation_input_tokens"] == 0
    assert p["usage_source"] == source and p["unknown_price"] == "false"
    assert Decimal(p["response_cost"]) == cost
    assert p["price_source"].startswith("genai-prices")


# --- non-stream, stream, tool call -------------------------------------------------------

@pytest.mark.parametrize(("model", "provider"), [("command", "cohere"),
                                                 ("command-chat", "cohere_chat")])
def test_plain_call_bills_billed_units(world: World, client: openai.OpenAI, model: str,
                                       provider: str) -> None:
    world.cohere.input_tokens, world.cohere.output_tokens = 120, 30
    world.cohere.template_tokens = 500  # in usage.tokens only: never billed
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, user="acme", max_tokens=64, top_p=0.9, stop=["END"])
    reply = raw.parse()
    assert reply.choices[0].message.content == world.cohere.reply_text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (120, 30)
    cost = command_a_cost(120, 30)
    assert cost == Decimal("0.0006")
    assert Decimal(raw.headers[COST_HEADER]) == cost
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "acme")
    check_event(ev, model, 120, 30, cost, provider=provider)
    sent = world.cohere.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "What is the weather in Paris?"}]
    assert (sent["max_tokens"], sent["p"], sent["stop_sequences"]) == (64, 0.9, ["END"])
    assert world.cohere.received[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_stream_bills_the_message_end_usage(world: World, client: openai.OpenAI) -> None:
    world.cohere.input_tokens, world.cohere.output_tokens = 80, 44
    world.cohere.stream_chunks = 5
    call_id, chunks = stream_chat(client, model="command", messages=MESSAGES, user="acme",
                                  stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == world.cohere.reply_text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 124
    ev = billed(world.lago, call_id, "acme")
    check_event(ev, "command", 80, 44, command_a_cost(80, 44))
    assert "stream" in ev.properties["flags"].split(",")
    assert world.cohere.requests[-1]["stream"] is True


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_call_billed(world: World, client: openai.OpenAI, stream: bool) -> None:
    world.cohere.tool_call = FakeToolCall("get_weather", {"city": "Paris"}, id="call_p1")
    world.cohere.input_tokens, world.cohere.output_tokens = 200, 25
    if stream:
        call_id, chunks = stream_chat(client, model="command", messages=MESSAGES, user="acme",
                                      tools=[WEATHER_TOOL], tool_choice="required")
        deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        assert deltas[0].id == "call_p1" and deltas[0].function is not None
        assert deltas[0].function.name == "get_weather"
        assert "".join(d.function.arguments or "" for d in deltas if d.function) \
            == '{"city":"Paris"}'
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        raw = client.chat.completions.with_raw_response.create(
            model="command", messages=MESSAGES, user="acme", tools=[WEATHER_TOOL],
            tool_choice="required")
        call_id = raw.headers[CALL_ID_HEADER]
        reply = raw.parse()
        call = (reply.choices[0].message.tool_calls or [])[0]
        assert call.id == "call_p1" and call.function.name == "get_weather"
        assert call.function.arguments == '{"city":"Paris"}'
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.content == world.cohere.tool_plan
    sent = world.cohere.requests[-1]
    assert sent["tool_choice"] == "REQUIRED"
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    cost = command_a_cost(200, 25)
    assert cost == Decimal("0.00075")
    check_event(billed(world.lago, call_id, "acme"), "command", 200, 25, cost)


def test_tool_result_turn_is_sent_as_cohere_tool_message(world: World,
                                                         client: openai.OpenAI) -> None:
    client.chat.completions.create(model="command", user="acme", messages=[
        *MESSAGES,
        {"role": "assistant", "content": "I will look it up.", "tool_calls": [
            {"id": "call_p1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_p1", "content": "18C and sunny"}],
        tools=[WEATHER_TOOL])
    sent = world.cohere.requests[-1]["messages"]
    assert sent[2] == {"role": "assistant", "tool_plan": "I will look it up.", "tool_calls": [
        {"id": "call_p1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert sent[3] == {"role": "tool", "tool_call_id": "call_p1", "content": "18C and sunny"}


# --- a client that leaves mid-stream -----------------------------------------------------

async def test_stream_aborted_by_the_client_is_billed_once(world: World) -> None:
    fake = world.cohere
    fake.reply_text = "word " * 200
    fake.stream_chunks = 200
    fake.chunk_delay = 0.02  # four seconds if nobody leaves
    call_id = await leave_mid_stream(world.proxy, "command", "leaver")
    await await_for(lambda: call_id in world.lago.events, timeout=10)
    ev = world.lago.events[call_id]
    p = ev.properties
    flags = p["flags"].split(",")
    assert {"client_disconnected", "estimated_usage", "stream"} <= set(flags)
    # Cohere reports usage only at message-end: both sides are estimates, priced as usual.
    assert p["input_tokens"] == estimate_prompt_tokens(MESSAGES)
    assert 0 < p["output_tokens"] < 200
    check_event(ev, "command", p["input_tokens"], p["output_tokens"],
                command_a_cost(p["input_tokens"], p["output_tokens"]), source="estimated")
    await asyncio.sleep(0.3)
    assert world.lago.count(call_id) == 1


# --- embeddings --------------------------------------------------------------------------

def test_embeddings_billed_on_billed_units(world: World, client: openai.OpenAI) -> None:
    world.cohere.embed_tokens = 9
    # The openai SDK asks for base64 by default and decodes it: packed as OpenAI packs it.
    raw = client.embeddings.with_raw_response.create(model="embed", input=["a", "b"],
                                                     user="acme")
    reply = raw.parse()
    expected = [[round(0.1 * (i + 1) + 0.01 * d, 4) for d in range(4)] for i in range(2)]
    got = [list(d.embedding) for d in reply.data]
    assert got == [list(struct.unpack("<4f", struct.pack("<4f", *v))) for v in expected]
    assert reply.usage.prompt_tokens == 9
    floats = client.embeddings.create(model="embed", input="a", encoding_format="float",
                                      user="acme", extra_body={"input_type": "search_query"})
    assert floats.data[0].embedding == expected[0]
    first, second = world.cohere.requests[-2:]
    assert first["input_type"] == "search_document" and first["embedding_types"] == ["float"]
    assert second["input_type"] == "search_query"
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "acme")
    p = ev.properties
    assert (p["kind"], p["provider_model"], p["input_tokens"], p["output_tokens"]) \
        == ("embedding", "embed-v4.0", 9, 0)
    assert Decimal(p["response_cost"]) == 9 * EMBED_V4_INPUT == Decimal("0.00000108")


# --- errors ------------------------------------------------------------------------------

def test_errors_keep_status_and_bill_nothing(world: World, client: openai.OpenAI) -> None:
    before = len(world.lago.stored)
    world.cohere.fail(429, "You are past the per minute request limit",
                      headers={"Retry-After": "3"})
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="command", messages=MESSAGES, user="acme")
    assert limited.value.response.headers["retry-after"] == "3"
    assert "per minute request limit" in limited.value.message
    world.cohere.fail(400, "invalid request: message must be at least 1 token long")
    with pytest.raises(openai.BadRequestError, match="at least 1 token"):
        client.chat.completions.create(model="command", messages=MESSAGES, user="acme")
    world.cohere.fail(401, f"invalid api token {UPSTREAM_KEY}")
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="command", messages=MESSAGES, user="acme")
    assert UPSTREAM_KEY not in refused.value.response.text
    world.cohere.fail(500, "internal error")
    with pytest.raises(openai.InternalServerError) as broke:
        client.embeddings.create(model="embed", input="a", user="acme")
    assert broke.value.status_code == 502
    with pytest.raises(openai.BadRequestError) as untranslatable:
        client.chat.completions.create(model="command", messages=MESSAGES, user="acme", n=2)
    assert untranslatable.value.body["param"] == "n"  # type: ignore[index]
    # Cohere cannot be held to one tool call at a time: refused, as LiteLLM refuses it.
    with pytest.raises(openai.BadRequestError) as parallel:
        client.chat.completions.create(model="command", messages=MESSAGES, user="acme",
                                       tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert parallel.value.body["param"] == "parallel_tool_calls"  # type: ignore[index]
    assert len(world.lago.stored) == before


async def test_generation_error_mid_stream_is_in_band_and_billed(world: World) -> None:
    world.cohere.stream_error = "internal generation failure"
    world.cohere.input_tokens, world.cohere.output_tokens = 50, 9
    status, call_id, body = await read_chat_stream(world.proxy, "command", "acme")
    assert '"error"' in body and "internal generation failure" in body
    ev = await event_after_stream_error(world.lago, status, call_id)
    if ev is None:
        return
    # Cohere reported what it generated before failing: that is billed, as it said.
    check_event(ev, "command", 50, 9, command_a_cost(50, 9))


# --- the Anthropic Messages door ---------------------------------------------------------

def test_messages_door_reaches_cohere_with_top_k(world: World) -> None:
    world.cohere.input_tokens, world.cohere.output_tokens = 33, 7
    raw, message, streamed, stream_call = messages_door_calls(world.proxy, "command",
                                                              "command", "acme")
    assert message.content[0].text == world.cohere.reply_text  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (33, 7)
    assert streamed.usage.output_tokens == 7
    sent = world.cohere.requests[-2]
    assert sent["k"] == 5 and sent["max_tokens"] == 100
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    for call_id in (raw.headers[CALL_ID_HEADER], stream_call):
        check_event(billed(world.lago, call_id, "acme"), "command", 33, 7, command_a_cost(33, 7))


# --- the Responses API door ---------------------------------------------------------------

def test_responses_door_reaches_cohere(world: World, client: openai.OpenAI) -> None:
    world.cohere.input_tokens, world.cohere.output_tokens = 21, 4
    raw = client.responses.with_raw_response.create(model="command", input="Hi",
                                                    instructions="Be brief.", user="acme")
    response = raw.parse()
    assert response.output_text == world.cohere.reply_text
    assert response.usage is not None and response.usage.input_tokens == 21
    assert world.cohere.requests[-1]["messages"][0] == {"role": "system",
                                                       "content": "Be brief."}
    check_event(billed(world.lago, raw.headers[CALL_ID_HEADER], "acme"), "command", 21, 4,
                command_a_cost(21, 4))


# --- legacy completions and the Gemini door -----------------------------------------------

def test_completions_and_gemini_doors_reach_cohere(world: World, client: openai.OpenAI) -> None:
    from google.genai import types

    world.cohere.input_tokens, world.cohere.output_tokens = 13, 3
    raw = client.completions.with_raw_response.create(model="command", prompt="Say hi",
                                                      user="acme", max_tokens=20)
    assert raw.parse().choices[0].text == world.cohere.reply_text
    assert world.cohere.requests[-1]["messages"] == [{"role": "user", "content": "Say hi"}]
    ev = billed(world.lago, raw.headers[CALL_ID_HEADER], "acme")
    assert ev.properties["kind"] == "completion"
    assert Decimal(ev.properties["response_cost"]) == command_a_cost(13, 3)
    gemini = gemini_client(world.proxy.base_url)
    config = types.GenerateContentConfig(system_instruction="Be brief.",
                                         labels={"user": "gem-co"})
    answer = gemini.models.generate_content(model="command", contents="Say hi", config=config)
    assert answer.text == world.cohere.reply_text
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.prompt_token_count == 13
    assert world.cohere.requests[-1]["messages"][0] == {"role": "system",
                                                       "content": "Be brief."}
    [ev] = wait_for(lambda: [e for e in world.lago.stored
                             if e.external_subscription_id == "gem-co"])
    check_event(ev, "command", 13, 3, command_a_cost(13, 3))
