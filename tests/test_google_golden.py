"""Golden billing through the proxy for gemini/, vertex_ai/ Gemini and vertex_ai/ Claude.

The official openai SDK calls the proxy, which calls the Google stand-ins over HTTP
(Vertex with service-account tokens from the stand-in's token endpoint); each Lago
event is compared with a Decimal cost worked out by hand from genai-prices' "google"
prices: non-stream, stream, cached, thinking, tool call, a stream the client leaves,
and a throttled call (billed nothing). The Messages and Responses doors reach the same three.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.gemini_server import FakeGemini, GeminiScript
from tests.fakes.lago_server import FakeLago
from tests.fakes.server_base import FakeServer, FakeToolCall, run_in_thread
from tests.fakes.vertex_server import FakeVertex
from tests.google_fixtures import (  # noqa: F401  (fixtures)
    rsa_key_fixture,
)
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    await_for,
    billed,
    config_dict,
    lago_env,
    lago_fixture,
    leave_stream,
    proxy_settings,
    run_proxy,
)

MTOK = Decimal(1_000_000)
# genai-prices' "google" prices (USD per million tokens) of the models below.
PRICES = {
    "gemini-2.5-flash": {"input": Decimal("0.3"), "cache_read": Decimal("0.03"),
                         "output": Decimal("2.5")},
    "claude-haiku-4-5": {"input": Decimal("1"), "cache_read": Decimal("0.1"),
                         "cache_write": Decimal("1.25"), "output": Decimal("5")},
}
CLAUDE = "claude-haiku-4-5@20251001"
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def by_hand(price: str, *, uncached: int, output: int, cached: int = 0,
            written: int = 0) -> Decimal:
    p = PRICES[price]
    total = uncached * p["input"] + cached * p["cache_read"] + output * p["output"]
    if written:
        total += written * p["cache_write"]
    return total / MTOK


@dataclass
class Target:
    """One model group of the proxy and the stand-in behind it."""

    model_name: str
    price: str
    server: FakeServer

    @property
    def gemini(self) -> GeminiScript | None:
        script = getattr(self.server, "script", None)
        return None if self.price.startswith("claude") else script

    def set_usage(self, *, uncached: int, output: int, cached: int = 0,
                  reasoning: int = 0) -> None:
        if self.gemini is not None:  # Google counts the cache inside the prompt
            self.gemini.prompt_tokens = uncached + cached
            self.gemini.cached_tokens = cached
            self.gemini.candidates_tokens = output - reasoning
            self.gemini.thoughts_tokens = reasoning
        else:
            claude = self.vertex.claude
            claude.input_tokens, claude.cache_read_tokens = uncached, cached
            claude.output_tokens, claude.thinking_tokens = output, reasoning

    @property
    def vertex(self) -> FakeVertex:
        assert isinstance(self.server, FakeVertex)
        return self.server

    def reply(self) -> str:
        return self.gemini.reply_text if self.gemini else self.vertex.claude.reply_text

    def set_reply(self, text: str, chunks: int) -> None:
        if self.gemini is not None:
            self.gemini.reply_text, self.gemini.stream_chunks = text, chunks
        else:
            self.vertex.claude.reply_text, self.vertex.claude.stream_chunks = text, chunks

    def set_tool_call(self, call: FakeToolCall) -> None:
        if self.gemini is not None:
            self.gemini.tool_call, self.gemini.reply_text = call, ""
        else:
            self.vertex.claude.tool_call, self.vertex.claude.reply_text = call, ""


@pytest.fixture(name="gemini")
def gemini_fixture() -> Iterator[FakeGemini]:
    with run_in_thread(FakeGemini()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="vertex")
def vertex_fixture(rsa_key: tuple[str, str]) -> Iterator[FakeVertex]:
    with run_in_thread(FakeVertex(rsa_key)) as fake:
        yield fake


def google_models(gemini: FakeGemini, vertex: FakeVertex, tmp_path: Path) -> list[dict[str, Any]]:
    key_file = tmp_path / "vertex-key.json"
    key_file.write_text(json.dumps(vertex.service_account()))
    where = {"api_base": vertex.url, "vertex_project": "tg-project",
             "vertex_location": "europe-west4"}
    return [
        {"model_name": "gemini-flash", "litellm_params": {
            "model": "gemini/gemini-2.5-flash", "api_base": gemini.base_url,
            "api_key": UPSTREAM_KEY}},
        {"model_name": "vertex-flash", "litellm_params": {
            "model": "vertex_ai/gemini-2.5-flash", "vertex_credentials": str(key_file),
            **where}},
        {"model_name": "vertex-claude", "litellm_params": {
            "model": f"vertex_ai/{CLAUDE}", "vertex_credentials": "os.environ/VERTEX_SA_JSON",
            **where}},
    ]


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, gemini: FakeGemini,
                  vertex: FakeVertex) -> Iterator[RunningProxy]:
    cfg = config_dict(google_models(gemini, vertex, tmp_path), tmp_path)
    env = {**lago_env(lago), "VERTEX_SA_JSON": json.dumps(vertex.service_account())}
    with run_proxy(proxy_settings(tmp_path, cfg, env)) as proxy:
        yield proxy


@pytest.fixture(params=["gemini-flash", "vertex-flash", "vertex-claude"])
def target(request: pytest.FixtureRequest, gemini: FakeGemini,
           vertex: FakeVertex) -> Target:
    name = request.param
    if name == "gemini-flash":
        return Target(name, "gemini-2.5-flash", gemini)
    if name == "vertex-flash":
        return Target(name, "gemini-2.5-flash", vertex)
    return Target(name, "claude-haiku-4-5", vertex)


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()  # no pooled socket left for the GC to find


def client(proxy: RunningProxy) -> openai.OpenAI:
    made = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    _clients.append(made)
    return made


def check_event(lago: FakeLago, call_id: str, customer: str, target: Target, *,
                uncached: int, output: int, cached: int = 0, reasoning: int = 0,
                stream: bool = False) -> Any:
    ev = billed(lago, call_id, customer)
    p = ev.properties
    provider = "gemini" if target.model_name == "gemini-flash" else "vertex_ai"
    model = CLAUDE if target.price.startswith("claude") else "gemini-2.5-flash"
    assert (p["model_group"], p["model"], p["provider"]) == (target.model_name, model, provider)
    assert (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"]) == (uncached, cached, 0)
    assert p["input_tokens"] == uncached + cached
    assert (p["output_tokens"], p["reasoning_tokens"]) == (output, reasoning)
    assert p["usage_source"] == "provider" and p["unknown_price"] == "false"
    assert p["price_source"].startswith("genai-prices")
    assert Decimal(p["response_cost"]) == by_hand(target.price, uncached=uncached,
                                                  cached=cached, output=output)
    assert ("stream" in p.get("flags", "")) == stream
    return ev


def upstream_checks(target: Target) -> None:
    """What the stand-in received is each provider's own request."""
    got = target.server.received[-1]
    if target.model_name == "gemini-flash":
        assert got.headers["x-goog-api-key"] == UPSTREAM_KEY
        assert "Authorization" not in got.headers
    else:
        assert got.headers["Authorization"].startswith("Bearer ya29.fake-token-")
        assert "/projects/tg-project/locations/europe-west4/publishers/" in got.path
    if target.price.startswith("claude"):
        assert got.body is not None and got.body["anthropic_version"] == "vertex-2023-10-16"
        assert got.body["system"] == "Be brief."
    else:
        assert got.body is not None
        assert got.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


def test_chat(proxy: RunningProxy, lago: FakeLago, target: Target) -> None:
    target.set_usage(uncached=1200, output=80)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=target.model_name, messages=ASK, user="cust-plain")  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content == target.reply()
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens == 1200
    ev = check_event(lago, raw.headers[CALL_ID_HEADER], "cust-plain", target,
                     uncached=1200, output=80)
    assert Decimal(raw.headers[COST_HEADER]) == Decimal(ev.properties["response_cost"])
    upstream_checks(target)


def test_stream(proxy: RunningProxy, lago: FakeLago, target: Target) -> None:
    target.set_usage(uncached=900, output=40)
    target.set_reply("Streaming hello from the stand-in.", chunks=5)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=target.model_name, messages=ASK, user="cust-stream", stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming hello from the stand-in."
    finals = [c.choices[0].finish_reason for c in chunks if c.choices
              and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-stream", target, uncached=900,
                output=40, stream=True)


def test_cached_prompt(proxy: RunningProxy, lago: FakeLago, target: Target) -> None:
    target.set_usage(uncached=300, cached=4096, output=25)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=target.model_name, messages=ASK, user="cust-cache")  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == 4396
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4096
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-cache", target, uncached=300,
                cached=4096, output=25)


def test_thinking(proxy: RunningProxy, lago: FakeLago, target: Target) -> None:
    # Thinking tokens are output, billed at the output price, and its reasoning part.
    target.set_usage(uncached=500, output=330, reasoning=300)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=target.model_name, messages=ASK, user="cust-think",  # type: ignore[arg-type]
        reasoning_effort="medium")
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens == 330
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 300
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-think", target, uncached=500,
                output=330, reasoning=300)
    body = target.server.received[-1].body
    assert body is not None
    if target.gemini is not None:
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}
    else:  # Claude: extended thinking, as LiteLLM maps reasoning_effort
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_tool_call(proxy: RunningProxy, lago: FakeLago, target: Target) -> None:
    target.set_usage(uncached=150, output=20)
    target.set_tool_call(FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_fake_1"))
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=target.model_name, messages=ASK, user="cust-tool",  # type: ignore[arg-type]
        tools=[TOOL], tool_choice="auto")  # type: ignore[list-item]
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-tool", target, uncached=150,
                output=20)
    body = target.server.received[-1].body
    assert body is not None
    if target.gemini is not None:
        assert body["tools"] == [{"functionDeclarations": [{
            "name": "get_weather", "description": "Weather now", "parameters": {
                "type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                "required": ["city"]}}]}]
        assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    else:
        assert body["tools"][0]["input_schema"] == TOOL["function"]["parameters"]


async def test_stream_left_by_the_client(proxy: RunningProxy, lago: FakeLago,
                                         target: Target) -> None:
    target.set_usage(uncached=700, output=400)
    target.set_reply("word " * 200, chunks=200)
    target.server.chunk_delay = 0.02  # a 4 s stream if nobody leaves
    call_id = await leave_stream(proxy.base_url + "/v1/chat/completions", {
        "model": target.model_name, "messages": ASK, "user": "cust-gone", "stream": True},
        count=6)
    await await_for(lambda: call_id in lago.events, timeout=10)
    p = lago.events[call_id].properties
    assert "client_disconnected" in p["flags"].split(",")
    assert p["usage_source"] == "estimated"
    # The provider had reported the prompt already (Gemini in every chunk, Claude in
    # message_start): exact input; the output is what was streamed, estimated.
    assert p["uncached_input_tokens"] == 700 and p["cached_input_tokens"] == 0
    assert 0 < p["output_tokens"] < 400
    assert Decimal(p["response_cost"]) == by_hand(target.price, uncached=700,
                                                  output=p["output_tokens"])
    await asyncio.sleep(0.2)
    assert lago.count(call_id) == 1


def test_throttled_call_bills_nothing(proxy: RunningProxy, lago: FakeLago,
                                      target: Target) -> None:
    target.server.fail(429, "Resource has been exhausted (e.g. check quota).",
                       headers={} if target.model_name == "gemini-flash"
                       else {"Retry-After": "7"})
    with pytest.raises(openai.RateLimitError) as caught:
        # No retry (LiteLLM's per-request option): the upstream's 429 as the client sees it.
        client(proxy).chat.completions.create(model=target.model_name, messages=ASK,  # type: ignore[arg-type]
                                              user="cust-429", extra_body={"num_retries": 0})
    # AI Studio says when in the body's RetryInfo; Vertex in the header. Both kept.
    expected = "17" if target.model_name == "gemini-flash" else "7"
    assert caught.value.response.headers["retry-after"] == expected
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    # A later call is billed: the throttled one is not.
    target.set_usage(uncached=10, output=5)
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=target.model_name, messages=ASK, user="cust-429")  # type: ignore[arg-type]
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-429", target, uncached=10, output=5)
    assert len(lago.stored) == 1


def test_messages_door_reaches_each(proxy: RunningProxy, lago: FakeLago, target: Target,
                                    request: pytest.FixtureRequest) -> None:
    target.set_usage(uncached=640, cached=1024, output=33)
    claude_sdk = anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                                     max_retries=0)
    request.addfinalizer(claude_sdk.close)
    raw = claude_sdk.messages.with_raw_response.create(
        model=target.model_name, max_tokens=128, system="Be brief.",
        metadata={"user_id": "cust-door"},
        messages=[{"role": "user", "content": "Say hello."}])
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == target.reply()
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (640, 1024, 33)
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-door", target, uncached=640,
                cached=1024, output=33)
    upstream_checks(target)
    with claude_sdk.messages.stream(model=target.model_name, max_tokens=128,
                                    system="Be brief.", metadata={"user_id": "cust-door"},
                                    messages=[{"role": "user", "content": "Hi"}]) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 33
    assert final.content[0].type == "text" and final.content[0].text == target.reply()


def test_vertex_token_fetched_once_for_all_calls(proxy: RunningProxy, lago: FakeLago,
                                                 vertex: FakeVertex) -> None:
    sdk = client(proxy)
    for name in ("vertex-flash", "vertex-claude", "vertex-flash"):
        sdk.chat.completions.create(model=name, messages=ASK, user="c")  # type: ignore[arg-type]
    # One service account behind both deployments: one token, cached and shared.
    assert vertex.token_fetches == 1
    tokens = {r.headers["Authorization"] for r in vertex.received if "/models/" in r.path}
    assert len(tokens) == 1


def test_messages_door_keeps_cache_control_for_claude_on_vertex(
        proxy: RunningProxy, lago: FakeLago, vertex: FakeVertex) -> None:
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as claude_sdk:
        claude_sdk.messages.create(
            model="vertex-claude", max_tokens=64, metadata={"user_id": "c"},
            system=[{"type": "text", "text": "A long shared document.",
                     "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "Summarise it."}],
            extra_body={"top_k": 5})
    body = vertex.received[-1].body
    assert body is not None
    assert body["system"] == [{"type": "text", "text": "A long shared document.",
                               "cache_control": {"type": "ephemeral"}}]
    assert body["top_k"] == 5


def test_embeddings_through_the_proxy(proxy: RunningProxy, lago: FakeLago, tmp_path: Path,
                                      gemini: FakeGemini) -> None:
    raw = client(proxy).embeddings.with_raw_response.create(
        model="gemini-flash", input=["first text", "second text"], user="cust-embed")
    answer = raw.parse()
    assert [len(d.embedding) for d in answer.data] == [4, 4]
    assert gemini.received[-1].path == (
        "/v1beta/models/gemini-2.5-flash:batchEmbedContents")
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "cust-embed")
    assert ev.properties["kind"] == "embedding"
    assert ev.properties["input_tokens"] == 4  # the stand-in's usageMetadata
    assert Decimal(ev.properties["response_cost"]) == 4 * Decimal("0.3") / MTOK


def test_schema_gemini_refuses_is_a_400_naming_the_field(
        proxy: RunningProxy, lago: FakeLago, gemini: FakeGemini) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client(proxy).chat.completions.create(model="gemini-flash", messages=ASK,  # type: ignore[arg-type]
                                              user="c", tools=[tool])  # type: ignore[list-item]
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "tools[0].function.parameters.properties.a.oneOf"
    assert gemini.received == [] and lago.stored == []


def test_responses_door_reaches_each(proxy: RunningProxy, lago: FakeLago,
                                     target: Target) -> None:
    target.set_usage(uncached=410, cached=2048, output=21)
    raw = client(proxy).responses.with_raw_response.create(
        model=target.model_name, instructions="Be brief.", input="Say hello.",
        user="cust-resp")
    response = raw.parse()
    assert response.output_text == target.reply()
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (2458, 21)
    assert response.usage.input_tokens_details.cached_tokens == 2048
    check_event(lago, raw.headers[CALL_ID_HEADER], "cust-resp", target, uncached=410,
                cached=2048, output=21)
    upstream_checks(target)
    with client(proxy).responses.stream(model=target.model_name, input="Hi",
                                        user="cust-resp") as stream:
        final = stream.get_final_response()
    assert final.output_text == target.reply()
    assert final.usage is not None and final.usage.output_tokens == 21


def test_messages_door_passes_claude_on_vertex_through(proxy: RunningProxy, lago: FakeLago,
                                                       vertex: FakeVertex,
                                                       request: pytest.FixtureRequest) -> None:
    vertex.claude.input_tokens, vertex.claude.cache_write_1h_tokens = 90, 3000
    vertex.claude.output_tokens = 12
    claude_sdk = anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                                     max_retries=0)
    request.addfinalizer(claude_sdk.close)
    raw = claude_sdk.messages.with_raw_response.create(
        model="vertex-claude", max_tokens=256, metadata={"user_id": "cust-native"},
        thinking={"type": "enabled", "budget_tokens": 128},
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    message = raw.parse()
    assert message.id.startswith("msg_vrtx_")  # Vertex's own answer, passed through
    got = vertex.received[-1]
    assert got.path.endswith(f"/publishers/anthropic/models/{CLAUDE}:rawPredict")
    assert got.body == {"max_tokens": 256, "metadata": {"user_id": "cust-native"},
                        "thinking": {"type": "enabled", "budget_tokens": 128},
                        "messages": [{"role": "user", "content": "Hi"}],
                        "anthropic_version": "vertex-2023-10-16"}
    assert got.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert got.headers["Authorization"].startswith("Bearer ya29.")
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "cust-native")
    p = ev.properties
    assert (p["uncached_input_tokens"], p["cache_creation_1h_input_tokens"],
            p["output_tokens"]) == (90, 3000, 12)
    # 90 x $1 + 3000 one-hour writes x $2 + 12 x $5, per Mtok
    assert Decimal(p["response_cost"]) == (90 + 3000 * 2 + 12 * 5) / MTOK
    with claude_sdk.messages.stream(model="vertex-claude", max_tokens=64,
                                    messages=[{"role": "user", "content": "Hi"}]) as stream:
        final = stream.get_final_message()
    assert final.id.startswith("msg_vrtx_") and final.usage.output_tokens == 12
    assert vertex.received[-1].path.endswith(":streamRawPredict")


def test_count_tokens_on_vertex(proxy: RunningProxy, vertex: FakeVertex,
                                request: pytest.FixtureRequest) -> None:
    vertex.claude.counted_tokens = 321
    claude_sdk = anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                                     max_retries=0)
    request.addfinalizer(claude_sdk.close)
    counted = claude_sdk.messages.count_tokens(
        model="vertex-claude", messages=[{"role": "user", "content": "Hi"}])
    assert counted.input_tokens == 321
    got = vertex.received[-1]
    assert got.path == ("/v1/projects/tg-project/locations/europe-west4/publishers/"
                        "anthropic/models/count-tokens:rawPredict")
    assert got.body is not None and got.body["model"] == CLAUDE
    # A Gemini deployment has no Messages API to count with: estimated, and said so.
    raw = claude_sdk.messages.with_raw_response.count_tokens(
        model="vertex-flash", messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-tallygate-token-count"] == "estimated"
