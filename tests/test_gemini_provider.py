"""The Gemini adapter as a pure translation: OpenAI params in, Gemini bodies out, and
Gemini answers, stream chunks, usage and errors back in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tallygate.errors import BadRequestError, UpstreamError
from tallygate.providers.base import Deployment, StreamItem
from tallygate.providers.gemini import GeminiProvider
from tallygate.providers.gemini_answer import (
    GeminiStreamDecoder,
    embeddings_answer,
    gemini_usage,
    google_error,
    translate_answer,
    usage_metadata,
)
from tallygate.providers.gemini_request import signature_of, tool_call_id
from tallygate.providers.gemini_schema import gemini_schema
from tallygate.providers.registry import get_provider
from tallygate.usage import Usage

PROVIDER = GeminiProvider()
DEPLOYMENT = Deployment(provider="gemini", model="gemini-2.5-flash", api_key="AIza-test")


def body_for(params: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    parsed = orjson.loads(PROVIDER.chat_request(DEPLOYMENT, params, stream).body)
    assert isinstance(parsed, dict)
    return parsed


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


# --- request ---------------------------------------------------------------------------

def test_registered_with_google_prices() -> None:
    provider = get_provider("gemini")
    assert isinstance(provider, GeminiProvider)
    assert provider.price_provider == "google"


def test_url_and_key_header(monkeypatch: pytest.MonkeyPatch) -> None:
    request = PROVIDER.chat_request(DEPLOYMENT, {"messages": [user("hi")]}, False)
    assert request.url == ("https://generativelanguage.googleapis.com/v1beta/models/"
                           "gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == "AIza-test"
    assert "Authorization" not in request.headers  # never a Bearer token
    monkeypatch.setenv("GEMINI_API_KEY", "from-env")
    dep = Deployment(provider="gemini", model="gemini-2.5-pro", api_base="http://127.0.0.1:9/v1/")
    request = PROVIDER.chat_request(dep, {"messages": [user("hi")]}, True)
    assert request.url == ("http://127.0.0.1:9/v1/models/gemini-2.5-pro:"
                           "streamGenerateContent?alt=sse")
    assert request.headers["x-goog-api-key"] == "from-env"


def test_system_roles_and_merging() -> None:
    body = body_for({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
        user("one"), user("two"),
        {"role": "assistant", "content": "reply"},
        user("three")]})
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "reply"}]},
        {"role": "user", "parts": [{"text": "three"}]}]
    assert "generationConfig" not in body


def test_images_audio_and_files() -> None:
    body = body_for({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}},
        {"type": "image_url", "image_url": {
            "url": "https://generativelanguage.googleapis.com/v1beta/files/abc",
            "format": "image/webp"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERg=="}},
    ]}]})
    assert body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "gs://bucket/cat.jpg", "mimeType": "image/jpeg"}},
        {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc",
                      "mimeType": "image/webp"}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
    ]


def test_tool_calls_and_function_responses() -> None:
    body = body_for({"messages": [
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        user("Thanks")]})
    assert body["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {}}}]}
    # Results are named after the call they answer; a JSON object is sent as it is.
    assert body["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
        {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
        {"text": "Thanks"}]}


def test_thought_signature_rides_in_the_tool_call_id() -> None:
    signature = "CqQBAa+/x9zw8Q=="  # base64, padding and all
    call_id = tool_call_id(signature)
    assert call_id.startswith("call_") and "+" not in call_id and "/" not in call_id
    assert signature_of(call_id) == signature
    assert signature_of(tool_call_id()) is None
    body = body_for({"messages": [
        user("hi"),
        {"role": "assistant", "tool_calls": [{"id": call_id, "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "ok"}]})
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == signature


def test_tools_tool_choice_and_schema_subset() -> None:
    body = body_for({"messages": [user("hi")], "tools": [
        WEATHER, {"type": "function", "function": {"name": "ping", "parameters": {
            "type": "object", "properties": {}}}}], "tool_choice": "required"})
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather now", "parameters": {
            "type": "OBJECT", "properties": {"city": {"type": "STRING"}},
            "required": ["city"]}},
        {"name": "ping"}]}]  # no arguments: no parameters (Gemini refuses empty objects)
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    def choice(value: Any) -> Any:
        return body_for({"messages": [user("hi")], "tools": [WEATHER],
                         "tool_choice": value}).get("toolConfig")

    assert choice("auto") == {"functionCallingConfig": {"mode": "AUTO"}}
    assert choice("none") == {"functionCallingConfig": {"mode": "NONE"}}
    assert choice({"type": "function", "function": {"name": "get_weather"}}) == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert choice(None) is None


def test_schema_translation() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {"Unit": {"type": "string", "enum": ["C", "F"]}},
        "properties": {
            "city": {"type": ["string", "null"], "format": "city-name"},
            "unit": {"$ref": "#/$defs/Unit", "description": "scale"},
            "days": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "mode": {"const": "fast"},
            "tags": {"type": "array", "items": {"type": "string"}, "examples": [["a"]]},
            "id": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        },
    }
    assert gemini_schema(schema, "p") == {"type": "OBJECT", "properties": {
        "city": {"type": "STRING", "nullable": True},
        "unit": {"type": "STRING", "enum": ["C", "F"], "description": "scale"},
        "days": {"nullable": True, "type": "INTEGER", "minimum": 1},
        "mode": {"enum": ["fast"]},
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
        "id": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
    }}


@pytest.mark.parametrize(("schema", "param"), [
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}},
     "tools[0].function.parameters.properties.a.oneOf"),
    ({"type": "object", "properties": {"m": {"type": "object",
                                             "additionalProperties": {"type": "string"}}}},
     "tools[0].function.parameters.properties.m.additionalProperties"),
    ({"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2]}}},
     "tools[0].function.parameters.properties.n.enum"),
    ({"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 0}}},
     "tools[0].function.parameters.properties.n.exclusiveMinimum"),
    ({"type": "object", "$defs": {"T": {"type": "object", "properties": {
        "child": {"$ref": "#/$defs/T"}}}}, "properties": {"t": {"$ref": "#/$defs/T"}}},
     "tools[0].function.parameters.properties.t.properties.child.$ref"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}},
     "tools[0].function.parameters.properties.x.$ref"),
])
def test_schemas_gemini_refuses_are_400s_naming_the_field(schema: dict[str, Any],
                                                          param: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(BadRequestError) as caught:
        PROVIDER.chat_request(DEPLOYMENT, {"messages": [user("hi")], "tools": [tool]}, False)
    assert caught.value.param == param
    assert caught.value.status_code == 400
    assert param in caught.value.message


def test_generation_config_and_response_format() -> None:
    config = body_for({"messages": [user("hi")], "max_tokens": 50, "max_completion_tokens": 70,
                       "temperature": 0.2, "top_p": 0.9, "stop": "END", "n": 2, "seed": 7,
                       "reasoning_effort": "low",
                       "response_format": {"type": "json_schema", "json_schema": {
                           "name": "answer", "strict": True, "schema": {
                               "type": "object", "properties": {"ok": {"type": "boolean"}},
                               "required": ["ok"], "additionalProperties": False}}}})[
        "generationConfig"]
    assert config == {"maxOutputTokens": 70, "temperature": 0.2, "topP": 0.9, "seed": 7,
                      "stopSequences": ["END"], "candidateCount": 2,
                      "responseMimeType": "application/json",
                      "responseSchema": {"type": "OBJECT",
                                         "properties": {"ok": {"type": "BOOLEAN"}},
                                         "required": ["ok"]},
                      "thinkingConfig": {"thinkingBudget": 1024}}
    assert body_for({"messages": [user("hi")], "response_format": {"type": "json_object"},
                     "reasoning_effort": "none", "stop": ["a", "b"]})["generationConfig"] == {
        "stopSequences": ["a", "b"], "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 0}}


def test_litellm_gemini_params_pass_through() -> None:
    settings = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    body = body_for({"messages": [user("hi")], "safety_settings": settings,
                     "cached_content": "cachedContents/abc"})
    assert body["safetySettings"] == settings
    assert body["cachedContent"] == "cachedContents/abc"


@pytest.mark.parametrize(("params", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [user("hi")], "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": [user("hi")], "n": 0}, "n"),
    ({"messages": [user("hi")], "response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [user("hi")], "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
])
def test_bad_requests_name_the_field(params: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        PROVIDER.chat_request(DEPLOYMENT, params, False)
    assert caught.value.param == param


# --- usage -----------------------------------------------------------------------------

def test_usage_buckets() -> None:
    meta = {"promptTokenCount": 1000, "cachedContentTokenCount": 800,
            "candidatesTokenCount": 50, "thoughtsTokenCount": 120,
            "toolUsePromptTokenCount": 30, "totalTokenCount": 1200}
    usage = gemini_usage(meta)
    # prompt includes the cache; thoughts are output (and its reasoning part); tool-use
    # prompt tokens are input outside promptTokenCount.
    assert usage == Usage(input_tokens=230, cache_read_tokens=800, output_tokens=170,
                          reasoning_tokens=120)
    assert usage.prompt_tokens + usage.completion_tokens == meta["totalTokenCount"]
    assert gemini_usage(None) is None and gemini_usage({}) is None


def test_audio_is_its_own_bucket() -> None:
    usage = gemini_usage({
        "promptTokenCount": 500, "cachedContentTokenCount": 100,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 200},
                                {"modality": "AUDIO", "tokenCount": 300}],
        "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 100}],
        "candidatesTokenCount": 40,
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 25}]})
    assert usage == Usage(input_tokens=200, cache_read_tokens=100, audio_input_tokens=200,
                          output_tokens=15, audio_output_tokens=25)


def test_usage_metadata_back_for_a_door() -> None:
    usage = Usage(input_tokens=200, cache_read_tokens=800, output_tokens=170,
                  reasoning_tokens=120)
    meta = usage_metadata(usage)
    assert meta == {"promptTokenCount": 1000, "cachedContentTokenCount": 800,
                    "candidatesTokenCount": 50, "thoughtsTokenCount": 120,
                    "totalTokenCount": 1170}
    assert gemini_usage(meta) == usage


# --- answers ---------------------------------------------------------------------------

def answer(candidates: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"candidates": candidates, "modelVersion": "gemini-2.5-flash-001",
                         "responseId": "r1", "usageMetadata": {
                             "promptTokenCount": 10, "candidatesTokenCount": 5,
                             "totalTokenCount": 15}, **extra})


def test_text_answer_with_thoughts() -> None:
    result = PROVIDER.chat_response(DEPLOYMENT, answer([{"index": 0, "finishReason": "STOP",
        "content": {"role": "model", "parts": [
            {"text": "Let me think.", "thought": True},
            {"text": "Hello "}, {"text": "there"}]}}]))
    body = result.body
    assert (body["id"], body["object"], body["model"]) == (
        "chatcmpl-r1", "chat.completion", "gemini-2.5-flash-001")
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello there"
    assert message["reasoning_content"] == "Let me think."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert result.usage == Usage(input_tokens=10, output_tokens=5)
    assert body["usage"]["prompt_tokens"] == 10


def test_function_call_answer() -> None:
    result = PROVIDER.chat_response(DEPLOYMENT, answer([{"finishReason": "STOP", "content": {
        "role": "model", "parts": [{"functionCall": {"name": "get_weather",
                                                     "args": {"city": "Paris"}},
                                    "thoughtSignature": "c2ln"}]}}]))
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert signature_of(call["id"]) == "c2ln"


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"),
    ("OTHER", "stop"), ("SOMETHING_NEW", "stop")])
def test_finish_reasons(reason: str, finish: str) -> None:
    result = PROVIDER.chat_response(DEPLOYMENT, answer([{"finishReason": reason}]))
    assert result.body["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_is_a_content_filter_answer() -> None:
    result = translate_answer({"promptFeedback": {"blockReason": "SAFETY"},
                               "usageMetadata": {"promptTokenCount": 9,
                                                 "totalTokenCount": 9}}, "gemini-2.5-flash")
    assert result.body["choices"] == [{"index": 0, "logprobs": None,
                                       "finish_reason": "content_filter", "message": {
                                           "role": "assistant", "content": None,
                                           "refusal": None}}]
    assert result.usage == Usage(input_tokens=9)  # the prompt is still billed


def test_several_candidates_are_several_choices() -> None:
    parts = {"role": "model", "parts": [{"text": "x"}]}
    result = PROVIDER.chat_response(DEPLOYMENT, answer([
        {"index": 0, "content": parts, "finishReason": "STOP"},
        {"index": 1, "content": parts, "finishReason": "MAX_TOKENS"}]))
    assert [(c["index"], c["finish_reason"]) for c in result.body["choices"]] == [
        (0, "stop"), (1, "length")]


# --- streams ---------------------------------------------------------------------------

def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks)


def feed(decoder: GeminiStreamDecoder, data: bytes, step: int = 5) -> list[StreamItem]:
    items: list[StreamItem] = []
    for i in range(0, len(data), step):  # frames split at odd places, CRLF included
        items += decoder.feed(data[i:i + step])
    return items


def meta(prompt: int, candidates: int, thoughts: int = 0) -> dict[str, Any]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "thoughtsTokenCount": thoughts, "totalTokenCount": prompt + candidates + thoughts}


def test_stream_text_and_cumulative_usage() -> None:
    decoder = GeminiStreamDecoder(include_usage=True, model="gemini-2.5-flash")
    items = feed(decoder, sse(
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
         "usageMetadata": meta(10, 1), "responseId": "r9"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]},
                         "finishReason": "STOP"}],
         "usageMetadata": meta(10, 4, 30)}))
    assert decoder.done
    assert decoder.usage == Usage(input_tokens=10, output_tokens=34, reasoning_tokens=30)
    assert decoder.output_text() == "Hello"
    data = [i.data for i in items]
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [d["choices"][0]["delta"].get("content") for d in data[1:3]] == ["Hel", "lo"]
    assert data[3]["choices"][0]["finish_reason"] == "stop"
    assert data[4]["choices"] == [] and data[4]["usage"]["completion_tokens"] == 34
    assert {d["id"] for d in data} == {"chatcmpl-r9"}
    assert all(i.frame.startswith(b"data: ") and i.frame.endswith(b"\n\n") for i in items)


def test_stream_tool_call_deltas_without_usage_chunk() -> None:
    decoder = GeminiStreamDecoder(include_usage=False, model="gemini-2.5-flash")
    items = feed(decoder, sse(
        {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "a", "args": {"x": 1}}},
            {"functionCall": {"name": "b", "args": {}}}]}, "finishReason": "STOP"}],
         "usageMetadata": meta(10, 8)}))
    data = [i.data for i in items]
    calls = [d["choices"][0]["delta"]["tool_calls"][0] for d in data
             if "tool_calls" in d["choices"][0]["delta"]]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "a", '{"x":1}'), (1, "b", "{}")]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert data[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert decoder.done and decoder.usage == Usage(input_tokens=10, output_tokens=8)


def test_stream_blocked_prompt_and_safety_stop() -> None:
    decoder = GeminiStreamDecoder(include_usage=False, model="m")
    items = feed(decoder, sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                               "usageMetadata": {"promptTokenCount": 4}}))
    assert decoder.done
    assert items[-1].data["choices"][0]["finish_reason"] == "content_filter"
    decoder = GeminiStreamDecoder(include_usage=False, model="m")
    items = feed(decoder, sse({"candidates": [{"finishReason": "SAFETY"}],
                               "usageMetadata": meta(4, 0)}))
    assert items[-1].data["choices"][0]["finish_reason"] == "content_filter"


def test_stream_error_event_raises_with_status() -> None:
    decoder = GeminiStreamDecoder(include_usage=False, model="m")
    feed(decoder, sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}))
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(sse({"error": {"code": 503, "message": "The model is overloaded.",
                                    "status": "UNAVAILABLE"}}))
    assert caught.value.status_code == 502 and caught.value.code == "UNAVAILABLE"
    assert decoder.output_text() == "Hi" and not decoder.done


# --- errors ----------------------------------------------------------------------------

def google_body(code: int, status: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status,
                                   **extra}})


def test_rate_limit_keeps_retry_after() -> None:
    err = google_error(429, google_body(429, "RESOURCE_EXHAUSTED", "quota"),
                       {"Retry-After": "12"})
    assert (err.status_code, err.code, err.headers) == (429, "RESOURCE_EXHAUSTED",
                                                        {"Retry-After": "12"})
    err = google_error(429, google_body(429, "RESOURCE_EXHAUSTED", "quota", details=[
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36.2s"}]), {})
    assert err.headers == {"Retry-After": "37"}  # from RetryInfo, rounded up


@pytest.mark.parametrize(("status", "google_status", "out"), [
    (400, "INVALID_ARGUMENT", 400), (403, "PERMISSION_DENIED", 403), (404, "NOT_FOUND", 404),
    (500, "INTERNAL", 502), (503, "UNAVAILABLE", 502)])
def test_errors_by_status(status: int, google_status: str, out: int) -> None:
    err = PROVIDER.error_from_response(status, google_body(status, google_status, "why"), {})
    assert (err.status_code, err.code) == (out, google_status)
    if status != 403:  # 401/403 messages are never passed on (they can quote the key)
        assert err.message == "why"


def test_error_that_is_not_json() -> None:
    err = google_error(502, b"<html>Bad Gateway</html>", {})
    assert err.status_code == 502 and err.message == "upstream answered 502"


# --- embeddings ------------------------------------------------------------------------

def test_embedding_requests() -> None:
    dep = Deployment(provider="gemini", model="gemini-embedding-001", api_key="k")
    one = PROVIDER.embedding_request(dep, {"input": "hello", "dimensions": 8})
    assert one.url.endswith("/models/gemini-embedding-001:embedContent")
    assert orjson.loads(one.body) == {"model": "models/gemini-embedding-001",
                                      "content": {"parts": [{"text": "hello"}]},
                                      "outputDimensionality": 8}
    many = PROVIDER.embedding_request(dep, {"input": ["a", "b"]})
    assert many.url.endswith(":batchEmbedContents")
    assert [r["content"] for r in orjson.loads(many.body)["requests"]] == [
        {"parts": [{"text": "a"}]}, {"parts": [{"text": "b"}]}]
    with pytest.raises(BadRequestError):
        PROVIDER.embedding_request(dep, {"input": [[1, 2, 3]]})


def test_embedding_answers() -> None:
    result = embeddings_answer({"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3]}],
                                "usageMetadata": {"promptTokenCount": 6}}, "m")
    assert [d["embedding"] for d in result.body["data"]] == [[0.1, 0.2], [0.3]]
    assert result.usage == Usage(input_tokens=6)
    assert result.body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    bare = embeddings_answer({"embedding": {"values": [1.0]}}, "m")
    assert bare.usage is None and bare.body["data"][0]["embedding"] == [1.0]
