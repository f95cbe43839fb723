"""The official openai SDK's Responses API (``client.responses.*``) through the proxy, to
an OpenAI deployment (passed through to its /v1/responses), an Anthropic deployment and
the mock (both translated to their chat call): create, stream, tools, structured output,
previous_response_id, retrieve, delete and input_items, each call billed exactly once in
Lago with its buckets and a cost computed here by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    assert_openai_error,
    billed,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_client_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

# Prices set on every deployment, so that each cost is computed here by hand.
IN, OUT, CACHE_READ, CACHE_WRITE = (Decimal("0.000002"), Decimal("0.000008"),
                                    Decimal("0.0000005"), Decimal("0.0000025"))
PRICES = {"input_cost_per_token": str(IN), "output_cost_per_token": str(OUT),
          "cache_read_input_token_cost": str(CACHE_READ),
          "cache_creation_input_token_cost": str(CACHE_WRITE)}
MOCK_REPLY = "Mock says hello to the Responses API."
MODELS = ["gpt", "claude", "mocked"]
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "strict": True, "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}},
                                          "required": ["city"], "additionalProperties": False}}


class Weather(pydantic.BaseModel):
    city: str
    temp_c: int


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([
        openai_entry("gpt", upstream.base_url, **PRICES),
        anthropic_entry("claude", claude.base_url, **PRICES),
        {"model_name": "mocked", "litellm_params": {"model": "mock/echo",
                                                    "mock_response": MOCK_REPLY, **PRICES}},
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def reply_of(model: str, upstream: FakeOpenAI, claude: FakeAnthropic) -> str:
    return {"gpt": upstream.reply_text, "claude": claude.reply_text, "mocked": MOCK_REPLY}[model]


def set_usage(upstream: FakeOpenAI, claude: FakeAnthropic) -> None:
    """Usage with every bucket: OpenAI counts cached tokens inside input_tokens,
    Anthropic outside."""
    upstream.prompt_tokens, upstream.cached_tokens = 40, 16
    upstream.completion_tokens, upstream.reasoning_tokens = 9, 4
    claude.input_tokens, claude.cache_read_tokens, claude.cache_write_tokens = 20, 8, 5
    claude.output_tokens = 6


def check_billed(lago: FakeLago, call_id: str, customer: str,
                 usage: openai.types.responses.ResponseUsage) -> Any:
    """The call's one Lago event: its buckets are the usage the client read, and its
    cost is the prices times those buckets."""
    ev = billed(lago, call_id, customer)
    p = ev.properties
    cached = usage.input_tokens_details.cached_tokens
    written = getattr(usage.input_tokens_details, "cache_write_tokens", None) or 0
    uncached = usage.input_tokens - cached - written
    assert p["input_tokens"] == usage.input_tokens
    assert (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"]) == (uncached, cached, written)
    assert p["output_tokens"] == usage.output_tokens
    assert p["reasoning_tokens"] == usage.output_tokens_details.reasoning_tokens
    cost = uncached * IN + cached * CACHE_READ + written * CACHE_WRITE + usage.output_tokens * OUT
    assert Decimal(p["response_cost"]) == cost
    assert p["unknown_price"] == "false"
    return ev


# --- create and stream -----------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_create_billed_once(client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI,
                            claude: FakeAnthropic, model: str) -> None:
    set_usage(upstream, claude)
    customer = f"cust-{model}"
    raw = client.responses.with_raw_response.create(
        model=model, input="Say hi", instructions="Be brief.", user=customer,
        max_output_tokens=64, temperature=0.5, metadata={"run": "r1"})
    response = raw.parse()
    assert response.status == "completed" and response.object == "response"
    assert response.output_text == reply_of(model, upstream, claude)
    assert response.instructions == "Be brief." and response.metadata == {"run": "r1"}
    assert response.usage is not None
    ev = check_billed(lago, raw.headers[CALL_ID_HEADER], customer, response.usage)
    assert Decimal(raw.headers[COST_HEADER]) == Decimal(ev.properties["response_cost"])
    if model == "gpt":  # passed through as it came, only the model replaced
        assert upstream.received[-1].path == "/v1/responses"
        assert upstream.requests[-1] == {
            "model": "gpt-4o-mini", "input": "Say hi", "instructions": "Be brief.",
            "user": customer, "max_output_tokens": 64, "temperature": 0.5,
            "metadata": {"run": "r1"}}
        assert response.id.startswith("resp_fake")
        assert (response.usage.input_tokens, response.usage.output_tokens) == (40, 9)
        assert response.usage.output_tokens_details.reasoning_tokens == 4
        assert "x-tallygate-dropped-params" not in raw.headers
    elif model == "claude":  # translated to the Messages API
        sent = claude.requests[-1]
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 64
        assert sent["temperature"] == 0.5 and sent["metadata"] == {"user_id": customer}
        assert sent["messages"] == [{"role": "user",
                                     "content": [{"type": "text", "text": "Say hi"}]}]
        assert response.usage.input_tokens == 20 + 8 + 5
        assert response.usage.input_tokens_details.cached_tokens == 8
    else:
        assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_billed_once(client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI,
                            claude: FakeAnthropic, model: str) -> None:
    set_usage(upstream, claude)
    upstream.stream_chunks = claude.stream_chunks = 4
    customer = f"stream-{model}"
    with client.responses.stream(model=model, input="Say hi", user=customer) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == reply_of(model, upstream, claude) == final.output_text
    if model != "mocked":
        assert len(deltas) == 4
    assert final.usage is not None
    call_id = stream._response.headers[CALL_ID_HEADER]  # the SDK keeps the HTTP answer here
    check_billed(lago, call_id, customer, final.usage)
    # The raw events: in order, numbered from 0, one message with one output_text part.
    events = list(client.responses.create(model=model, input="Say hi", user=customer,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress",
                         "response.output_item.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    assert events[0].response.id == completed.response.id  # type: ignore[union-attr]


# --- tools and structured output ---------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_function_tool_round_trip(client: openai.OpenAI, lago: FakeLago,
                                  upstream: FakeOpenAI, claude: FakeAnthropic,
                                  model: str) -> None:
    call = FakeToolCall("get_weather", {"city": "Paris"}, id="call_w1")
    upstream.tool_call = claude.tool_call = call
    claude.reply_text = ""  # Claude calls the tool without words first
    first = client.responses.with_raw_response.create(
        model=model, input="Weather in Paris?", tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="auto", parallel_tool_calls=False, user="tools")
    response = first.parse()
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, c.call_id, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", "call_w1", {"city": "Paris"})]
    assert response.usage is not None
    check_billed(lago, first.headers[CALL_ID_HEADER], "tools", response.usage)
    # The tool's output goes back; the model answers (Claude: with text this time).
    claude.tool_call, claude.reply_text = None, "It is sunny in Paris."
    follow = client.responses.with_raw_response.create(
        model=model, tools=[WEATHER], user="tools",  # type: ignore[list-item]
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": "call_w1", "name": "get_weather",
                "arguments": '{"city":"Paris"}'},
               {"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}])
    answer = follow.parse()
    assert answer.output_text == reply_of(model, upstream, claude)
    assert answer.usage is not None
    check_billed(lago, follow.headers[CALL_ID_HEADER], "tools", answer.usage)
    if model == "gpt":
        assert upstream.requests[0]["tools"] == [WEATHER]  # strict kept, as it came
        assert upstream.requests[0]["parallel_tool_calls"] is False
    else:
        sent = claude.requests
        assert sent[0]["tools"] == [{"name": "get_weather", "description": "Weather of a city",
                                     "input_schema": WEATHER["parameters"]}]
        assert sent[0]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
        assert sent[1]["messages"][1:] == [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_w1",
                                               "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w1",
                                          "content": "sunny"}]}]


def test_streamed_function_call_is_parsed_by_the_stream_helper(
        client: openai.OpenAI, upstream: FakeOpenAI, claude: FakeAnthropic) -> None:
    claude.tool_call = upstream.tool_call = FakeToolCall("get_weather", {"city": "Oslo"})
    claude.reply_text = "Let me look."
    for model in ("gpt", "claude"):
        with client.responses.stream(model=model, input="Weather in Oslo?", user="s",
                                     tools=[WEATHER]) as stream:  # type: ignore[list-item]
            kinds = [e.type for e in stream]
            final = stream.get_final_response()
        call = final.output[-1]
        assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
    assert final.output_text == "Let me look."  # Claude's words before the call


@pytest.mark.parametrize("model", MODELS)
def test_structured_output(client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI,
                           claude: FakeAnthropic, model: str) -> None:
    answer = {"city": "Paris", "temp_c": 21}
    upstream.reply_text = json.dumps(answer)
    # Claude answers through the tool the gateway gives it for the schema.
    claude.reply_text = ""
    claude.tool_call = FakeToolCall("tallygate_json_response", answer, id="toolu_json")
    # The mock answers what the request's mock_response says (LiteLLM's parameter).
    extra = {"mock_response": json.dumps(answer)} if model == "mocked" else {}
    for stream in (False, True):
        if stream:
            with client.responses.stream(model=model, input="Weather?", user="so",
                                         text_format=Weather, extra_body=extra) as s:
                parsed = s.get_final_response()
            call_id = s._response.headers[CALL_ID_HEADER]
        else:
            raw = client.responses.with_raw_response.parse(
                model=model, input="Weather?", user="so", text_format=Weather,
                extra_body=extra)
            parsed, call_id = raw.parse(), raw.headers[CALL_ID_HEADER]
        assert parsed.output_parsed == Weather(city="Paris", temp_c=21)
        assert parsed.usage is not None
        check_billed(lago, call_id, "so", parsed.usage)
    if model == "gpt":
        fmt = upstream.requests[-1]["text"]["format"]
        assert fmt["type"] == "json_schema" and fmt["name"] == "Weather" and fmt["strict"]
    elif model == "claude":
        sent = claude.requests[-1]
        assert sent["tool_choice"] == {"type": "tool", "name": "tallygate_json_response"}
        assert sent["tools"][0]["input_schema"]["required"] == ["city", "temp_c"]


def test_json_object_to_claude(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.reply_text = ""
    claude.tool_call = FakeToolCall("tallygate_json_response", {"ok": True})
    response = client.responses.create(model="claude", input="JSON please", user="j",
                                       text={"format": {"type": "json_object"}})
    assert json.loads(response.output_text) == {"ok": True}
    assert response.output[0].type == "message"


# --- previous_response_id and the stored responses ------------------------------------


@pytest.mark.parametrize(("first", "second"), [("gpt", "gpt"), ("claude", "gpt"),
                                               ("gpt", "claude"), ("mocked", "claude")])
def test_previous_response_id(client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI,
                              claude: FakeAnthropic, first: str, second: str) -> None:
    one = client.responses.create(model=first, input="My name is Ada.", user="conv",
                                  instructions="First instructions.")
    raw = client.responses.with_raw_response.create(
        model=second, input="What is my name?", previous_response_id=one.id, user="conv")
    two = raw.parse()
    assert two.previous_response_id == one.id
    assert two.output_text == reply_of(second, upstream, claude)
    assert two.usage is not None
    check_billed(lago, raw.headers[CALL_ID_HEADER], "conv", two.usage)
    earlier = reply_of(first, upstream, claude)
    if (first, second) == ("gpt", "gpt"):  # OpenAI has it: the id passes through
        assert upstream.requests[-1] == {"model": "gpt-4o-mini", "input": "What is my name?",
                                         "previous_response_id": one.id, "user": "conv"}
    elif second == "gpt":  # the conversation is sent along instead
        sent = upstream.requests[-1]
        assert "previous_response_id" not in sent
        assert sent["input"][0] == {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "My name is Ada."}]}
        assert sent["input"][1]["content"][0]["text"] == earlier
        assert sent["input"][2:] == [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is my name?"}]}]
    else:  # translated: the history as messages; earlier instructions not carried over
        assert claude.requests[-1]["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "My name is Ada."}]},
            {"role": "assistant", "content": [{"type": "text", "text": earlier}]},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}]
        assert "system" not in claude.requests[-1]


@pytest.mark.parametrize("model", MODELS)
def test_retrieve_input_items_delete(client: openai.OpenAI, model: str) -> None:
    created = client.responses.create(model=model, user="store", input=[
        {"role": "user", "content": "One"},
        {"role": "user", "content": [{"type": "input_text", "text": "Two"}]}])
    got = client.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["Two", "One"]  # type: ignore[union-attr]
    assert items.first_id == items.data[0].id and items.has_more is False
    page = client.responses.input_items.list(created.id, order="asc", limit=1)
    assert [i.content[0].text for i in page.data] == ["One"]  # type: ignore[union-attr]
    assert page.has_more is True
    rest = client.responses.input_items.list(created.id, order="asc", after=page.data[0].id)
    assert [i.content[0].text for i in rest.data] == ["Two"]  # type: ignore[union-attr]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    unstored = client.responses.create(model=model, input="x", user="store", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_another_key_or_customer_gets_404(proxy: RunningProxy, client: openai.OpenAI) -> None:
    keys = [http("POST", proxy.base_url + "/key/generate",
                 {"key_alias": f"k{i}", "customer_id": f"c{i}"}).json()["key"]
            for i in (1, 2)]
    one, two = (openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=k, max_retries=0)
                for k in keys)
    with one, two:
        mine = one.responses.create(model="mocked", input="secret plans")
        assert one.responses.retrieve(mine.id).id == mine.id
        for attempt in (lambda: two.responses.retrieve(mine.id),
                        lambda: two.responses.input_items.list(mine.id),
                        lambda: two.responses.delete(mine.id),
                        lambda: client.responses.retrieve(mine.id)):
            with pytest.raises(openai.NotFoundError) as info:
                attempt()
            assert "secret" not in str(info.value.body)
        with pytest.raises(openai.NotFoundError) as follow:
            two.responses.create(model="mocked", input="and?", previous_response_id=mine.id)
        assert follow.value.code == "previous_response_not_found"
    # Under the master key, the payer named in the body owns the conversation too.
    alice = client.responses.create(model="mocked", input="hi", user="alice")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="mocked", input="more", user="bob",
                                previous_response_id=alice.id)


def test_unknown_previous_response_is_404_and_releases_the_budget(
        proxy: RunningProxy) -> None:
    key = http("POST", proxy.base_url + "/key/generate",
               {"key_alias": "budgeted", "customer_id": "b", "max_budget": 1}).json()["key"]
    reply = http("POST", proxy.base_url + "/v1/responses", key=key, body={
        "model": "claude", "input": "x", "previous_response_id": "resp_nope"})
    assert_openai_error(reply, 404, code="previous_response_not_found",
                        param="previous_response_id")
    db = proxy.gateway.keys.db
    assert db is not None
    rows = proxy.call(db.fetch("SELECT reserved_micros FROM access_budgets"))
    assert rows and all(r["reserved_micros"] == 0 for r in rows)


# --- what is refused, and errors ----------------------------------------------------------


@pytest.mark.parametrize("model", ["claude", "mocked"])
def test_builtin_tool_refused_on_a_translated_deployment(
        proxy: RunningProxy, lago: FakeLago, claude: FakeAnthropic, model: str) -> None:
    reply = http("POST", proxy.base_url + "/v1/responses", body={
        "model": model, "input": "news?", "user": "w", "tools": [{"type": "web_search"}]})
    err = assert_openai_error(reply, 400, code="unsupported_tool", param="tools[0]")
    provider = "anthropic" if model == "claude" else "mock"
    assert "'web_search'" in err["message"] and f"'{provider}'" in err["message"]
    assert claude.requests == []
    assert reply.headers[CALL_ID_HEADER] not in lago.events


def test_translation_names_what_it_dropped(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="claude", input="hi", user="d", reasoning={"effort": "low"},
        prompt_cache_key="k1")
    assert raw.headers["x-tallygate-dropped-params"] == "reasoning.effort, prompt_cache_key"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="claude", input="hi", user="d", background=True)
    assert info.value.param == "background"


def test_errors_in_the_openai_shape(proxy: RunningProxy, upstream: FakeOpenAI,
                                    client: openai.OpenAI) -> None:
    url = proxy.base_url + "/v1/responses"
    assert_openai_error(http("POST", url, {"model": "gpt"}), 400,
                        code="missing_required_parameter", param="input")
    assert_openai_error(http("POST", url, {"model": "gpt", "input": 5}), 400, param="input")
    assert_openai_error(http("POST", url, {"model": "nope", "input": "x"}), 404, param="model")
    assert_openai_error(http("POST", url, {"model": "gpt", "input": "x"}, key="sk-wrong"), 401)
    upstream.fail(429, "slow down", headers={"Retry-After": "3"})
    with pytest.raises(openai.RateLimitError) as info:
        # No retry (LiteLLM's per-request option): the upstream's 429 as the client sees it.
        client.responses.create(model="gpt", input="x", user="e",
                                extra_body={"num_retries": 0})
    assert info.value.response.headers["retry-after"] == "3"
    assert http("POST", proxy.base_url + "/responses",
                {"model": "mocked", "input": "no /v1", "user": "e"}).status == 200
