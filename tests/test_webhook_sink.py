"""The webhook sink: signed JSON batches to a real receiver on 127.0.0.1, through the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tallygate.errors import ConfigError
from tallygate.event import UsageEvent
from tallygate.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink
from tallygate.usage import Usage
from tests.proxy_harness import (
    CALL_ID_HEADER,
    await_for,
    config_dict,
    post_json,
    proxy_settings,
    run_proxy,
)

SECRET = "whsec-test-secret"


class Receiver:
    """A webhook endpoint that checks signatures and can be told to fail."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.bad_signatures = 0
        self.answers: list[int] = []  # statuses to answer next (FIFO), then 200
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers.get(TIMESTAMP_HEADER, "")
        expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            self.batches.append(orjson.loads(body)["events"])
        return web.Response(status=status)

    @property
    def call_ids(self) -> list[str]:
        return [e["call_id"] for batch in self.batches for e in batch]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


def event(n: int) -> UsageEvent:
    return UsageEvent(call_id=f"tg-{n:04d}", started_at_ms=1_714_564_800_000,
                      finished_at_ms=1_714_564_800_130, model="m", provider="mock",
                      provider_model="m", usage=Usage(input_tokens=10, output_tokens=5),
                      cost=Decimal("0.0000123"), customer="cus_1")


async def test_signed_batch_delivered(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, SECRET)
    try:
        result = await sink.send([event(1), event(2)])
    finally:
        await sink.aclose()
    assert result.delivered == ["tg-0001", "tg-0002"] and not result.retry and not result.dead
    assert receiver.bad_signatures == 0
    assert receiver.batches[0][0]["cost"] == "0.0000123"  # Decimal digits, not a float


async def test_failures_retry_pause_or_dead_letter(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, SECRET)
    try:
        receiver.answers = [503]
        r = await sink.send([event(1)])
        assert r.retry == ["tg-0001"] and not r.delivered and "503" in (r.error or "")
        receiver.answers = [403]
        r = await sink.send([event(1)])
        assert r.paused and r.retry == ["tg-0001"]
        receiver.answers = [400]
        r = await sink.send([event(1)])
        assert r.dead == {"tg-0001": "webhook rejected the batch with 400"}
    finally:
        await sink.aclose()
    wrong = WebhookSink(receiver.url, "not-the-secret")
    try:
        r = await wrong.send([event(2)])
    finally:
        await wrong.aclose()
    assert r.paused and receiver.bad_signatures == 1  # a bad signature is refused (401)


async def test_unreachable_receiver_is_a_retry() -> None:
    sink = WebhookSink("http://127.0.0.1:9/hook", SECRET)  # discard port: nothing listens
    try:
        r = await sink.send([event(1)])
    finally:
        await sink.aclose()
    assert r.retry == ["tg-0001"] and "unreachable" in (r.error or "")


def test_from_env_names_the_missing_url() -> None:
    with pytest.raises(ConfigError, match="TALLYGATE_WEBHOOK_URL"):
        WebhookSink.from_env({})


async def test_proxy_delivers_each_call_once_through_the_outbox(
        receiver: Receiver, tmp_path: Path) -> None:
    """callbacks: ["webhook"] in config.yaml: every call reaches the receiver once, also
    when the receiver failed the first attempt (the outbox resends it)."""
    cfg = config_dict([{"model_name": "m", "litellm_params": {"model": "mock/m"}}], tmp_path,
                      lago=False)
    cfg["litellm_settings"] = {"callbacks": ["webhook"]}
    env = {"TALLYGATE_WEBHOOK_URL": receiver.url, "TALLYGATE_WEBHOOK_SECRET": SECRET}
    receiver.answers = [500]
    with run_proxy(proxy_settings(tmp_path, cfg, env)) as proxy:
        replies = await asyncio.gather(*(
            post_json(proxy.base_url + "/v1/chat/completions",
                      {"model": "m", "user": f"c{i}",
                       "messages": [{"role": "user", "content": "hi"}]})
            for i in range(5)))
        assert [status for status, _, _ in replies] == [200] * 5
        sent = sorted(headers[CALL_ID_HEADER] for _, headers, _ in replies)
        await await_for(lambda: sorted(receiver.call_ids) == sent, timeout=15)
    assert len(receiver.call_ids) == 5 and receiver.bad_signatures == 0
