"""Streaming through the SDK: sync iterators and async iterators of ChatCompletionChunk
dicts, usage always asked of upstream, the usage chunk shown only when asked for, and
every stream billed exactly once: finished, closed early or abandoned."""

from __future__ import annotations

import gc
import time
from decimal import Decimal
from typing import Any

import pytest

import tallygate
from tallygate.event import UsageEvent
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.sdk_fixtures import SdkPaths, anthropic_kwargs, openai_kwargs

pytestmark = pytest.mark.timeout(30)  # a hang (deadlock) fails, not blocks

GPT_IN, GPT_OUT = Decimal("0.15") / 10**6, Decimal("0.60") / 10**6


def check_chunk(chunk: Any) -> None:
    data = chunk.model_dump()
    assert data["object"] == "chat.completion.chunk"
    assert data["id"] and isinstance(data["created"], int) and data["model"]
    assert isinstance(data["choices"], list)
    for choice in data["choices"]:
        assert choice["index"] == 0 and isinstance(choice["delta"], dict)


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("include_usage", [False, True])
def test_sync_stream_yields_chunks_and_bills_once(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, include_usage: bool) -> None:
    tallygate.success_callback = ["lago"]
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = tallygate.completion(model="gpt-4o-mini", stream=True, user="customer-42",
                                  **openai_kwargs(openai_fake, **extra))
    chunks = list(stream)
    for c in chunks:
        check_chunk(c)
    assert text_of(chunks) == "Hello from the fake OpenAI."
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        assert chunks[-1].choices == []
        assert chunks[-1].usage.prompt_tokens == 12
        assert chunks[-1].usage.completion_tokens == 7
    else:
        assert usage_chunks == []
    # Upstream is always asked for usage, whatever the caller asked.
    assert openai_fake.requests[-1]["stream"] is True
    assert openai_fake.requests[-1]["stream_options"] == {"include_usage": True}

    event = stream.usage_event
    assert event is not None and event.call_id == stream.call_id
    assert event.usage.source == "provider"
    assert "stream" in event.flags and "client_disconnected" not in event.flags
    assert event.cost == 12 * GPT_IN + 7 * GPT_OUT
    tallygate.flush()
    assert lago.count(stream.call_id) == 1
    assert lago.events[stream.call_id].properties["usage_source"] == "provider"
    assert lago.schema_violations == []


@pytest.mark.parametrize("include_usage", [False, True])
async def test_async_stream_yields_chunks_and_bills_once(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, loop_session: None,
        include_usage: bool) -> None:
    tallygate.callbacks = ["lago"]
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await tallygate.acompletion(model="gpt-4o-mini", stream=True,
                                         user="customer-42",
                                         **openai_kwargs(openai_fake, **extra))
    chunks = [c async for c in stream]
    for c in chunks:
        check_chunk(c)
    assert text_of(chunks) == "Hello from the fake OpenAI."
    assert any(c.usage is not None for c in chunks) is include_usage
    assert openai_fake.requests[-1]["stream_options"] == {"include_usage": True}
    assert stream.usage_event is not None
    assert stream.usage_event.cost == 12 * GPT_IN + 7 * GPT_OUT
    tallygate.flush()
    assert lago.count(stream.call_id) == 1


async def test_async_non_streaming_call(sdk: SdkPaths, lago: FakeLago,
                                        openai_fake: FakeOpenAI, loop_session: None) -> None:
    tallygate.success_callback = ["lago"]
    r = await tallygate.acompletion(model="gpt-4o-mini", user="customer-42",
                                    **openai_kwargs(openai_fake))
    assert r.choices[0].message.content == "Hello from the fake OpenAI."
    tallygate.flush()
    assert lago.count(r.call_id) == 1


def test_anthropic_stream_bills_its_cache_buckets(
        sdk: SdkPaths, lago: FakeLago, anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.input_tokens, anthropic_fake.output_tokens = 200, 300
    anthropic_fake.cache_read_tokens, anthropic_fake.cache_write_tokens = 800, 100
    tallygate.success_callback = ["lago"]
    stream = tallygate.completion(model="anthropic/claude-sonnet-4-5", stream=True,
                                  user="customer-42",
                                  stream_options={"include_usage": True},
                                  **anthropic_kwargs(anthropic_fake))
    chunks = list(stream)
    for c in chunks:
        check_chunk(c)
    assert text_of(chunks) == "Hello from the fake Claude."
    assert chunks[-1].usage.prompt_tokens == 1100
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 800
    event = stream.usage_event
    assert event is not None
    assert (event.usage.input_tokens, event.usage.cache_read_tokens,
            event.usage.cache_write_tokens, event.usage.output_tokens) == (200, 800, 100, 300)
    assert event.cost == Decimal("0.005715")
    tallygate.flush()
    props = lago.events[stream.call_id].properties
    assert props["input_tokens"] == 1100
    assert props["cached_input_tokens"] == 800
    assert props["cache_creation_input_tokens"] == 100
    assert Decimal(props["response_cost"]) == Decimal("0.005715")


def test_a_stream_closed_early_is_billed_once_as_disconnected(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    openai_fake.stream_chunks = 10
    tallygate.success_callback = ["lago"]
    stream = tallygate.completion(model="gpt-4o-mini", stream=True, user="customer-42",
                                  **openai_kwargs(openai_fake))
    first = next(stream)
    check_chunk(first)
    stream.close()
    stream.close()  # twice: still one event
    event = stream.usage_event
    assert event is not None
    assert {"stream", "client_disconnected"} <= event.flags
    tallygate.flush()
    assert lago.count(stream.call_id) == 1
    assert "client_disconnected" in lago.events[stream.call_id].properties["flags"]


def test_a_stream_used_as_a_context_manager_bills_once(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    with tallygate.completion(model="gpt-4o-mini", stream=True, user="customer-42",
                              **openai_kwargs(openai_fake)) as stream:
        chunks = list(stream)
    assert text_of(chunks) == "Hello from the fake OpenAI."
    assert stream.usage_event is not None
    # Fully read: the provider's numbers, not an estimate, and not "disconnected".
    assert "client_disconnected" not in stream.usage_event.flags
    tallygate.flush()
    assert lago.count(stream.call_id) == 1


def test_an_abandoned_stream_is_billed_once_as_estimated(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    openai_fake.stream_chunks = 10
    openai_fake.chunk_delay = 0.02  # the usage chunk has not come when it is dropped
    seen: list[UsageEvent] = []
    tallygate.success_callback = ["lago", seen.append]
    stream = tallygate.completion(model="gpt-4o-mini", stream=True, user="customer-42",
                                  **openai_kwargs(openai_fake))
    next(stream)
    next(stream)
    call_id = stream.call_id
    del stream
    gc.collect()
    wait_for(lambda: len(seen) == 1)
    event = seen[0]
    assert event.call_id == call_id
    assert event.usage.source == "estimated"
    assert {"stream", "client_disconnected", "estimated_usage"} <= event.flags
    assert event.usage.output_tokens > 0 and event.cost is not None and event.cost > 0
    tallygate.flush()
    assert lago.count(call_id) == 1
    assert lago.events[call_id].properties["usage_source"] == "estimated"
    assert len(seen) == 1


async def test_an_async_stream_closed_early_is_billed_once(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, loop_session: None) -> None:
    openai_fake.stream_chunks = 10
    seen: list[UsageEvent] = []
    tallygate.success_callback = ["lago", seen.append]
    stream = await tallygate.acompletion(model="gpt-4o-mini", stream=True,
                                         user="customer-42", **openai_kwargs(openai_fake))
    async for _ in stream:
        break
    await stream.aclose()
    await stream.aclose()
    assert len(seen) == 1 and "client_disconnected" in seen[0].flags
    tallygate.flush()
    assert lago.count(stream.call_id) == 1


def test_a_stream_cut_by_upstream_is_billed_and_raises(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    openai_fake.stream_chunks = 10
    openai_fake.drop_connection = "mid"
    openai_fake.chunk_delay = 0.02
    seen: list[UsageEvent] = []
    tallygate.success_callback = ["lago", seen.append]
    stream = tallygate.completion(model="gpt-4o-mini", stream=True, user="customer-42",
                                  **openai_kwargs(openai_fake))
    got = []
    with pytest.raises(tallygate.UpstreamError):
        for chunk in stream:
            got.append(chunk)
    assert got  # some output came before the cut
    assert len(seen) == 1 and seen[0].usage.source == "estimated"
    tallygate.flush()
    assert lago.count(stream.call_id) == 1
