"""The Bedrock adapter as a translation: OpenAI chat params in, Converse bodies out;
Converse answers and event-stream frames in, OpenAI answers and chunks out. Request bodies
are checked against botocore's model of Converse (the stand-in's validator)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from tallygate.errors import BadRequestError, UpstreamError
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment, StreamItem
from tallygate.providers.bedrock import BedrockProvider, bedrock_error
from tallygate.providers.bedrock_converse import converse_usage, price_names
from tallygate.providers.bedrock_stream import ConverseStreamDecoder
from tallygate.providers.registry import get_provider
from tallygate.usage import Usage
from tests.bedrock_support import CLAUDE, PROFILE_ARN
from tests.fakes.bedrock_server import FakeBedrock, FakeToolCall, service_model, shape_errors

PROVIDER = BedrockProvider()
PARAMS = {"aws_region_name": "us-east-1", "aws_access_key_id": "AKIAX",
          "aws_secret_access_key": "s"}


def deployment(model: str = CLAUDE, **info: Any) -> Deployment:
    return Deployment(provider="bedrock", model=model, params=PARAMS, model_info=info)


def body_for(params: dict[str, Any], model: str = CLAUDE, stream: bool = False,
             **info: Any) -> dict[str, Any]:
    request = PROVIDER.chat_request(deployment(model, **info), params, stream)
    body = orjson.loads(request.body)
    operation = "ConverseStream" if stream else "Converse"
    errors = shape_errors(body, service_model().operation_model(operation).input_shape, "body")
    assert errors == [], errors  # every body we build is one AWS's model accepts
    assert isinstance(body, dict)
    return body


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- request ---------------------------------------------------------------------------

def test_registered_with_its_price_provider() -> None:
    provider = get_provider("bedrock")
    assert isinstance(provider, BedrockProvider)
    assert provider.price_provider == "aws" and provider.needs_authorize


def test_url_encodes_the_model_id_as_botocore_does() -> None:
    request = PROVIDER.chat_request(deployment(), {"messages": [user("hi")]}, False)
    assert request.url == ("https://bedrock-runtime.us-east-1.amazonaws.com/model/"
                           "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse")
    assert request.encoded_url
    stream = PROVIDER.chat_request(deployment(PROFILE_ARN), {"messages": [user("hi")]}, True)
    assert stream.url.endswith("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
                               "application-inference-profile%2Fa1b2c3d4e5f6/converse-stream")
    assert stream.headers["Accept"] == "application/vnd.amazon.eventstream"


def test_endpoint_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_BEDROCK_RUNTIME_ENDPOINT", raising=False)
    base = Deployment(provider="bedrock", model="m.x", params={
        **PARAMS, "aws_bedrock_runtime_endpoint": "http://127.0.0.1:9/"})
    assert PROVIDER.chat_request(base, {"messages": [user("a")]}, False).url \
        == "http://127.0.0.1:9/model/m.x/converse"
    api_base = Deployment(provider="bedrock", model="m.x", api_base="http://127.0.0.1:8",
                          params=base.params)  # api_base wins, as in LiteLLM
    assert PROVIDER.chat_request(api_base, {"messages": [user("a")]}, False).url \
        .startswith("http://127.0.0.1:8/model/")
    monkeypatch.setenv("AWS_BEDROCK_RUNTIME_ENDPOINT", "http://127.0.0.1:7")
    plain = Deployment(provider="bedrock", model="m.x", params={"aws_region_name": "eu-west-1"})
    assert PROVIDER.chat_request(plain, {"messages": [user("a")]}, False).url \
        .startswith("http://127.0.0.1:7/model/")


def test_region_from_the_arn_when_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_BEDROCK_RUNTIME_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    arn = PROFILE_ARN.replace("us-east-1", "eu-central-1")
    dep = Deployment(provider="bedrock", model=arn)
    assert PROVIDER.chat_request(dep, {"messages": [user("a")]}, False).url.startswith(
        "https://bedrock-runtime.eu-central-1.amazonaws.com/")
    dep = Deployment(provider="bedrock", model="amazon.nova-pro-v1:0")
    assert "bedrock-runtime.us-west-2." in PROVIDER.chat_request(
        dep, {"messages": [user("a")]}, False).url  # LiteLLM's last resort
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert "bedrock-runtime.ap-south-1." in PROVIDER.chat_request(
        dep, {"messages": [user("a")]}, False).url


def test_system_messages_inference_config_and_merging() -> None:
    body = body_for({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
        user("one"), user("two"), {"role": "assistant", "content": "reply"}, user("three")],
        "max_tokens": 50, "max_completion_tokens": 70, "temperature": 0.2, "top_p": 0.9,
        "stop": "END", "user": "u-1", "seed": 4})
    assert body["system"] == [{"text": "Be brief."}, {"text": "Be kind."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
        {"role": "assistant", "content": [{"text": "reply"}]},
        {"role": "user", "content": [{"text": "three"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 70, "temperature": 0.2, "topP": 0.9,
                                       "stopSequences": ["END"]}


def test_images_become_image_blocks() -> None:
    body = body_for({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
        {"type": "image_url", "image_url": {"url": "s3://bucket/cat.png"}}]}]})
    content = body["messages"][0]["content"]
    assert content[1] == {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQSkZJRg=="}}}
    assert content[2] == {"image": {"format": "png",
                                    "source": {"s3Location": {"uri": "s3://bucket/cat.png"}}}}
    for url in ("https://example.com/cat.png", "data:image/tiff;base64,AAAA"):
        with pytest.raises(BadRequestError):
            body_for({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]})


def test_cache_control_breakpoints_become_cache_points() -> None:
    body = body_for({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long doc",
                                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        {"role": "user", "content": [{"type": "text", "text": "Q",
                                      "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "A", "cache_control": {"type": "ephemeral"}},
        user("Q2")],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}},
                   "cache_control": {"type": "ephemeral", "ttl": "5m"}}]})
    assert body["system"] == [{"text": "Long doc"},
                              {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert body["messages"][0]["content"] == [{"text": "Q"}, {"cachePoint": {"type": "default"}}]
    assert body["messages"][1]["content"] == [{"text": "A"}, {"cachePoint": {"type": "default"}}]
    assert body["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default", "ttl": "5m"}}
    tool_turn = body_for({"messages": [
        user("x"), {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": [
            {"type": "text", "text": "out", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [WEATHER]})
    assert tool_turn["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "out"}]}},
        {"cachePoint": {"type": "default"}}]
    with pytest.raises(BadRequestError, match="ttl"):
        body_for({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Q", "cache_control": {"type": "ephemeral",
                                                            "ttl": "2h"}}]}]})


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_tools_tool_choice_and_tool_turns() -> None:
    body = body_for({"messages": [
        user("Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "tu_1", "content": "18C"},
        user("Thanks")], "tools": [WEATHER], "tool_choice": "required"})
    assert body["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "get_weather", "description": "Weather now",
        "inputSchema": {"json": WEATHER["function"]["parameters"]}}}],  # type: ignore[index]
        "toolChoice": {"any": {}}}
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}}]}
    # the tool result and the next user text are one user turn
    assert body["messages"][2] == {"role": "user", "content": [
        {"toolResult": {"toolUseId": "tu_1", "content": [{"text": "18C"}]}}, {"text": "Thanks"}]}
    named = body_for({"messages": [user("x")], "tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "get_weather"}}})
    assert named["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert "toolChoice" not in body_for({"messages": [user("x")], "tools": [WEATHER],
                                         "tool_choice": "auto"})["toolConfig"]
    assert "toolConfig" not in body_for({"messages": [user("x")], "tools": [WEATHER],
                                         "tool_choice": "none"})


def test_reasoning_per_model_family() -> None:
    claude = body_for({"messages": [user("x")], "reasoning_effort": "medium"})
    assert claude["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 2048}}
    thinking = {"type": "enabled", "budget_tokens": 5000}
    assert body_for({"messages": [user("x")], "thinking": thinking})[
        "additionalModelRequestFields"] == {"thinking": thinking}
    nova = body_for({"messages": [user("x")], "reasoning_effort": "high"},
                    model="us.amazon.nova-2-lite-v1:0")
    assert nova["additionalModelRequestFields"] == {
        "reasoningConfig": {"type": "enabled", "maxReasoningEffort": "high"}}
    oss = body_for({"messages": [user("x")], "reasoning_effort": "low"},
                   model="openai.gpt-oss-120b-1:0")
    assert oss["additionalModelRequestFields"] == {"reasoning_effort": "low"}
    # an application profile names no model: model_info.base_model does
    profiled = body_for({"messages": [user("x")], "reasoning_effort": "low"},
                        model=PROFILE_ARN, base_model="bedrock/" + CLAUDE)
    assert "thinking" in profiled["additionalModelRequestFields"]
    assert "additionalModelRequestFields" not in body_for(
        {"messages": [user("x")], "reasoning_effort": "none"})
    with pytest.raises(BadRequestError, match="reasoning_effort"):
        body_for({"messages": [user("x")], "reasoning_effort": "low"},
                 model="meta.llama3-3-70b-instruct-v1:0")
    with pytest.raises(BadRequestError, match="reasoning_effort"):
        body_for({"messages": [user("x")], "reasoning_effort": "low"}, model=PROFILE_ARN)


def test_assistant_thinking_blocks_go_back_as_reasoning_content() -> None:
    body = body_for({"messages": [user("x"), {
        "role": "assistant", "content": None,
        "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}],
        "tool_calls": [{"id": "t1", "type": "function",
                        "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}],
        "tools": [WEATHER]})
    assert body["messages"][1]["content"][0] == {
        "reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}}


def test_refused_params() -> None:
    for params, name in (({"n": 2}, "n"),
                         ({"response_format": {"type": "json_object"}}, "response_format"),
                         ({"top_k": 5}, "top_k")):
        with pytest.raises(BadRequestError) as info:
            body_for({"messages": [user("x")], **params}, model="meta.llama3-8b-instruct-v1:0")
        assert info.value.param == name
    assert body_for({"messages": [user("x")], "top_k": 5})[
        "additionalModelRequestFields"] == {"top_k": 5}


# --- answer ------------------------------------------------------------------------------

def test_answer_usage_buckets_and_reasoning() -> None:
    fake = FakeBedrock()
    fake.cache_read_tokens, fake.cache_write_tokens, fake.cache_write_1h_tokens = 800, 60, 40
    fake.reasoning_text = "First, think."
    result = PROVIDER.chat_response(deployment(), orjson.dumps(fake.converse_answer()))
    assert result.usage == Usage(input_tokens=11, cache_read_tokens=800, cache_write_tokens=60,
                                 cache_write_1h_tokens=40, output_tokens=6)
    message = result.body["choices"][0]["message"]
    assert message["content"] == "Hello from the fake Bedrock."
    assert message["reasoning_content"] == "First, think."
    assert message["thinking_blocks"] == [{"type": "thinking", "thinking": "First, think.",
                                           "signature": "sig-fake-1"}]
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["usage"]["prompt_tokens"] == 11 + 800 + 100


def test_answer_with_a_tool_call() -> None:
    fake = FakeBedrock()
    fake.reply_text = ""
    fake.tool_call = FakeToolCall("get_weather", {"city": "Oslo"}, id="tooluse_9")
    body = PROVIDER.chat_response(deployment(), orjson.dumps(fake.converse_answer())).body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [{"id": "tooluse_9", "type": "function",
                                                "function": {"name": "get_weather",
                                                             "arguments": '{"city":"Oslo"}'}}]


def test_cache_writes_without_details_are_5_minute_writes() -> None:
    raw = {"inputTokens": 5, "outputTokens": 1, "cacheReadInputTokens": 0,
           "cacheWriteInputTokens": 70, "cacheDetails": [{"ttl": "1h", "inputTokens": 30}],
           "someFutureMember": 3}
    assert converse_usage(raw) == Usage(input_tokens=5, cache_write_tokens=40,
                                        cache_write_1h_tokens=30, output_tokens=1)


def test_price_names_map_profiles_and_arns() -> None:
    assert price_names(CLAUDE) == (CLAUDE, "anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert price_names("global.anthropic.claude-haiku-4-5-20251001-v1:0") == (
        "global.anthropic.claude-haiku-4-5-20251001-v1:0",)  # global is priced on its own
    assert price_names("arn:aws:bedrock:us-east-1:1:inference-profile/eu.amazon.nova-pro-v1:0"
                       ) == ("eu.amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0")
    assert price_names("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0") == (
        "amazon.nova-pro-v1:0",)
    assert price_names(PROFILE_ARN) == ()


def test_prices_of_profiles_arns_and_base_model() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    # genai-prices' regional price of Claude Sonnet 4.5 on Bedrock: $3.30 in, $16.50 out
    assert book.price("bedrock", CLAUDE, usage).cost == Decimal("19.8")
    # the global profile is cheaper: $3 / $15
    assert book.price("bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                      usage).cost == Decimal("18")
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/" + CLAUDE
    assert book.price("bedrock", arn, usage).cost == Decimal("19.8")
    assert book.price("bedrock", PROFILE_ARN, usage).cost is None  # flagged unknown


# --- errors ------------------------------------------------------------------------------

def _error(status: int, kind: str, message: str = "m",
           headers: dict[str, str] | None = None) -> UpstreamError:
    return bedrock_error(status, orjson.dumps({"message": message}),
                         {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/x/",
                          **(headers or {})})


def test_error_statuses_by_aws_error_type() -> None:
    throttled = _error(429, "ThrottlingException", "Too many requests",
                       {"Retry-After": "3"})
    assert (throttled.status_code, throttled.code) == (429, "ThrottlingException")
    assert throttled.headers == {"Retry-After": "3"} and throttled.message == "Too many requests"
    assert _error(400, "ValidationException").status_code == 400
    assert _error(404, "ResourceNotFoundException").status_code == 404
    for kind in ("ModelNotReadyException", "ServiceUnavailableException"):
        assert _error(429 if kind.startswith("Model") else 503, kind).status_code == 503
    assert _error(408, "ModelTimeoutException").status_code == 504
    assert _error(424, "ModelErrorException").status_code == 502
    assert _error(500, "InternalServerException").status_code == 502
    denied = _error(403, "AccessDeniedException",
                    "User: arn:aws:iam::123456789012:user/x is not authorized")
    assert denied.status_code == 403 and "123456789012" not in denied.message
    assert "AccessDeniedException" in denied.message
    # the type from the body when the header is missing
    assert bedrock_error(400, b'{"__type": "com.amazon#ValidationException", "message": "x"}',
                         {}).code == "ValidationException"


# --- stream ------------------------------------------------------------------------------

def decode(frames: list[bytes], include_usage: bool = True, step: int = 7
           ) -> tuple[ConverseStreamDecoder, list[StreamItem]]:
    """Feed the frames in ``step``-byte pieces, as a network might cut them."""
    decoder = ConverseStreamDecoder(include_usage, CLAUDE)
    data = b"".join(frames)
    items: list[StreamItem] = []
    for i in range(0, len(data), step):
        items += decoder.feed(data[i:i + step])
        if decoder.failure is not None:
            break
    return decoder, items


def test_stream_text_reasoning_tool_call_and_usage() -> None:
    fake = FakeBedrock()
    fake.reasoning_text = "Pondering."
    fake.tool_call = FakeToolCall("get_weather", {"city": "Rome"}, id="tu_7")
    fake.cache_read_tokens, fake.cache_write_1h_tokens = 50, 25
    decoder, items = decode(fake._events())
    deltas = [i.data["choices"][0]["delta"] for i in items if i.data["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Pondering."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello from the fake Bedrock."
    calls = [c for d in deltas for c in d.get("tool_calls", ())]
    assert calls[0] == {"index": 0, "id": "tu_7", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Rome"}
    finishes = [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]]
    assert finishes[-1] == "tool_calls"
    assert items[-1].data["choices"] == [] and items[-1].data["usage"]["prompt_tokens"] == 86
    assert decoder.done and decoder.usage == Usage(input_tokens=11, cache_read_tokens=50,
                                                   cache_write_1h_tokens=25, output_tokens=6)
    assert all(i.frame.startswith(b"data: ") for i in items)


def test_stream_usage_chunk_only_when_asked() -> None:
    decoder, items = decode(FakeBedrock()._events(), include_usage=False)
    assert decoder.usage is not None and all(i.data["choices"] for i in items)


def test_stream_exception_mid_stream() -> None:
    fake = FakeBedrock()
    fake.stream_exception = "throttlingException"
    decoder, items = decode(fake._events(), step=10_000)  # the error arrives with text
    assert [i.data["choices"][0]["delta"].get("content") for i in items][1] == "Hello from"
    assert decoder.failure is not None and decoder.failure.status_code == 429
    assert decoder.failure.code == "ThrottlingException"
    assert decoder.output_text() == "Hello from" and not decoder.done


def test_stream_unknown_events_are_ignored_and_bad_frames_fail() -> None:
    from tests.fakes.bedrock_server import event_frame

    unknown = event_frame({":event-type": "somethingNew", ":message-type": "event",
                           ":content-type": "application/json"}, b'{"x": 1}')
    frames = FakeBedrock()._events()
    decoder, items = decode([frames[0], unknown, *frames[1:]])
    assert decoder.done and decoder.failure is None
    assert decoder.output_text() == "Hello from the fake Bedrock." and len(items) == 6
    broken = bytearray(frames[1])
    broken[-1] ^= 0xFF  # a wrong message CRC
    decoder, _ = decode([frames[0], bytes(broken)])
    assert decoder.failure is not None and "malformed event stream" in decoder.failure.message
