"""The OpenAI Agents SDK's Runner, with its default model (the Responses API), through
the proxy: an agent that calls a function tool and answers, on an OpenAI deployment
(passed through) and an Anthropic one (translated); every upstream call billed once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import agents
import openai
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    await_for,
    config_dict,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

agents.set_tracing_disabled(True)  # traces would go to OpenAI; nothing leaves loopback


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt", upstream.base_url),
                       anthropic_entry("claude", claude.base_url)], tmp_path,
                      general={"master_key": MASTER_KEY})
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def customers(lago: FakeLago) -> list[str]:
    return sorted(ev.external_subscription_id for ev in lago.events.values())


@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_runner_with_a_tool(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                            claude: FakeAnthropic, model: str) -> None:
    upstream.tool_call = claude.tool_call = FakeToolCall("get_weather", {"city": "Paris"},
                                                         id="call_a1")
    claude.reply_text = ""
    upstream.reply_text = claude_answer = "Paris is sunny."
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        calls.append(city)
        claude.tool_call, claude.reply_text = None, claude_answer  # Claude answers next
        return "sunny"

    async with openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                                  max_retries=0) as client:
        agent = agents.Agent(
            name="weather", instructions="Answer with the weather.", tools=[get_weather],
            model=agents.OpenAIResponsesModel(model=model, openai_client=client),
            model_settings=agents.ModelSettings(extra_args={"user": f"agent-{model}"}))
        result = await agents.Runner.run(agent, "What is the weather in Paris?")
        assert result.final_output == "Paris is sunny."
        assert calls == ["Paris"]
        # Two model calls (the tool call, then the answer), each billed once.
        await await_for(lambda: len(lago.events) == 2)
        assert customers(lago) == [f"agent-{model}"] * 2
        assert len(upstream.requests if model == "gpt" else claude.requests) == 2
        # A follow-up run continues from the stored last response (no tool call this time).
        upstream.tool_call = None
        follow = await agents.Runner.run(agent, "And tomorrow?",
                                         previous_response_id=result.last_response_id)
        assert follow.final_output == "Paris is sunny."
        await await_for(lambda: len(lago.events) >= 3)
        assert len(lago.events) == 3
        assert len(upstream.requests if model == "gpt" else claude.requests) == 3


async def test_runner_default_model_provider(proxy: RunningProxy, lago: FakeLago,
                                             upstream: FakeOpenAI) -> None:
    """No model object: the SDK's default provider and API (Responses), pointed at the
    proxy the way its docs say (a default client)."""
    async with openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                                  max_retries=0) as client:
        agents.set_default_openai_client(client, use_for_tracing=False)
        try:
            agent = agents.Agent(name="plain", instructions="Be brief.", model="gpt",
                                 model_settings=agents.ModelSettings(
                                     extra_args={"user": "dflt"}))
            result = await agents.Runner.run(agent, "Hi")
        finally:
            agents.set_default_openai_client(None, use_for_tracing=False)  # type: ignore[arg-type]
    assert result.final_output == upstream.reply_text
    assert upstream.received[-1].path == "/v1/responses"
    await await_for(lambda: customers(lago) == ["dflt"])
