"""The Gemini door with Google's own ``google-genai`` SDK as the proxy's client.

One conversation per provider kind (``gemini/`` and ``vertex_ai/`` Gemini passed
through, Vertex with the stand-in's service-account tokens; ``openai/`` and
``anthropic/`` translated; the mock) and per stream / non-stream: the answer the SDK
parses, the exact buckets billed in Lago with the Decimal cost worked out here by hand
from the published prices, and what reached the stand-in. Then tool calls both ways,
``countTokens``, the JSON-array stream form, who pays (a customer-bound virtual key; the
master key with ``labels.user``, key in ``?key=``), and errors in Google's shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall, FakeTurn, run_in_thread
from tests.fakes.vertex_server import FakeVertex, make_rsa_key
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    billed,
    config_dict,
    gemini_client,
    http,
    lago_env,
    lago_fixture,
    leave_stream,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

M = Decimal(1_000_000)
MOCK_REPLY = "Golden mock answer."
CUSTOMER = "acme-gemini"
WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="Weather now",
    parameters=types.Schema(type=types.Type.OBJECT, required=["city"], properties={
        "city": types.Schema(type=types.Type.STRING)}))])


@dataclass(frozen=True)
class Golden:
    """Billed buckets (uncached input, cache read, output, of which reasoning), the cost."""

    uncached: int
    cache_read: int
    output: int
    reasoning: int
    cost: Decimal
    reply: str


GOLDEN = {
    # gemini-2.5-flash: $0.30 in, $0.03 cache read, $2.50 out (thinking included) per
    # million; Google's promptTokenCount 1200 includes the 800 cached.
    "gemini": Golden(400, 800, 70, 20,
                     (400 * Decimal("0.30") + 800 * Decimal("0.03") + 70 * Decimal("2.50")) / M,
                     "Hello from the fake Gemini."),
    # The same model on Vertex AI, the same prices.
    "vertex": Golden(400, 800, 70, 20,
                     (400 * Decimal("0.30") + 800 * Decimal("0.03") + 70 * Decimal("2.50")) / M,
                     "Hello from the fake Gemini."),
    # gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out per million; 800 of 1000 cached.
    "openai": Golden(200, 800, 50, 0,
                     (200 * Decimal("0.15") + 800 * Decimal("0.075") + 50 * Decimal("0.60")) / M,
                     "Hello from the fake OpenAI."),
    # claude-sonnet-4-5: $3 in, $0.30 cache read, $15 out per million.
    "anthropic": Golden(1200, 800, 300, 0,
                        (1200 * Decimal(3) + 800 * Decimal("0.30") + 300 * Decimal(15)) / M,
                        "Hello from the fake Claude."),
    # The mock's own estimate: 3 + (4 + 3) for "Be brief." + (4 + 3) for "Say hello."
    # in, "Golden mock answer." / 4 rounded up out; the override's $1 / $2 per million.
    "mock": Golden(17, 0, 5, 0, (17 * Decimal(1) + 5 * Decimal(2)) / M, MOCK_REPLY),
}


@pytest.fixture(name="gemini")
def gemini_fixture() -> Iterator[FakeGemini]:
    with run_in_thread(FakeGemini()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="vertex", scope="module")
def vertex_fixture() -> Iterator[FakeVertex]:
    with run_in_thread(FakeVertex(make_rsa_key())) as fake:
        yield fake


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, gemini: FakeGemini, upstream: FakeOpenAI,
                  claude: FakeAnthropic, vertex: FakeVertex) -> Iterator[RunningProxy]:
    vertex.received.clear()
    key_file = tmp_path / "vertex-key.json"
    key_file.write_text(json.dumps(vertex.service_account()))
    cfg = config_dict([
        {"model_name": "vertex", "litellm_params": {
            "model": "vertex_ai/gemini-2.5-flash", "vertex_credentials": str(key_file),
            "api_base": vertex.url, "vertex_project": "tg-project",
            "vertex_location": "europe-west4"}},
        {"model_name": "gemini", "litellm_params": {
            "model": "gemini/gemini-2.5-flash", "api_base": gemini.base_url,
            "api_key": UPSTREAM_KEY}},
        openai_entry("openai", upstream.base_url, model="gpt-4o-mini"),
        anthropic_entry("anthropic", claude.base_url, model="claude-sonnet-4-5"),
        {"model_name": "mock", "litellm_params": {
            "model": "mock/golden", "mock_response": MOCK_REPLY,
            "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}},
        {"model_name": "gemini-embed", "litellm_params": {
            "model": "gemini/gemini-embedding-001", "api_base": gemini.base_url,
            "api_key": UPSTREAM_KEY, "input_cost_per_token": "0.00000015"}},
        openai_entry("openai-embed", upstream.base_url, model="text-embedding-3-small"),
    ], tmp_path)
    # The upstreams' errors as a client sees them when the gateway does not retry (a 429
    # from AI Studio says "retry in 17 s"; the router has its own tests).
    cfg["router_settings"] = {"num_retries": 0}
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


@pytest.fixture(name="key")
def key_fixture(proxy: RunningProxy) -> str:
    """A virtual key bound to a customer: who pays for the calls made with it."""
    reply = http("POST", proxy.base_url + "/key/generate",
                 {"key_alias": "gemini-user", "customer_id": CUSTOMER})
    assert reply.status == 200, reply.text
    key: str = reply.json()["key"]
    return key


def client(proxy: RunningProxy, key: str) -> genai.Client:
    return gemini_client(proxy.base_url, key)


def _script(gemini: FakeGemini, upstream: FakeOpenAI, claude: FakeAnthropic,
            vertex: FakeVertex) -> None:
    for script in (gemini.script, vertex.script):
        script.prompt_tokens, script.cached_tokens = 1200, 800
        script.candidates_tokens, script.thoughts_tokens = 50, 20
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 1000, 800, 50
    claude.input_tokens, claude.cache_read_tokens, claude.output_tokens = 1200, 800, 300


def _received(kind: str, gemini: FakeGemini, upstream: FakeOpenAI,
              claude: FakeAnthropic, vertex: FakeVertex | None = None) -> list[Any]:
    if kind == "gemini":
        return [r for r in gemini.received if ":" in r.path]
    if kind == "vertex":
        assert vertex is not None
        return [r for r in vertex.received if ":" in r.path]
    if kind == "openai":
        return [r for r in upstream.received if r.path == "/v1/chat/completions"]
    if kind == "anthropic":
        return [r for r in claude.received if r.path == "/v1/messages"]
    return []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", list(GOLDEN))
def test_golden_billed_usage(proxy: RunningProxy, lago: FakeLago, key: str, gemini: FakeGemini,
                             upstream: FakeOpenAI, claude: FakeAnthropic, vertex: FakeVertex,
                             kind: str, stream: bool) -> None:
    _script(gemini, upstream, claude, vertex)
    want = GOLDEN[kind]
    config = types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2,
                                         max_output_tokens=500)
    with client(proxy, key) as c:
        if stream:
            chunks = list(c.models.generate_content_stream(model=kind, contents="Say hello.",
                                                           config=config))
            text = "".join(ch.text or "" for ch in chunks)
            usage = chunks[-1].usage_metadata
            last = chunks[-1]
        else:
            last = c.models.generate_content(model=kind, contents="Say hello.", config=config)
            text, usage = last.text or "", last.usage_metadata
    assert text == want.reply
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.sdk_http_response is not None and last.sdk_http_response.headers is not None
    call_id = last.sdk_http_response.headers[CALL_ID_HEADER]
    p = billed(lago, call_id, CUSTOMER).properties
    assert (p["uncached_input_tokens"], p["cached_input_tokens"], p["output_tokens"],
            p["reasoning_tokens"]) == (want.uncached, want.cache_read, want.output,
                                       want.reasoning)
    assert p["usage_source"] == "provider" and p["unknown_price"] == "false"
    assert Decimal(p["response_cost"]) == want.cost
    assert lago.count(call_id) == 1
    # What the client reads is what was billed, in Gemini's terms.
    assert usage is not None
    assert usage.prompt_token_count == want.uncached + want.cache_read
    assert (usage.cached_content_token_count or 0) == want.cache_read
    assert (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0) == want.output
    calls = _received(kind, gemini, upstream, claude, vertex)
    if kind == "mock":
        return
    assert len(calls) == 1
    got = calls[0]
    if kind == "gemini":  # passed through: the client's body, the gateway's key
        assert got.headers["x-goog-api-key"] == UPSTREAM_KEY
        assert got.path == "/v1beta/models/gemini-2.5-flash:" + (
            "streamGenerateContent" if stream else "generateContent")
        assert (got.query == "alt=sse") is stream
        assert got.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
        assert got.body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 500}
    elif kind == "vertex":  # passed through, with the service account's token
        assert got.path == ("/v1/projects/tg-project/locations/europe-west4/publishers/"
                            "google/models/gemini-2.5-flash:" + (
                                "streamGenerateContent" if stream else "generateContent"))
        assert got.headers["Authorization"].startswith("Bearer ")
        assert got.body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 500}
    else:  # translated
        body = got.body
        assert body["max_tokens"] == 500 and body["temperature"] == 0.2
        system = body["system"] if kind == "anthropic" else body["messages"][0]["content"]
        assert "Be brief." in json.dumps(system)
        assert key not in json.dumps(dict(got.headers))


@pytest.mark.parametrize("kind", ["gemini", "openai", "anthropic"])
def test_tool_call_round_trip(proxy: RunningProxy, lago: FakeLago, key: str,
                              gemini: FakeGemini, upstream: FakeOpenAI, claude: FakeAnthropic,
                              kind: str) -> None:
    """The model calls get_weather; the client sends the result back as a
    functionResponse; the second answer is plain text. Each call billed once."""
    call = FakeToolCall("get_weather", {"city": "Paris"}, id="toolu_w1")
    turns = [FakeTurn("Checking.", call), FakeTurn("It is sunny in Paris.")]
    if kind == "gemini":
        gemini.turns = turns
    elif kind == "openai":
        upstream.turns = turns
    else:
        claude.turns = turns
    config = types.GenerateContentConfig(tools=[WEATHER])
    ask = types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])
    with client(proxy, key) as c:
        first = c.models.generate_content(model=kind, contents=[ask], config=config)
        assert first.function_calls is not None and len(first.function_calls) == 1
        fc = first.function_calls[0]
        assert fc.name == "get_weather" and fc.args == {"city": "Paris"}
        assert first.candidates is not None and first.candidates[0].content is not None
        history = [ask, first.candidates[0].content, types.Content(role="user", parts=[
            types.Part(function_response=types.FunctionResponse(
                name="get_weather", id=fc.id, response={"forecast": "sunny"}))])]
        chunks = list(c.models.generate_content_stream(model=kind, contents=history,
                                                       config=config))
    assert "".join(ch.text or "" for ch in chunks) == "It is sunny in Paris."
    calls = _received(kind, gemini, upstream, claude)
    assert len(calls) == 2
    second = json.dumps(calls[1].body)
    assert "sunny" in second and "get_weather" in second
    if kind == "openai":
        body = calls[1].body
        assert body["tools"][0]["function"]["parameters"] == {
            "type": "object", "required": ["city"],
            "properties": {"city": {"type": "string"}}}
        tool_msg = [m for m in body["messages"] if m["role"] == "tool"]
        asked = [m for m in body["messages"] if m.get("tool_calls")]
        assert tool_msg[0]["tool_call_id"] == asked[0]["tool_calls"][0]["id"]
    wait_for(lambda: len(lago.stored) == 2)
    assert len({ev.transaction_id for ev in lago.stored}) == 2


def test_stream_without_alt_is_one_json_array(proxy: RunningProxy, lago: FakeLago, key: str,
                                              gemini: FakeGemini) -> None:
    """Google answers ``:streamGenerateContent`` without ``alt=sse`` as one JSON array;
    so does the door, passed through and translated alike."""
    body = {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}
    for model, reply in (("gemini", "Hello from the fake Gemini."), ("mock", MOCK_REPLY)):
        got = http("POST", f"{proxy.base_url}/v1beta/models/{model}:streamGenerateContent",
                   body, key=None, headers={"x-goog-api-key": key})
        assert got.status == 200, got.text
        assert got.headers["content-type"].startswith("application/json")
        chunks = json.loads(got.text)
        assert isinstance(chunks, list) and len(chunks) >= 2
        assert "".join(p.get("text", "") for ch in chunks for cand in ch["candidates"]
                       for p in cand["content"]["parts"]) == reply
        assert "usageMetadata" in chunks[-1]
        billed(lago, got.headers[CALL_ID_HEADER.lower()], CUSTOMER)


def test_count_tokens_native_and_estimated(proxy: RunningProxy, lago: FakeLago, key: str,
                                           gemini: FakeGemini) -> None:
    with client(proxy, key) as c:
        native = c.models.count_tokens(model="gemini", contents="Say hello.")
        estimated = c.models.count_tokens(model="openai", contents="Say hello.")
    assert native.total_tokens is not None and native.total_tokens > 0
    assert gemini.received[-1].path == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert gemini.received[-1].headers["x-goog-api-key"] == UPSTREAM_KEY
    # 3 priming + 4 for the message + "Say hello." / 4 rounded up.
    assert estimated.total_tokens == 3 + 4 + 3
    assert estimated.sdk_http_response is not None
    assert estimated.sdk_http_response.headers is not None
    assert estimated.sdk_http_response.headers["x-tallygate-token-count"] == "estimated"
    assert lago.stored == []  # counting is not billed


def test_master_key_names_the_payer_in_labels(proxy: RunningProxy, lago: FakeLago,
                                              gemini: FakeGemini) -> None:
    """With the master key (here in ``?key=``), ``labels.user`` names who pays; AI
    Studio refuses ``labels``, so it is not sent there."""
    body = {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}],
            "labels": {"user": "cust-labels"}}
    got = http("POST", f"{proxy.base_url}/v1beta/models/gemini:generateContent?key="
               f"{MASTER_KEY}", body, key=None)
    assert got.status == 200, got.text
    ev = billed(lago, got.headers[CALL_ID_HEADER.lower()], "cust-labels")
    assert ev.properties["end_user"] == "cust-labels"
    sent = gemini.received[-1]
    assert "labels" not in (sent.body or {}) and "key" not in sent.query
    assert sent.headers["x-goog-api-key"] == UPSTREAM_KEY


def _google_error(exc: genai_errors.APIError, code: int, status: str) -> None:
    assert exc.code == code and exc.status == status, (exc.code, exc.status, exc.message)
    assert exc.details["error"]["code"] == code


def test_errors_in_googles_shape(proxy: RunningProxy, lago: FakeLago, key: str,
                                 gemini: FakeGemini, upstream: FakeOpenAI) -> None:
    with client(proxy, key) as c:
        with pytest.raises(genai_errors.ClientError) as caught:
            c.models.generate_content(model="no-such-model", contents="hi")
        _google_error(caught.value, 404, "NOT_FOUND")
        with pytest.raises(genai_errors.ClientError) as caught:
            c.models.generate_content(model="gemini", contents=[types.Content(
                role="assistant", parts=[types.Part(text="hi")])])
        _google_error(caught.value, 400, "INVALID_ARGUMENT")
        assert "contents[0].role" in (caught.value.message or "")
        assert not [r for r in gemini.received if ":" in r.path]  # refused before sending
        gemini.fail(429, "Resource has been exhausted")
        with pytest.raises(genai_errors.ClientError) as caught:
            c.models.generate_content(model="gemini", contents="hi")
        _google_error(caught.value, 429, "RESOURCE_EXHAUSTED")
        upstream.fail(429, "Rate limit reached")
        with pytest.raises(genai_errors.ClientError) as caught:
            c.models.generate_content(model="openai", contents="hi")
        _google_error(caught.value, 429, "RESOURCE_EXHAUSTED")
    unserved = http("POST", f"{proxy.base_url}/v1beta/models/gemini:predictLongRunning", {},
                    key=None, headers={"x-goog-api-key": key})
    assert unserved.status == 404
    assert unserved.json()["error"]["status"] == "NOT_FOUND"
    assert ":generateContent" in unserved.json()["error"]["message"]
    with client(proxy, "sk-not-a-key") as c:
        with pytest.raises(genai_errors.ClientError) as caught:
            c.models.generate_content(model="gemini", contents="hi")
        _google_error(caught.value, 401, "UNAUTHENTICATED")
        assert "sk-not-a-key" not in (caught.value.message or "")
    assert lago.stored == []  # nothing billed for a failed call


def test_models_listed_in_googles_shape(proxy: RunningProxy, key: str) -> None:
    with client(proxy, key) as c:
        names = [m.name for m in c.models.list()]
        one = c.models.get(model="gemini")
    assert names == ["models/vertex", "models/gemini", "models/openai", "models/anthropic",
                     "models/mock", "models/gemini-embed", "models/openai-embed"]
    assert one.name == "models/gemini" and one.supported_actions is not None
    assert "generateContent" in one.supported_actions


def test_embeddings_passed_through_and_translated(proxy: RunningProxy, lago: FakeLago,
                                                  key: str, gemini: FakeGemini,
                                                  upstream: FakeOpenAI) -> None:
    """``:batchEmbedContents`` (google-genai) and ``:embedContent`` to gemini/ (the
    stand-in's usage: text / 4 per text) and to an OpenAI embedding model (its usage:
    ``prompt_tokens``), billed on input tokens."""
    upstream.prompt_tokens = 6
    texts = [types.Content(parts=[types.Part(text=t)]) for t in ("Hello world", "Goodbye")]
    with client(proxy, key) as c:
        native = c.models.embed_content(model="gemini-embed", contents=texts)
        translated = c.models.embed_content(model="openai-embed", contents=texts)
    for answer, dim in ((native, 4), (translated, 8)):
        assert answer.embeddings is not None and len(answer.embeddings) == 2
        assert all(e.values is not None and len(e.values) == dim for e in answer.embeddings)
    sent = gemini.received[-1]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert {r["model"] for r in sent.body["requests"]} == {"models/gemini-embedding-001"}
    assert upstream.received[-1].body["input"] == ["Hello world", "Goodbye"]
    one = http("POST", f"{proxy.base_url}/v1beta/models/gemini-embed:embedContent",
               {"content": {"parts": [{"text": "Hello world"}]}}, key=None,
               headers={"x-goog-api-key": key})
    assert one.status == 200, one.text
    assert len(one.json()["embedding"]["values"]) == 4
    wait_for(lambda: len(lago.stored) == 3)
    by_model = sorted((ev.properties["model"], ev.properties["input_tokens"],
                       Decimal(ev.properties["response_cost"])) for ev in lago.stored)
    # gemini-embed: 11 / 4 + 7 / 4 = 2 + 1 tokens, then 2, at the override's $0.15 per
    # million; text-embedding-3-small: 6 tokens at $0.02 per million.
    assert by_model == [("gemini-embedding-001", 2, 2 * Decimal("0.15") / M),
                        ("gemini-embedding-001", 3, 3 * Decimal("0.15") / M),
                        ("text-embedding-3-small", 6, 6 * Decimal("0.02") / M)]
    assert all(ev.external_subscription_id == CUSTOMER for ev in lago.stored)


@pytest.mark.parametrize("kind", ["gemini", "openai"])
async def test_stream_left_by_the_client(proxy: RunningProxy, lago: FakeLago, key: str,
                                         gemini: FakeGemini, upstream: FakeOpenAI,
                                         kind: str) -> None:
    """The client hangs up mid-stream: billed once, flagged, for what was generated (the
    prompt as the provider reported it, the output estimated from the streamed text)."""

    gemini.script.reply_text, gemini.script.stream_chunks = "word " * 200, 200
    gemini.script.prompt_tokens, gemini.script.candidates_tokens = 700, 400
    upstream.reply_text, upstream.stream_chunks = "word " * 200, 200
    upstream.prompt_tokens, upstream.completion_tokens = 700, 400
    server = gemini if kind == "gemini" else upstream
    server.chunk_delay = 0.02  # a 4 s stream if nobody leaves
    call_id = await leave_stream(
        f"{proxy.base_url}/v1beta/models/{kind}:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "Talk."}]}]}, count=6,
        headers={"x-goog-api-key": key})
    wait_for(lambda: call_id in lago.events)
    p = lago.events[call_id].properties
    assert lago.count(call_id) == 1
    assert "client_disconnected" in p["flags"].split(",")
    assert p["usage_source"] == "estimated"
    assert 0 < p["output_tokens"] < 400
    if kind == "gemini":  # every Gemini chunk carries the prompt count
        assert p["uncached_input_tokens"] == 700
