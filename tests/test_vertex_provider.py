"""Vertex AI: URLs, Claude's rawPredict body, the deployment checks, and the OAuth token
source (google-auth against the stand-in's token endpoint): cached, refreshed before
expiry and once after a 401, one refresh for many concurrent calls, no key in sight."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import tallygate
from tallygate.config import parse_config
from tallygate.errors import (
    ConfigError,
    UpstreamAuthenticationError,
    UpstreamConnectionError,
)
from tallygate.providers.base import Deployment
from tallygate.providers.google_auth import TokenSource, load_service_account
from tallygate.providers.registry import get_provider
from tallygate.providers.vertex_ai import VertexAIProvider
from tests.fakes.server_base import run_in_thread
from tests.fakes.vertex_server import FakeVertex, make_rsa_key
from tests.google_fixtures import (  # noqa: F401  (fixtures)
    rsa_key_fixture,
)
from tests.sdk_fixtures import MESSAGES

KEY_MARK = "PRIVATE KEY"


@pytest.fixture
async def vertex(rsa_key: tuple[str, str]) -> AsyncIterator[FakeVertex]:
    async with FakeVertex(rsa_key) as fake:
        yield fake


@pytest.fixture
def vertex_thread(rsa_key: tuple[str, str]) -> Iterator[FakeVertex]:
    with run_in_thread(FakeVertex(rsa_key)) as fake:
        yield fake


def deployment(model: str = "gemini-2.5-flash", *, info: dict[str, Any] | None = None,
               rsa: tuple[str, str] | None = None, **params: Any) -> Deployment:
    if "vertex_credentials" not in params:
        params["vertex_credentials"] = json.dumps(info or {
            "type": "service_account", "project_id": "key-project",
            "private_key": (rsa or ("-----BEGIN PRIVATE KEY-----\nx\n", ""))[0],
            "client_email": "sa@key-project.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token"})
    return Deployment(provider="vertex_ai", model=model, params=params)


def test_registered_with_google_prices_and_litellm_params() -> None:
    provider = get_provider("vertex_ai")
    assert isinstance(provider, VertexAIProvider)
    assert provider.price_provider == "google"  # its Vertex Claude prices too
    assert {"vertex_project", "vertex_location", "vertex_credentials"} <= provider.litellm_params


@pytest.mark.parametrize(("location", "host"), [
    ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
    ("global", "https://aiplatform.googleapis.com"),
    ("eu", "https://aiplatform.eu.rep.googleapis.com"),
])
def test_gemini_urls(location: str, host: str) -> None:
    provider = VertexAIProvider()
    dep = deployment(vertex_project="p1", vertex_location=location)
    plain = provider.chat_request(dep, {"messages": MESSAGES}, False)
    assert plain.url == (f"{host}/v1/projects/p1/locations/{location}/publishers/google/"
                         "models/gemini-2.5-flash:generateContent")
    streamed = provider.chat_request(dep, {"messages": MESSAGES}, True)
    assert streamed.url.endswith(":streamGenerateContent?alt=sse")
    assert "Authorization" not in plain.headers  # added by authorize(), with a fresh token
    assert orjson.loads(plain.body)["contents"] == [
        {"role": "user", "parts": [{"text": "Say hello."}]}]


def test_claude_raw_predict_body() -> None:
    provider = VertexAIProvider()
    dep = deployment("claude-sonnet-4-5@20250929", vertex_location="us-east5")
    request = provider.chat_request(dep, {"messages": MESSAGES, "max_tokens": 99}, False)
    assert request.url == ("https://us-east5-aiplatform.googleapis.com/v1/projects/"
                           "key-project/locations/us-east5/publishers/anthropic/models/"
                           "claude-sonnet-4-5@20250929:rawPredict")
    body = orjson.loads(request.body)
    assert "model" not in body
    assert body["anthropic_version"] == "vertex-2023-10-16"
    assert body["max_tokens"] == 99
    assert body["messages"] == [{"role": "user", "content": [{"type": "text",
                                                              "text": "Say hello."}]}]
    streamed = provider.chat_request(dep, {"messages": MESSAGES}, True)
    assert streamed.url.endswith(":streamRawPredict")
    assert orjson.loads(streamed.body)["stream"] is True


def test_api_base_replaces_the_host_or_is_the_model_url() -> None:
    provider = VertexAIProvider()
    params = deployment(vertex_project="p").params
    host_only = Deployment(provider="vertex_ai", model="gemini-2.5-flash",
                           api_base="http://127.0.0.1:8123/", params=params)
    assert provider.chat_request(host_only, {"messages": MESSAGES}, False).url == (
        "http://127.0.0.1:8123/v1/projects/p/locations/us-central1/publishers/google/"
        "models/gemini-2.5-flash:generateContent")
    # LiteLLM's meaning of api_base for Vertex: the model's URL up to ":method".
    full = Deployment(provider="vertex_ai", model="gemini-2.5-flash",
                      api_base="https://gw.example/vertex/models/gemini-2.5-flash",
                      params=params)
    assert provider.chat_request(full, {"messages": MESSAGES}, True).url == (
        "https://gw.example/vertex/models/gemini-2.5-flash:streamGenerateContent?alt=sse")


def test_project_and_location_fallbacks(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    provider = VertexAIProvider()
    assert provider.target(deployment()).project == "key-project"  # the key's project_id
    assert provider.target(deployment()).location == "us-central1"
    monkeypatch.setenv("VERTEXAI_PROJECT", "env-project")
    monkeypatch.setenv("VERTEXAI_LOCATION", "asia-northeast1")
    target = VertexAIProvider().target(deployment())
    assert (target.project, target.location) == ("env-project", "asia-northeast1")
    target = VertexAIProvider().target(deployment(vertex_ai_project="alias-project"))
    assert target.project == "alias-project"
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "file-project", "private_key": "k",
        "client_email": "f@file-project.iam.gserviceaccount.com", "token_uri": "http://x"}))
    monkeypatch.delenv("VERTEXAI_PROJECT")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    target = VertexAIProvider().target(Deployment(provider="vertex_ai", model="gemini-2.5-pro"))
    assert target.project == "file-project"
    assert target.tokens.account.client_email == "f@file-project.iam.gserviceaccount.com"


def config_entry(params: dict[str, Any]) -> dict[str, Any]:
    return {"model_list": [{"model_name": "g", "litellm_params": {
        "model": "vertex_ai/gemini-2.5-flash", **params}}]}


def test_config_refuses_a_deployment_without_project(monkeypatch: pytest.MonkeyPatch,
                                                     rsa_key: tuple[str, str]) -> None:
    monkeypatch.delenv("VERTEXAI_PROJECT", raising=False)
    info = {"type": "service_account", "private_key": rsa_key[0],
            "client_email": "sa@p.iam.gserviceaccount.com", "token_uri": "http://x/token"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config_entry({"vertex_credentials": json.dumps(info)}), {})
    assert caught.value.message.startswith("model_list[0].litellm_params: vertex_project:")
    settings = parse_config(config_entry({"vertex_credentials": json.dumps(info),
                                          "vertex_project": "p", "vertex_location": "global"}),
                            {})
    dep = settings.models["g"][0]
    assert dict(dep.params)["vertex_project"] == "p"
    assert KEY_MARK not in repr(dep)


@pytest.mark.parametrize(("params", "named"), [
    ({}, "vertex_credentials"),
    ({"vertex_credentials": "/no/such/key.json"}, "vertex_credentials"),
    ({"vertex_credentials": "{not json"}, "vertex_credentials"),
    ({"vertex_credentials": json.dumps({"type": "authorized_user"})}, "vertex_credentials"),
    ({"vertex_credentials": json.dumps({"type": "service_account", "private_key": "x"})},
     "vertex_credentials"),
    ({"vertex_location": "Europe West"}, "vertex_location"),
    ({"api_key": "AIza-nope"}, "api_key"),
])
def test_config_errors_name_the_key(params: dict[str, Any], named: str,
                                    monkeypatch: pytest.MonkeyPatch,
                                    rsa_key: tuple[str, str]) -> None:
    for env in ("GOOGLE_APPLICATION_CREDENTIALS", "VERTEXAI_CREDENTIALS"):
        monkeypatch.delenv(env, raising=False)
    good = {"vertex_project": "p", "vertex_credentials": json.dumps({
        "type": "service_account", "private_key": rsa_key[0],
        "client_email": "sa@p.iam.gserviceaccount.com", "token_uri": "http://x/token"})}
    if named != "vertex_credentials":
        params = {**good, **params}
    elif params == {}:
        params = {"vertex_project": "p"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config_entry(params), {})
    assert f"litellm_params: {named}" in caught.value.message
    assert KEY_MARK not in caught.value.message


def test_a_broken_private_key_fails_at_config_load() -> None:
    info = {"type": "service_account", "project_id": "p", "private_key": "not a key",
            "client_email": "sa@p.iam.gserviceaccount.com", "token_uri": "http://x/token"}
    with pytest.raises(ConfigError) as caught:
        parse_config(config_entry({"vertex_credentials": json.dumps(info)}), {})
    assert "sa@p.iam.gserviceaccount.com" in caught.value.message
    assert "not a key" not in caught.value.message


def test_partner_models_other_than_claude_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"model_list": [{"model_name": "l", "litellm_params": {
            "model": "vertex_ai/meta/llama-4", "vertex_project": "p"}}]}, {})
    assert "litellm_params: model:" in caught.value.message


def test_service_account_repr_hides_the_key(rsa_key: tuple[str, str]) -> None:
    account = load_service_account({"type": "service_account", "private_key": rsa_key[0],
                                    "client_email": "sa@p.iam.gserviceaccount.com",
                                    "token_uri": "http://x"}, "vertex_credentials")
    assert KEY_MARK not in repr(account) and KEY_MARK not in repr(TokenSource(account))


# --- the token source against the stand-in's token endpoint ----------------------------

def source(fake: FakeVertex) -> TokenSource:
    return TokenSource(load_service_account(fake.service_account(), "vertex_credentials"))


async def test_token_is_cached_until_shortly_before_expiry(vertex: FakeVertex) -> None:
    tokens = source(vertex)
    first = await tokens.token()
    assert first.startswith("ya29.fake-token-")
    assert await tokens.token() == first
    assert vertex.token_fetches == 1
    vertex.token_lifetime = 200  # under the refresh margin: taken, but not kept
    short = TokenSource(load_service_account(vertex.service_account("other"), "k"))
    a = await short.token()
    b = await short.token()
    assert a != b and vertex.token_fetches == 3


async def test_one_refresh_for_many_concurrent_calls(vertex: FakeVertex) -> None:
    vertex.token_delay = 0.2
    tokens = source(vertex)
    got = await asyncio.gather(*(tokens.token() for _ in range(25)))
    assert len(set(got)) == 1 and vertex.token_fetches == 1
    # Many calls told their token was rejected at once: still one new token.
    again = await asyncio.gather(*(tokens.token(rejected=got[0]) for _ in range(25)))
    assert len(set(again)) == 1 and again[0] != got[0]
    assert vertex.token_fetches == 2
    # A late rejection of the old token does not throw the new one away.
    assert await tokens.token(rejected=got[0]) == again[0]
    assert vertex.token_fetches == 2


async def test_a_cancelled_waiter_does_not_cancel_the_refresh(vertex: FakeVertex) -> None:
    vertex.token_delay = 0.3
    tokens = source(vertex)
    waiter = asyncio.ensure_future(tokens.token())
    await asyncio.sleep(0.05)
    waiter.cancel()
    token = await tokens.token()
    assert token.startswith("ya29.") and vertex.token_fetches == 1


async def test_token_endpoint_refusal_is_a_401_without_the_key(
        vertex: FakeVertex, caplog: pytest.LogCaptureFixture) -> None:
    vertex.token_failure = (400, {"error": "invalid_grant",
                                  "error_description": "Invalid JWT Signature."})
    with pytest.raises(UpstreamAuthenticationError) as caught:
        await source(vertex).token()
    assert caught.value.status_code == 401
    assert "vertex_credentials" in caught.value.message
    assert any("invalid_grant" in r.getMessage() for r in caplog.records)
    assert all(KEY_MARK not in r.getMessage() for r in caplog.records)


async def test_token_endpoint_down() -> None:
    info = {"type": "service_account", "private_key": make_rsa_key()[0],
            "client_email": "sa@p.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token"}
    with pytest.raises(UpstreamConnectionError):
        await TokenSource(load_service_account(info, "k")).token()


# --- through the SDK: a 401 from Vertex refreshes the token once and retries -----------

def vertex_kwargs(fake: FakeVertex, **extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "api_base": fake.url, "vertex_project": "tg-project",
            "vertex_location": "europe-west4",
            "vertex_credentials": json.dumps(fake.service_account()), **extra}


@pytest.mark.usefixtures("sdk")
def test_sdk_refreshes_once_on_401_and_retries(vertex_thread: FakeVertex,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = vertex_thread
    r = tallygate.completion(model="vertex_ai/gemini-2.5-flash", **vertex_kwargs(fake))
    assert r.choices[0].message.content == "Hello from the fake Gemini."
    r = tallygate.completion(model="vertex_ai/gemini-2.5-flash", **vertex_kwargs(fake))
    assert fake.token_fetches == 1  # the cached token, reused
    fake.revoke_tokens()  # Vertex stops taking it before it expires
    r = tallygate.completion(model="vertex_ai/gemini-2.5-flash", **vertex_kwargs(fake))
    assert r.choices[0].message.content == "Hello from the fake Gemini."
    assert fake.token_fetches == 2
    auths = [got.headers["Authorization"] for got in fake.received]
    assert auths[0] == auths[1] == auths[2] != auths[3]  # 401 on the third, retried
    fake.revoke_tokens()
    with tallygate.completion(model="vertex_ai/claude-sonnet-4-5@20250929", stream=True,
                              **vertex_kwargs(fake)) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake Claude." and fake.token_fetches == 3
    for record in caplog.records:
        assert KEY_MARK not in record.getMessage()
        assert "ya29." not in record.getMessage()


@pytest.mark.usefixtures("sdk")
def test_sdk_refuses_an_api_key_for_vertex(vertex_thread: FakeVertex) -> None:
    with pytest.raises(ConfigError) as caught:
        tallygate.completion(model="vertex_ai/gemini-2.5-flash", api_key="AIza-x",
                             **vertex_kwargs(vertex_thread))
    assert caught.value.message.startswith("api_key:")
    assert vertex_thread.received == [] and vertex_thread.token_fetches == 0


@pytest.mark.usefixtures("sdk")
def test_a_second_401_is_not_retried_again(vertex_thread: FakeVertex) -> None:
    fake = vertex_thread
    fake.fail(401, "Request had invalid authentication credentials.", times=2)
    with pytest.raises(UpstreamAuthenticationError) as caught:
        tallygate.completion(model="vertex_ai/gemini-2.5-flash", **vertex_kwargs(fake))
    assert caught.value.status_code == 401
    assert len(fake.received) == 2 and fake.token_fetches == 2
