"""Golden billing of the Messages door: one conversation, per provider kind (Anthropic
passed through, OpenAI and an OpenAI reasoning model translated, the mock) and per
stream / non-stream, the exact billed buckets in Lago, the usage the client reads, and
the Decimal cost worked out here by hand from the published prices."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    billed,
    config_dict,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

M = Decimal(1_000_000)
MOCK_REPLY = "Golden mock answer."
CONVERSATION: dict[str, Any] = {
    "max_tokens": 1000,
    "system": "You are terse.",
    "messages": [{"role": "user", "content": "Summarise the shared document."},
                 {"role": "assistant", "content": "It is about caching."},
                 {"role": "user", "content": "And in one word?"}],
}


@dataclass(frozen=True)
class Golden:
    """Billed buckets: uncached input, cache read, 5-minute and 1-hour cache writes,
    output (of which reasoning), web searches; and the cost."""

    uncached: int
    cache_read: int
    write_5m: int
    write_1h: int
    output: int
    reasoning: int
    searches: int
    cost: Decimal


GOLDEN = {
    # claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 5-minute write, $6 1-hour write,
    # $15 out per million; $10 per thousand searches.
    "anthropic": Golden(1200, 800, 100, 50, 300, 0, 1,
                        (1200 * Decimal(3) + 800 * Decimal("0.30") + 100 * Decimal("3.75")
                         + 50 * Decimal(6) + 300 * Decimal(15)) / M + Decimal("0.01")),
    # gpt-4o-mini: $0.15 in, $0.075 cached, $0.60 out per million; 800 of 1000 cached.
    "openai": Golden(200, 800, 0, 0, 50, 0, 0,
                     (200 * Decimal("0.15") + 800 * Decimal("0.075") + 50 * Decimal("0.60"))
                     / M),
    # o3-mini: $1.10 in, $4.40 out per million; 300 of 400 output tokens reasoning.
    "reasoning": Golden(500, 0, 0, 0, 400, 300, 0,
                        (500 * Decimal("1.10") + 400 * Decimal("4.40")) / M),
    # The mock reports its own estimate: 3 + 4 per message + text / 4 (rounded up) in,
    # the reply / 4 out; priced by the deployment's override ($1 / $2 per million).
    "mock": Golden(3 + 4 * 4 + 4 + 8 + 5 + 4, 0, 0, 0, 5, 0, 0,
                   ((3 + 4 * 4 + 4 + 8 + 5 + 4) * Decimal(1) + 5 * Decimal(2)) / M),
}


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([
        anthropic_entry("anthropic", claude.base_url, model="claude-sonnet-4-5"),
        openai_entry("openai", upstream.base_url, model="gpt-4o-mini"),
        openai_entry("reasoning", upstream.base_url, model="o3-mini"),
        {"model_name": "mock", "litellm_params": {
            "model": "mock/golden", "mock_response": MOCK_REPLY,
            "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}},
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def _script(kind: str, claude: FakeAnthropic, upstream: FakeOpenAI) -> None:
    claude.input_tokens, claude.cache_read_tokens = 1200, 800
    claude.cache_write_tokens, claude.cache_write_1h_tokens = 100, 50
    claude.output_tokens, claude.web_searches = 300, 1
    if kind == "openai":
        upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 1000, 800, 50
    else:
        upstream.prompt_tokens, upstream.completion_tokens = 500, 400
        upstream.reasoning_tokens = 300


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", list(GOLDEN))
def test_golden_billed_usage(proxy: RunningProxy, lago: FakeLago, claude: FakeAnthropic,
                             upstream: FakeOpenAI, kind: str, stream: bool) -> None:
    _script(kind, claude, upstream)
    want = GOLDEN[kind]
    customer = f"golden-{kind}-{stream}"
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as client:
        request: dict[str, Any] = {**CONVERSATION, "model": kind,
                                   "metadata": {"user_id": customer}}
        if stream:
            with client.messages.stream(**request) as s:
                message = s.get_final_message()
                call_id = s.response.headers[CALL_ID_HEADER]
        else:
            raw = client.messages.with_raw_response.create(**request)
            message, call_id = raw.parse(), raw.headers[CALL_ID_HEADER]
    p = billed(lago, call_id, customer).properties
    assert (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"], p.get("cache_creation_1h_input_tokens", 0),
            p["output_tokens"], p["reasoning_tokens"], p.get("web_searches", 0)) == (
        want.uncached, want.cache_read, want.write_5m + want.write_1h, want.write_1h,
        want.output, want.reasoning, want.searches)
    assert p["input_tokens"] == want.uncached + want.cache_read + want.write_5m + want.write_1h
    assert p["usage_source"] == "provider" and p["unknown_price"] == "false"
    assert Decimal(p["response_cost"]) == want.cost
    # What the client reads is what was billed.
    u = message.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens,
            u.output_tokens) == (want.uncached, want.cache_read,
                                 want.write_5m + want.write_1h, want.output)
    assert u.cache_creation is not None
    assert (u.cache_creation.ephemeral_5m_input_tokens,
            u.cache_creation.ephemeral_1h_input_tokens) == (want.write_5m, want.write_1h)
