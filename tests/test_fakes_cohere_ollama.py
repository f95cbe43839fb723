"""The Cohere and Ollama stand-ins speak the real wire formats: the official SDKs (the
``cohere`` package's ClientV2, the ``ollama`` package) talk to them and parse what they
answer, streams and errors included."""

from __future__ import annotations

import base64

import cohere
import ollama
import pytest

from tests.fakes.cohere_server import FakeCohere
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.server_base import FakeToolCall

MESSAGES = [{"role": "user", "content": "Hi"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def cohere_client(fake: FakeCohere, key: str = "co-key") -> cohere.AsyncClientV2:
    return cohere.AsyncClientV2(api_key=key, base_url=fake.url, timeout=5)


# --- Cohere ----------------------------------------------------------------------------

async def test_cohere_chat() -> None:
    async with FakeCohere() as fake:
        fake.require_api_key = "co-key"
        fake.input_tokens, fake.output_tokens = 120, 30
        async with cohere_client(fake) as client:
            reply = await client.chat(model="command-a-03-2025", messages=MESSAGES,
                                      max_tokens=50, p=0.9, k=40, stop_sequences=["END"])
    assert reply.finish_reason == "COMPLETE"
    assert reply.message.content is not None
    assert reply.message.content[0].type == "text"
    assert reply.message.content[0].text == fake.reply_text
    assert reply.usage is not None and reply.usage.billed_units is not None
    assert (reply.usage.billed_units.input_tokens, reply.usage.billed_units.output_tokens) \
        == (120, 30)
    assert reply.usage.tokens is not None and reply.usage.tokens.input_tokens == 320
    sent = fake.requests[0]
    assert sent["model"] == "command-a-03-2025" and sent["p"] == 0.9 and sent["k"] == 40
    assert fake.received[0].path == "/v2/chat"


async def test_cohere_chat_stream_events() -> None:
    async with FakeCohere() as fake:
        fake.stream_chunks = 4
        async with cohere_client(fake) as client:
            events = [e async for e in client.chat_stream(model="command-a-03-2025",
                                                          messages=MESSAGES)]
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end"
    assert kinds.count("content-delta") == 4 and "content-start" in kinds
    text = "".join(e.delta.message.content.text for e in events  # type: ignore[union-attr]
                   if e.type == "content-delta")
    assert text == fake.reply_text
    end = events[-1]
    assert end.type == "message-end" and end.delta is not None
    assert end.delta.finish_reason == "COMPLETE"
    assert end.delta.usage is not None and end.delta.usage.billed_units is not None
    assert end.delta.usage.billed_units.output_tokens == fake.output_tokens
    assert fake.requests[0]["stream"] is True


async def test_cohere_tool_call_plain_and_streamed() -> None:
    async with FakeCohere() as fake:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"}, id="get_weather_x1")
        tools = [WEATHER_TOOL]
        async with cohere_client(fake) as client:
            reply = await client.chat(model="command-a-03-2025", messages=MESSAGES,
                                      tools=tools)  # type: ignore[arg-type]
            events = [e async for e in client.chat_stream(
                model="command-a-03-2025", messages=MESSAGES,
                tools=tools)]  # type: ignore[arg-type]
    assert reply.finish_reason == "TOOL_CALL"
    assert reply.message.tool_plan == fake.tool_plan
    call = (reply.message.tool_calls or [])[0]
    assert call.id == "get_weather_x1" and call.function is not None
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'
    kinds = [e.type for e in events]
    assert {"tool-plan-delta", "tool-call-start", "tool-call-delta", "tool-call-end"} <= set(kinds)
    args = "".join(e.delta.message.tool_calls.function.arguments  # type: ignore[union-attr]
                   for e in events if e.type == "tool-call-delta")
    assert args == '{"city":"Paris"}'


async def test_cohere_embed() -> None:
    async with FakeCohere() as fake:
        fake.embed_tokens = 7
        async with cohere_client(fake) as client:
            reply = await client.embed(model="embed-v4.0", texts=["a", "b"],
                                       input_type="search_document", embedding_types=["float"])
    assert reply.embeddings.float_ is not None and len(reply.embeddings.float_) == 2
    assert reply.meta is not None and reply.meta.billed_units is not None
    assert reply.meta.billed_units.input_tokens == 7
    assert fake.received[0].path == "/v2/embed"


async def test_cohere_errors_are_the_sdks_classes() -> None:
    async with FakeCohere() as fake:
        fake.require_api_key = "right"
        async with cohere_client(fake, "wrong") as client:
            with pytest.raises(cohere.UnauthorizedError) as auth:
                await client.chat(model="m", messages=MESSAGES)
        assert auth.value.body["message"] == "invalid api token"
        fake.require_api_key = None
        fake.fail(429, "You are past the per minute request limit", headers={"Retry-After": "3"})
        async with cohere_client(fake) as client:
            with pytest.raises(cohere.TooManyRequestsError) as limited:
                await client.chat(model="m", messages=MESSAGES,
                                  request_options={"max_retries": 0})
            assert limited.value.headers["retry-after"] == "3"
            # The stand-in is strict about field names: OpenAI's names are refused.
            with pytest.raises(cohere.BadRequestError):
                await client.chat(model="m", messages=MESSAGES,
                                  request_options={"additional_body_parameters": {"top_p": 0.5}})


# --- Ollama ------------------------------------------------------------------------------


async def test_ollama_chat_and_stream() -> None:
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url) as client:
        fake.prompt_eval_count, fake.eval_count = 26, 12
        reply = await client.chat(model="llama3.2", messages=MESSAGES,
                                  options={"temperature": 0, "num_predict": 40})
        chunks = [c async for c in await client.chat(model="llama3.2", messages=MESSAGES,
                                                     stream=True)]
    assert reply.message.content == fake.reply_text
    assert (reply.prompt_eval_count, reply.eval_count, reply.done) == (26, 12, True)
    assert "".join(c.message.content or "" for c in chunks) == fake.reply_text
    assert [c.done for c in chunks][-1] is True and not any(c.done for c in chunks[:-1])
    assert chunks[-1].prompt_eval_count == 26 and chunks[-1].eval_count == 12
    assert fake.requests[0]["options"] == {"temperature": 0, "num_predict": 40}


async def test_ollama_tool_call() -> None:
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url) as client:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"})
        reply = await client.chat(model="llama3.2", messages=MESSAGES, tools=[WEATHER_TOOL])
        chunks = [c async for c in await client.chat(model="llama3.2", messages=MESSAGES,
                                                     tools=[WEATHER_TOOL], stream=True)]
    call = (reply.message.tool_calls or [])[0]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    streamed = [tc for c in chunks for tc in (c.message.tool_calls or ())]
    assert [tc.function.name for tc in streamed] == ["get_weather"]


async def test_ollama_generate_images_and_stream() -> None:
    png = base64.b64encode(b"\x89PNG fake image").decode()
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url) as client:
        reply = await client.generate(model="llava", prompt="What is this?", images=[png])
        chunks = [c async for c in await client.generate(model="llava", prompt="Hi",
                                                         stream=True)]
    assert reply.response == fake.reply_text and reply.eval_count == 12
    assert "".join(c.response or "" for c in chunks) == fake.reply_text
    assert chunks[-1].done and chunks[-1].prompt_eval_count == 26
    assert fake.requests[0]["images"] == [png]


async def test_ollama_embed() -> None:
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url) as client:
        reply = await client.embed(model="all-minilm", input=["a", "b", "c"])
    assert len(reply.embeddings) == 3 and reply.prompt_eval_count == 8


async def test_ollama_errors_and_missing_counts() -> None:
    async with FakeOllama() as fake, ollama.AsyncClient(host=fake.url) as client:
        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="nope", messages=MESSAGES)
        assert missing.value.status_code == 404
        assert missing.value.error == "model 'nope' not found"
        fake.stream_error = "model runner has unexpectedly stopped"
        with pytest.raises(ollama.ResponseError) as broke:
            async for _ in await client.chat(model="llama3.2", messages=MESSAGES,
                                             stream=True):
                pass
        assert broke.value.error == "model runner has unexpectedly stopped"
        fake.stream_error = None
        fake.prompt_eval_count = None  # a fully cached prompt: Ollama leaves the count out
        reply = await client.chat(model="llama3.2", messages=MESSAGES)
    assert reply.prompt_eval_count is None and reply.eval_count == 12
