"""Provider errors keep their meaning, in the OpenAI shape on the chat route and in the
Anthropic shape through the Messages door: a 429 keeps its Retry-After, DeepSeek's 402
stays a 402, Mistral's and Cerebras' flat bodies and OpenRouter's numeric codes are
read. A failed call bills nothing. No provider credential reaches a log line, an
answer or the metrics."""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import openai
import pytest

from tests.clouds_support import (  # noqa: F401  (fixtures)
    CLOUDS,
    UPSTREAM_KEYS,
    Cloud,
    Clouds,
    client_fixture,
    clouds_fixture,
    door_fixture,
    reset_fakes_fixture,
)
from tests.proxy_harness import http

MESSAGES = [{"role": "user", "content": "Hi"}]
IDS = [c.flavor for c in CLOUDS]


def _ask(client: openai.OpenAI, cloud: Cloud, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=cloud.group, messages=MESSAGES,
                                          user="err-user", **kwargs)


def _door(door: anthropic.Anthropic, cloud: Cloud) -> Any:
    return door.messages.create(model=cloud.group, max_tokens=64, messages=MESSAGES,
                                metadata={"user_id": "err-user"})


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_rate_limit_keeps_retry_after_in_both_shapes(clouds: Clouds, client: openai.OpenAI,
                                                     door: anthropic.Anthropic,
                                                     cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    fake.fail(429, "rate limited, slow down", headers={"Retry-After": "13"}, times=3)
    with pytest.raises(openai.RateLimitError) as err:
        _ask(client, cloud)
    assert err.value.response.headers["retry-after"] == "13"
    assert "slow down" in err.value.message
    with pytest.raises(openai.RateLimitError):
        _ask(client, cloud, stream=True)
    with pytest.raises(anthropic.RateLimitError) as aerr:
        _door(door, cloud)
    assert aerr.value.response.headers["retry-after"] == "13"
    assert aerr.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_deepseek_insufficient_balance_is_a_402(clouds: Clouds, client: openai.OpenAI,
                                                door: anthropic.Anthropic) -> None:
    cloud = next(c for c in CLOUDS if c.flavor == "deepseek")
    clouds.fakes["deepseek"].fail_insufficient_balance()
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, cloud)
    assert err.value.status_code == 402
    assert err.value.message == "Insufficient Balance" or "Insufficient Balance" in str(
        err.value)
    clouds.fakes["deepseek"].fail_insufficient_balance()
    with pytest.raises(anthropic.APIStatusError) as aerr:
        _door(door, cloud)
    assert aerr.value.status_code == 402
    assert aerr.value.body["error"]["type"] == "billing_error"  # type: ignore[index]


@pytest.mark.parametrize(("flavor", "status", "cls", "atype"), [
    ("mistral", 422, openai.UnprocessableEntityError, "invalid_request_error"),
    ("cerebras", 400, openai.BadRequestError, "invalid_request_error"),
    ("openrouter", 402, openai.APIStatusError, "billing_error"),
    ("groq", 400, openai.BadRequestError, "invalid_request_error"),
])
def test_provider_error_bodies_are_read(clouds: Clouds, client: openai.OpenAI,
                                        door: anthropic.Anthropic, flavor: str, status: int,
                                        cls: type[Exception], atype: str) -> None:
    cloud = next(c for c in CLOUDS if c.flavor == flavor)
    message = f"{flavor} says no to this request"
    clouds.fakes[flavor].fail(status, message, times=2)
    with pytest.raises(cls) as err:
        _ask(client, cloud)
    assert isinstance(err.value, openai.APIStatusError)
    assert err.value.status_code == status and message in err.value.message
    if flavor == "openrouter":
        assert err.value.code == "402"  # OpenRouter's numeric code, kept
    with pytest.raises(anthropic.APIStatusError) as aerr:
        _door(door, cloud)
    assert aerr.value.status_code == status
    assert aerr.value.body["error"]["type"] == atype  # type: ignore[index]


def test_mistral_validation_detail_is_passed_on(clouds: Clouds) -> None:
    # A field Mistral does not know: its 422 detail reaches the caller, with its status.
    reply = http("POST", clouds.proxy.base_url + "/v1/chat/completions",
                 {"model": "mistral-chat", "messages": MESSAGES, "logit_bias": {"1": 2}})
    assert reply.status == 422
    assert "extra_forbidden" in reply.json()["error"]["message"]


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_failures_bill_nothing_and_5xx_are_502(clouds: Clouds, client: openai.OpenAI,
                                              cloud: Cloud) -> None:
    before = len(clouds.lago.stored)
    clouds.fakes[cloud.flavor].fail(503, "overloaded")
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, cloud)
    assert err.value.status_code == 502
    assert len(clouds.lago.stored) == before


def test_no_credential_in_logs_answers_or_metrics(clouds: Clouds,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for cloud in CLOUDS:
        fake = clouds.fakes[cloud.flavor]
        url = clouds.proxy.base_url + "/v1/chat/completions"
        body = {"model": cloud.group, "messages": MESSAGES, "user": "sec-user"}
        ok = http("POST", url, body)
        assert ok.status == 200, (cloud.flavor, ok.text)
        texts.append(ok.text)
        texts.append(http("POST", url, {**body, "stream": True}).text)
        texts.append(http("POST", url, {**body, "user": None}).text)  # logged: no payer
        fake.drop_connection = "mid"  # logged: the provider broke off its stream
        texts.append(http("POST", url, {**body, "stream": True}).text)
        fake.drop_connection = None
        fake.require_api_key = "a-key-the-gateway-does-not-have"  # it refuses ours
        refused = http("POST", url, body)
        assert refused.status == 401, (cloud.flavor, refused.text)
        texts.append(refused.text)
        texts.append(http("POST", clouds.proxy.base_url + "/v1/messages", {
            "model": cloud.group, "max_tokens": 9, "messages": MESSAGES}).text)
        fake.require_api_key = UPSTREAM_KEYS[cloud.flavor]
    texts.append(http("GET", clouds.proxy.base_url + "/metrics", key=None).text)
    texts += [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    text = "\n".join(texts)
    assert any(r.name.startswith("tallygate") for r in caplog.records)  # it did log
    for secret in UPSTREAM_KEYS.values():
        assert secret not in text, secret
        assert secret[-12:] not in text, secret  # nor a tail of it ("...abcd")
