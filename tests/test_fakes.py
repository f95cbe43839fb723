"""The fake servers speak the real wire formats: the official SDKs accept them."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic_server import FakeAnthropic, FakeTurn, api_key_of
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall, run_in_thread

MESSAGES = [{"role": "user", "content": "Hi"}]


def openai_client(fake: FakeOpenAI, key: str = "sk-test") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=key, max_retries=0, timeout=5)


def anthropic_client(fake: FakeAnthropic, key: str = "sk-ant") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=key, max_retries=0,
                                    timeout=5)


# --- OpenAI ----------------------------------------------------------------------------

async def test_openai_chat_non_stream() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.prompt_tokens, fake.cached_tokens, fake.reasoning_tokens = 1000, 800, 3
        fake.completion_tokens = 10
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == fake.reply_text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 1000
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 800
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 3
    assert fake.requests == [{"model": "gpt-4o-mini", "messages": MESSAGES}]
    assert fake.received[0].headers["Authorization"] == "Bearer sk-test"


async def test_openai_chat_stream_with_usage() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.stream_chunks = 4
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.reply_text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == fake.prompt_tokens + fake.completion_tokens


async def test_openai_stream_without_usage_has_no_usage_chunk() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = [c async for c in stream]
    assert all(c.choices and c.usage is None for c in chunks)


async def test_openai_tool_call_stream_and_non_stream() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"})
        reply = await client.chat.completions.create(model="m", messages=MESSAGES)
        stream = await client.chat.completions.create(model="m", messages=MESSAGES,
                                                      stream=True)
        chunks = [c async for c in stream]
    call = (reply.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'
    args = "".join(tc.function.arguments or "" for c in chunks
                   for tc in c.choices[0].delta.tool_calls or () if tc.function)
    assert args == '{"city":"Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_openai_embeddings_and_models() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.embedding_dim = 4
        emb = await client.embeddings.create(model="text-embedding-3-small",
                                             input=["a", "b"])
        floats = await client.embeddings.create(model="text-embedding-3-small", input="a",
                                                encoding_format="float")
        models = await client.models.list()
    assert [len(d.embedding) for d in emb.data] == [4, 4]
    assert emb.data[1].embedding[0] == pytest.approx(0.2)
    assert floats.data[0].embedding == pytest.approx(emb.data[0].embedding)
    assert emb.usage.prompt_tokens == fake.prompt_tokens
    assert [m.id for m in models.data] == fake.models


async def test_openai_legacy_completions() -> None:
    """/v1/completions: one or several prompts, echo, streamed with usage."""
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.reply_text, fake.prompt_tokens, fake.completion_tokens = " world", 3, 2
        plain = await client.completions.create(model="gpt-3.5-turbo-instruct",
                                                prompt="Hello", max_tokens=5)
        assert plain.object == "text_completion" and plain.choices[0].text == " world"
        assert plain.usage is not None and plain.usage.prompt_tokens == 3
        several = await client.completions.create(model="gpt-3.5-turbo-instruct",
                                                  prompt=["A", "B"], echo=True)
        assert [c.text for c in several.choices] == ["A world", "B world"]
        stream = await client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Hello", stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " world"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


async def test_openai_reasoning_models_refuse_max_tokens() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="o3-mini", max_tokens=10,
                                                 messages=MESSAGES)
        assert info.value.code == "unsupported_parameter"
        assert info.value.param == "max_tokens"
        with pytest.raises(openai.BadRequestError, match="temperature"):
            await client.chat.completions.create(model="gpt-5-mini", temperature=0.2,
                                                 messages=MESSAGES)
        ok = await client.chat.completions.create(model="gpt-5-mini",
                                                  max_completion_tokens=10, messages=MESSAGES)
    assert ok.choices[0].message.content == fake.reply_text


async def test_openai_errors_raise_sdk_exceptions() -> None:
    async with FakeOpenAI() as fake, openai_client(fake, key="wrong") as client:
        fake.require_api_key = "right"
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
        fake.require_api_key = None
        fake.fail(429, "slow down", headers={"retry-after": "7"})
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.response.headers["retry-after"] == "7"
        assert info.value.code == "rate_limit_exceeded"
        fake.fail(500)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
        reply = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert reply.choices[0].message.content == fake.reply_text


async def test_openai_dropped_connection() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.drop_connection = "before"
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
        fake.drop_connection = "mid"
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="m", messages=MESSAGES)
        stream = await client.chat.completions.create(model="m", messages=MESSAGES,
                                                      stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass


def test_openai_fake_from_sync_code() -> None:
    with run_in_thread(FakeOpenAI()) as fake, \
            openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as client:
        fake.reply_text = "sync hello"
        reply = client.chat.completions.create(model="m", messages=MESSAGES)
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert reply.choices[0].message.content == "sync hello" == text
    assert len(fake.requests) == 2


# --- Anthropic -------------------------------------------------------------------------

async def test_anthropic_non_stream() -> None:
    async with FakeAnthropic() as fake, anthropic_client(fake) as client:
        fake.input_tokens, fake.cache_read_tokens, fake.cache_write_tokens = 200, 800, 100
        msg = await client.messages.create(model="claude-x", max_tokens=100,
                                           messages=MESSAGES)
    assert msg.content[0].type == "text" and msg.content[0].text == fake.reply_text
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens,
            msg.usage.cache_creation_input_tokens) == (200, 800, 100)
    assert api_key_of(fake.received[0]) == "sk-ant"
    assert fake.received[0].headers["anthropic-version"]


async def test_anthropic_stream_final_message() -> None:
    async with FakeAnthropic() as fake, anthropic_client(fake) as client:
        fake.thinking_text = "let me think"
        fake.thinking_tokens, fake.output_tokens = 4, 20
        async with client.messages.stream(model="claude-x", max_tokens=100,
                                          messages=MESSAGES) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert text == fake.reply_text
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens == fake.input_tokens


async def test_anthropic_tool_use_stream() -> None:
    async with FakeAnthropic() as fake, anthropic_client(fake) as client:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_1")
        async with client.messages.stream(model="claude-x", max_tokens=100,
                                          messages=MESSAGES) as stream:
            final = await stream.get_final_message()
    tool = final.content[-1]
    assert tool.type == "tool_use" and tool.input == {"city": "Paris"} and tool.id == "toolu_1"
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_web_search_and_cache_lifetimes(stream: bool) -> None:
    """Server tool blocks and usage (web searches, writes by cache lifetime) parse with
    the SDK's own types, streamed and not."""
    async with FakeAnthropic() as fake, anthropic_client(fake) as client:
        fake.web_searches, fake.cache_write_tokens, fake.cache_write_1h_tokens = 2, 30, 70
        fake.full_delta_usage = True
        tools: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
        if stream:
            async with client.messages.stream(model="claude-x", max_tokens=100,
                                              messages=MESSAGES, tools=tools) as s:
                msg = await s.get_final_message()
        else:
            msg = await client.messages.create(model="claude-x", max_tokens=100,
                                               messages=MESSAGES, tools=tools)
    assert [b.type for b in msg.content] == ["server_tool_use", "web_search_tool_result"] * 2 + [
        "text"]
    assert msg.content[0].type == "server_tool_use"
    assert msg.content[0].input == {"query": "fake query 1"}
    assert msg.usage.server_tool_use is not None
    assert msg.usage.server_tool_use.web_search_requests == 2
    assert msg.usage.cache_creation_input_tokens == 100
    assert msg.usage.cache_creation is not None
    assert (msg.usage.cache_creation.ephemeral_5m_input_tokens,
            msg.usage.cache_creation.ephemeral_1h_input_tokens) == (30, 70)


async def test_anthropic_count_tokens_and_turns() -> None:
    """count_tokens answers what it is told to; scripted turns answer in order."""
    async with FakeAnthropic() as fake, anthropic_client(fake) as client:
        fake.counted_tokens = 321
        counted = await client.messages.count_tokens(model="claude-x", messages=MESSAGES)
        assert counted.input_tokens == 321
        assert fake.received[-1].path == "/v1/messages/count_tokens"
        fake.turns = [FakeTurn("", FakeToolCall("Read", {"file_path": "a.txt"}, id="toolu_a")),
                      FakeTurn("done")]
        first = await client.messages.create(model="claude-x", max_tokens=10,
                                             messages=MESSAGES)
        second = await client.messages.create(model="claude-x", max_tokens=10,
                                              messages=MESSAGES)
        third = await client.messages.create(model="claude-x", max_tokens=10,
                                             messages=MESSAGES)
        with pytest.raises(anthropic.BadRequestError, match="Extra inputs"):
            await client.messages.create(model="claude-x", max_tokens=10, messages=MESSAGES,
                                         metadata={"user_id": "u", "tags": "x"})  # type: ignore[typeddict-unknown-key]
    assert first.stop_reason == "tool_use" and first.content[0].type == "tool_use"
    assert second.content[0].text == "done"  # type: ignore[union-attr]
    assert third.content[0].text == fake.reply_text  # type: ignore[union-attr]


async def test_anthropic_errors_raise_sdk_exceptions() -> None:
    async with FakeAnthropic() as fake, anthropic_client(fake, key="wrong") as client:
        fake.require_api_key = "right"
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model="c", max_tokens=5,
                                         messages=MESSAGES)
        fake.require_api_key = None
        fake.fail(429, "slow down", headers={"retry-after": "3"})
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(model="c", max_tokens=5,
                                         messages=MESSAGES)
        assert info.value.response.headers["retry-after"] == "3"
        fake.fail(529, "Overloaded")
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model="c", max_tokens=5,
                                         messages=MESSAGES)
        fake.stream_error_type = "overloaded_error"
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(model="c", max_tokens=5,
                                              messages=MESSAGES) as s:
                await s.get_final_message()


async def test_anthropic_requires_version_header() -> None:
    async with FakeAnthropic() as fake, anthropic_client(fake) as client:
        with pytest.raises(anthropic.BadRequestError, match="anthropic-version"):
            await client.messages.create(
                model="c", max_tokens=5, messages=MESSAGES,
                extra_headers={"anthropic-version": anthropic.Omit()})


async def test_latency_and_chunk_delay() -> None:
    async with FakeOpenAI() as fake, openai_client(fake) as client:
        fake.latency = 0.3
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="m", messages=MESSAGES, timeout=0.1)
        fake.latency, fake.chunk_delay, fake.stream_chunks = 0.0, 0.05, 4
        started = time.monotonic()
        stream = await client.chat.completions.create(model="m", messages=MESSAGES,
                                                      stream=True)
        async for _ in stream:
            pass
        # 4 content chunks plus the role and finish chunks: 5 gaps between 6 frames
        assert time.monotonic() - started >= 0.25
