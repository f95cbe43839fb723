"""The OpenAI-compatible stand-ins speak their providers' wire formats: the official
``openai`` SDK (``AzureOpenAI`` for Azure) talks to each one and parses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.fakes.openai_compat_server import FLAVORS, FakeCompat, FakeToolCall

MESSAGES = [{"role": "user", "content": "Hi"}]
KEY = "sk-compat-test"
every_flavor = pytest.mark.parametrize("flavor", sorted(FLAVORS))


def client(fake: FakeCompat) -> openai.AsyncOpenAI:
    if fake.flavor.name == "azure":
        return openai.AsyncAzureOpenAI(azure_endpoint=fake.url, api_key=KEY,
                                       api_version="2024-10-21", max_retries=0, timeout=5)
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0, timeout=5)


@pytest.fixture
async def fake(flavor: str) -> AsyncIterator[FakeCompat]:
    async with FakeCompat(flavor) as server:
        server.require_api_key = KEY
        yield server


def model_for(fake: FakeCompat) -> str:
    return "accounts/fireworks/models/m" if fake.flavor.name == "fireworks_ai" else "m"


@every_flavor
async def test_answer_and_usage_parse(fake: FakeCompat) -> None:
    fake.prompt_tokens, fake.cached_tokens, fake.completion_tokens = 100, 40, 20
    async with client(fake) as c:
        reply = await c.chat.completions.create(model=model_for(fake), messages=MESSAGES)
    assert reply.choices[0].message.content == fake.reply_text
    assert reply.usage is not None and reply.usage.prompt_tokens == 100
    path = fake.received[-1].path
    assert path.endswith("/chat/completions"), path
    if fake.flavor.name == "azure":
        assert path == "/openai/deployments/m/chat/completions"
        assert fake.received[-1].headers["api-key"] == KEY
    else:
        assert fake.received[-1].headers["Authorization"] == f"Bearer {KEY}"


@every_flavor
async def test_stream_parses_to_the_usage(fake: FakeCompat) -> None:
    fake.prompt_tokens, fake.completion_tokens = 30, 9
    strict = fake.flavor.strict_fields is not None  # Mistral refuses stream_options
    async with client(fake) as c:
        stream = await c.chat.completions.create(
            model=model_for(fake), messages=MESSAGES, stream=True,
            **({} if strict else {"stream_options": {"include_usage": True}}))
        chunks = [ch async for ch in stream]
        if strict:
            with pytest.raises(openai.UnprocessableEntityError):
                await c.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True})
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == fake.reply_text
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert usage and usage[-1].prompt_tokens == 30
    if fake.flavor.name == "azure":
        assert chunks[0].choices == []  # Azure's prompt_filter_results chunk comes first


@every_flavor
async def test_tool_call_parses(fake: FakeCompat) -> None:
    fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"})
    async with client(fake) as c:
        reply = await c.chat.completions.create(model=model_for(fake), messages=MESSAGES)
        stream = await c.chat.completions.create(model=model_for(fake), messages=MESSAGES,
                                                 stream=True)
        chunks = [ch async for ch in stream]
    calls = reply.choices[0].message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"
    args = "".join(tc.function.arguments or "" for ch in chunks if ch.choices
                   for tc in ch.choices[0].delta.tool_calls or () if tc.function)
    assert args == '{"city":"Paris"}'


@every_flavor
async def test_errors_raise_the_sdks_classes(fake: FakeCompat) -> None:
    fake.fail(429, "slow down", headers={"Retry-After": "7"})
    async with client(fake) as c:
        with pytest.raises(openai.RateLimitError) as rate:
            await c.chat.completions.create(model=model_for(fake), messages=MESSAGES)
        assert rate.value.response.headers["retry-after"] == "7"
        fake.require_api_key = "another"
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(model=model_for(fake), messages=MESSAGES)


@pytest.mark.parametrize("flavor", sorted(f for f, v in FLAVORS.items() if v.completions))
async def test_legacy_completions_parse_where_served(fake: FakeCompat) -> None:
    async with client(fake) as c:
        reply = await c.completions.create(model=model_for(fake), prompt="Say hi")
        stream = await c.completions.create(model=model_for(fake), prompt="Say hi",
                                            stream=True, stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
    assert reply.choices[0].text == fake.reply_text
    assert reply.usage is not None and reply.usage.prompt_tokens == fake.prompt_tokens
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == fake.reply_text
    assert chunks[-1].usage is not None
