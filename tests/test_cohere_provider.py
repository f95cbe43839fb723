"""The Cohere adapter: OpenAI chat params to v2 Chat bodies, and Cohere's answers,
stream events, errors and embeddings back, over real HTTP from the Cohere stand-in."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tallygate.errors import (
    BadRequestError,
    ConfigError,
    UpstreamAuthenticationError,
    UpstreamError,
    UpstreamRateLimitError,
)
from tallygate.providers.base import Deployment, StreamItem
from tallygate.providers.cohere import CohereChatProvider, CohereProvider
from tallygate.providers.registry import get_provider, split_model
from tallygate.usage import Usage
from tests.adapter_support import (  # noqa: F401  (the session fixture)
    WEATHER,
    request_body,
    round_trip,
    session_fixture,
    streamed_text,
    user,
)
from tests.fakes.cohere_server import FakeCohere
from tests.fakes.server_base import FakeToolCall

PROVIDER = CohereProvider()
DEPLOYMENT = Deployment(provider="cohere", model="command-a-03-2025", api_key="co-secret")


def body_for(params: dict[str, Any], stream: bool = False,
             deployment: Deployment = DEPLOYMENT) -> dict[str, Any]:
    return request_body(PROVIDER, deployment, params, stream)


# --- registration, URL and auth ----------------------------------------------------------

def test_registered_under_both_litellm_prefixes() -> None:
    assert split_model("cohere/command-r") == ("cohere", "command-r")
    assert split_model("cohere_chat/command-a-03-2025") == ("cohere_chat", "command-a-03-2025")
    assert isinstance(get_provider("cohere_chat"), CohereChatProvider)
    assert get_provider("cohere").price_provider == "cohere"
    assert get_provider("cohere_chat").price_provider == "cohere"


def test_url_and_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    request = PROVIDER.chat_request(DEPLOYMENT, {"messages": [user("hi")]}, False)
    assert request.url == "https://api.cohere.com/v2/chat"
    assert request.headers["Authorization"] == "Bearer co-secret"
    for base in ("http://127.0.0.1:9", "http://127.0.0.1:9/", "http://127.0.0.1:9/v2",
                 "http://127.0.0.1:9/v2/chat"):
        dep = Deployment(provider="cohere", model="m", api_base=base)
        assert PROVIDER.chat_request(dep, {"messages": [user("hi")]}, True).url \
            == "http://127.0.0.1:9/v2/chat"
        assert PROVIDER.embedding_request(dep, {"input": "x"}).url \
            == "http://127.0.0.1:9/v2/embed"
    bare = Deployment(provider="cohere", model="m")
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.setenv("CO_API_KEY", "from-co-env")
    monkeypatch.setenv("COHERE_API_BASE", "http://127.0.0.1:7/v2/chat")
    request = PROVIDER.chat_request(bare, {"messages": [user("hi")]}, True)
    assert request.headers["Authorization"] == "Bearer from-co-env"
    assert request.headers["Accept"] == "text/event-stream"
    assert request.url == "http://127.0.0.1:7/v2/chat"
    monkeypatch.setenv("COHERE_API_KEY", "from-cohere-env")
    assert PROVIDER.chat_request(bare, {"messages": [user("hi")]}, False).headers[
        "Authorization"] == "Bearer from-cohere-env"


def test_v1_models_refused_at_config_load() -> None:
    with pytest.raises(ConfigError, match="v1"):
        PROVIDER.check_deployment(Deployment(provider="cohere_chat", model="v1/command-r"))
    PROVIDER.check_deployment(DEPLOYMENT)


# --- request translation -----------------------------------------------------------------

def test_messages_translate_with_tool_round_trip() -> None:
    body = body_for({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "assistant", "content": "It is 18C."},
        {"role": "assistant", "content": ""},  # empty turns are dropped
        user("Thanks"),
    ]})
    assert body["model"] == "command-a-03-2025"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
        {"role": "assistant", "tool_plan": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "assistant", "content": "It is 18C."},
        {"role": "user", "content": "Thanks"},
    ]


def test_sampling_limits_and_formats_use_cohere_names() -> None:
    body = body_for({"messages": [user("hi")], "max_tokens": 50, "max_completion_tokens": 70,
                     "temperature": 0.3, "top_p": 0.8, "top_k": 20, "seed": 7,
                     "frequency_penalty": 0.1, "presence_penalty": 0.2, "stop": "END",
                     "response_format": {"type": "json_object"}, "user": "u-1",
                     "stream_options": {"include_usage": True}}, stream=True)
    assert body == {"model": "command-a-03-2025", "messages": [user("hi")], "max_tokens": 70,
                    "temperature": 0.3, "p": 0.8, "k": 20, "seed": 7,
                    "frequency_penalty": 0.1, "presence_penalty": 0.2,
                    "stop_sequences": ["END"], "response_format": {"type": "json_object"},
                    "stream": True}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert body_for({"messages": [user("hi")], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})[
        "response_format"] == {"type": "json_object", "json_schema": schema}
    assert "response_format" not in body_for({"messages": [user("hi")],
                                              "response_format": {"type": "text"}})
    assert body_for({"messages": [user("hi")], "reasoning_effort": "high"})["thinking"] \
        == {"type": "enabled"}
    assert body_for({"messages": [user("hi")], "reasoning_effort": "none"})["thinking"] \
        == {"type": "disabled"}
    dep = Deployment(provider="cohere", model="m", params={"safety_mode": "STRICT"})
    assert body_for({"messages": [user("hi")]}, deployment=dep)["safety_mode"] == "STRICT"


def test_tools_and_tool_choice() -> None:
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    other = {"type": "function", "function": {"name": "get_time"}}
    body = body_for({"messages": [user("hi")], "tools": [strict, other]})
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": WEATHER["function"]["parameters"]}},
        {"type": "function", "function": {
            "name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    assert body["strict_tools"] is True and "tool_choice" not in body
    assert body_for({"messages": [user("hi")], "tools": [WEATHER],
                     "tool_choice": "required"})["tool_choice"] == "REQUIRED"
    assert body_for({"messages": [user("hi")], "tools": [WEATHER],
                     "tool_choice": "none"})["tool_choice"] == "NONE"
    # Cohere cannot name a tool: the named one is the only one offered, and required.
    named = body_for({"messages": [user("hi")], "tools": [WEATHER, other],
                      "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert [t["function"]["name"] for t in named["tools"]] == ["get_time"]
    assert named["tool_choice"] == "REQUIRED"
    with pytest.raises(BadRequestError) as err:
        body_for({"messages": [user("hi")], "tools": [WEATHER],
                  "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert err.value.param == "tool_choice"


@pytest.mark.parametrize(("params", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"stop": [1, 2]}, "stop"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0]"),
    ({"messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"tools": [{"type": "function"}]}, "tools"),
])
def test_untranslatable_requests_are_400s(params: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as err:
        body_for({"messages": [user("hi")], **params})
    assert err.value.status_code == 400 and err.value.param == param


# --- answers, streams and usage over HTTP ------------------------------------------------

async def ask(session: aiohttp.ClientSession, fake: FakeCohere, params: dict[str, Any],
              stream: bool) -> tuple[dict[str, Any] | None, list[StreamItem], Any]:
    dep = Deployment(provider="cohere", model="command-a-03-2025", api_base=fake.url,
                     api_key="co-secret")
    return await round_trip(session, PROVIDER, dep, params, stream, split=7)


async def test_answer_bills_billed_units_not_tokens(session: aiohttp.ClientSession) -> None:
    async with FakeCohere() as fake:
        fake.require_api_key = "co-secret"
        fake.input_tokens, fake.output_tokens, fake.template_tokens = 120, 30, 500
        body, _, usage = await ask(session, fake, {"messages": [user("hi")],
                                                   "top_p": 0.5, "stop": ["x"]}, False)
        _, items, streamed = await ask(session, fake, {"messages": [user("hi")]}, True)
    assert usage == streamed == Usage(input_tokens=120, output_tokens=30)
    assert body is not None
    assert body["object"] == "chat.completion" and body["model"] == "command-a-03-2025"
    choice = body["choices"][0]
    assert choice["message"]["content"] == fake.reply_text
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 120 and body["usage"]["completion_tokens"] == 30
    # The stream: a role chunk first, the text, one finish chunk, then the usage chunk.
    assert items[0].data["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed_text(items) == fake.reply_text
    assert [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]][-1] \
        == "stop"
    assert items[-1].data["choices"] == [] and items[-1].data["usage"]["total_tokens"] == 150
    assert len({i.data["id"] for i in items}) == 1


async def test_tool_calls_plain_and_streamed(session: aiohttp.ClientSession) -> None:
    async with FakeCohere() as fake:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"}, id="call_w1")
        params = {"messages": [user("weather?")], "tools": [WEATHER]}
        body, _, _ = await ask(session, fake, params, False)
        _, items, _ = await ask(session, fake, params, True)
    assert body is not None
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == fake.tool_plan  # the plan, as text beside the calls
    assert message["tool_calls"] == [{"id": "call_w1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    calls = [tc for i in items if i.data["choices"]
             for tc in i.data["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls[0]["id"] == "call_w1" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"Paris"}'
    assert {c["index"] for c in calls} == {0}
    assert streamed_text(items) == fake.tool_plan
    assert [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]][-1] \
        == "tool_calls"


async def test_thinking_is_reasoning_content(session: aiohttp.ClientSession) -> None:
    async with FakeCohere() as fake:
        fake.thinking_text = "Think first."
        body, _, _ = await ask(session, fake, {"messages": [user("hi")]}, False)
        _, items, _ = await ask(session, fake, {"messages": [user("hi")]}, True)
    assert body is not None
    assert body["choices"][0]["message"]["reasoning_content"] == "Think first."
    assert body["choices"][0]["message"]["content"] == fake.reply_text
    assert streamed_text(items, "reasoning_content") == "Think first."
    assert streamed_text(items) == fake.reply_text


async def test_without_billed_units_raw_tokens_are_an_estimate(
        session: aiohttp.ClientSession) -> None:
    async with FakeCohere() as fake:
        fake.billed_units = False
        fake.input_tokens, fake.output_tokens, fake.template_tokens = 10, 5, 40
        _, _, usage = await ask(session, fake, {"messages": [user("hi")]}, False)
        _, _, streamed = await ask(session, fake, {"messages": [user("hi")]}, True)
    assert usage == streamed == Usage(input_tokens=50, output_tokens=5, source="estimated")


async def test_stream_error_at_message_end_keeps_its_usage(
        session: aiohttp.ClientSession) -> None:
    async with FakeCohere() as fake:
        fake.stream_error = "internal generation failure"
        dep = Deployment(provider="cohere", model="m", api_base=fake.url)
        request = PROVIDER.chat_request(dep, {"messages": [user("hi")]}, True)
        async with session.post(request.url, data=request.body,
                                headers=request.headers) as resp:
            raw = await resp.read()
    decoder = PROVIDER.chat_stream(dep, include_usage=False)
    with pytest.raises(UpstreamError, match="internal generation failure") as err:
        decoder.feed(raw)
    assert err.value.status_code == 502
    assert decoder.done and decoder.usage == Usage(input_tokens=11, output_tokens=9)
    assert decoder.output_text() == fake.reply_text


def test_error_finish_in_a_plain_answer_is_an_upstream_failure() -> None:
    answer = orjson.dumps({"id": "x", "finish_reason": "ERROR", "message": {
        "role": "assistant", "content": []}})
    with pytest.raises(UpstreamError, match="ERROR"):
        PROVIDER.chat_response(DEPLOYMENT, answer)
    timeout = orjson.dumps({"id": "x", "finish_reason": "TIMEOUT", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "partial"}]},
        "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 2}}})
    result = PROVIDER.chat_response(DEPLOYMENT, timeout)
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.usage == Usage(input_tokens=3, output_tokens=2)


def test_error_answers_keep_status_and_hide_key_messages() -> None:
    body = orjson.dumps({"id": "e1", "message": "invalid request: bad thing"})
    bad = PROVIDER.error_from_response(400, body, {})
    assert (bad.status_code, bad.message) == (400, "invalid request: bad thing")
    limited = PROVIDER.error_from_response(429, body, {"Retry-After": "7"})
    assert isinstance(limited, UpstreamRateLimitError) and limited.headers == {"Retry-After": "7"}
    for status in (401, 498):
        err = PROVIDER.error_from_response(
            status, orjson.dumps({"message": "invalid api token co-secret"}), {})
        assert isinstance(err, UpstreamAuthenticationError) and err.status_code == 401
        assert "co-secret" not in err.message
    assert PROVIDER.error_from_response(402, body, {}).status_code == 402
    assert PROVIDER.error_from_response(500, b"not json", {}).status_code == 502
    assert PROVIDER.error_from_response(499, body, {}).status_code == 502


# --- embeddings --------------------------------------------------------------------------

async def test_embeddings(session: aiohttp.ClientSession) -> None:
    async with FakeCohere() as fake:
        fake.embed_tokens = 9
        dep = Deployment(provider="cohere", model="embed-v4.0", api_base=fake.url,
                         params={"input_type": "classification"})
        for params in ({"input": ["a", "b"], "dimensions": 8},
                       {"input": "a", "input_type": "search_query"}):
            request = PROVIDER.embedding_request(dep, params)
            async with session.post(request.url, data=request.body,
                                    headers=request.headers) as resp:
                assert resp.status == 200
                result = PROVIDER.embedding_response(dep, await resp.read())
            assert result.usage == Usage(input_tokens=9)
            assert result.body["object"] == "list" and result.body["model"] == "embed-v4.0"
            assert result.body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    first, second = fake.requests
    assert first == {"model": "embed-v4.0", "texts": ["a", "b"], "input_type": "classification",
                     "embedding_types": ["float"], "output_dimension": 8}
    assert second["input_type"] == "search_query" and second["texts"] == ["a"]
    default = orjson.loads(PROVIDER.embedding_request(DEPLOYMENT, {"input": "x"}).body)
    assert default["input_type"] == "search_document"
    with pytest.raises(BadRequestError):
        PROVIDER.embedding_request(DEPLOYMENT, {"input": [[1, 2, 3]]})
