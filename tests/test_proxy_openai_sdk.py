"""The official openai SDK (sync and async, streamed and not) against the proxy, with
fake OpenAI / Anthropic upstreams and the Lago stand-in: every call billed once."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    billed,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

MESSAGES = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url),
                       anthropic_entry("claude", claude.base_url)], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def _check_billed(lago: FakeLago, headers: dict[str, str] | object, customer: str,
                  prompt: int, completion: int) -> None:
    get = headers.get  # type: ignore[attr-defined]
    call_id = get(CALL_ID_HEADER)
    assert call_id, "no call id header"
    ev = billed(lago, call_id, customer)
    assert ev.properties["input_tokens"] == prompt
    assert ev.properties["output_tokens"] == completion
    cost = get(COST_HEADER)
    if cost is not None:  # streams carry no cost header: it is not known yet
        assert Decimal(ev.properties["response_cost"]) == Decimal(cost)
        assert Decimal(cost) > 0


@pytest.mark.parametrize("root", ["/v1", ""])
def test_sync_chat_billed_once(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                               root: str) -> None:
    upstream.prompt_tokens, upstream.completion_tokens = 21, 5
    client = openai.OpenAI(base_url=proxy.base_url + root, api_key=MASTER_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, user="cust-sync")  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content == upstream.reply_text
    assert completion.usage is not None and completion.usage.prompt_tokens == 21
    _check_billed(lago, raw.headers, "cust-sync", 21, 5)
    assert upstream.requests[-1].get("user") == "cust-sync"


def test_sync_stream_billed_once(proxy: RunningProxy, lago: FakeLago,
                                 upstream: FakeOpenAI) -> None:
    upstream.prompt_tokens, upstream.completion_tokens, upstream.stream_chunks = 30, 9, 5
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, user="cust-stream",  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    stream = raw.parse()
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == upstream.reply_text
    assert usage is not None and usage.prompt_tokens == 30 and usage.completion_tokens == 9
    _check_billed(lago, raw.headers, "cust-stream", 30, 9)


async def test_async_chat_and_stream_billed_once(proxy: RunningProxy, lago: FakeLago,
                                                 upstream: FakeOpenAI) -> None:
    upstream.prompt_tokens, upstream.completion_tokens = 40, 11
    async with openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                                  max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user="cust-async")  # type: ignore[arg-type]
        assert (raw.parse()).choices[0].message.content == upstream.reply_text
        _check_billed(lago, raw.headers, "cust-async", 40, 11)

        # No include_usage: the client sees no usage chunk, the bill still has the
        # provider's numbers (the gateway asks upstream for them).
        sraw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user="cust-async2",  # type: ignore[arg-type]
            stream=True)
        chunks = [c async for c in sraw.parse()]
        assert all(c.usage is None for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
            == upstream.reply_text
        call_id = sraw.headers[CALL_ID_HEADER]
        ev = billed(lago, call_id, "cust-async2")
        assert ev.properties["input_tokens"] == 40
        assert ev.properties["output_tokens"] == 11
        assert ev.properties["usage_source"] == "provider"


def test_anthropic_upstream_through_openai_sdk(proxy: RunningProxy, lago: FakeLago,
                                               claude: FakeAnthropic) -> None:
    claude.input_tokens, claude.output_tokens = 17, 6
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-claude")  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == claude.reply_text
    _check_billed(lago, raw.headers, "cust-claude", 17, 6)

    sraw = client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, user="cust-claude",  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    chunks = list(sraw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == claude.reply_text
    _check_billed(lago, sraw.headers, "cust-claude", 17, 6)


def test_litellm_docs_curl(proxy: RunningProxy, lago: FakeLago) -> None:
    """The request of LiteLLM's Lago page: plain POST /chat/completions with ``user``."""
    reply = http("POST", proxy.base_url + "/chat/completions", {
        "model": "gpt-4o-mini", "user": "your-customer-id",
        "messages": [{"role": "user", "content": "what llm are you"}]})
    assert reply.status == 200, reply.text
    assert reply.json()["object"] == "chat.completion"
    ev = billed(lago, reply.headers[CALL_ID_HEADER], "your-customer-id")
    assert Decimal(ev.properties["response_cost"]) == Decimal(reply.headers[COST_HEADER])


def test_nothing_else_reaches_lago(proxy: RunningProxy, lago: FakeLago) -> None:
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    ids = []
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user=f"c{i}")  # type: ignore[arg-type]
        ids.append(raw.headers[CALL_ID_HEADER])
    wait_for(lambda: all(i in lago.events for i in ids))
    assert len(set(ids)) == 3
    assert sorted(lago.events) == sorted(ids)
    assert len(lago.stored) == 3
