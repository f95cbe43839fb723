"""Billing on the Responses door: a golden table of the billed usage per (provider kind x
stream or not), web searches billed per call, and streams cut short (by the upstream or
the client) billed once with an estimate, flagged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tallygate.config import parse_config
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    await_for,
    billed,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    leave_stream,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

IN, OUT = Decimal("0.000002"), Decimal("0.000008")
PRICES = {"input_cost_per_token": str(IN), "output_cost_per_token": str(OUT),
          "cache_read_input_token_cost": "0.0000005",
          "cache_creation_input_token_cost": "0.0000025"}
MOCK_REPLY = "Mock reply."
CHAT_ONLY = {"supported_endpoints": ["/v1/chat/completions"]}


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([
        openai_entry("gpt", upstream.base_url, **PRICES),
        openai_entry("gpt-lib", upstream.base_url),  # priced by genai-prices
        # An OpenAI-compatible server without the Responses API: translated to chat.
        {**openai_entry("gpt-chat", upstream.base_url, **PRICES), "model_info": CHAT_ONLY},
        anthropic_entry("claude", claude.base_url, **PRICES),
        {"model_name": "mocked", "litellm_params": {"model": "mock/echo",
                                                    "mock_response": MOCK_REPLY, **PRICES}},
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def buckets(ev: Any) -> tuple[int, int, int, int, int]:
    p = ev.properties
    return (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"], p["output_tokens"], p["reasoning_tokens"])


# The billed buckets (uncached, cache read, cache write, output, reasoning) of one call,
# by the deployment kind; streamed or not, the same. The mock estimates its usage from
# the prompt ("Say hi": 3 + 4 + 2 tokens) and its reply (11 characters: 3 tokens).
GOLDEN = {
    "gpt": (24, 16, 0, 9, 4),        # OpenAI Responses usage: cached inside input_tokens
    "gpt-chat": (24, 16, 0, 9, 4),   # the same numbers read from the chat answer
    "claude": (20, 8, 5, 6, 0),      # Anthropic: cache reads and writes outside input
    "mocked": (9, 0, 0, 3, 0),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("model", list(GOLDEN))
def test_golden_billed_usage(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                             claude: FakeAnthropic, model: str, stream: bool) -> None:
    upstream.prompt_tokens, upstream.cached_tokens = 40, 16
    upstream.completion_tokens, upstream.reasoning_tokens = 9, 4
    claude.input_tokens, claude.cache_read_tokens, claude.cache_write_tokens = 20, 8, 5
    claude.output_tokens = 6
    customer = f"golden-{model}-{stream}"
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as client:
        if stream:
            with client.responses.stream(model=model, input="Say hi", user=customer) as s:
                final = s.get_final_response()
            call_id = s._response.headers[CALL_ID_HEADER]
        else:
            raw = client.responses.with_raw_response.create(model=model, input="Say hi",
                                                            user=customer)
            final, call_id = raw.parse(), raw.headers[CALL_ID_HEADER]
    ev = billed(lago, call_id, customer)
    assert buckets(ev) == GOLDEN[model]
    uncached, cached, written, out, _ = GOLDEN[model]
    assert final.usage is not None
    assert final.usage.input_tokens == uncached + cached + written
    assert final.usage.output_tokens == out
    assert ev.properties["usage_source"] == "provider"
    paths = {"gpt": "/v1/responses", "gpt-chat": "/v1/chat/completions"}
    if model in paths:
        assert upstream.received[-1].path == paths[model]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_web_searches_billed_per_call(proxy: RunningProxy, lago: FakeLago,
                                      upstream: FakeOpenAI, stream: bool) -> None:
    upstream.web_searches = 2
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 100, 0, 10
    body = {"model": "gpt-lib", "input": "news?", "user": "searcher", "stream": stream,
            "tools": [{"type": "web_search"}]}
    reply = http("POST", proxy.base_url + "/v1/responses", body)
    assert reply.status == 200, reply.text
    ev = billed(lago, reply.headers[CALL_ID_HEADER], "searcher")
    assert ev.properties["web_searches"] == 2
    # gpt-4o-mini at genai-prices' rates: $0.15 / $0.60 per million tokens, $10 per
    # thousand web searches.
    cost = 100 * Decimal("0.00000015") + 10 * Decimal("0.0000006") + 2 * Decimal("0.01")
    assert Decimal(ev.properties["response_cost"]) == cost
    assert upstream.requests[-1]["tools"] == [{"type": "web_search"}]
    # A deployment whose own prices name no web-search price: flagged, never $0.
    body["model"] = "gpt"
    reply = http("POST", proxy.base_url + "/v1/responses", body)
    ev = billed(lago, reply.headers[CALL_ID_HEADER], "searcher")
    assert ev.properties["unknown_price"] == "true" and "response_cost" not in ev.properties


@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_upstream_drops_mid_stream(proxy: RunningProxy, lago: FakeLago,
                                         upstream: FakeOpenAI, claude: FakeAnthropic,
                                         model: str) -> None:
    upstream.reply_text = claude.reply_text = "word " * 40
    upstream.stream_chunks = claude.stream_chunks = 40
    upstream.drop_connection = claude.drop_connection = "mid"
    async with aiohttp.ClientSession() as s, s.post(
            proxy.base_url + "/v1/responses",
            json={"model": model, "input": "Say hi", "user": "dropped", "stream": True},
            headers={"Authorization": f"Bearer {MASTER_KEY}"}) as resp:
        assert resp.status == 200
        call_id = resp.headers[CALL_ID_HEADER]
        text = (await resp.read()).decode()
    assert "event: response.output_text.delta" in text
    assert "event: error" in text and "response.completed" not in text
    await await_for(lambda: call_id in lago.events)
    ev = billed(lago, call_id, "dropped")
    assert ev.properties["usage_source"] == "estimated"
    assert "estimated_usage" in ev.properties["flags"].split(",")
    assert ev.properties["output_tokens"] > 0


async def test_client_leaves_mid_stream(proxy: RunningProxy, lago: FakeLago,
                                        upstream: FakeOpenAI) -> None:
    upstream.reply_text = "word " * 200
    upstream.stream_chunks, upstream.chunk_delay = 200, 0.02
    call_id = await leave_stream(proxy.base_url + "/v1/responses", {
        "model": "gpt", "input": "Say hi", "user": "leaver", "stream": True}, count=5,
        marker=b"response.output_text.delta")
    await await_for(lambda: call_id in lago.events)
    ev = lago.events[call_id]
    flags = ev.properties["flags"].split(",")
    assert "client_disconnected" in flags and "estimated_usage" in flags
    assert 0 < ev.properties["output_tokens"] < 200
    await asyncio.sleep(0.2)
    assert lago.count(call_id) == 1


def test_supported_endpoints_with_responses_on_a_translated_provider_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    entry = {**anthropic_entry("claude", "http://127.0.0.1:9"),
             "model_info": {"supported_endpoints": ["/v1/messages", "/v1/responses"]}}
    parse_config({"model_list": [entry]}, {})
    assert "model_list[0].model_info.supported_endpoints" in caplog.text
    assert "translated" in caplog.text
