"""Streams under load and under a client that leaves: each billed exactly once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    await_for,
    config_dict,
    lago_env,
    lago_fixture,
    leave_stream,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

MESSAGES = [{"role": "user", "content": "Tell me a long story"}]


class CountingOpenAI(FakeOpenAI):
    """FakeOpenAI that counts the stream frames it managed to send."""

    def __init__(self) -> None:
        super().__init__()
        self.frames_sent = 0
        self.frames_total = 0
        self.stream_aborted = False

    async def send_stream(self, request: web.Request, frames: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.frames_total = len(frames)
        try:
            for i, frame in enumerate(frames):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                await response.write(frame)
                self.frames_sent += 1
            await response.write_eof()
        except ConnectionError:
            self.stream_aborted = True  # the proxy hung up on us
        return response


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt", upstream.base_url),
                       anthropic_entry("claude", claude.base_url)], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


async def test_200_concurrent_streams(proxy: RunningProxy, lago: FakeLago,
                                      upstream: FakeOpenAI, claude: FakeAnthropic) -> None:
    upstream.prompt_tokens, upstream.completion_tokens, upstream.stream_chunks = 31, 8, 4
    claude.input_tokens, claude.output_tokens = 23, 5
    expected = {"gpt": (31, 8), "claude": (23, 5)}
    n = 200

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str, str]:
        customer, model = f"cust-{i % 7}", ("gpt", "claude")[i % 2]
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=MESSAGES, user=customer,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True})
        text = ""
        async for chunk in raw.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert text == (upstream.reply_text if model == "gpt" else claude.reply_text)
        return raw.headers[CALL_ID_HEADER], customer, model

    async with openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                                  max_retries=0, timeout=60) as client:
        calls = await asyncio.gather(*(one(client, i) for i in range(n)))
    assert len({c[0] for c in calls}) == n
    await await_for(lambda: len(lago.stored) >= n, timeout=30)
    await asyncio.sleep(0.2)  # a double delivery would show up now
    assert len(lago.stored) == n
    events = lago.events
    for call_id, customer, model in calls:
        ev = events[call_id]
        assert ev.external_subscription_id == customer
        assert (ev.properties["input_tokens"], ev.properties["output_tokens"]) \
            == expected[model]
        # model: the deployment's model without its prefix, as LiteLLM sends it.
        assert ev.properties["model_group"] == model
        assert ev.properties["model"] == {"gpt": "gpt-4o-mini",
                                          "claude": "claude-3-5-haiku-20241022"}[model]
        assert "stream" in ev.properties["flags"]


async def test_client_disconnect_mid_stream(tmp_path: Path, lago: FakeLago,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with run_in_thread(CountingOpenAI()) as fake:
        fake.reply_text = "word " * 200
        fake.stream_chunks = 200
        fake.chunk_delay = 0.02   # a 4 s stream if nobody leaves
        fake.prompt_tokens, fake.completion_tokens = 50, 200
        cfg = config_dict([openai_entry("gpt", fake.base_url)], tmp_path)
        with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
            call_id = await leave_stream(proxy.base_url + "/v1/chat/completions", {
                "model": "gpt", "messages": MESSAGES, "user": "leaver", "stream": True,
                "stream_options": {"include_usage": True}}, count=5)
            await await_for(lambda: call_id in lago.events, timeout=10)
            ev = lago.events[call_id]
            assert ev.external_subscription_id == "leaver"
            flags = ev.properties["flags"].split(",")
            assert "client_disconnected" in flags and "estimated_usage" in flags
            assert ev.properties["usage_source"] == "estimated"
            assert 0 < ev.properties["output_tokens"] < 200
            # The proxy stopped reading upstream: the fake could not finish its stream.
            await await_for(lambda: fake.stream_aborted, timeout=5)
            assert fake.frames_sent < fake.frames_total
            await asyncio.sleep(0.3)
            assert lago.count(call_id) == 1
            assert len(lago.stored) == 1
    # A client hanging up is normal: no error and no traceback in the proxy's log.
    # The proxy's own loggers only: the fake upstream may log the hang-up it sees.
    errors = [r for r in caplog.records if r.name.startswith("tallygate")
              and (r.levelno >= logging.ERROR or r.exc_info)]
    assert errors == [], [r.getMessage() for r in errors]


async def test_client_leaves_before_first_chunk(proxy: RunningProxy, lago: FakeLago,
                                                upstream: FakeOpenAI,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Gone while upstream is still thinking: the prompt was sent, so it is billed once
    (flagged) and nothing is logged as an error. The gateway reads the first chunk
    before answering (a stream may still be retried elsewhere until then), so it bills
    the provider's numbers when the whole stream came in that read, else an estimate."""
    upstream.latency = 0.5
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await s.post(proxy.base_url + "/v1/chat/completions", json={
                    "model": "gpt", "messages": MESSAGES, "user": "early", "stream": True},
                    headers={"Authorization": f"Bearer {MASTER_KEY}"})
    await await_for(lambda: len(lago.stored) == 1, timeout=5)
    ev = lago.stored[0]
    assert ev.external_subscription_id == "early"
    assert "client_disconnected" in ev.properties["flags"].split(",")
    assert ev.properties["usage_source"] in ("estimated", "provider")
    await asyncio.sleep(0.2)
    assert len(lago.stored) == 1
    # The proxy's own loggers only: the fake upstream may log the hang-up it sees.
    errors = [r for r in caplog.records if r.name.startswith("tallygate")
              and (r.levelno >= logging.ERROR or r.exc_info)]
    assert errors == [], [r.getMessage() for r in errors]
