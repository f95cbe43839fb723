"""The grown usage buckets: read from each provider's accounting, kept disjoint, carried
through the event (outbox rows round-trip) and sent to Lago under their own names."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from tallygate.config import parse_config
from tallygate.errors import ConfigError
from tallygate.event import UsageEvent
from tallygate.metering.rowcodec import decode_event, encode_event
from tallygate.sinks.lago import lago_event_body
from tallygate.usage import Usage, request_counts

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "lago" / \
    "DERIVED_EventInputObject.server_lenient.json"


def test_openai_audio_tokens_are_their_own_buckets_inside_prompt_and_completion() -> None:
    u = Usage.from_openai({
        "prompt_tokens": 1000, "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 400},
        "completion_tokens_details": {"audio_tokens": 200, "reasoning_tokens": 50}})
    assert u is not None
    assert (u.input_tokens, u.cache_read_tokens, u.audio_input_tokens) == (500, 100, 400)
    assert (u.output_tokens, u.audio_output_tokens, u.reasoning_tokens) == (100, 200, 50)
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (1000, 300, 1300)
    assert Usage.from_openai(u.to_openai()) == u  # our OpenAI rendering reads back the same


def test_anthropic_cache_writes_split_by_lifetime_and_web_searches_counted() -> None:
    u = Usage.from_anthropic({
        "input_tokens": 12, "cache_read_input_tokens": 3000,
        "cache_creation_input_tokens": 900, "output_tokens": 40,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 700},
        "server_tool_use": {"web_search_requests": 2}})
    assert u is not None
    assert (u.cache_write_tokens, u.cache_write_1h_tokens, u.cache_write_all_tokens) == \
        (200, 700, 900)
    assert u.requests == (("web_searches", 2),) and u.request_count("web_searches") == 2
    assert u.prompt_tokens == 12 + 3000 + 900
    # An answer without the split counts every write as a 5-minute one.
    old = Usage.from_anthropic({"input_tokens": 1, "cache_creation_input_tokens": 50,
                                "output_tokens": 2})  # (without output_tokens: no usage)
    assert old is not None and (old.cache_write_tokens, old.cache_write_1h_tokens) == (50, 0)


def test_usage_refuses_bad_request_items_and_sorts_them() -> None:
    with pytest.raises(ValueError):
        Usage(requests=(("web_searches", 0),))
    assert Usage(requests=(("b", 1), ("a", 2))).requests == (("a", 2), ("b", 1))
    assert request_counts({"web_searches": 0, "code_executions": 1}) == (("code_executions", 1),)


def _event(**usage: object) -> UsageEvent:
    return UsageEvent(call_id="tg-1", started_at_ms=1, finished_at_ms=2, model="m",
                      provider="anthropic", provider_model="claude", customer="cus",
                      usage=Usage(**usage),  # type: ignore[arg-type]
                      cost=Decimal("0.5"))


def test_new_buckets_round_trip_through_the_outbox_row_and_old_rows_still_read() -> None:
    event = _event(input_tokens=5, cache_write_tokens=2, cache_write_1h_tokens=3,
                   audio_input_tokens=4, output_tokens=6, audio_output_tokens=7,
                   requests=(("web_searches", 1),))
    assert decode_event(encode_event(event)) == event
    row = json.loads(encode_event(event))
    for name in ("cache_write_1h_tokens", "audio_input_tokens", "audio_output_tokens",
                 "requests"):
        del row["usage"][name]
    del row["unpriced"]
    old = decode_event(json.dumps(row).encode())
    assert old.usage.cache_write_1h_tokens == 0 and old.usage.requests == ()


def test_lago_event_sends_each_bucket_and_input_tokens_keeps_litellm_meaning() -> None:
    event = _event(input_tokens=5, cache_read_tokens=1, cache_write_tokens=2,
                   cache_write_1h_tokens=3, audio_input_tokens=4, output_tokens=6,
                   audio_output_tokens=7, requests=(("web_searches", 2),))
    body = lago_event_body(event, "llm_usage")
    p = body["properties"]
    assert p["input_tokens"] == 5 + 1 + 2 + 3 + 4  # all input, as LiteLLM counts it
    assert p["output_tokens"] == 6 + 7
    assert (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"], p["cache_creation_1h_input_tokens"],
            p["audio_input_tokens"], p["audio_output_tokens"], p["web_searches"]) == \
        (5, 1, 5, 3, 4, 7, 2)
    if SCHEMA.exists():
        jsonschema.validate(body, json.loads(SCHEMA.read_text()))
    plain = lago_event_body(_event(input_tokens=5, output_tokens=1), "llm_usage")["properties"]
    assert "audio_input_tokens" not in plain and "web_searches" not in plain


def test_unpriced_buckets_are_named_on_the_lago_event() -> None:
    event = UsageEvent(call_id="tg-2", started_at_ms=1, finished_at_ms=2, model="m",
                       provider="openai", provider_model="gpt-4o-mini", customer="cus",
                       usage=Usage(input_tokens=3, audio_input_tokens=9), cost=None,
                       unpriced=("audio_input_tokens",))
    p = lago_event_body(event, "llm_usage")["properties"]
    assert p["unknown_price"] == "true" and p["unpriced_buckets"] == "audio_input_tokens"
    assert "response_cost" not in p


def test_config_passes_model_info_and_refuses_provider_params_it_does_not_know(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_config({"model_list": [{
        "model_name": "m", "model_info": {"base_model": "azure/gpt-4o", "id": "dep-1"},
        "litellm_params": {"model": "openai/x", "api_version": "2024-10-21",
                           "cache_creation_input_token_cost_above_1hr": 0.000006}}]},
        environ={})
    (dep,) = settings.models["m"]
    assert dep.model_info["id"] == "dep-1" and dep.base_model == "gpt-4o"
    assert dep.price is not None
    assert dep.price.cache_creation_input_token_cost_above_1hr == Decimal("0.000006")
    # openai/ declares no api_version: warned about as an unknown key, not passed on.
    assert "model_list[0].litellm_params.api_version" in caplog.text
    assert dict(dep.params) == {}
    with pytest.raises(ConfigError, match=r"litellm_params: must be a mapping"):
        parse_config({"model_list": [{"model_name": "m", "litellm_params": "x"}]}, environ={})
