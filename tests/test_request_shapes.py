"""Class 7 of issue 13: a request shape the OpenAI or Anthropic API does not allow is a
400 naming the field, in that API's error shape, before anything is sent upstream,
whichever provider the model group routes to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    assert_openai_error,
    config_dict,
    http,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

HI = {"role": "user", "content": "hi"}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [HI], "user": "u", **fields}


def _assistant(**fields: Any) -> dict[str, Any]:
    return _chat(messages=[HI, {"role": "assistant", **fields}, HI])


CHAT_SHAPES: list[tuple[dict[str, Any], str]] = [
    (_assistant(tool_calls=5), "messages[1].tool_calls"),
    (_assistant(tool_calls=[{"id": "c", "type": "function", "function": "f"}]),
     "messages[1].tool_calls[0].function"),
    (_assistant(tool_calls=[{"id": "c", "type": "function",
                             "function": {"name": "f", "arguments": {"a": 1}}}]),
     "messages[1].tool_calls[0].function.arguments"),
    (_assistant(tool_calls=["x"]), "messages[1].tool_calls[0]"),
    (_assistant(content=5), "messages[1].content"),
    (_chat(messages=[{"role": "user", "content": [5]}]), "messages[0].content[0]"),
    (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
     "messages[0].content[0].text"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]),
     "messages[0].content[0].image_url"),
    (_chat(messages=[{"role": "user", "content": [{"type": "video"}]}]),
     "messages[0].content[0].type"),
    (_chat(messages=[{"role": "user"}]), "messages[0].content"),
    (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
    (_chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    (_chat(messages=[{"role": "system", "content": [{"type": "image_url"}]}]),
     "messages[0].content[0].type"),
    (_chat(messages=[HI, 3]), "messages[1]"),
    (_chat(tools=5), "tools"),
    (_chat(tools=[{"type": "function", "function": "f"}]), "tools[0].function"),
    (_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
     "tools[0].function.parameters"),
    (_chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
    (_chat(tool_choice="sometimes"), "tool_choice"),
    (_chat(tool_choice={"type": "function", "function": 3}), "tool_choice.function"),
    (_chat(n=0), "n"), (_chat(n="2"), "n"), (_chat(n=1000), "n"),
    (_chat(max_tokens="10"), "max_tokens"), (_chat(max_tokens=-1), "max_tokens"),
    (_chat(max_completion_tokens=1.5), "max_completion_tokens"),
    (_chat(temperature=3), "temperature"), (_chat(top_p="x"), "top_p"),
    (_chat(stop=["a", "b", "c", "d", "e"]), "stop"), (_chat(stop=5), "stop"),
    (_chat(stream="yes"), "stream"), (_chat(stream_options=[]), "stream_options"),
    (_chat(stream=True, stream_options={"include_usage": "yes"}),
     "stream_options.include_usage"),
    (_chat(user=5), "user"), (_chat(metadata="m"), "metadata"),
    (_chat(logit_bias={"12": "x"}), "logit_bias.12"),
    (_chat(response_format={"type": "yaml"}), "response_format.type"),
    (_chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
     "response_format.json_schema.name"),
    (_chat(seed=1.5), "seed"), (_chat(logprobs="true"), "logprobs"),
    (_chat(parallel_tool_calls="no"), "parallel_tool_calls"),
    (_chat(prediction={"type": "content", "content": 5}), "prediction.content"),
    (_chat(functions=[{"description": "no name"}]), "functions[0].name"),
    ({"user": "u"}, "messages"), (_chat(messages=[]), "messages"),
]

EMBEDDING_SHAPES: list[tuple[dict[str, Any], str]] = [
    ({"input": 5}, "input"), ({"input": []}, "input"), ({"input": [["a"]]}, "input[0]"),
    ({"input": ["a", 5]}, "input[1]"), ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "a", "user": 5}, "user"), ({}, "input"),
]


def _msg(**fields: Any) -> dict[str, Any]:
    return {"max_tokens": 10, "messages": [HI], **fields}


MESSAGES_SHAPES: list[tuple[dict[str, Any], str]] = [
    (_msg(messages=[HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}, HI]),
     "messages[1].content[0].input"),
    (_msg(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (_msg(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     "messages[0].content[0].text"),
    (_msg(messages=[{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "data": "AAAA"}}]}]), "messages[0].content[0].source"),
    (_msg(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
    (_msg(temperature=1.5), "temperature"), (_msg(top_p=2), "top_p"),
    (_msg(top_k=-1), "top_k"), (_msg(top_k=1.5), "top_k"),
    (_msg(max_tokens=0), "max_tokens"), (_msg(max_tokens="9"), "max_tokens"),
    (_msg(stop_sequences="x"), "stop_sequences"), (_msg(stream="yes"), "stream"),
    (_msg(tools=[{"name": "f", "input_schema": "s"}]), "tools[0]"),
    (_msg(tools=[{"input_schema": {}}]), "tools[0]"),
    (_msg(tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "tool"}),
     "tool_choice"),
    (_msg(system=[{"type": "image"}]), "system[0]"), (_msg(system=5), "system"),
    (_msg(metadata=5), "metadata"), (_msg(metadata={"user_id": 5}), "metadata.user_id"),
    (_msg(messages=[]), "messages"), ({"messages": [HI]}, "max_tokens"),
]


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt", upstream.base_url),
                       openai_entry("embedder", upstream.base_url,
                                    model="text-embedding-3-small"),
                       anthropic_entry("claude", claude.base_url)], tmp_path, lago=False)
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        yield proxy
        assert upstream.requests == [] and claude.requests == []  # nothing was sent


@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize(("body", "param"), CHAT_SHAPES)
def test_chat_shapes_openai_refuses(proxy: RunningProxy, model: str, body: dict[str, Any],
                                    param: str) -> None:
    reply = http("POST", proxy.base_url + "/v1/chat/completions", {"model": model, **body})
    assert_openai_error(reply, 400, param=param)


@pytest.mark.parametrize(("body", "param"), EMBEDDING_SHAPES)
def test_embedding_shapes_openai_refuses(proxy: RunningProxy, body: dict[str, Any],
                                         param: str) -> None:
    reply = http("POST", proxy.base_url + "/v1/embeddings", {"model": "embedder", **body})
    assert_openai_error(reply, 400, param=param)


@pytest.mark.parametrize("model", ["gpt", "claude"])
@pytest.mark.parametrize(("body", "field"), MESSAGES_SHAPES)
def test_messages_shapes_anthropic_refuses(proxy: RunningProxy, model: str,
                                           body: dict[str, Any], field: str) -> None:
    reply = http("POST", proxy.base_url + "/v1/messages", {"model": model, **body})
    assert reply.status == 400, reply.text
    err = reply.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
    assert field in err["error"]["message"], err


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/messages", {"max_tokens": 10, "messages": [HI]}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 5}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 5}),
])
def test_a_field_name_is_never_a_header_injection(tmp_path: Path, upstream: FakeOpenAI,
                                                  claude: FakeAnthropic, path: str,
                                                  body: dict[str, Any]) -> None:
    # A translating door names the fields it drops in x-tallygate-dropped-params: a name
    # with a line break must not become a header of its own (aiohttp raised, a 500).
    cfg = config_dict([openai_entry("gpt", upstream.base_url),
                       anthropic_entry("claude", claude.base_url)], tmp_path, lago=False)
    # Translated: the Messages door to an OpenAI deployment, the others to Anthropic.
    model = "gpt" if path == "/v1/messages" else "claude"
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        reply = http("POST", proxy.base_url + path,
                     {"model": model, "user": "u", **body, "evil\r\nx-injected: 1": True,
                      "plain_unknown": 1})
    assert reply.status in (200, 400), reply.text
    assert "x-injected" not in reply.headers
    dropped = reply.headers.get("x-tallygate-dropped-params", "")
    assert "\r" not in dropped and "\n" not in dropped
