"""The Anthropic adapter as a pure translation: dicts and bytes in, dicts and bytes out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tallygate.errors import BadRequestError, UpstreamError
from tallygate.providers.anthropic import AnthropicProvider, AnthropicStreamDecoder
from tallygate.providers.base import Deployment, StreamItem
from tallygate.providers.registry import get_provider
from tallygate.usage import Usage

PROVIDER = AnthropicProvider()
DEPLOYMENT = Deployment(provider="anthropic", model="claude-test", api_key="sk-ant-1")


def body_for(params: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    request = PROVIDER.chat_request(DEPLOYMENT, params, stream)
    parsed = orjson.loads(request.body)
    assert isinstance(parsed, dict)
    return parsed


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- request ---------------------------------------------------------------------------

def test_registered_under_its_name() -> None:
    assert isinstance(get_provider("anthropic"), AnthropicProvider)


def test_request_url_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    request = PROVIDER.chat_request(DEPLOYMENT, {"messages": [user("hi")]}, False)
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-1"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["Content-Type"] == "application/json"

    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    for base in ("http://127.0.0.1:9/", "http://127.0.0.1:9/v1"):
        dep = Deployment(provider="anthropic", model="m", api_base=base,
                         headers={"anthropic-beta": "x"})
        request = PROVIDER.chat_request(dep, {"messages": [user("hi")]}, True)
        assert request.url == "http://127.0.0.1:9/v1/messages"
        assert request.headers["x-api-key"] == "from-env"
        assert request.headers["anthropic-beta"] == "x"


def test_minimal_body_has_default_max_tokens() -> None:
    body = body_for({"model": "ignored", "messages": [user("hi")]})
    assert body == {"model": "claude-test", "max_tokens": 4096,
                    "messages": [{"role": "user",
                                  "content": [{"type": "text", "text": "hi"}]}]}


def test_max_tokens_sampling_stop_user_and_stream() -> None:
    body = body_for({"messages": [user("hi")], "max_tokens": 50, "max_completion_tokens": 70,
                     "temperature": 0.2, "top_p": 0.9, "stop": "END", "user": "u-42"},
                    stream=True)
    assert body["max_tokens"] == 70  # the newer OpenAI name wins
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-42"}
    assert body["stream"] is True
    assert body_for({"messages": [user("hi")], "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


def test_system_messages_go_top_level() -> None:
    body = body_for({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
        user("hi")]})
    assert body["system"] == "Be brief.\n\nBe kind."
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_system_with_cache_control_keeps_blocks() -> None:
    cache = {"type": "ephemeral"}
    body = body_for({"messages": [
        {"role": "system",
         "content": [{"type": "text", "text": "Long doc", "cache_control": cache}]},
        user("hi")]})
    assert body["system"] == [{"type": "text", "text": "Long doc", "cache_control": cache}]


def test_multi_turn_and_same_role_merging() -> None:
    body = body_for({"messages": [
        user("one"), user("two"),
        {"role": "assistant", "content": "reply"},
        user("three")]})
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"},
                                     {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "reply"}]},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]


def test_image_parts() -> None:
    body = body_for({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]})
    content = body["messages"][0]["content"]
    assert content[1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    assert content[2] == {"type": "image", "source": {
        "type": "url", "url": "https://example.com/cat.jpg"}}


def test_tools_and_tool_choice() -> None:
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    body = body_for({"messages": [user("hi")], "tools": [tool], "tool_choice": "required",
                     "parallel_tool_calls": False})
    assert body["tools"] == [{"name": "get_weather", "description": "Weather now",
                              "input_schema": tool["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    def choice(value: Any) -> Any:
        return body_for({"messages": [user("hi")], "tools": [tool],
                         "tool_choice": value}).get("tool_choice")

    assert choice("auto") == {"type": "auto"}
    assert choice("none") == {"type": "none"}
    assert choice({"type": "function", "function": {"name": "get_weather"}}) == {
        "type": "tool", "name": "get_weather"}
    assert choice(None) is None
    bare = {"type": "function", "function": {"name": "ping"}}
    assert body_for({"messages": [user("hi")], "tools": [bare]})["tools"] == [
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_calls_and_tool_results() -> None:
    body = body_for({"messages": [
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2",
         "content": [{"type": "text", "text": "21C"}]},
        user("Thanks"),
    ]})
    assistant, results = body["messages"][1], body["messages"][2]
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]}
    # Both results and the next user text land in one user message, in order.
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_2",
         "content": [{"type": "text", "text": "21C"}]},
        {"type": "text", "text": "Thanks"},
    ]}
    assert len(body["messages"]) == 3


@pytest.mark.parametrize("params", [
    {"messages": []},
    {"messages": [user("hi")], "n": 2},
    {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
    {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
    {"messages": [{"role": "function", "content": "x"}]},
    {"messages": [user("hi")], "tools": [{"type": "function", "function": {}}]},
])
def test_bad_requests(params: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError):
        PROVIDER.chat_request(DEPLOYMENT, params, False)


# --- response --------------------------------------------------------------------------

def answer(content: list[dict[str, Any]], stop_reason: str,
           usage: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-2025",
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": usage or {"input_tokens": 10, "output_tokens": 5}})


def test_text_response() -> None:
    usage = {"input_tokens": 200, "cache_read_input_tokens": 800,
             "cache_creation_input_tokens": 100, "output_tokens": 50}
    result = PROVIDER.chat_response(DEPLOYMENT, answer(
        [{"type": "thinking", "thinking": "hmm", "signature": "s"},
         {"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
        "end_turn", usage))
    assert result.raw is None
    assert result.usage == Usage(input_tokens=200, cache_read_tokens=800,
                                 cache_write_tokens=100, output_tokens=50)
    body = result.body
    assert (body["id"], body["object"], body["model"]) == (
        "msg_1", "chat.completion", "claude-test-2025")
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello there"
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 1100
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 800


def test_tool_use_response() -> None:
    result = PROVIDER.chat_response(DEPLOYMENT, answer(
        [{"type": "tool_use", "id": "toolu_9", "name": "get_weather",
          "input": {"city": "Paris"}}], "tool_use"))
    message = result.body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [{"id": "toolu_9", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert result.body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("something_new", "stop"),
])
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    result = PROVIDER.chat_response(DEPLOYMENT, answer([{"type": "text", "text": "x"}],
                                                       stop_reason))
    assert result.body["choices"][0]["finish_reason"] == finish


def test_thinking_tokens_are_reasoning_inside_output() -> None:
    result = PROVIDER.chat_response(DEPLOYMENT, answer(
        [{"type": "text", "text": "x"}], "end_turn",
        {"input_tokens": 3, "output_tokens": 40,
         "output_tokens_details": {"thinking_tokens": 30}}))
    assert result.usage == Usage(input_tokens=3, output_tokens=40, reasoning_tokens=30)


# --- errors ----------------------------------------------------------------------------

def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": "req_1"})


def test_rate_limit_error_keeps_status_and_retry_after() -> None:
    err = PROVIDER.error_from_response(429, error_body("rate_limit_error", "slow down"),
                                       {"retry-after": "12"})
    assert (err.status_code, err.error_type, err.message) == (429, "rate_limit_error",
                                                              "slow down")
    assert err.headers == {"Retry-After": "12"}
    assert err.to_body()["error"]["message"] == "slow down"


@pytest.mark.parametrize(("status", "expected"), [(400, 400), (401, 401), (404, 404),
                                                  (500, 502), (529, 502)])
def test_error_status_mapping(status: int, expected: int) -> None:
    err = PROVIDER.error_from_response(status, error_body("overloaded_error", "busy"), {})
    assert err.status_code == expected


def test_error_with_unreadable_body() -> None:
    err = PROVIDER.error_from_response(503, b"<html>bad gateway</html>", {})
    assert err.status_code == 502 and "503" in err.message


# --- stream ----------------------------------------------------------------------------

def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + str(e["type"]).encode() + b"\ndata: " + orjson.dumps(e)
                    + b"\n\n" for e in events)


START = {"type": "message_start", "message": {
    "id": "msg_s", "type": "message", "role": "assistant", "model": "claude-test-2025",
    "content": [], "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 200, "cache_creation_input_tokens": 100,
              "cache_read_input_tokens": 800, "output_tokens": 1}}}
TEXT_STREAM = sse(
    START,
    {"type": "content_block_start", "index": 0,
     "content_block": {"type": "thinking", "thinking": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "thinking_delta", "thinking": "Let me see"}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "signature_delta", "signature": "EqQB"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Héllo"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " wörld"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
)


def decode(data: bytes, size: int, include_usage: bool = True
           ) -> tuple[AnthropicStreamDecoder, list[StreamItem]]:
    decoder = PROVIDER.chat_stream(DEPLOYMENT, include_usage)
    assert isinstance(decoder, AnthropicStreamDecoder)
    items: list[StreamItem] = []
    for i in range(0, len(data), size):
        items += decoder.feed(data[i:i + size])
    return decoder, items


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_text_stream_at_any_chunking(size: int) -> None:
    decoder, items = decode(TEXT_STREAM, size)
    chunks = [i.data for i in items]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Héllo", " wörld"]
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                       "finish_reason": "stop"}
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["prompt_tokens"] == 1100
    assert len(chunks) == 5
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg_s"
               and c["model"] == "claude-test-2025" for c in chunks)
    for item in items:  # each frame is exactly the SSE form of its dict
        assert item.frame == b"data: " + orjson.dumps(item.data) + b"\n\n"
    assert decoder.output_text() == "Héllo wörld"
    assert decoder.done
    assert decoder.usage == Usage(input_tokens=200, cache_read_tokens=800,
                                  cache_write_tokens=100, output_tokens=42)


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    decoder, items = decode(TEXT_STREAM, 5, include_usage=False)
    assert all(i.data["choices"] for i in items)
    assert decoder.usage is not None and decoder.usage.output_tokens == 42


def test_stream_with_crlf_line_ends() -> None:
    crlf = TEXT_STREAM.replace(b"\n", b"\r\n")
    decoder, items = decode(crlf, 11)
    assert decoder.output_text() == "Héllo wörld" and len(items) == 5


def test_usage_known_before_the_stream_ends() -> None:
    # A client that disconnects mid-stream still leaves the input side to bill.
    decoder, _ = decode(TEXT_STREAM[:len(sse(START)) + 10], 100)
    assert decoder.usage == Usage(input_tokens=200, cache_read_tokens=800,
                                  cache_write_tokens=100, output_tokens=1)
    assert not decoder.done


def test_cumulative_message_delta_usage_replaces_not_adds() -> None:
    data = sse(START,
               {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                "usage": {"input_tokens": 200, "cache_creation_input_tokens": 100,
                          "cache_read_input_tokens": 800, "output_tokens": 9}},
               {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 12}},
               {"type": "message_stop"})
    decoder, items = decode(data, 9)
    assert decoder.usage == Usage(input_tokens=200, cache_read_tokens=800,
                                  cache_write_tokens=100, output_tokens=12)
    finishes = [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]]
    assert finishes == [None, "length"]


def test_tool_use_stream() -> None:
    data = sse(
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 30}},
        {"type": "message_stop"},
    )
    decoder, items = decode(data, 4, include_usage=False)
    calls = [i.data["choices"][0]["delta"]["tool_calls"][0] for i in items
             if "tool_calls" in i.data["choices"][0]["delta"]]
    assert calls == [
        {"index": 0, "id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": "Pa'}},
        {"index": 0, "function": {"arguments": 'ris"}'}},
        {"index": 1, "id": "toolu_2", "type": "function",
         "function": {"name": "get_time", "arguments": ""}},
        {"index": 1, "function": {"arguments": "{}"}},
    ]
    assert items[-1].data["choices"][0]["finish_reason"] == "tool_calls"
    assert decoder.output_text() == 'Checking.{"city": "Paris"}{}'


def test_error_event_raises_upstream_error() -> None:
    data = sse(START, {"type": "error", "error": {"type": "overloaded_error",
                                                  "message": "Overloaded"}})
    decoder = PROVIDER.chat_stream(DEPLOYMENT, True)
    with pytest.raises(UpstreamError) as info:
        for i in range(0, len(data), 13):
            decoder.feed(data[i:i + 13])
    assert info.value.status_code == 502
    assert info.value.error_type == "overloaded_error"
    assert info.value.message == "Overloaded"

    decoder = PROVIDER.chat_stream(DEPLOYMENT, True)
    with pytest.raises(UpstreamError) as info:
        decoder.feed(sse({"type": "error", "error": {"type": "rate_limit_error",
                                                     "message": "slow"}}))
    assert info.value.status_code == 429


def test_unknown_events_and_garbage_are_ignored() -> None:
    data = (b": comment\n\n" + sse(START) + b"event: future_event\ndata: {\"type\": \"future\"}\n\n"
            + b"data: not json\n\n" + sse({"type": "message_stop"}))
    decoder, items = decode(data, 6)
    assert decoder.done
    assert [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]] == [
        None, "stop"]
