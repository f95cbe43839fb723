"""The LiteLLM-named SDK helpers and calls beyond chat: drop_params, completion_cost,
stream_chunk_builder, responses streams, text_completion translated, rerank."""

from __future__ import annotations

from decimal import Decimal

import pytest

import tallygate
from tallygate.errors import BadRequestError
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.rerank_server import FakeRerank
from tests.fakes.server_base import run_in_thread
from tests.sdk_fixtures import SdkPaths, anthropic_kwargs, openai_kwargs

M = Decimal(1_000_000)


def test_unsupported_params_refused_or_dropped(sdk: SdkPaths,
                                               anthropic_fake: FakeAnthropic,
                                               openai_fake: FakeOpenAI) -> None:
    model = "anthropic/claude-3-5-haiku-20241022"
    with pytest.raises(BadRequestError, match="drop_params") as refused:
        tallygate.completion(model=model, seed=1, logit_bias={"1": 2},
                             **anthropic_kwargs(anthropic_fake))
    assert refused.value.status_code == 400 and refused.value.code == "unsupported_params"
    assert anthropic_fake.requests == []  # refused before anything was sent
    r = tallygate.completion(model=model, seed=1, drop_params=True,
                             **anthropic_kwargs(anthropic_fake))
    assert r.dropped_params == ("seed",)
    tallygate.drop_params = True  # the module switch, as litellm.drop_params
    r = tallygate.completion(model=model, presence_penalty=0.5,
                             **anthropic_kwargs(anthropic_fake))
    assert r.dropped_params == ("presence_penalty",)
    # An OpenAI reasoning model: max_tokens sent as max_completion_tokens, sampling
    # controls dropped, its one temperature (1) kept.
    r = tallygate.completion(model="o3-mini", max_tokens=20, top_p=0.5, temperature=1,
                             **openai_kwargs(openai_fake))
    sent = openai_fake.requests[-1]
    assert sent["max_completion_tokens"] == 20 and "max_tokens" not in sent
    assert "top_p" not in sent and sent["temperature"] == 1
    assert r.dropped_params == ("top_p",)


def test_completion_cost_forms(sdk: SdkPaths, openai_fake: FakeOpenAI) -> None:
    r = tallygate.completion(model="gpt-4o-mini", **openai_kwargs(openai_fake))
    billed = tallygate.completion_cost(completion_response=r)
    assert billed == r.usage_event.cost == (12 * Decimal("0.15") + 7 * Decimal("0.6")) / M
    # A plain dict answer, priced from its usage; a model and usage; custom prices.
    assert tallygate.completion_cost(completion_response=r.model_dump()) == billed
    assert tallygate.completion_cost(model="gpt-4o-mini", usage={
        "prompt_tokens": 1000, "completion_tokens": 0}) == Decimal("0.00015")
    assert tallygate.completion_cost(
        model="my-model", prompt="abcdefgh", completion="abcd",
        custom_cost_per_token={"input_cost_per_token": "0.001",
                               "output_cost_per_token": "0.002"}) == Decimal("0.004")
    assert tallygate.cost_per_token("gpt-4o-mini", 1000, 1000) == (Decimal("0.00015"),
                                                                   Decimal("0.0006"))
    with pytest.raises(BadRequestError, match="no price known"):
        tallygate.completion_cost(model="openai/not-a-real-model", prompt="hi",
                                  completion="there")


def test_stream_chunk_builder_joins_tool_calls() -> None:
    chunks = [
        {"id": "c1", "created": 1, "model": "m", "choices": [
            {"index": 0, "delta": {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"ci'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3,
                                              "total_tokens": 8}},
    ]
    built = tallygate.stream_chunk_builder(chunks)
    assert built is not None
    call = built.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1", "get_weather", '{"city": "Paris"}')
    assert built.choices[0].finish_reason == "tool_calls"
    assert built.usage.total_tokens == 8


@pytest.mark.parametrize("target", ["openai", "anthropic"])
def test_responses_stream_billed_once(sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
                                      anthropic_fake: FakeAnthropic, target: str) -> None:
    tallygate.success_callback = ["lago"]
    if target == "openai":
        kwargs = {"model": "gpt-4o-mini", "api_base": openai_fake.base_url,
                  "api_key": "sk-test"}
        reply = openai_fake.reply_text
    else:
        kwargs = {"model": "anthropic/claude-3-5-haiku-20241022",
                  "api_base": anthropic_fake.base_url, "api_key": "sk-ant-test"}
        reply = anthropic_fake.reply_text
    stream = tallygate.responses(input="Say hello.", stream=True, user="streamer", **kwargs)
    events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == reply
    assert events[-1].type == "response.completed"
    tallygate.flush()
    event = stream.usage_event
    assert event is not None and lago.count(event.call_id) == 1
    assert len(lago.events) == 1
    assert lago.events[event.call_id].properties["usage_source"] == "provider"


def test_text_completion_translated_for_anthropic(sdk: SdkPaths,
                                                  anthropic_fake: FakeAnthropic) -> None:
    r = tallygate.text_completion(prompt="Say hello.", model="anthropic/claude-3-5-haiku-"
                                  "20241022", echo=True, api_base=anthropic_fake.base_url,
                                  api_key="sk-ant-test")
    assert r.object == "text_completion"
    assert r.choices[0].text == "Say hello." + anthropic_fake.reply_text
    assert r.usage_event.kind == "completion"
    with pytest.raises(BadRequestError, match="suffix"):
        tallygate.text_completion(prompt="x", model="anthropic/claude-3-5-haiku-20241022",
                                  suffix="y", api_base=anthropic_fake.base_url,
                                  api_key="sk-ant-test")


def test_rerank_billed_per_search_unit_or_token(sdk: SdkPaths) -> None:
    docs = ["the sky is blue", "grass is green"]
    with run_in_thread(FakeRerank("cohere")) as cohere_fake, \
            run_in_thread(FakeRerank("voyage")) as voyage:
        r = tallygate.rerank(model="openai/rerank-v3.5", query="blue sky", documents=docs,
                             top_n=1, api_base=cohere_fake.url + "/v2", api_key="k",
                             input_cost_per_query="0.002")
        assert [x.index for x in r.results] == [0]
        assert r.usage_event.usage.request_count("rerank_searches") == 1
        assert tallygate.completion_cost(completion_response=r) == Decimal("0.002")
        assert cohere_fake.requests[-1]["model"] == "rerank-v3.5"
        r = tallygate.rerank(model="openai/rerank-2", query="blue sky", documents=docs,
                             api_base=voyage.url + "/v1", api_key="k",
                             input_cost_per_token="0.00000005")
        assert r.data[0].index == 0
        assert r.usage_event.usage.input_tokens == 20
        assert r.usage_event.cost == 20 * Decimal("0.00000005")


def test_image_edit_and_unknown_image_price(sdk: SdkPaths, openai_fake: FakeOpenAI) -> None:
    from tests.fakes.openai_media import b64_png

    r = tallygate.image_edit(image=("in.png", b64_png(), "image/png"), prompt="add a boat",
                             model="gpt-image-1", api_base=openai_fake.base_url,
                             api_key="sk-test")
    assert r.usage_event.usage.image_input_tokens == 323
    # A size OpenAI lists no price for: flagged, never priced at another size's rate.
    r = tallygate.image_generation(prompt="x", model="dall-e-3", size="256x256",
                                   api_base=openai_fake.base_url, api_key="sk-test")
    assert r.usage_event.cost is None and "unknown_price" in r.usage_event.flags
    assert r.usage_event.unpriced == ("images",)
