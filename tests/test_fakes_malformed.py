"""The stand-ins' malformed modes are malformed by the providers' own definitions: each
answer, read through the official SDK, fails that SDK's types (or lacks the stream's end
marker), while the normal answer of the same fake passes them."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fakes import malformed
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI

HI: Any = [{"role": "user", "content": "hi"}]
STREAM_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


def _valid(model: Any, raw: bytes) -> bool:
    try:
        data = orjson.loads(raw)
        # strict: "12" is not a token count, as the API reference types it
        if isinstance(model, pydantic.TypeAdapter):
            model.validate_python(data, strict=True)
        else:
            model.model_validate(data, strict=True)
    except (orjson.JSONDecodeError, pydantic.ValidationError):
        return False
    return True


async def _openai_raw(fake: FakeOpenAI, stream: bool) -> tuple[str, list[bytes]]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as c, \
            c.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=HI, stream=stream,
                stream_options={"include_usage": True} if stream else openai.NOT_GIVEN
            ) as resp:
        kind = resp.headers.get("content-type", "")
        return kind, [line async for line in resp.iter_bytes()]


def _sse_payloads(parts: list[bytes]) -> list[bytes]:
    """The data lines, without Anthropic's keep-alive pings (not a message event)."""
    text = b"".join(parts)
    return [line[6:] for line in text.split(b"\n")
            if line.startswith(b"data: ") and line != b'data: {"type":"ping"}']


async def _openai_mode_is_malformed(fake: FakeOpenAI, mode: str, stream: bool) -> bool:
    fake.malformed = mode
    kind, parts = await _openai_raw(fake, stream)
    fake.malformed = None
    if mode in malformed.NOT_A_STREAM:
        return "text/event-stream" not in kind
    if not stream:
        return not _valid(ChatCompletion, b"".join(parts)) or (
            ChatCompletion.model_validate_json(b"".join(parts)).usage is None)
    payloads = _sse_payloads(parts)
    if payloads[-1] != b"[DONE]":
        return True
    chunks = [p for p in payloads if p != b"[DONE]"]
    usage = [orjson.loads(p).get("usage") for p in chunks if _valid(ChatCompletionChunk, p)]
    return not all(_valid(ChatCompletionChunk, p) for p in chunks) or not any(usage)


@pytest.mark.parametrize("mode", [*malformed.OPENAI_STREAM_MODES, *malformed.NOT_A_STREAM])
async def test_openai_stream_modes_break_the_sdks_types(mode: str) -> None:
    async with FakeOpenAI() as fake:
        _, parts = await _openai_raw(fake, stream=True)  # the normal answer is well formed
        assert all(_valid(ChatCompletionChunk, p) for p in _sse_payloads(parts)[:-1])
        assert await _openai_mode_is_malformed(fake, mode, stream=True), mode


@pytest.mark.parametrize("mode", [*malformed.OPENAI_BODY_MODES, "html"])
async def test_openai_answer_modes_break_the_sdks_types(mode: str) -> None:
    async with FakeOpenAI() as fake:
        _, parts = await _openai_raw(fake, stream=False)
        assert _valid(ChatCompletion, b"".join(parts))
        if mode == "usage_strings":
            fake.malformed = mode
            _, parts = await _openai_raw(fake, stream=False)
            assert not _valid(ChatCompletion, b"".join(parts))
        else:
            assert await _openai_mode_is_malformed(fake, mode, stream=False), mode


@pytest.mark.parametrize("mode", ["usage_missing", "usage_strings", "data_missing"])
async def test_openai_embedding_modes(mode: str) -> None:
    async with FakeOpenAI() as fake, openai.AsyncOpenAI(base_url=fake.base_url, api_key="k",
                                                        max_retries=0) as c:
        raw = await c.embeddings.with_raw_response.create(model="e", input="x",
                                                          encoding_format="float")
        assert _valid(CreateEmbeddingResponse, raw.content)
        fake.malformed = mode
        raw = await c.embeddings.with_raw_response.create(model="e", input="x",
                                                          encoding_format="float")
        assert not _valid(CreateEmbeddingResponse, raw.content)


async def _anthropic_raw(fake: FakeAnthropic, stream: bool) -> tuple[str, bytes]:
    async with anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="k",
                                        max_retries=0) as c, \
            c.messages.with_streaming_response.create(
                model="claude", max_tokens=10, messages=HI, stream=stream) as resp:
        return resp.headers.get("content-type", ""), await resp.read()


@pytest.mark.parametrize("mode", [*malformed.ANTHROPIC_STREAM_MODES, "html", "plain_json"])
async def test_anthropic_stream_modes_break_the_sdks_types(mode: str) -> None:
    async with FakeAnthropic() as fake:
        _, body = await _anthropic_raw(fake, stream=True)
        assert all(_valid(STREAM_EVENT, p) for p in _sse_payloads([body]))
        fake.malformed = mode
        kind, body = await _anthropic_raw(fake, stream=True)
        if mode in ("html", "plain_json"):
            assert "text/event-stream" not in kind
            return
        payloads = _sse_payloads([body])
        ends = payloads and _valid(STREAM_EVENT, payloads[-1]) and orjson.loads(
            payloads[-1])["type"] == "message_stop"
        assert not all(_valid(STREAM_EVENT, p) for p in payloads) or not ends, mode


@pytest.mark.parametrize("mode", [*malformed.ANTHROPIC_BODY_MODES, "html"])
async def test_anthropic_answer_modes_break_the_sdks_types(mode: str) -> None:
    async with FakeAnthropic() as fake:
        _, body = await _anthropic_raw(fake, stream=False)
        assert _valid(Message, body)
        fake.malformed = mode
        _, body = await _anthropic_raw(fake, stream=False)
        assert not _valid(Message, body), mode
