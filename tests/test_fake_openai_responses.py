"""The fake OpenAI's Responses API speaks the real wire format: the official openai SDK
creates, streams (events and the stream helper's final response), retrieves and deletes
against it, and reads its usage details, function calls, web searches and errors."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "strict": True, "parameters": {
              "type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}}]


def client_of(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0,
                              timeout=5)


async def test_create_text_with_usage_details() -> None:
    async with FakeOpenAI() as fake, client_of(fake) as client:
        fake.prompt_tokens, fake.cached_tokens = 1000, 600
        fake.completion_tokens, fake.reasoning_tokens = 50, 20
        fake.reasoning_summary = "Thought about it."
        response = await client.responses.create(model="gpt-5-mini", input="Hi",
                                                 instructions="Be brief.")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == fake.reply_text
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.instructions == "Be brief."
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (1000, 50, 1050)
    assert usage.input_tokens_details.cached_tokens == 600
    assert usage.output_tokens_details.reasoning_tokens == 20
    assert fake.requests[-1]["input"] == "Hi"


async def test_stream_events_in_order_and_final_response() -> None:
    async with FakeOpenAI() as fake, client_of(fake) as client:
        fake.stream_chunks = 4
        fake.web_searches = 1
        stream = await client.responses.create(model="gpt-5-mini", input="Hi", stream=True)
        events = [e async for e in stream]
        async with client.responses.stream(model="gpt-5-mini", input="Hi") as helper:
            deltas = [e.delta async for e in helper if e.type == "response.output_text.delta"]
            final = await helper.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.web_search_call.searching" in kinds
    message_events = [k for k in kinds if "output_text" in k or "content_part" in k]
    assert message_events == (["response.content_part.added"]
                              + ["response.output_text.delta"] * 4
                              + ["response.output_text.done", "response.content_part.done"])
    assert "".join(deltas) == fake.reply_text
    assert final.output_text == fake.reply_text
    assert [item.type for item in final.output] == ["web_search_call", "message"]
    assert final.usage is not None and final.usage.input_tokens == fake.prompt_tokens


async def test_function_call_then_its_output() -> None:
    async with FakeOpenAI() as fake, client_of(fake) as client:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"}, id="call_w1")
        first = await client.responses.create(model="gpt-5-mini", input="Weather?",
                                              tools=TOOLS)  # type: ignore[arg-type]
        call = first.output[0]
        assert call.type == "function_call"
        assert (call.name, call.call_id, call.arguments) == (
            "get_weather", "call_w1", '{"city":"Paris"}')
        async with client.responses.stream(
                model="gpt-5-mini", tools=TOOLS,  # type: ignore[arg-type]
                input=[{"role": "user", "content": "Weather?"},
                       {"type": "function_call", "call_id": "call_w1",
                        "name": "get_weather", "arguments": '{"city":"Paris"}'},
                       {"type": "function_call_output", "call_id": "call_w1",
                        "output": "sunny"}]) as stream:
            second = await stream.get_final_response()
        streamed = await client.responses.create(model="gpt-5-mini", input="Weather?",
                                                 tools=TOOLS,  # type: ignore[arg-type]
                                                 stream=True)
        kinds = [e.type async for e in streamed]
    assert second.output_text == fake.reply_text
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds


async def test_previous_response_retrieve_and_delete() -> None:
    async with FakeOpenAI() as fake, client_of(fake) as client:
        first = await client.responses.create(model="gpt-5-mini", input="Hi")
        follow = await client.responses.create(model="gpt-5-mini", input="More",
                                               previous_response_id=first.id)
        assert follow.previous_response_id == first.id
        got = await client.responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == fake.reply_text
        await client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model="gpt-5-mini", input="x",
                                          previous_response_id="resp_unknown")
        unstored = await client.responses.create(model="gpt-5-mini", input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(unstored.id)
    assert info.value.code == "previous_response_not_found"


async def test_errors_and_a_server_without_the_responses_api() -> None:
    async with FakeOpenAI() as fake, client_of(fake) as client:
        fake.fail(429, "slow down")
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="gpt-5-mini", input="Hi")
        fake.responses_enabled = False
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="gpt-5-mini", input="Hi")
