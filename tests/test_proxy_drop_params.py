"""LiteLLM's ``drop_params`` on the proxy: an OpenAI parameter the deployment's provider
has no field for is a 400 naming it and the provider, before any upstream call and with
no reservation left; with ``litellm_settings.drop_params: true`` or the request's
``"drop_params": true`` it is left out and named in ``x-tallygate-dropped-params``. The
translating doors drop and name such a parameter, as they do their own. ``openai/``
deployments are never checked (the provider gets every parameter)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google.genai import types

from tallygate.model_info import get_supported_openai_params
from tallygate.providers.registry import get_provider, provider_names
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    config_dict,
    gemini_client,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

DROPPED = "x-tallygate-dropped-params"
HI: list[Any] = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(name="gemini")
def gemini_fixture() -> Iterator[FakeGemini]:
    with run_in_thread(FakeGemini()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


def _models(gemini: FakeGemini, upstream: FakeOpenAI,
            claude: FakeAnthropic) -> list[dict[str, Any]]:
    return [
        {"model_name": "gemini", "litellm_params": {
            "model": "gemini/gemini-2.5-flash", "api_base": gemini.base_url,
            "api_key": UPSTREAM_KEY}},
        openai_entry("openai", upstream.base_url),
        anthropic_entry("claude", claude.base_url, model="claude-sonnet-4-5"),
    ]


def _proxy(tmp_path: Path, lago: FakeLago, models: list[dict[str, Any]],
           drop_params: bool | None) -> Any:
    cfg = config_dict(models, tmp_path)
    if drop_params is not None:
        cfg["litellm_settings"]["drop_params"] = drop_params
    return run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago)))


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, gemini: FakeGemini, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    with _proxy(tmp_path, lago, _models(gemini, upstream, claude), None) as proxy:
        yield proxy


@pytest.fixture(name="dropping")
def dropping_fixture(tmp_path: Path, lago: FakeLago, gemini: FakeGemini, upstream: FakeOpenAI,
                     claude: FakeAnthropic) -> Iterator[RunningProxy]:
    with _proxy(tmp_path, lago, _models(gemini, upstream, claude), True) as proxy:
        yield proxy


def _client(proxy: RunningProxy, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)


async def _reserved(proxy: RunningProxy) -> int:
    db = proxy.gateway.keys.db
    assert db is not None
    row = await db.fetchone("SELECT coalesce(sum(reserved_micros), 0) AS r FROM access_budgets")
    assert row is not None
    return int(row["r"])


def _gemini_bodies(gemini: FakeGemini) -> list[Any]:
    return [r.body for r in gemini.received if ":" in r.path]


# --- the chat route -------------------------------------------------------------------------

def test_unsupported_param_is_a_400_naming_it_and_the_provider(
        proxy: RunningProxy, gemini: FakeGemini) -> None:
    key = http("POST", proxy.base_url + "/key/generate",
               {"key_alias": "budgeted", "max_budget": 5}).json()["key"]
    with _client(proxy, key) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gemini", messages=HI, logprobs=True,
                                       logit_bias={"50256": -100})
    err = caught.value.body
    assert isinstance(err, dict)
    assert err["code"] == "unsupported_params" and err["param"] == "logit_bias"
    assert "gemini does not support parameters ['logit_bias', 'logprobs']" in err["message"]
    assert "drop_params" in err["message"]
    assert _gemini_bodies(gemini) == []  # nothing went upstream
    assert proxy.call(_reserved(proxy)) == 0  # the reservation was given back


def test_request_drop_params_drops_and_names(proxy: RunningProxy, gemini: FakeGemini) -> None:
    with _client(proxy) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gemini", messages=HI, logprobs=True, parallel_tool_calls=False,
            temperature=0.5, extra_body={"drop_params": True})
    assert raw.headers[DROPPED] == "logprobs,parallel_tool_calls"
    assert raw.parse().choices[0].message.content
    (body,) = _gemini_bodies(gemini)
    assert body["generationConfig"]["temperature"] == 0.5  # what it takes is still sent
    assert "drop_params" not in str(body) and "logprobs" not in str(body)


def test_request_drop_params_false_and_not_a_boolean(proxy: RunningProxy) -> None:
    with _client(proxy) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gemini", messages=HI, logprobs=True,
                                           extra_body={"drop_params": "yes"})
        assert "drop_params must be true or false" in str(caught.value)


def test_config_drop_params_streams_too(dropping: RunningProxy, gemini: FakeGemini) -> None:
    with _client(dropping) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gemini", messages=HI, stream=True, seed=7, top_logprobs=2, logprobs=True)
        assert raw.headers[DROPPED] == "logprobs,top_logprobs"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text
        # The request may still turn the config off for itself.
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            client.chat.completions.create(model="gemini", messages=HI, logprobs=True,
                                           extra_body={"drop_params": False})
    (body,) = _gemini_bodies(gemini)
    assert body["generationConfig"]["seed"] == 7  # Gemini takes seed


def test_openai_deployments_get_every_param(proxy: RunningProxy, upstream: FakeOpenAI) -> None:
    with _client(proxy) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="openai", messages=HI, logprobs=True, seed=3,
            extra_body={"drop_params": True})
    assert DROPPED not in raw.headers
    (body,) = [r.body for r in upstream.received if r.path == "/v1/chat/completions"]
    assert body["logprobs"] is True and body["seed"] == 3
    assert "drop_params" not in body  # the gateway's field never goes upstream


def test_anthropic_deployment_refuses_seed(proxy: RunningProxy, claude: FakeAnthropic) -> None:
    with _client(proxy) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude", messages=HI, seed=1,
                                       frequency_penalty=0.5)
    assert "anthropic does not support parameters ['frequency_penalty', 'seed']" in str(
        caught.value)
    assert [r for r in claude.received if r.path == "/v1/messages"] == []


# --- completions ----------------------------------------------------------------------------

def test_completions_translated_for_gemini(proxy: RunningProxy, gemini: FakeGemini) -> None:
    with _client(proxy) as client:
        with pytest.raises(openai.BadRequestError, match="logit_bias"):
            client.completions.create(model="gemini", prompt="Say hi",
                                      logit_bias={"50256": -100})
        assert _gemini_bodies(gemini) == []
        raw = client.completions.with_raw_response.create(
            model="gemini", prompt="Say hi", logit_bias={"50256": -100},
            extra_body={"drop_params": True})
    assert "logit_bias" in raw.headers[DROPPED].split(",")
    assert "drop_params" not in raw.headers[DROPPED]
    assert raw.parse().choices[0].text


# --- the translating doors: dropped and named, as their own drops ------------------------

def test_messages_door_names_what_gemini_has_no_field_for(proxy: RunningProxy,
                                                          gemini: FakeGemini) -> None:
    tool = {"name": "get_weather", "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="gemini", max_tokens=50, messages=HI, tools=[tool],  # type: ignore[list-item]
            tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert "parallel_tool_calls" in raw.headers[DROPPED].split(",")
    assert raw.parse().content
    (body,) = _gemini_bodies(gemini)
    assert "parallel" not in str(body).lower()


def test_gemini_door_names_what_anthropic_has_no_field_for(proxy: RunningProxy,
                                                          claude: FakeAnthropic) -> None:
    client = gemini_client(proxy.base_url)
    raw = client.models.generate_content(
        model="claude", contents="Say hi",
        config=types.GenerateContentConfig(seed=4, temperature=0.2, max_output_tokens=40))
    assert raw.sdk_http_response is not None and raw.sdk_http_response.headers is not None
    assert "seed" in raw.sdk_http_response.headers[DROPPED].split(",")
    (body,) = [r.body for r in claude.received if r.path == "/v1/messages"]
    assert "seed" not in body and body["temperature"] == 0.2


def test_responses_door_names_what_gemini_has_no_field_for(proxy: RunningProxy,
                                                          gemini: FakeGemini) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with _client(proxy) as client:
        raw = client.responses.with_raw_response.create(
            model="gemini", input="Say hi", tools=[tool],  # type: ignore[list-item]
            parallel_tool_calls=False, store=False)
    assert "parallel_tool_calls" in raw.headers[DROPPED].split(", ")
    (body,) = _gemini_bodies(gemini)
    assert "parallel" not in str(body).lower()


# --- one list ---------------------------------------------------------------------------------

def test_one_list_per_provider() -> None:
    """get_supported_openai_params reads the adapter's own list, the proxy's too."""
    for name in provider_names():
        adapter = get_provider(name)
        listed = set(get_supported_openai_params(f"{name}/some-model"))
        own = adapter.openai_params_for("some-model")
        if own is not None:
            assert listed == own, name
    assert "logprobs" not in get_supported_openai_params("gemini/gemini-2.5-flash")
    assert "seed" in get_supported_openai_params("vertex_ai/gemini-2.5-flash")
    assert "seed" not in get_supported_openai_params("vertex_ai/claude-sonnet-4-5")
    assert get_provider("openai").supported_openai_params is None  # never checked
