"""Each provider's own quirks, over real HTTP: what is sent (Mistral's strict schema,
Azure's older api-versions), where usage hides (Groq's ``x_groq``), what is passed to
the client (DeepSeek's ``reasoning_content``, keep-alive comments), and Perplexity's
and xAI's per-request charges, billed exactly or flagged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tallygate.providers.azure_ai import AzureAIProvider
from tallygate.providers.base import Deployment
from tallygate.providers.fireworks_ai import FireworksProvider
from tests.clouds_support import (  # noqa: F401  (fixtures)
    BY_FLAVOR,
    MTOK,
    Clouds,
    client_fixture,
    clouds_fixture,
    expected_cost,
    reset_fakes_fixture,
)
from tests.proxy_harness import MASTER_KEY, billed, http

MESSAGES = [{"role": "user", "content": "Hi"}]


def _call(client: openai.OpenAI, group: str, customer: str, **kwargs: Any) -> tuple[Any, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=group, messages=MESSAGES, user=customer, **kwargs)
    return raw.parse(), raw.headers["x-tallygate-call-id"]


def _stream(client: openai.OpenAI, group: str, customer: str,
            **kwargs: Any) -> tuple[list[Any], str]:
    with client.chat.completions.with_streaming_response.create(
            model=group, messages=MESSAGES, user=customer, stream=True, **kwargs) as resp:
        return list(resp.parse()), resp.headers["x-tallygate-call-id"]


def test_mistral_gets_only_fields_it_knows(clouds: Clouds, client: openai.OpenAI) -> None:
    fake = clouds.fakes["mistral"]
    _call(client, "mistral-chat", "q-mistral", max_completion_tokens=30, seed=7)
    sent = fake.requests[-1]
    assert "user" not in sent and sent["max_tokens"] == 30 and sent["random_seed"] == 7
    chunks, call_id = _stream(client, "mistral-chat", "q-mistral",
                              stream_options={"include_usage": True})
    assert "stream_options" not in fake.requests[-1]
    assert chunks[-1].usage is not None  # its usage rides the last chunk, as asked
    ev = billed(clouds.lago, call_id, "q-mistral")
    assert ev.properties["usage_source"] == "provider"
    assert ev.properties["input_tokens"] == 1000


def test_mistral_embeddings_billed_on_input(clouds: Clouds, client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="mistral-embed", input="a b c",
                                                     user="q-embed")
    assert len(raw.parse().data) == 1
    assert "user" not in clouds.fakes["mistral"].requests[-1]
    ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "q-embed")
    assert ev.properties["kind"] == "embedding"
    assert Decimal(ev.properties["response_cost"]) == Decimal(1000) * Decimal("0.1") / MTOK


def test_groq_usage_only_in_x_groq_is_read(clouds: Clouds, client: openai.OpenAI) -> None:
    clouds.fakes["groq"].x_groq_only = True
    chunks, call_id = _stream(client, "groq-chat", "q-groq")
    assert all(c.usage is None for c in chunks)
    ev = billed(clouds.lago, call_id, "q-groq")
    assert ev.properties["usage_source"] == "provider"
    assert (ev.properties["input_tokens"], ev.properties["output_tokens"]) == (1000, 50)


def test_deepseek_reasoning_content_and_keep_alives(clouds: Clouds,
                                                    client: openai.OpenAI) -> None:
    fake = clouds.fakes["deepseek"]
    fake.reasoning_text, fake.keep_alive = "First, think.", True
    fake.completion_tokens, fake.reasoning_tokens = 80, 30
    reply, call_id = _call(client, "deepseek-chat", "q-ds")
    assert (reply.choices[0].message.model_extra or {})["reasoning_content"] == "First, think."
    ev = billed(clouds.lago, call_id, "q-ds")
    assert (ev.properties["output_tokens"], ev.properties["reasoning_tokens"]) == (80, 30)
    chunks, call_id = _stream(client, "deepseek-chat", "q-ds")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        fake.reply_text
    assert billed(clouds.lago, call_id, "q-ds").properties["usage_source"] == "provider"


def test_azure_api_version_without_stream_options(clouds: Clouds,
                                                  client: openai.OpenAI) -> None:
    fake = clouds.fakes["azure"]
    _, call_id = _stream(client, "azure-old", "q-az")
    assert "stream_options" not in fake.requests[-1]  # 2024-02-01 refuses the field
    assert fake.received[-1].query == "api-version=2024-02-01"
    ev = billed(clouds.lago, call_id, "q-az")
    assert ev.properties["usage_source"] == "estimated"  # no usage chunk: estimated, flagged


def test_perplexity_deep_research_buckets_each_at_its_rate(clouds: Clouds,
                                                           client: openai.OpenAI) -> None:
    fake = clouds.fakes["perplexity"]
    fake.prompt_tokens, fake.completion_tokens, fake.reasoning_tokens = 20, 5_000, 4_000
    fake.citation_tokens, fake.num_search_queries = 9_000, 12
    fake.request_cost = None  # deep research pays per search, not per request
    fake.cost = "0.0853"
    _, call_id = _call(client, "perplexity-deep", "q-deep")
    p = billed(clouds.lago, call_id, "q-deep").properties
    assert (p["output_tokens"], p["reasoning_tokens"], p["citation_tokens"],
            p["web_searches"]) == (5_000, 4_000, 9_000, 12)
    assert p["input_tokens"] == 20 + 9_000  # citations are input the model read
    assert "search_context_size_low" not in p
    by_hand = (Decimal(20) * 2 + Decimal(1_000) * 8 + Decimal(4_000) * 3
               + Decimal(9_000) * 2) / MTOK + Decimal(12) * Decimal(5) / 1000
    assert Decimal(p["response_cost"]) == by_hand
    assert Decimal(p["provider_reported_cost"]) == Decimal("0.0853")


def test_perplexity_fee_by_search_context_size_with_litellms_table(
        clouds: Clouds, client: openai.OpenAI) -> None:
    fake = clouds.fakes["perplexity"]
    fake.search_context_size = "medium"
    _, call_id = _call(client, "perplexity-exact", "q-fee")
    p = billed(clouds.lago, call_id, "q-fee").properties
    assert p["search_context_size_medium"] == 1
    # genai-prices' token prices, the configured $0.008 fee instead of its $0.012.
    assert Decimal(p["response_cost"]) == (Decimal(1000) + Decimal(50)) / MTOK + \
        Decimal("0.008")
    _, call_id = _call(client, "perplexity-chat", "q-fee")
    p = billed(clouds.lago, call_id, "q-fee").properties
    assert Decimal(p["response_cost"]) == (Decimal(1050)) / MTOK + Decimal("0.012")


def test_perplexity_fee_is_billed_when_the_stream_is_cut(clouds: Clouds,
                                                         client: openai.OpenAI) -> None:
    fake = clouds.fakes["perplexity"]
    fake.drop_connection = "mid"  # the provider breaks off before its usage
    fake.reply_text, fake.stream_chunks = "word " * 20, 20
    with client.chat.completions.with_streaming_response.create(
            model="perplexity-chat", messages=MESSAGES, user="q-cut", stream=True,
            extra_body={"web_search_options": {"search_context_size": "high"}}) as resp:
        call_id = resp.headers["x-tallygate-call-id"]
        list(resp.iter_lines())
    p = billed(clouds.lago, call_id, "q-cut").properties
    assert p["usage_source"] == "estimated"
    assert p["search_context_size_high"] == 1  # the search was made: its fee is billed


def test_xai_live_search_sources_are_counted_and_flagged_without_a_price(
        clouds: Clouds, client: openai.OpenAI) -> None:
    clouds.fakes["xai"].sources_used = 3
    _, call_id = _call(client, "xai-chat", "q-xai")
    p = billed(clouds.lago, call_id, "q-xai").properties
    assert p["web_searches"] == 3
    # genai-prices has no price for xAI's sources: unknown and named, never free.
    assert p["unknown_price"] == "true" and p["unpriced_buckets"] == "web_searches"


def test_mistral_flat_error_detail_reaches_the_client(clouds: Clouds) -> None:
    reply = http("POST", clouds.proxy.base_url + "/v1/chat/completions",
                 {"model": "mistral-chat", "messages": MESSAGES, "logprobs": True})
    assert reply.status == 422
    assert "logprobs" in reply.json()["error"]["message"]


def test_fireworks_and_azure_ai_addressing() -> None:
    fw = FireworksProvider()
    assert fw.wire_model(Deployment("fireworks_ai", "kimi-k3-fast")) == \
        "accounts/fireworks/routers/kimi-k3-fast"
    assert fw.wire_model(Deployment("fireworks_ai", "accounts/me/models/ft-1")) == \
        "accounts/me/models/ft-1"
    ai = AzureAIProvider()
    foundry = Deployment("azure_ai", "Phi-4", api_base="https://res.services.ai.azure.com",
                         api_key="k1", params={"api_version": "2024-05-01-preview"})
    req = ai.chat_request(foundry, {"messages": MESSAGES}, stream=False)
    assert req.url == ("https://res.services.ai.azure.com/models/chat/completions"
                       "?api-version=2024-05-01-preview")
    assert req.headers["api-key"] == "k1" and "Authorization" not in req.headers
    serverless = Deployment("azure_ai", "Mistral-large",
                            api_base="https://m.eastus2.models.ai.azure.com", api_key="k2")
    req = ai.chat_request(serverless, {"messages": MESSAGES}, stream=False)
    assert req.url == "https://m.eastus2.models.ai.azure.com/chat/completions"
    assert req.headers["Authorization"] == "Bearer k2"


def test_every_golden_price_is_the_library_price_today() -> None:
    # The hand-written rates of the golden tests are genai-prices' own (a data update
    # shows up here first, naming the model).
    from datetime import UTC, datetime

    from tallygate.pricing import PriceBook
    from tallygate.usage import Usage

    book = PriceBook()
    usage = Usage(input_tokens=400_000, output_tokens=300_000)
    props = {"uncached_input_tokens": 400_000, "cached_input_tokens": 0,
             "output_tokens": 300_000}
    for cloud in BY_FLAVOR.values():
        if cloud.flavor in ("nvidia_nim", "hosted_vllm", "lm_studio", "azure"):
            continue  # own prices / priced by the answer's model (tested apart)
        price = book.price(cloud.flavor, cloud.model if cloud.flavor != "fireworks_ai"
                           else f"accounts/fireworks/models/{cloud.model}", usage)
        expected = expected_cost(cloud, props, datetime.now(UTC))
        if cloud.flavor == "perplexity":
            assert expected is not None
            expected += Decimal("0.012")  # the library's per-request fee, always charged
        assert price.cost == expected, cloud


def test_deepseek_reasoning_is_a_thinking_block_through_the_messages_door(
        clouds: Clouds) -> None:
    import anthropic

    fake = clouds.fakes["deepseek"]
    fake.reasoning_text = "Weigh the options."
    with anthropic.Anthropic(base_url=clouds.proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as door:
        message = door.messages.create(model="deepseek-chat", max_tokens=64,
                                       messages=MESSAGES)
        assert [b.type for b in message.content] == ["thinking", "text"]
        assert message.content[0].thinking == "Weigh the options."  # type: ignore[union-attr]
        with door.messages.stream(model="deepseek-chat", max_tokens=64,
                                  messages=MESSAGES) as stream:
            final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Weigh the options."  # type: ignore[union-attr]
    assert final.content[1].text == fake.reply_text  # type: ignore[union-attr]


def test_sdk_stream_hands_reasoning_content_over(clouds: Clouds, sdk: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import tallygate

    fake = clouds.fakes["deepseek"]
    fake.reasoning_text = "Step by step."
    monkeypatch.setenv("DEEPSEEK_API_KEY", fake.require_api_key or "")
    chunks = list(tallygate.completion(model="deepseek/deepseek-chat", messages=MESSAGES,
                                       api_base=fake.base_url, stream=True))
    thought = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                      for c in chunks if c.choices)
    assert thought == "Step by step."
