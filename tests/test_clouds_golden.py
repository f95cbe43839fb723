"""Golden usage and cost, every cloud provider x (plain, stream, cached, reasoning, tool
call, stream left by the client): the official openai SDK calls the proxy, the proxy
calls the provider's stand-in, and the one Lago event of the call carries the disjoint
buckets the provider reported and the Decimal cost worked out by hand from them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai
import pytest

from tallygate.estimate import estimate_prompt_tokens
from tests.clouds_support import (  # noqa: F401  (fixtures)
    BY_FLAVOR,
    CLOUDS,
    Cloud,
    Clouds,
    client_fixture,
    clouds_fixture,
    expected_cost,
    reset_fakes_fixture,
)
from tests.fakes.openai_compat_server import FakeToolCall
from tests.proxy_harness import billed

MESSAGES = [{"role": "user", "content": "What is a cache?"}]
IDS = [c.flavor for c in CLOUDS]


def _when(ev: Any) -> datetime:
    return datetime.fromtimestamp(float(ev.timestamp), UTC)


def assert_billed(cloud: Cloud, ev: Any, *, prompt: int, cached: int, output: int,
                  reasoning: int = 0) -> None:
    p = ev.properties
    assert (p["input_tokens"], p["cached_input_tokens"], p["uncached_input_tokens"],
            p["output_tokens"], p["reasoning_tokens"]) == (
        prompt, cached, prompt - cached, output, reasoning), p
    assert p["usage_source"] == "provider"
    assert p["provider"] == cloud.flavor and p["provider_model"] == cloud.model
    expected = expected_cost(cloud, p, _when(ev))
    if expected is None:
        assert p["unknown_price"] == "true" and "response_cost" not in p, p
        assert p["unpriced_buckets"] == "cache_read_tokens"
    else:
        assert p["unknown_price"] == "false", p
        assert Decimal(p["response_cost"]) == expected, (p, expected)
    if cloud.flavor == "perplexity":
        assert p["search_context_size_low"] == 1  # the request fee, priced per call


def _chat(client: openai.OpenAI, cloud: Cloud, customer: str, **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=cloud.group, messages=MESSAGES, user=customer, **kwargs)


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_plain_answer(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    raw = _chat(client, cloud, "g-plain")
    assert raw.parse().choices[0].message.content == fake.reply_text
    ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "g-plain")
    assert_billed(cloud, ev, prompt=1000, cached=0, output=50)
    if ev.properties["unknown_price"] == "false":
        assert raw.headers["x-tallygate-response-cost"] == ev.properties["response_cost"]
    sent = fake.requests[-1]
    if cloud.flavor == "fireworks_ai":  # a short name gets Fireworks' path, priced so
        assert sent["model"] == f"accounts/fireworks/models/{cloud.model}"
    elif cloud.flavor != "azure":
        assert sent["model"] == cloud.model


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_stream(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    with client.chat.completions.with_streaming_response.create(
            model=cloud.group, messages=MESSAGES, user="g-stream", stream=True,
            stream_options={"include_usage": True}) as resp:
        call_id = resp.headers["x-tallygate-call-id"]
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.reply_text
    assert any(c.usage is not None and c.usage.prompt_tokens == 1000 for c in chunks)
    ev = billed(clouds.lago, call_id, "g-stream")
    assert "stream" in ev.properties["flags"].split(",")
    assert_billed(cloud, ev, prompt=1000, cached=0, output=50)


@pytest.mark.parametrize("cloud", [c for c in CLOUDS if c.caches],
                         ids=[c.flavor for c in CLOUDS if c.caches])
def test_cached_prompt(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    fake.prompt_tokens, fake.cached_tokens, fake.completion_tokens = 2000, 1500, 40
    raw = _chat(client, cloud, "g-cached")
    ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "g-cached")
    assert_billed(cloud, ev, prompt=2000, cached=1500, output=40)


@pytest.mark.parametrize("cloud", [c for c in CLOUDS if c.reasoning],
                         ids=[c.flavor for c in CLOUDS if c.reasoning])
def test_reasoning_streamed(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    fake.prompt_tokens, fake.completion_tokens, fake.reasoning_tokens = 300, 120, 90
    if cloud.flavor in ("deepseek", "hosted_vllm"):
        fake.reasoning_text = "Caches keep answers near."
    with client.chat.completions.with_streaming_response.create(
            model=cloud.group, messages=MESSAGES, user="g-reason", stream=True) as resp:
        call_id = resp.headers["x-tallygate-call-id"]
        chunks = list(resp.parse())
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage
    if fake.reasoning_text:  # reasoning_content reaches the client as the provider sent it
        thought = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                          for c in chunks if c.choices)
        assert thought == fake.reasoning_text
    ev = billed(clouds.lago, call_id, "g-reason")
    # xAI and Perplexity count reasoning beside completion tokens: billed as output.
    assert_billed(cloud, ev, prompt=300, cached=0, output=120, reasoning=90)


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_tool_call(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    fake.tool_call = FakeToolCall("lookup", {"term": "cache"})
    fake.completion_tokens = 20
    tools = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object",
                                         "properties": {"term": {"type": "string"}}}}}]
    raw = _chat(client, cloud, "g-tool", tools=tools, tool_choice="required")
    call = (raw.parse().choices[0].message.tool_calls or [])[0]
    assert (call.function.name, call.function.arguments) == ("lookup", '{"term":"cache"}')
    ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "g-tool")
    assert_billed(cloud, ev, prompt=1000, cached=0, output=20)
    expected_choice = "any" if cloud.flavor == "fireworks_ai" else "required"
    assert fake.requests[-1]["tool_choice"] == expected_choice


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_stream_left_by_the_client_is_billed_on_an_estimate(
        clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    fake.reply_text = "word " * 60
    fake.stream_chunks, fake.chunk_delay = 60, 0.02
    with client.chat.completions.with_streaming_response.create(
            model=cloud.group, messages=MESSAGES, user="g-left", stream=True) as resp:
        call_id = resp.headers["x-tallygate-call-id"]
        for i, _ in enumerate(resp.iter_lines()):
            if i >= 6:
                break  # leave mid-stream: the context manager closes the connection
    ev = billed(clouds.lago, call_id, "g-left")
    p = ev.properties
    assert {"client_disconnected", "estimated_usage"} <= set(p["flags"].split(","))
    assert p["usage_source"] == "estimated"
    assert p["input_tokens"] == estimate_prompt_tokens(MESSAGES)
    assert 0 < p["output_tokens"] < 60
    expected = expected_cost(cloud, p, _when(ev))
    assert expected is not None and Decimal(p["response_cost"]) == expected
    if cloud.flavor == "perplexity":  # the search was made: its fee is billed
        assert p["search_context_size_low"] == 1


def test_provider_reported_costs_sit_beside_ours(clouds: Clouds,
                                                 client: openai.OpenAI) -> None:
    for flavor, cost in (("openrouter", "0.000123"), ("xai", "0.0004567"),
                         ("perplexity", "0.0131")):
        cloud = BY_FLAVOR[flavor]
        clouds.fakes[flavor].cost = cost
        raw = _chat(client, cloud, "g-cost")
        ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "g-cost")
        assert Decimal(ev.properties["provider_reported_cost"]) == Decimal(cost), flavor
        assert Decimal(ev.properties["response_cost"]) == expected_cost(
            cloud, ev.properties, _when(ev))
        # Streamed, the cost comes with the usage chunk.
        with client.chat.completions.with_streaming_response.create(
                model=cloud.group, messages=MESSAGES, user="g-cost", stream=True) as resp:
            call_id = resp.headers["x-tallygate-call-id"]
            list(resp.iter_lines())
        ev = billed(clouds.lago, call_id, "g-cost")
        assert Decimal(ev.properties["provider_reported_cost"]) == Decimal(cost), flavor
