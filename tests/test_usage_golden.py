"""Golden usage: one conversation, two providers, the same disjoint buckets.

OpenAI counts cached tokens inside ``prompt_tokens``; Anthropic counts cache reads and
writes outside ``input_tokens``. Answers travel over real HTTP from the fake servers and
are read by the adapters, streamed and not, so a token counted twice (or missed) in any
of those paths shows up here as a wrong bucket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tallygate.providers.anthropic import AnthropicProvider
from tallygate.providers.base import Deployment, Provider, StreamItem
from tallygate.providers.openai import OpenAIProvider
from tallygate.usage import Usage
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI

CONVERSATION: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "A long shared document.",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "Summarise it."},
        {"role": "assistant", "content": "It is about caching."},
        {"role": "user", "content": "And in one word?"},
    ],
    "max_tokens": 100,
}


@dataclass
class Answer:
    usage: Usage | None
    text: str
    items: list[StreamItem]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def ask(session: aiohttp.ClientSession, provider: Provider, api_base: str,
              stream: bool) -> Answer:
    """Send CONVERSATION through ``provider``'s request and read the answer with it."""
    deployment = Deployment(provider=provider.name, model="model-x", api_base=api_base,
                            api_key="sk-test")
    request = provider.chat_request(deployment, CONVERSATION, stream)
    async with session.post(request.url, data=request.body, headers=request.headers) as resp:
        assert resp.status == 200, await resp.text()
        if not stream:
            result = provider.chat_response(deployment, await resp.read())
            message = result.body["choices"][0]["message"]
            return Answer(result.usage, message["content"] or "", [])
        decoder = provider.chat_stream(deployment, include_usage=True)
        items: list[StreamItem] = []
        async for piece in resp.content.iter_chunked(7):  # split frames at odd places
            items += decoder.feed(piece)
        assert decoder.done
        return Answer(decoder.usage, decoder.output_text(), items)


async def ask_both_ways(session: aiohttp.ClientSession, provider: Provider,
                        api_base: str) -> Usage:
    """The usage of one call, after checking stream and non-stream agree on it."""
    plain = await ask(session, provider, api_base, stream=False)
    streamed = await ask(session, provider, api_base, stream=True)
    assert plain.usage is not None
    assert streamed.usage == plain.usage
    assert streamed.text == plain.text
    # What a client reads in the final usage chunk is the same usage, nothing added.
    final = streamed.items[-1].data
    assert final["choices"] == []
    assert Usage.from_openai(final["usage"]) == plain.usage
    return plain.usage


def openai_fake(fake: FakeOpenAI, prompt: int, cached: int, completion: int,
                reasoning: int = 0) -> None:
    fake.prompt_tokens, fake.cached_tokens = prompt, cached
    fake.completion_tokens, fake.reasoning_tokens = completion, reasoning
    fake.reply_text = "Caching."


def anthropic_fake(fake: FakeAnthropic, uncached: int, read: int, write: int,
                   output: int, thinking: int = 0) -> None:
    fake.input_tokens, fake.cache_read_tokens, fake.cache_write_tokens = uncached, read, write
    fake.output_tokens, fake.thinking_tokens = output, thinking
    fake.reply_text = "Caching."


async def test_openai_cached_tokens_leave_the_input_bucket(
        session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as fake:
        openai_fake(fake, prompt=1000, cached=800, completion=50)
        usage = await ask_both_ways(session, OpenAIProvider(), fake.base_url)
    assert usage == Usage(input_tokens=200, cache_read_tokens=800, output_tokens=50)
    assert (usage.prompt_tokens, usage.total_tokens) == (1000, 1050)


async def test_anthropic_cache_counts_are_added_not_subtracted(
        session: aiohttp.ClientSession) -> None:
    async with FakeAnthropic() as fake:
        anthropic_fake(fake, uncached=200, read=800, write=100, output=50)
        usage = await ask_both_ways(session, AnthropicProvider(), fake.base_url)
    assert usage == Usage(input_tokens=200, cache_read_tokens=800, cache_write_tokens=100,
                          output_tokens=50)
    assert (usage.prompt_tokens, usage.total_tokens) == (1100, 1150)


async def test_same_conversation_same_buckets_across_providers(
        session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as oa, FakeAnthropic() as an:
        openai_fake(oa, prompt=1000, cached=800, completion=50)
        anthropic_fake(an, uncached=200, read=800, write=0, output=50)
        from_openai = await ask_both_ways(session, OpenAIProvider(), oa.base_url)
        from_anthropic = await ask_both_ways(session, AnthropicProvider(), an.base_url)
    assert from_openai == from_anthropic == Usage(input_tokens=200, cache_read_tokens=800,
                                                  output_tokens=50)


async def test_reasoning_is_a_part_of_output(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as oa, FakeAnthropic() as an:
        openai_fake(oa, prompt=300, cached=0, completion=50, reasoning=30)
        anthropic_fake(an, uncached=300, read=0, write=0, output=50, thinking=30)
        an.thinking_text = "Let me think about caching."
        from_openai = await ask_both_ways(session, OpenAIProvider(), oa.base_url)
        from_anthropic = await ask_both_ways(session, AnthropicProvider(), an.base_url)
    expected = Usage(input_tokens=300, output_tokens=50, reasoning_tokens=30)
    assert from_openai == from_anthropic == expected
    assert expected.completion_tokens == 50 and expected.total_tokens == 350


async def test_anthropic_cumulative_delta_usage_is_not_added_twice(
        session: aiohttp.ClientSession) -> None:
    # Newer API versions repeat the input and cache counts in message_delta.
    async with FakeAnthropic() as fake:
        anthropic_fake(fake, uncached=200, read=800, write=100, output=50)
        fake.full_delta_usage = True
        usage = await ask_both_ways(session, AnthropicProvider(), fake.base_url)
    assert usage == Usage(input_tokens=200, cache_read_tokens=800, cache_write_tokens=100,
                          output_tokens=50)


async def test_fully_cached_prompt(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI() as oa, FakeAnthropic() as an:
        openai_fake(oa, prompt=1000, cached=1000, completion=5)
        anthropic_fake(an, uncached=0, read=1000, write=0, output=5)
        from_openai = await ask_both_ways(session, OpenAIProvider(), oa.base_url)
        from_anthropic = await ask_both_ways(session, AnthropicProvider(), an.base_url)
    assert from_openai == from_anthropic == Usage(cache_read_tokens=1000, output_tokens=5)


async def test_anthropic_request_reached_the_fake_translated(
        session: aiohttp.ClientSession) -> None:
    async with FakeAnthropic() as fake:
        await ask(session, AnthropicProvider(), fake.base_url, stream=False)
    sent = fake.requests[0]
    assert sent["system"] == [{"type": "text", "text": "A long shared document.",
                               "cache_control": {"type": "ephemeral"}}]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["max_tokens"] == 100
    assert fake.received[0].headers["x-api-key"] == "sk-test"
