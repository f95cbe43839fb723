"""The official anthropic SDK (sync and async, streamed and not) against the proxy's
``/v1/messages`` door, routed to a fake Anthropic, a fake OpenAI and the mock provider:
every call billed once, to ``metadata.user_id``, with Anthropic-shaped answers and errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    await_for,
    billed,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    leave_stream,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

MOCK_REPLY = "Mock says hello to the Anthropic SDK."
MESSAGES: list[Any] = [{"role": "user", "content": "Say hi"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "input_schema": WEATHER_SCHEMA}


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([
        anthropic_entry("claude", claude.base_url),
        openai_entry("gpt", upstream.base_url),
        {"model_name": "mocked", "litellm_params": {"model": "mock/echo",
                                                    "mock_response": MOCK_REPLY}},
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def _client(proxy: RunningProxy, key: str = MASTER_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.base_url, api_key=key, max_retries=0)


@pytest.fixture(name="client")
def client_fixture(proxy: RunningProxy) -> Iterator[anthropic.Anthropic]:
    """The sync SDK client, closed after the test (its pooled sockets with it)."""
    with _client(proxy) as client:
        yield client


def _reply_text(model: str, upstream: FakeOpenAI, claude: FakeAnthropic) -> str:
    return {"claude": claude.reply_text, "gpt": upstream.reply_text, "mocked": MOCK_REPLY}[model]


def _check_event(lago: FakeLago, call_id: str, customer: str,
                 usage: anthropic.types.Usage) -> Any:
    """One Lago event for the call, for the customer, with the usage the client read."""
    ev = billed(lago, call_id, customer)
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    assert ev.properties["uncached_input_tokens"] == usage.input_tokens
    assert ev.properties["cached_input_tokens"] == cache_read
    assert ev.properties["cache_creation_input_tokens"] == cache_write
    assert ev.properties["input_tokens"] == usage.input_tokens + cache_read + cache_write
    assert ev.properties["output_tokens"] == usage.output_tokens
    return ev


# --- plain calls, each upstream ------------------------------------------------------


@pytest.mark.parametrize("model", ["claude", "gpt", "mocked"])
def test_sync_create_billed_once(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                                 claude: FakeAnthropic, model: str,
                                 client: anthropic.Anthropic) -> None:
    claude.input_tokens, claude.output_tokens = 17, 6
    upstream.prompt_tokens, upstream.completion_tokens = 21, 5
    customer = f"cust-{model}"
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=64, system="Be brief.", messages=MESSAGES,
        stop_sequences=["END"], metadata={"user_id": customer},
        extra_body={"temperature": 0.5})  # this SDK version has no temperature argument
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == _reply_text(model, upstream, claude)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    call_id = raw.headers[CALL_ID_HEADER]
    assert raw.headers["request-id"] == call_id
    ev = _check_event(lago, call_id, customer, message.usage)
    if model == "claude":
        assert (message.usage.input_tokens, message.usage.output_tokens) == (17, 6)
        sent = claude.requests[-1]
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 64
        assert sent["metadata"] == {"user_id": customer}
        assert sent["stop_sequences"] == ["END"] and sent["temperature"] == 0.5
        assert sent["messages"] == MESSAGES  # passed through as it came
    elif model == "gpt":
        assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 5)
        sent = upstream.requests[-1]
        assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Say hi"}]
        assert sent["user"] == customer and sent["max_tokens"] == 64
        assert sent["stop"] == ["END"] and sent["temperature"] == 0.5
        assert "metadata" not in sent
    else:
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    cost = raw.headers.get(COST_HEADER)
    if model != "mocked":
        assert cost is not None and Decimal(cost) > 0
    if cost is not None:
        assert Decimal(ev.properties["response_cost"]) == Decimal(cost)


@pytest.mark.parametrize("model", ["claude", "gpt", "mocked"])
def test_sync_stream_billed_once(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                                 claude: FakeAnthropic, model: str,
                                 client: anthropic.Anthropic) -> None:
    claude.input_tokens, claude.output_tokens, claude.stream_chunks = 30, 9, 4
    upstream.prompt_tokens, upstream.completion_tokens, upstream.stream_chunks = 31, 8, 4
    customer = f"stream-{model}"
    with client.messages.stream(model=model, max_tokens=100, messages=MESSAGES,
                                        metadata={"user_id": customer}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        call_id = stream.response.headers[CALL_ID_HEADER]
    assert text == _reply_text(model, upstream, claude)
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == text  # type: ignore[union-attr]
    ev = _check_event(lago, call_id, customer, final.usage)
    assert "stream" in ev.properties["flags"].split(",")
    if model == "claude":
        assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 9)
        assert ev.properties["usage_source"] == "provider"
    elif model == "gpt":
        assert (final.usage.input_tokens, final.usage.output_tokens) == (31, 8)
        assert ev.properties["usage_source"] == "provider"


async def test_async_create_and_stream(proxy: RunningProxy, lago: FakeLago,
                                       claude: FakeAnthropic, upstream: FakeOpenAI) -> None:
    claude.input_tokens, claude.output_tokens = 40, 11
    upstream.prompt_tokens, upstream.completion_tokens = 41, 12
    async with anthropic.AsyncAnthropic(base_url=proxy.base_url + "/", api_key=MASTER_KEY,
                                        max_retries=0) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude", max_tokens=50, messages=MESSAGES,
            metadata={"user_id": "async-1"})
        message = await raw.parse()
        assert message.content[0].text == claude.reply_text  # type: ignore[union-attr]
        await asyncio.to_thread(_check_event, lago, raw.headers[CALL_ID_HEADER], "async-1",
                                message.usage)

        # stream=True: the raw events, as the SDK parses them.
        sraw = await client.messages.with_raw_response.create(
            model="gpt", max_tokens=50, messages=MESSAGES, stream=True,
            metadata={"user_id": "async-2"})
        events = [e async for e in await sraw.parse()]
        kinds = [e.type for e in events]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
        text = "".join(e.delta.text for e in events  # type: ignore[union-attr]
                       if e.type == "content_block_delta")
        assert text == upstream.reply_text
        delta = events[-2]
        assert delta.type == "message_delta"
        assert delta.delta.stop_reason == "end_turn"
        assert (delta.usage.input_tokens, delta.usage.output_tokens) == (41, 12)
        ev = await asyncio.to_thread(billed, lago, sraw.headers[CALL_ID_HEADER], "async-2")
        assert (ev.properties["input_tokens"], ev.properties["output_tokens"]) == (41, 12)

        # messages.stream() on the async client: the accumulated final message.
        async with client.messages.stream(model="mocked", max_tokens=50, messages=MESSAGES,
                                          metadata={"user_id": "async-3"}) as stream:
            final = await stream.get_final_message()
            call_id = stream.response.headers[CALL_ID_HEADER]
        assert final.content[0].text == MOCK_REPLY  # type: ignore[union-attr]
        await asyncio.to_thread(_check_event, lago, call_id, "async-3", final.usage)
    await asyncio.sleep(0.2)
    assert len(lago.stored) == 3


def test_sse_framing_and_x_api_key(proxy: RunningProxy, lago: FakeLago,
                                   claude: FakeAnthropic) -> None:
    """``event: <type>`` matches every data's type; the x-api-key header is accepted."""
    reply = http("POST", proxy.base_url + "/v1/messages", {
        "model": "claude", "max_tokens": 20, "messages": MESSAGES, "stream": True,
        "metadata": {"user_id": "framing"}}, key=None, headers={"x-api-key": MASTER_KEY})
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in reply.text.split("\n\n") if f]
    kinds = []
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[len("data: "):])
        assert data["type"] == event_line[len("event: "):]
        kinds.append(data["type"])
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    billed(lago, reply.headers[CALL_ID_HEADER.lower()], "framing")

    plain = http("POST", proxy.base_url + "/messages", {
        "model": "claude", "max_tokens": 20, "messages": MESSAGES,
        "metadata": {"user_id": "framing"}}, key=None, headers={"x-api-key": MASTER_KEY})
    assert plain.status == 200, plain.text
    assert plain.json()["type"] == "message"


def test_images_system_turns_and_top_k(proxy: RunningProxy, lago: FakeLago,
                                       upstream: FakeOpenAI, claude: FakeAnthropic,
                                       client: anthropic.Anthropic) -> None:
    """Image blocks (base64 and url), a system turn inside messages, top_k: each reaches
    the upstream in its own shape (top_k only where it is understood)."""
    messages: list[Any] = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "text", "text": "What are these?"}]},
    ]
    for model in ("claude", "gpt"):
        client.messages.create(model=model, max_tokens=30, messages=messages,
                               metadata={"user_id": "images"}, extra_body={"top_k": 5})
    to_claude = claude.requests[-1]
    assert to_claude["top_k"] == 5
    assert to_claude["messages"] == messages  # passed through, the system turn too
    to_openai = upstream.requests[-1]
    assert "top_k" not in to_openai
    assert to_openai["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "text", "text": "What are these?"}]}]
    wait_for(lambda: len(lago.stored) == 2)


# --- cache tokens -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_cache_buckets_from_anthropic(proxy: RunningProxy, lago: FakeLago,
                                      claude: FakeAnthropic, stream: bool,
                                      client: anthropic.Anthropic) -> None:
    claude.input_tokens, claude.cache_read_tokens, claude.cache_write_tokens = 200, 800, 100
    claude.output_tokens = 20
    claude.full_delta_usage = True
    system = [{"type": "text", "text": "A long, cached system prompt.",
               "cache_control": {"type": "ephemeral"}}]
    if stream:
        with client.messages.stream(model="claude", max_tokens=64, messages=MESSAGES,
                                    system=system,  # type: ignore[arg-type]
                                    metadata={"user_id": "cache"}) as s:
            message = s.get_final_message()
            call_id = s.response.headers[CALL_ID_HEADER]
    else:
        raw = client.messages.with_raw_response.create(
            model="claude", max_tokens=64, messages=MESSAGES,
            system=system, metadata={"user_id": "cache"})  # type: ignore[arg-type]
        message, call_id = raw.parse(), raw.headers[CALL_ID_HEADER]
    u = message.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens,
            u.output_tokens) == (200, 800, 100, 20)
    ev = _check_event(lago, call_id, "cache", u)
    assert ev.properties["input_tokens"] == 1100
    # The breakpoint reached Anthropic.
    assert claude.requests[-1]["system"] == system


def test_cache_buckets_from_openai(proxy: RunningProxy, lago: FakeLago,
                                   upstream: FakeOpenAI, client: anthropic.Anthropic) -> None:
    """OpenAI counts cached tokens inside prompt_tokens; Anthropic's usage does not."""
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 1000, 800, 50
    raw = client.messages.with_raw_response.create(
        model="gpt", max_tokens=64, messages=MESSAGES, metadata={"user_id": "oa-cache"},
        system=[{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}])
    u = raw.parse().usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens,
            u.output_tokens) == (200, 800, 0, 50)
    _check_event(lago, raw.headers[CALL_ID_HEADER], "oa-cache", u)
    # cache_control is Anthropic's: not sent to an OpenAI-compatible server, and said so.
    assert upstream.requests[-1]["messages"][0] == {"role": "system", "content": "cached"}
    assert raw.headers["x-tallygate-dropped-params"] == "cache_control"


# --- tools --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_tool_use_round_trip(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                             claude: FakeAnthropic, model: str,
                             client: anthropic.Anthropic) -> None:
    call = FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_fake_1")
    claude.tool_call = upstream.tool_call = call
    claude.reply_text = ""
    first = client.messages.create(model=model, max_tokens=200, messages=MESSAGES,
                                   tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                   tool_choice={"type": "any"},
                                   metadata={"user_id": "tools"})
    assert first.stop_reason == "tool_use"
    tool_uses = [b for b in first.content if b.type == "tool_use"]
    assert len(tool_uses) == 1
    use = tool_uses[0]
    assert (use.id, use.name, use.input) == ("toolu_fake_1", "get_weather", {"city": "Paris"})
    if model == "claude":
        sent = claude.requests[-1]
        assert sent["tools"] == [{"name": "get_weather", "description": "Weather of a city",
                                  "input_schema": WEATHER_SCHEMA}]
        assert sent["tool_choice"] == {"type": "any"}
    else:
        sent = upstream.requests[-1]
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": WEATHER_SCHEMA}}]
        assert sent["tool_choice"] == "required"

    # The answer goes back with the tool's result; the fake now answers in text.
    claude.tool_call = upstream.tool_call = None
    claude.reply_text = "It is sunny in Paris."
    upstream.reply_text = "It is sunny in Paris."
    history: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                          for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 24 C"},
            {"type": "text", "text": "And so?"}]},
    ]
    second = client.messages.create(model=model, max_tokens=200, messages=history,
                                    tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                    metadata={"user_id": "tools"})
    assert second.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    if model == "claude":
        sent_messages = claude.requests[-1]["messages"]
        assert sent_messages[1] == {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_fake_1", "name": "get_weather",
             "input": {"city": "Paris"}}]}
        assert sent_messages[2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_fake_1", "content": "sunny, 24 C"},
            {"type": "text", "text": "And so?"}]}
    else:
        sent_messages = upstream.requests[-1]["messages"]
        assert sent_messages[1] == {"role": "assistant", "content": None, "tool_calls": [{
            "id": "toolu_fake_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
        assert sent_messages[2] == {"role": "tool", "tool_call_id": "toolu_fake_1",
                                    "content": "sunny, 24 C"}
        assert sent_messages[3] == {"role": "user", "content": "And so?"}
    wait_for(lambda: len(lago.stored) == 2)


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_tool_use_streamed(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                           claude: FakeAnthropic, model: str, client: anthropic.Anthropic) -> None:
    args = {"city": "Paris", "days": 3, "units": "metric"}
    claude.tool_call = upstream.tool_call = FakeToolCall("get_weather", args, id="toolu_s")
    claude.reply_text = "Let me look."
    claude.stream_chunks = upstream.stream_chunks = 4
    with client.messages.stream(model=model, max_tokens=200, messages=MESSAGES,
                                        tools=[WEATHER_TOOL],  # type: ignore[list-item]
                                        metadata={"user_id": "tool-stream"}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
        call_id = stream.response.headers[CALL_ID_HEADER]
    assert "input_json" in kinds
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == ("toolu_s", "get_weather", args)
    expected = ["text", "tool_use"] if model == "claude" else ["tool_use"]
    assert [b.type for b in final.content] == expected
    _check_event(lago, call_id, "tool-stream", final.usage)


# --- errors -------------------------------------------------------------------------


def _error_body(exc: anthropic.APIStatusError, error_type: str) -> None:
    body = exc.body
    assert isinstance(body, dict) and set(body) == {"type", "error"}, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type and body["error"]["message"]


def test_errors_raise_the_sdk_exception_classes(proxy: RunningProxy, lago: FakeLago,
                                                claude: FakeAnthropic,
                                                upstream: FakeOpenAI,
                                                client: anthropic.Anthropic) -> None:
    def create(client: anthropic.Anthropic, **kwargs: Any) -> Any:
        params: dict[str, Any] = {"model": "claude", "max_tokens": 10, "messages": MESSAGES,
                                  "metadata": {"user_id": "errs"},
                                  # LiteLLM's per-request option: what the client sees
                                  # when the gateway does not retry.
                                  "extra_body": {"num_retries": 0}}
        return client.messages.create(**{**params, **kwargs})

    with _client(proxy, key="sk-wrong") as wrong, \
            pytest.raises(anthropic.AuthenticationError) as auth:
        create(wrong)
    _error_body(auth.value, "authentication_error")
    assert "sk-wrong" not in auth.value.message

    with pytest.raises(anthropic.NotFoundError) as missing:
        create(client, model="no-such-model")
    _error_body(missing.value, "not_found_error")
    assert "no-such-model" in missing.value.message

    claude.fail(429, "slow down", headers={"Retry-After": "7"})
    with pytest.raises(anthropic.RateLimitError) as limited:
        create(client)
    _error_body(limited.value, "rate_limit_error")
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.response.headers[CALL_ID_HEADER]

    upstream.fail(429, "openai says slow down", headers={"retry-after": "3"})
    with pytest.raises(anthropic.RateLimitError) as oa_limited:
        create(client, model="gpt")
    assert oa_limited.value.response.headers["retry-after"] == "3"

    with pytest.raises(anthropic.BadRequestError) as bad:
        create(client, max_tokens=0)
    _error_body(bad.value, "invalid_request_error")
    assert "max_tokens" in bad.value.message
    with pytest.raises(anthropic.BadRequestError):
        create(client, messages=[{"role": "robot", "content": "no"}])
    with pytest.raises(anthropic.BadRequestError):
        create(client, messages=[])

    claude.fail(529, "overloaded")
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        create(client)
    _error_body(overloaded.value, "overloaded_error")

    upstream.fail(500, "boom")
    with pytest.raises(anthropic.InternalServerError) as server:
        create(client, model="gpt")
    _error_body(server.value, "api_error")

    # Not JSON at all: the Anthropic shape too.
    reply = http("POST", proxy.base_url + "/v1/messages", data=b"{nope")
    assert reply.status == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"

    # Failed calls bill nothing.
    create(client)
    wait_for(lambda: len(lago.stored) == 1)
    assert lago.stored[0].external_subscription_id == "errs"


def test_stream_error_in_band(proxy: RunningProxy, lago: FakeLago,
                              claude: FakeAnthropic, client: anthropic.Anthropic) -> None:
    """An upstream error after the stream began: an Anthropic ``error`` event the SDK
    raises, and what was generated is billed."""
    claude.stream_error_type = "overloaded_error"
    # Frames apart: the stream has begun (bytes reached the client) when the error comes;
    # an error in the same read as the first event is a failed attempt instead.
    claude.chunk_delay = 0.2
    manager = client.messages.stream(model="claude", max_tokens=10, messages=MESSAGES,
                                             metadata={"user_id": "broken"})
    with pytest.raises(anthropic.APIStatusError) as info, manager as stream:
        for _ in stream:
            pass
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"
    call_id = info.value.response.headers[CALL_ID_HEADER]
    ev = billed(lago, call_id, "broken")
    assert ev.properties["usage_source"] == "estimated"


# --- a client that leaves ----------------------------------------------------------


def test_client_disconnect_mid_stream_billed_once(proxy: RunningProxy, lago: FakeLago,
                                                  claude: FakeAnthropic,
                                                  client: anthropic.Anthropic) -> None:
    claude.reply_text = "word " * 200
    claude.stream_chunks = 200
    claude.chunk_delay = 0.02  # a 4 s stream if nobody leaves
    claude.input_tokens, claude.output_tokens = 50, 200
    with client.messages.stream(model="claude", max_tokens=500, messages=MESSAGES,
                                        metadata={"user_id": "leaver"}) as stream:
        call_id = stream.response.headers[CALL_ID_HEADER]
        got = 0
        for event in stream:
            if event.type == "text":
                got += 1
                if got == 5:
                    break  # leaving the block closes the connection
    ev = billed(lago, call_id, "leaver")
    flags = ev.properties["flags"].split(",")
    assert "client_disconnected" in flags and "estimated_usage" in flags
    # Anthropic reported the input at message_start; the output is estimated.
    assert ev.properties["input_tokens"] == 50
    assert 0 < ev.properties["output_tokens"] < 200
    wait_for(lambda: len(claude.received) == 1)
    time.sleep(0.3)
    assert lago.count(call_id) == 1
    assert len(lago.stored) == 1


async def test_client_disconnect_raw(proxy: RunningProxy, lago: FakeLago,
                                     upstream: FakeOpenAI) -> None:
    """The same with an OpenAI upstream and a raw HTTP client that hangs up."""
    upstream.reply_text = "word " * 200
    upstream.stream_chunks = 200
    upstream.chunk_delay = 0.02
    call_id = await leave_stream(proxy.base_url + "/v1/messages", {
        "model": "gpt", "max_tokens": 500, "messages": MESSAGES, "stream": True,
        "metadata": {"user_id": "raw-leaver"}}, count=5, marker=b"event: content_block_delta",
        headers={"x-api-key": MASTER_KEY})
    await await_for(lambda: call_id in lago.events)
    ev = lago.events[call_id]
    assert ev.external_subscription_id == "raw-leaver"
    assert "client_disconnected" in ev.properties["flags"].split(",")
    await asyncio.sleep(0.3)
    assert lago.count(call_id) == 1
