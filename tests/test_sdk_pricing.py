"""What the SDK charges: Decimal costs from published prices, computed here by hand,
cache and reasoning tokens in disjoint buckets, per-call price overrides, unknown prices
flagged (never a silent $0), embeddings billed on input only, the mock provider."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

import tallygate
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.sdk_fixtures import (
    MESSAGES,
    SdkPaths,
    anthropic_kwargs,
    openai_kwargs,
    tallygate_warnings,
)

pytestmark = pytest.mark.timeout(30)  # a hang (deadlock) fails, not blocks

M = Decimal(10**6)
# Published prices in USD per million tokens (checked against genai-prices' data).
GPT_4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}
O3_MINI = {"input": Decimal("1.10"), "cached": Decimal("0.55"), "output": Decimal("4.40")}
SONNET_4_5 = {"input": Decimal(3), "read": Decimal("0.30"), "write": Decimal("3.75"),
              "output": Decimal(15)}
EMBEDDING_3_SMALL = Decimal("0.02")


def test_openai_cached_and_reasoning_tokens(sdk: SdkPaths, lago: FakeLago,
                                            openai_fake: FakeOpenAI) -> None:
    openai_fake.prompt_tokens, openai_fake.cached_tokens = 5000, 4096
    openai_fake.completion_tokens, openai_fake.reasoning_tokens = 900, 640
    tallygate.success_callback = ["lago"]
    r = tallygate.completion(model="o3-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    u = r.usage_event.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (904, 4096, 0)
    assert (u.output_tokens, u.reasoning_tokens) == (900, 640)
    expected = (904 * O3_MINI["input"] + 4096 * O3_MINI["cached"]
                + 900 * O3_MINI["output"]) / M
    assert r.cost == expected
    tallygate.flush()
    props = lago.events[r.call_id].properties
    assert props["input_tokens"] == 5000 and props["cached_input_tokens"] == 4096
    assert props["uncached_input_tokens"] == 904
    assert props["output_tokens"] == 900 and props["reasoning_tokens"] == 640
    assert props["total_tokens"] == 5900
    assert Decimal(props["response_cost"]) == expected
    assert lago.schema_violations == []


def test_anthropic_cache_reads_writes_and_thinking(sdk: SdkPaths, lago: FakeLago,
                                                   anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.input_tokens, anthropic_fake.output_tokens = 200, 300
    anthropic_fake.cache_read_tokens, anthropic_fake.cache_write_tokens = 800, 100
    anthropic_fake.thinking_text, anthropic_fake.thinking_tokens = "Let me think.", 120
    tallygate.success_callback = ["lago"]
    r = tallygate.completion(model="anthropic/claude-sonnet-4-5", user="customer-42",
                             **anthropic_kwargs(anthropic_fake))
    assert r.choices[0].message.content == "Hello from the fake Claude."
    assert r.usage.prompt_tokens == 1100 and r.usage.completion_tokens == 300
    u = r.usage_event.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (200, 800, 100)
    assert (u.output_tokens, u.reasoning_tokens) == (300, 120)
    expected = (200 * SONNET_4_5["input"] + 800 * SONNET_4_5["read"]
                + 100 * SONNET_4_5["write"] + 300 * SONNET_4_5["output"]) / M
    assert expected == Decimal("0.005715")
    assert r.cost == expected
    # The upstream got the Anthropic request: the key in x-api-key, the user as metadata.
    sent = anthropic_fake.received[-1]
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.body is not None and sent.body["model"] == "claude-sonnet-4-5"
    assert sent.body["metadata"] == {"user_id": "customer-42"}
    tallygate.flush()
    props = lago.events[r.call_id].properties
    assert props["provider"] == "anthropic"
    assert (props["input_tokens"], props["uncached_input_tokens"], props["cached_input_tokens"],
            props["cache_creation_input_tokens"]) == (1100, 200, 800, 100)
    assert props["reasoning_tokens"] == 120
    assert Decimal(props["response_cost"]) == expected
    assert lago.schema_violations == []


def test_an_unknown_price_is_flagged_and_warned_once_per_model(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
        caplog: pytest.LogCaptureFixture) -> None:
    model = f"my-local-model-{uuid.uuid4().hex[:8]}"  # the warning is once per process
    tallygate.success_callback = ["lago"]
    calls = [tallygate.completion(model=f"openai/{model}", user="customer-42",
                                  **openai_kwargs(openai_fake)) for _ in range(3)]
    for r in calls:
        assert r.cost is None
        assert "unknown_price" in r.usage_event.flags
    assert len(tallygate_warnings(caplog, model)) == 1
    tallygate.flush()
    for r in calls:
        props = lago.events[r.call_id].properties
        assert props["unknown_price"] == "true"
        assert "response_cost" not in props  # never sent as $0
        assert "unknown_price" in props["flags"]
        assert props["input_tokens"] == 12
    assert lago.schema_violations == []


def test_per_call_price_overrides_are_used(sdk: SdkPaths, lago: FakeLago,
                                           openai_fake: FakeOpenAI) -> None:
    openai_fake.prompt_tokens, openai_fake.cached_tokens = 1000, 400
    openai_fake.completion_tokens = 50
    tallygate.success_callback = ["lago"]
    r = tallygate.completion(model="openai/my-finetune", user="customer-42",
                             input_cost_per_token=0.000002, output_cost_per_token="0.000008",
                             cache_read_input_token_cost=Decimal("0.0000005"),
                             **openai_kwargs(openai_fake))
    expected = (600 * Decimal("0.000002") + 400 * Decimal("0.0000005")
                + 50 * Decimal("0.000008"))
    assert r.cost == expected
    assert "unknown_price" not in r.usage_event.flags
    assert r.usage_event.price_source == "config"
    # The override is tallygate's business: it is not sent upstream.
    body = openai_fake.requests[-1]
    assert not any(k.endswith(("cost_per_token", "token_cost")) for k in body)
    # An override also wins over the library's price of a known model.
    known = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                                 input_cost_per_token=0, output_cost_per_token=0.000001,
                                 cache_read_input_token_cost=0,
                                 **openai_kwargs(openai_fake))
    assert known.cost == 50 * Decimal("0.000001")
    tallygate.flush()
    assert Decimal(lago.events[r.call_id].properties["response_cost"]) == expected


def test_embeddings_are_billed_on_input_tokens_only(sdk: SdkPaths, lago: FakeLago,
                                                    openai_fake: FakeOpenAI) -> None:
    openai_fake.prompt_tokens = 40
    tallygate.success_callback = ["lago"]
    r = tallygate.embedding(model="text-embedding-3-small", input=["a", "b"],
                            user="customer-42", api_base=openai_fake.base_url,
                            api_key="sk-test")
    assert len(r.data) == 2 and len(r.data[0].embedding) == openai_fake.embedding_dim
    assert r.model_dump()["object"] == "list"
    ev = r.usage_event
    assert ev.kind == "embedding"
    assert (ev.usage.input_tokens, ev.usage.output_tokens) == (40, 0)
    assert r.cost == 40 * EMBEDDING_3_SMALL / M
    assert openai_fake.received[-1].path == "/v1/embeddings"
    assert openai_fake.requests[-1]["input"] == ["a", "b"]
    tallygate.flush()
    props = lago.events[r.call_id].properties
    assert props["kind"] == "embedding"
    assert props["input_tokens"] == 40 and props["output_tokens"] == 0
    assert lago.schema_violations == []


async def test_async_embedding(sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
                               loop_session: None) -> None:
    tallygate.success_callback = ["lago"]
    r = await tallygate.aembedding(model="text-embedding-3-small", input="hello",
                                   user="customer-42", api_base=openai_fake.base_url,
                                   api_key="sk-test")
    assert r.usage_event.usage.output_tokens == 0
    tallygate.flush()
    assert lago.count(r.call_id) == 1


def test_the_mock_model_needs_no_network(sdk: SdkPaths, lago: FakeLago) -> None:
    tallygate.success_callback = ["lago"]
    r = tallygate.completion(model="mock/gpt-4o-mini", messages=MESSAGES,
                             user="customer-42", mock_response="Hi from the mock.")
    assert r.choices[0].message.content == "Hi from the mock."
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert r.usage_event.provider == "mock"
    stream = tallygate.completion(model="mock/any-name", messages=MESSAGES, stream=True,
                                  user="customer-42", mock_response="one two three")
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "one two three"
    assert stream.usage_event is not None
    tallygate.flush()
    assert lago.count(r.call_id) == 1 and lago.count(stream.call_id) == 1
    # A mock has no published price: flagged, not $0.
    assert r.cost is None and "unknown_price" in r.usage_event.flags
    assert lago.schema_violations == []
