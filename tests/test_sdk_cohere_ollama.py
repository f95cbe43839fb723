"""The SDK reaches Cohere and Ollama as LiteLLM users call them: ``completion`` and
``embedding`` with ``cohere/...``, ``ollama_chat/...`` and ``ollama/...`` models, the
provider's own litellm_params as keyword arguments, billed once into Lago."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

import tallygate
from tests.fakes.cohere_server import FakeCohere
from tests.fakes.lago_server import FakeLago
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.rerank_server import FakeRerank
from tests.fakes.server_base import run_in_thread
from tests.sdk_fixtures import MESSAGES, SdkPaths

pytestmark = pytest.mark.timeout(30)

COMMAND_A_INPUT = Decimal("2.50") / 1_000_000
COMMAND_A_OUTPUT = Decimal("10.00") / 1_000_000
OLLAMA_PRICES = {"input_cost_per_token": "0.0000001", "output_cost_per_token": "0.0000004"}


@pytest.fixture
def cohere_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCohere]:
    with run_in_thread(FakeCohere()) as fake:
        fake.require_api_key = "co-env-key"
        monkeypatch.setenv("COHERE_API_KEY", "co-env-key")  # LiteLLM's variable
        yield fake


@pytest.fixture
def ollama_fake() -> Iterator[FakeOllama]:
    with run_in_thread(FakeOllama()) as fake:
        yield fake


def test_cohere_completion_stream_and_embedding(sdk: SdkPaths, lago: FakeLago,
                                                cohere_fake: FakeCohere) -> None:
    tallygate.callbacks = ["lago"]
    cohere_fake.input_tokens, cohere_fake.output_tokens = 120, 30
    r = tallygate.completion(model="cohere/command-a-03-2025", messages=MESSAGES,
                             api_base=cohere_fake.url, user="c1", top_k=3)
    assert r.choices[0].message.content == cohere_fake.reply_text
    assert r.cost == 120 * COMMAND_A_INPUT + 30 * COMMAND_A_OUTPUT == Decimal("0.0006")
    assert cohere_fake.requests[-1]["k"] == 3
    with tallygate.completion(model="cohere_chat/command-a-03-2025", messages=MESSAGES,
                              api_base=cohere_fake.url, user="c1", stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == cohere_fake.reply_text
    assert stream.usage_event is not None and stream.usage_event.cost == Decimal("0.0006")
    e = tallygate.embedding(model="cohere/embed-v4.0", input=["a"], api_base=cohere_fake.url,
                            user="c1", input_type="search_query")
    assert cohere_fake.requests[-1]["input_type"] == "search_query"
    assert e.cost == 6 * Decimal("0.12") / 1_000_000
    tallygate.flush()
    for call_id, kind in ((r.call_id, "chat"), (stream.call_id, "chat"), (e.call_id, "embedding")):
        ev = lago.events[call_id]
        assert ev.external_subscription_id == "c1" and ev.properties["kind"] == kind
        assert ev.properties["provider"] in ("cohere", "cohere_chat")
    assert lago.events[r.call_id].properties["response_cost"] == "0.0006"
    assert lago.schema_violations == []


def test_ollama_completion_with_options_and_prices(sdk: SdkPaths, lago: FakeLago,
                                                   ollama_fake: FakeOllama) -> None:
    tallygate.callbacks = ["lago"]
    ollama_fake.prompt_eval_count, ollama_fake.eval_count = 40, 15
    r = tallygate.completion(model="ollama_chat/llama3.2", messages=MESSAGES,
                             api_base=ollama_fake.url, user="lab", num_ctx=4096,
                             keep_alive="5m", **OLLAMA_PRICES)
    assert r.cost == Decimal("0.00001")
    sent = ollama_fake.requests[-1]
    assert sent["options"] == {"num_ctx": 4096} and sent["keep_alive"] == "5m"
    g = tallygate.completion(model="ollama/llama3.2", messages=MESSAGES,
                             api_base=ollama_fake.url, user="lab")
    assert g.cost is None and "unknown_price" in g.usage_event.flags
    assert ollama_fake.received[-1].path == "/api/generate"
    e = tallygate.embedding(model="ollama/all-minilm", input="hi", api_base=ollama_fake.url,
                            user="lab", input_cost_per_token="0.00000002")
    assert e.cost == 8 * Decimal("0.00000002")
    tallygate.flush()
    assert lago.events[r.call_id].properties["response_cost"] == "0.00001"
    unpriced = lago.events[g.call_id].properties
    assert unpriced["unknown_price"] == "true" and "response_cost" not in unpriced
    assert lago.events[e.call_id].properties["input_tokens"] == 8
    assert lago.schema_violations == []


def test_cohere_rerank_goes_to_v2_rerank(sdk: SdkPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COHERE_API_KEY", "co-env-key")
    with run_in_thread(FakeRerank("cohere")) as fake:
        fake.require_api_key = "co-env-key"
        r = tallygate.rerank(model="cohere/rerank-v3.5", query="blue sky",
                             documents=["the sky is blue", "grass is green"], top_n=1,
                             api_base=fake.url, input_cost_per_query="0.002")
    assert [x.index for x in r.results] == [0]
    assert fake.received[-1].path == "/v2/rerank"
    assert fake.requests[-1]["model"] == "rerank-v3.5"
    assert r.usage_event.provider == "cohere"
    assert r.usage_event.usage.request_count("rerank_searches") == 1
    assert r.usage_event.cost == Decimal("0.002")
