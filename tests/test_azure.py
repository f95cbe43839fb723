"""Azure OpenAI: tallygate sends what the official ``AzureOpenAI`` client sends (path,
query, auth header), for keys, Entra ID tokens, the v1 API and embeddings; prices by
``model_info.base_model``, else the answer's model, else flags the price unknown; keeps
a content-filter refusal one, on the chat route and through the Messages door."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import tallygate
from tallygate.config import parse_config
from tallygate.errors import ConfigError
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_compat_server import FakeCompat
from tests.fakes.server_base import Received, run_in_thread
from tests.proxy_harness import (
    MASTER_KEY,
    RunningProxy,
    billed,
    config_dict,
    lago_env,
    proxy_settings,
    run_proxy,
)
from tests.sdk_fixtures import SdkPaths

KEY = "azure-key-5f1e9c0d2b7a4e68"
TOKEN = "eyJ0eXAi.fake-entra-token.9d8c7b"
VERSION = "2024-10-21"
DEPLOYMENT = "prod-chat"
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeCompat]:
    with run_in_thread(FakeCompat("azure")) as fake:
        yield fake


@pytest.fixture(scope="module")
def lago_m() -> Iterator[FakeLago]:
    with FakeLago() as lago:
        yield lago
        assert lago.schema_violations == []


def _entry(name: str, azure: FakeCompat, model: str = DEPLOYMENT,
           info: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"model_name": name, "litellm_params": {
        "model": f"azure/{model}", "api_base": azure.url, **params}}
    if info:
        entry["model_info"] = info
    return entry


@pytest.fixture(scope="module")
def proxy(azure: FakeCompat, lago_m: FakeLago,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    tmp = tmp_path_factory.mktemp("azure")
    models = [
        _entry("az-key", azure, api_version=VERSION, api_key=KEY),
        _entry("az-token", azure, api_version=VERSION, azure_ad_token=TOKEN),
        _entry("az-v1", azure, api_version="v1", api_key=KEY),
        {"model_name": "az-v1-base", "litellm_params": {
            "model": f"azure/{DEPLOYMENT}", "api_base": azure.url + "/openai/v1",
            "api_key": KEY}},
        _entry("az-embed", azure, model="prod-embed", api_version=VERSION, api_key=KEY),
        _entry("az-base", azure, api_version=VERSION, api_key=KEY,
               info={"base_model": "azure/gpt-4o-mini"}),
    ]
    with run_proxy(proxy_settings(tmp, config_dict(models, tmp), lago_env(lago_m))) as p:
        yield p


@pytest.fixture(autouse=True)
def _reset(azure: FakeCompat) -> None:
    azure.errors.clear()
    azure.require_api_key = None
    azure.answer_model = "gpt-4o-2024-08-06"
    azure.prompt_tokens, azure.cached_tokens, azure.completion_tokens = 1000, 200, 50
    azure.content_filtered = False


@pytest.fixture(scope="module")
def client(proxy: RunningProxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def messages(proxy: RunningProxy) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as c:
        yield c


def _sent(azure: FakeCompat) -> tuple[str, str, str | None, str | None, Any]:
    got: Received = azure.received[-1]
    return (got.path, got.query, got.headers.get("api-key"), got.headers.get("Authorization"),
            (got.body or {}).get("model"))


# --- the request, as the official clients send it -------------------------------------


@pytest.mark.parametrize(("group", "official"), [
    ("az-key", lambda url: openai.AzureOpenAI(azure_endpoint=url, api_key=KEY,
                                              api_version=VERSION)),
    ("az-token", lambda url: openai.AzureOpenAI(azure_endpoint=url, azure_ad_token=TOKEN,
                                                api_version=VERSION)),
    ("az-v1", lambda url: openai.OpenAI(base_url=url + "/openai/v1/", api_key=KEY)),
    ("az-v1-base", lambda url: openai.OpenAI(base_url=url + "/openai/v1/", api_key=KEY)),
])
def test_chat_request_matches_the_official_client(client: openai.OpenAI, azure: FakeCompat,
                                                  group: str, official: Any) -> None:
    with official(azure.url) as sdk:
        sdk.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)
    expected = _sent(azure)
    client.chat.completions.create(model=group, messages=MESSAGES, user="cust-az")
    assert _sent(azure) == expected
    if group in ("az-key", "az-token"):
        assert expected[:2] == (f"/openai/deployments/{DEPLOYMENT}/chat/completions",
                                f"api-version={VERSION}")
    else:
        assert expected[:2] == ("/openai/v1/chat/completions", "")


def test_stream_and_embeddings_requests_match_the_official_client(
        client: openai.OpenAI, azure: FakeCompat) -> None:
    with openai.AzureOpenAI(azure_endpoint=azure.url, api_key=KEY,
                            api_version=VERSION) as sdk:
        sdk.embeddings.create(model="prod-embed", input="hello")
        expected_embed = _sent(azure)
        list(sdk.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True))
        expected_stream = _sent(azure)
    client.embeddings.create(model="az-embed", input="hello", user="cust-az")
    assert _sent(azure) == expected_embed
    assert expected_embed[0] == "/openai/deployments/prod-embed/embeddings"
    list(client.chat.completions.create(model="az-key", messages=MESSAGES, stream=True,
                                        user="cust-az"))
    assert _sent(azure) == expected_stream
    assert azure.requests[-1]["stream_options"] == {"include_usage": True}


def test_sdk_completion_reaches_azure_with_its_litellm_params(
        sdk: SdkPaths, azure: FakeCompat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_API_KEY", KEY)
    monkeypatch.setenv("AZURE_API_BASE", azure.url)
    reply = tallygate.completion(model=f"azure/{DEPLOYMENT}", messages=MESSAGES,
                                 api_version="2025-01-01-preview", user="cust-sdk")
    path, query, api_key, _, model = _sent(azure)
    assert (path, query, api_key, model) == (
        f"/openai/deployments/{DEPLOYMENT}/chat/completions",
        "api-version=2025-01-01-preview", KEY, DEPLOYMENT)
    assert "api_version" not in (azure.requests[-1])  # a deployment setting, not sent
    # Priced as the model the answer named: gpt-4o on Azure (OpenAI's prices).
    expected = (Decimal(800) * Decimal("2.5") + Decimal(200) * Decimal("1.25")
                + Decimal(50) * Decimal(10)) / Decimal(1_000_000)
    assert reply.cost == expected


def test_api_version_from_the_environment_and_the_config_block(
        tmp_path: Path, azure: FakeCompat) -> None:
    cfg = {"model_list": [{"model_name": "a", "litellm_params": {"model": "azure/d"}}],
           "environment_variables": {"AZURE_API_BASE": azure.url, "AZURE_API_KEY": KEY,
                                     "AZURE_API_VERSION": "2024-06-01"}}
    dep = parse_config(cfg, {}).models["a"][0]
    assert (dep.api_base, dep.api_key, dep.params["api_version"]) == (
        azure.url, KEY, "2024-06-01")


def test_config_refuses_what_tallygate_cannot_do() -> None:
    with pytest.raises(ConfigError, match="api_base: required"):
        parse_config({"model_list": [{"model_name": "a", "litellm_params": {
            "model": "azure/d", "api_key": KEY}}]}, {})
    with pytest.raises(ConfigError, match="tenant_id: Entra ID"):
        parse_config({"model_list": [{"model_name": "a", "litellm_params": {
            "model": "azure/d", "api_base": "https://r.openai.azure.com",
            "tenant_id": "t", "client_id": "c", "client_secret": "s"}}]}, {})


# --- price: base_model, else the answer's model, else unknown --------------------------


def test_priced_by_base_model_then_by_the_answer_then_unknown(
        client: openai.OpenAI, azure: FakeCompat, lago_m: FakeLago) -> None:
    # model_info.base_model wins over what the answer says.
    raw = client.chat.completions.with_raw_response.create(
        model="az-base", messages=MESSAGES, user="cust-price")
    ev = billed(lago_m, raw.headers["x-tallygate-call-id"], "cust-price")
    mini = (Decimal(800) * Decimal("0.15") + Decimal(200) * Decimal("0.075")
            + Decimal(50) * Decimal("0.6")) / Decimal(1_000_000)
    assert Decimal(ev.properties["response_cost"]) == mini
    assert ev.properties["provider_model"] == DEPLOYMENT
    # No base_model: the model the answer named (gpt-4o-2024-08-06 is gpt-4o).
    raw = client.chat.completions.with_raw_response.create(
        model="az-key", messages=MESSAGES, user="cust-price")
    ev = billed(lago_m, raw.headers["x-tallygate-call-id"], "cust-price")
    gpt4o = (Decimal(800) * Decimal("2.5") + Decimal(200) * Decimal("1.25")
             + Decimal(50) * Decimal(10)) / Decimal(1_000_000)
    assert Decimal(ev.properties["response_cost"]) == gpt4o
    # A stream is priced by the model its chunks name too.
    with client.chat.completions.with_streaming_response.create(
            model="az-key", messages=MESSAGES, user="cust-price", stream=True) as resp:
        call_id = resp.headers["x-tallygate-call-id"]
        list(resp.iter_lines())
    ev = billed(lago_m, call_id, "cust-price")
    assert Decimal(ev.properties["response_cost"]) == gpt4o
    # An answer that names no model: the price is unknown, flagged, never a guess.
    azure.answer_model = ""
    raw = client.chat.completions.with_raw_response.create(
        model="az-key", messages=MESSAGES, user="cust-price")
    ev = billed(lago_m, raw.headers["x-tallygate-call-id"], "cust-price")
    assert ev.properties["unknown_price"] == "true"
    assert "response_cost" not in ev.properties


# --- content filter ----------------------------------------------------------------------


def test_content_filter_refusal_stays_one(client: openai.OpenAI,
                                         messages: anthropic.Anthropic,
                                         azure: FakeCompat) -> None:
    azure.fail_content_filter()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="az-key", messages=MESSAGES, user="cust-cf")
    assert err.value.status_code == 400
    assert err.value.code == "content_filter"
    assert err.value.type == "invalid_request_error"
    assert err.value.param == "prompt"
    azure.fail_content_filter()
    with pytest.raises(anthropic.BadRequestError) as aerr:
        messages.messages.create(model="az-key", max_tokens=50, messages=MESSAGES)
    assert aerr.value.status_code == 400
    assert "content management policy" in str(aerr.value)


def test_filtered_output_is_billed_and_a_refusal_in_the_messages_door(
        client: openai.OpenAI, messages: anthropic.Anthropic, azure: FakeCompat,
        lago_m: FakeLago) -> None:
    azure.content_filtered = True
    reply = client.chat.completions.with_raw_response.create(
        model="az-key", messages=MESSAGES, user="cust-cf2")
    assert reply.parse().choices[0].finish_reason == "content_filter"
    ev = billed(lago_m, reply.headers["x-tallygate-call-id"], "cust-cf2")
    assert ev.properties["output_tokens"] == 50
    message = messages.messages.create(model="az-key", max_tokens=50, messages=MESSAGES)
    assert message.stop_reason == "refusal"
    assert message.usage.output_tokens == 50
