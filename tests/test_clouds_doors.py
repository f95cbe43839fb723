"""Every cloud provider is reached through each door: the Anthropic Messages API (the
``anthropic`` SDK), the OpenAI Responses API (translated to the provider's chat API) and
the tallygate SDK (``completion(model="<prefix>/...")`` with LiteLLM's key variables);
each call billed once with the provider's usage, at the hand-computed price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

import tallygate
from tests.clouds_support import (  # noqa: F401  (fixtures)
    CLOUDS,
    UPSTREAM_KEYS,
    Cloud,
    Clouds,
    client_fixture,
    clouds_fixture,
    door_fixture,
    expected_cost,
    reset_fakes_fixture,
)
from tests.proxy_harness import billed
from tests.sdk_fixtures import SdkPaths

MESSAGES = [{"role": "user", "content": "Hi"}]
IDS = [c.flavor for c in CLOUDS]


def _check(cloud: Cloud, ev: Any, prompt: int, cached: int, output: int) -> None:
    p = ev.properties
    assert (p["input_tokens"], p["cached_input_tokens"], p["output_tokens"]) == (
        prompt, cached, output), p
    expected = expected_cost(cloud, p, datetime.fromtimestamp(float(ev.timestamp), UTC))
    if expected is None:  # a cache read without a price of its own (Cerebras)
        assert p["unknown_price"] == "true" and p["unpriced_buckets"] == "cache_read_tokens"
    else:
        assert Decimal(p["response_cost"]) == expected


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_messages_door(clouds: Clouds, door: anthropic.Anthropic, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    if cloud.caches:
        fake.cached_tokens = 600
    message = door.messages.with_raw_response.create(
        model=cloud.group, max_tokens=64, system="Be brief.", messages=MESSAGES,
        metadata={"user_id": "door-user"})
    parsed = message.parse()
    assert parsed.content[0].type == "text" and parsed.content[0].text == fake.reply_text
    ev = billed(clouds.lago, message.headers["x-tallygate-call-id"], "door-user")
    _check(cloud, ev, 1000, fake.cached_tokens, 50)
    # The answer's usage is the billed usage, in Anthropic's buckets.
    assert (parsed.usage.input_tokens, parsed.usage.cache_read_input_tokens) == (
        1000 - fake.cached_tokens, fake.cached_tokens)
    sent = fake.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    with door.messages.stream(model=cloud.group, max_tokens=64, messages=MESSAGES,
                              metadata={"user_id": "door-user"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == fake.reply_text
    assert final.usage.output_tokens == 50
    assert "stream_options" not in sent  # the plain call did not ask for a stream


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_responses_door(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    fake = clouds.fakes[cloud.flavor]
    raw = client.responses.with_raw_response.create(model=cloud.group, input="Hi",
                                                    user="resp-user", store=False)
    response = raw.parse()
    assert response.output_text == fake.reply_text
    assert response.usage is not None and response.usage.input_tokens == 1000
    ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "resp-user")
    _check(cloud, ev, 1000, 0, 50)
    assert fake.received[-1].path.endswith("/chat/completions")  # translated to chat
    with client.responses.stream(model=cloud.group, input="Hi", user="resp-user",
                                 store=False) as stream:
        events = [e.type for e in stream]
        done = stream.get_final_response()
    assert events[-1] == "response.completed"
    assert done.usage is not None and done.usage.output_tokens == 50


# LiteLLM's variable names, aliases included, as a user's environment has them.
KEY_VARS = {"azure": "AZURE_API_KEY", "azure_ai": "AZURE_AI_API_KEY",
            "mistral": "MISTRAL_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
            "groq": "GROQ_API_KEY", "together_ai": "TOGETHERAI_API_KEY",
            "fireworks_ai": "FIREWORKS_AI_API_KEY", "xai": "XAI_API_KEY",
            "openrouter": "OR_API_KEY", "perplexity": "PERPLEXITY_API_KEY",
            "cerebras": "CEREBRAS_API_KEY", "nvidia_nim": "NVIDIA_NIM_API_KEY",
            "hosted_vllm": "HOSTED_VLLM_API_KEY", "lm_studio": "LM_STUDIO_API_KEY"}
BASE_VARS = {"azure": "AZURE_API_BASE", "deepseek": "DEEPSEEK_API_BASE",
             "groq": "GROQ_API_BASE", "hosted_vllm": "HOSTED_VLLM_API_BASE",
             "openrouter": "OPENROUTER_API_BASE", "perplexity": "PERPLEXITY_API_BASE"}


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_sdk_completion_with_litellm_variables(sdk: SdkPaths, clouds: Clouds, cloud: Cloud,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake = clouds.fakes[cloud.flavor]
    monkeypatch.setenv(KEY_VARS[cloud.flavor], UPSTREAM_KEYS[cloud.flavor])
    base = fake.url if cloud.flavor == "azure" else fake.base_url
    kwargs: dict[str, Any] = dict(cloud.params)
    if cloud.flavor in BASE_VARS:
        monkeypatch.setenv(BASE_VARS[cloud.flavor], base)
    else:
        kwargs["api_base"] = base
    reply = tallygate.completion(model=f"{cloud.flavor}/{cloud.model}", messages=MESSAGES,
                                 user="sdk-user", **kwargs)
    assert reply.choices[0].message.content == fake.reply_text
    ev = reply.usage_event
    assert ev is not None and ev.usage.prompt_tokens == 1000 and ev.usage.output_tokens == 50
    props = {"uncached_input_tokens": ev.usage.input_tokens,
             "cached_input_tokens": ev.usage.cache_read_tokens,
             "output_tokens": ev.usage.output_tokens, **dict(ev.usage.requests)}
    when = datetime.fromtimestamp(ev.finished_at_ms / 1000, UTC)
    assert reply.cost == expected_cost(cloud, props, when)


@pytest.mark.parametrize("cloud", CLOUDS, ids=IDS)
def test_legacy_completions_door(clouds: Clouds, client: openai.OpenAI, cloud: Cloud) -> None:
    """Servers that take /completions get it as it came; the others, translated to chat."""
    fake = clouds.fakes[cloud.flavor]
    raw = client.completions.with_raw_response.create(model=cloud.group, prompt="Say hi",
                                                      user="cmpl-user", max_tokens=20)
    assert raw.parse().choices[0].text == fake.reply_text
    ev = billed(clouds.lago, raw.headers["x-tallygate-call-id"], "cmpl-user")
    _check(cloud, ev, 1000, 0, 50)
    native = bool(fake.flavor.completions)
    assert fake.received[-1].path.endswith("/completions")
    assert fake.received[-1].path.endswith("/chat/completions") is not native
    chunks = list(client.completions.create(model=cloud.group, prompt="Say hi",
                                            user="cmpl-user", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == fake.reply_text
