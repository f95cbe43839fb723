"""The Ollama adapters (``ollama_chat/`` on /api/chat, ``ollama/`` on /api/generate):
OpenAI chat params to Ollama bodies, and Ollama's answers, NDJSON streams, errors and
embeddings back, over real HTTP from the Ollama stand-in."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest

from tallygate.errors import (
    BadRequestError,
    ConfigError,
    UpstreamAuthenticationError,
    UpstreamError,
    UpstreamNotFoundError,
    UpstreamRateLimitError,
)
from tallygate.providers.base import Deployment, Provider, StreamItem
from tallygate.providers.ollama import OllamaChatProvider, OllamaGenerateProvider
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
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.server_base import FakeToolCall

CHAT = OllamaChatProvider()
GENERATE = OllamaGenerateProvider()
PNG = base64.b64encode(b"\x89PNG fake").decode()


def dep(provider: Provider, model: str = "llama3.2", **kwargs: Any) -> Deployment:
    return Deployment(provider=provider.name, model=model, **kwargs)


def body_for(provider: Provider, params: dict[str, Any], stream: bool = False,
             deployment: Deployment | None = None) -> dict[str, Any]:
    return request_body(provider, deployment or dep(provider), params, stream)


# --- registration, URLs, config ----------------------------------------------------------

def test_registered_as_litellms_two_prefixes() -> None:
    assert split_model("ollama/llama3.2") == ("ollama", "llama3.2")
    assert split_model("ollama_chat/llama3.2:8b") == ("ollama_chat", "llama3.2:8b")
    assert isinstance(get_provider("ollama"), OllamaGenerateProvider)
    assert isinstance(get_provider("ollama_chat"), OllamaChatProvider)
    # Self-hosted: no price library knows these models.
    assert get_provider("ollama").price_provider is None
    assert get_provider("ollama_chat").price_provider is None


def test_urls_default_env_and_full_endpoint_bases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_API_BASE", raising=False)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    request = CHAT.chat_request(dep(CHAT), {"messages": [user("hi")]}, False)
    assert request.url == "http://localhost:11434/api/chat"
    assert "Authorization" not in request.headers  # a local server needs no key
    assert GENERATE.chat_request(dep(GENERATE), {"messages": [user("hi")]}, False).url \
        == "http://localhost:11434/api/generate"
    for base in ("http://10.0.0.5:11434", "http://10.0.0.5:11434/",
                 "http://10.0.0.5:11434/api/chat", "http://10.0.0.5:11434/api/generate"):
        d = dep(CHAT, api_base=base)
        assert CHAT.chat_request(d, {"messages": [user("hi")]}, True).url \
            == "http://10.0.0.5:11434/api/chat"
        assert CHAT.embedding_request(d, {"input": "x"}).url == "http://10.0.0.5:11434/api/embed"
    monkeypatch.setenv("OLLAMA_API_BASE", "http://gpu-box:11434")
    monkeypatch.setenv("OLLAMA_API_KEY", "ollama-cloud-key")
    request = GENERATE.chat_request(dep(GENERATE), {"messages": [user("hi")]}, False)
    assert request.url == "http://gpu-box:11434/api/generate"
    assert request.headers["Authorization"] == "Bearer ollama-cloud-key"


def test_openai_compatible_v1_base_is_refused_at_config_load() -> None:
    with pytest.raises(ConfigError, match="/v1"):
        CHAT.check_deployment(dep(CHAT, api_base="http://127.0.0.1:11434/v1"))
    CHAT.check_deployment(dep(CHAT, api_base="http://127.0.0.1:11434"))


# --- request translation -----------------------------------------------------------------

def test_chat_body_messages_images_tools_and_results() -> None:
    body = body_for(CHAT, {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "18C"},
    ], "tools": [WEATHER], "tool_choice": "auto"}, stream=True)
    assert body == {
        "model": "llama3.2", "stream": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this?", "images": [PNG]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18C", "tool_name": "get_weather"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": WEATHER["function"]["parameters"]}}]}


def test_options_format_think_and_keep_alive() -> None:
    d = dep(CHAT, params={"num_ctx": 8192, "keep_alive": "10m", "top_k": 10})
    body = body_for(CHAT, {"messages": [user("hi")], "max_tokens": 50,
                           "max_completion_tokens": 70, "temperature": 0.2, "top_p": 0.9,
                           "top_k": 30, "seed": 42, "stop": "END", "frequency_penalty": 0.5,
                           "response_format": {"type": "json_object"},
                           "reasoning_effort": "high", "user": "u-1"}, deployment=d)
    assert body["options"] == {"num_ctx": 8192, "top_k": 30, "temperature": 0.2,
                               "top_p": 0.9, "seed": 42, "frequency_penalty": 0.5,
                               "num_predict": 70, "stop": ["END"]}
    assert (body["format"], body["keep_alive"], body["think"]) == ("json", "10m", True)
    assert body["stream"] is False and "user" not in body
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert body_for(CHAT, {"messages": [user("hi")], "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})["format"] \
        == schema
    # gpt-oss takes the effort level itself; Ollama's own option names pass through.
    gpt = body_for(CHAT, {"messages": [user("hi")], "reasoning_effort": "low",
                          "options": {"mirostat": 2}, "num_thread": 4},
                   deployment=dep(CHAT, model="gpt-oss:20b"))
    assert gpt["think"] == "low" and gpt["options"] == {"mirostat": 2, "num_thread": 4}
    # tool_choice none: no tools sent.
    assert "tools" not in body_for(CHAT, {"messages": [user("hi")], "tools": [WEATHER],
                                          "tool_choice": "none"})


def test_generate_body_prompt_system_and_images() -> None:
    single = body_for(GENERATE, {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}],
        "max_tokens": 20})
    assert single == {"model": "llama3.2", "stream": False, "options": {"num_predict": 20},
                      "prompt": "What is in this picture?", "system": "Be brief.",
                      "images": [PNG]}
    turns = body_for(GENERATE, {"messages": [user("Hi"),
                                             {"role": "assistant", "content": "Hello!"},
                                             user("Bye")]})
    assert turns["prompt"] == "User: Hi\n\nAssistant: Hello!\n\nUser: Bye"
    assert "system" not in turns


@pytest.mark.parametrize(("provider", "params", "param"), [
    (CHAT, {"tool_choice": "required", "tools": [WEATHER]}, "tool_choice"),
    (CHAT, {"n": 3}, "n"),
    (CHAT, {"logprobs": True}, "logprobs"),
    (CHAT, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "messages[0]"),
    (CHAT, {"messages": [{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "not json"}}]}]}, "messages[0]"),
    (CHAT, {"options": "fast"}, "options"),
    (GENERATE, {"tools": [WEATHER]}, "tools"),
    (GENERATE, {"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]},
     "messages[0]"),
])
def test_untranslatable_requests_are_400s(provider: Provider, params: dict[str, Any],
                                          param: str) -> None:
    with pytest.raises(BadRequestError) as err:
        body_for(provider, {"messages": [user("hi")], **params})
    assert err.value.status_code == 400 and err.value.param == param


# --- answers, streams and usage over HTTP ------------------------------------------------

async def ask(session: aiohttp.ClientSession, provider: Provider, fake: FakeOllama,
              params: dict[str, Any], stream: bool,
              model: str = "llama3.2") -> tuple[dict[str, Any] | None, list[StreamItem], Any]:
    d = dep(provider, model, api_base=fake.url)
    return await round_trip(session, provider, d, params, stream, split=9,
                            stream_type="application/x-ndjson")


@pytest.mark.parametrize("provider", [CHAT, GENERATE], ids=["chat", "generate"])
async def test_answers_and_streams_read_the_counts(session: aiohttp.ClientSession,
                                                   provider: Provider) -> None:
    async with FakeOllama() as fake:
        fake.prompt_eval_count, fake.eval_count = 40, 15
        fake.stream_chunks = 4
        body, _, usage = await ask(session, provider, fake, {"messages": [user("hi")]}, False)
        _, items, streamed_usage = await ask(session, provider, fake,
                                             {"messages": [user("hi")]}, True)
    assert usage == streamed_usage == Usage(input_tokens=40, output_tokens=15)
    assert body is not None and body["object"] == "chat.completion"
    assert body["model"] == "llama3.2"
    assert body["choices"][0]["message"]["content"] == fake.reply_text
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 40 and body["usage"]["completion_tokens"] == 15
    assert items[0].data["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed_text(items) == fake.reply_text
    assert [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]][-1] \
        == "stop"
    assert items[-1].data["choices"] == [] and items[-1].data["usage"]["total_tokens"] == 55
    assert all(r["stream"] is (i == 1) for i, r in enumerate(fake.requests))


async def test_length_and_thinking(session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        fake.done_reason = "length"
        fake.thinking_text = "Let me think."
        body, _, _ = await ask(session, CHAT, fake, {"messages": [user("hi")]}, False)
        _, items, _ = await ask(session, CHAT, fake, {"messages": [user("hi")]}, True)
    assert body is not None
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["reasoning_content"] == "Let me think."
    assert streamed_text(items, "reasoning_content") == "Let me think."
    assert streamed_text(items) == fake.reply_text


async def test_tool_calls_plain_and_streamed(session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"})
        params = {"messages": [user("weather?")], "tools": [WEATHER]}
        body, _, _ = await ask(session, CHAT, fake, params, False)
        _, items, _ = await ask(session, CHAT, fake, params, True)
    assert body is not None
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    message = body["choices"][0]["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    deltas = [tc for i in items if i.data["choices"]
              for tc in i.data["choices"][0]["delta"].get("tool_calls") or ()]
    assert len(deltas) == 1 and deltas[0]["index"] == 0
    assert deltas[0]["function"] == call["function"]
    assert [i.data["choices"][0]["finish_reason"] for i in items if i.data["choices"]][-1] \
        == "tool_calls"


async def test_missing_counts_are_estimates_never_zero(session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        fake.prompt_eval_count = None  # a fully cached prompt: the count is left out
        _, _, usage = await ask(session, CHAT, fake, {"messages": [user("hi")]}, False)
        fake.eval_count = None
        _, _, streamed_usage = await ask(session, CHAT, fake, {"messages": [user("hi")]}, True)
    # The output count is real; the input is left for the engine to estimate (it has the
    # prompt), and the usage says it is an estimate.
    assert usage == Usage(input_tokens=0, output_tokens=12, source="estimated")
    assert streamed_usage.source == "estimated" and streamed_usage.output_tokens > 0


async def test_error_line_mid_stream_is_an_upstream_failure(
        session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        fake.stream_error = "model runner has unexpectedly stopped"
        d = dep(CHAT, api_base=fake.url)
        request = CHAT.chat_request(d, {"messages": [user("hi")]}, True)
        async with session.post(request.url, data=request.body,
                                headers=request.headers) as resp:
            raw = await resp.read()
    decoder = CHAT.chat_stream(d, include_usage=False)
    with pytest.raises(UpstreamError, match="unexpectedly stopped") as err:
        decoder.feed(raw)
    assert err.value.status_code == 502 and not decoder.done
    assert decoder.output_text()  # what came before is there to be billed


def test_error_answers_keep_status() -> None:
    missing = CHAT.error_from_response(404, b'{"error":"model \'x\' not found"}', {})
    assert isinstance(missing, UpstreamNotFoundError)
    assert (missing.status_code, missing.message) == (404, "model 'x' not found")
    limited = CHAT.error_from_response(429, b'{"error":"too many"}', {"Retry-After": "2"})
    assert isinstance(limited, UpstreamRateLimitError) and limited.headers == {"Retry-After": "2"}
    refused = CHAT.error_from_response(401, b'{"error":"bad key ollama-secret"}', {})
    assert isinstance(refused, UpstreamAuthenticationError)
    assert "ollama-secret" not in refused.message
    assert CHAT.error_from_response(500, b"oops", {}).status_code == 502


# --- embeddings --------------------------------------------------------------------------

async def test_embeddings(session: aiohttp.ClientSession) -> None:
    async with FakeOllama() as fake:
        d = dep(CHAT, "all-minilm", api_base=fake.url, params={"keep_alive": "1m"})
        results = []
        for params in ({"input": ["a", "b"], "dimensions": 3}, {"input": "a"}):
            request = CHAT.embedding_request(d, params)
            async with session.post(request.url, data=request.body,
                                    headers=request.headers) as resp:
                assert resp.status == 200
                results.append(CHAT.embedding_response(d, await resp.read()))
        fake.embed_count = None
        request = CHAT.embedding_request(d, {"input": "a"})
        async with session.post(request.url, data=request.body, headers=request.headers) as resp:
            uncounted = CHAT.embedding_response(d, await resp.read())
    assert fake.requests[0] == {"model": "all-minilm", "input": ["a", "b"], "dimensions": 3,
                                "keep_alive": "1m"}
    first = results[0]
    assert first.usage == Usage(input_tokens=8)
    assert [len(x["embedding"]) for x in first.body["data"]] == [3, 3]
    assert first.body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert uncounted.usage is None  # the engine estimates it from the input
    with pytest.raises(BadRequestError):
        CHAT.embedding_request(d, {"input": [[1, 2]]})
