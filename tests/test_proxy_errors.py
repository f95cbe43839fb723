"""Every error: its status, the OpenAI error shape, and nothing billed for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeError
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    RunningProxy,
    assert_openai_error,
    config_dict,
    free_port,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([
        openai_entry("gpt-4o-mini", upstream.base_url),
        openai_entry("slow", upstream.base_url, timeout=0.3),
        openai_entry("embedder", upstream.base_url, model="text-embedding-3-small"),
        openai_entry("nowhere", f"http://127.0.0.1:{free_port()}/v1"),
    ], tmp_path, general={"max_request_size_mb": 0.001})  # 1048 bytes
    # What a client sees when nothing is left to try: no retries here (tests/
    # test_router_*.py cover retries and fallbacks).
    cfg["router_settings"] = {"num_retries": 0}
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy
        # Nothing of a failed call is billed: no row in the outbox (failures are recorded
        # before the answer goes out), so nothing can reach Lago either.
        stats = proxy.outbox_stats()
        assert (stats.pending, stats.inflight, stats.delivered, stats.dead) == (0, 0, 0, 0)
        assert lago.stored == []


def _chat(proxy: RunningProxy, body: Any = None, *, data: bytes | None = None,
          path: str = CHAT) -> Any:
    return http("POST", proxy.base_url + path, body, data=data)


def test_malformed_json(proxy: RunningProxy) -> None:
    for data in (b'{"model": "gpt-4o-mini", "messages": [', b"", b"[1, 2]", b"\xff\xfe"):
        assert_openai_error(_chat(proxy, data=data), 400, code="invalid_json")


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": MESSAGES}, "model"),
    ({"model": 5, "messages": MESSAGES}, "model"),
    ({"model": ""}, "model"),
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": ["hi"]}, "messages[0]"),
    ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": "yes"}, "stream"),
    ({"model": "gpt-4o-mini", "messages": MESSAGES, "user": 42}, "user"),
    ({"model": "gpt-4o-mini", "messages": MESSAGES, "metadata": []}, "metadata"),
    ({"model": "gpt-4o-mini", "messages": MESSAGES, "stream_options": 1}, "stream_options"),
])
def test_chat_field_errors_name_the_field(proxy: RunningProxy, body: dict[str, Any],
                                          param: str) -> None:
    err = assert_openai_error(_chat(proxy, body), 400, param=param,
                              error_type="invalid_request_error")
    assert param.split(".")[0].split("[")[0] in err["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x"}, "model"),
    ({"model": "embedder"}, "input"),
    ({"model": "embedder", "input": []}, "input"),
    ({"model": "embedder", "input": 3}, "input"),
    ({"model": "embedder", "input": "x", "user": 1}, "user"),
])
def test_embedding_field_errors(proxy: RunningProxy, body: dict[str, Any], param: str) -> None:
    assert_openai_error(_chat(proxy, body, path="/v1/embeddings"), 400, param=param)


def test_unknown_model_404(proxy: RunningProxy) -> None:
    for path, body in ((CHAT, {"model": "gpt-5-nope", "messages": MESSAGES}),
                       ("/v1/embeddings", {"model": "gpt-5-nope", "input": "x"})):
        assert_openai_error(_chat(proxy, body, path=path), 404, code="model_not_found",
                            param="model")
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5-nope", messages=MESSAGES)  # type: ignore[arg-type]


def test_unknown_route_404(proxy: RunningProxy) -> None:
    assert_openai_error(http("GET", proxy.base_url + "/v1/nothing-here"), 404, code="not_found")


def test_body_over_limit_413(proxy: RunningProxy, upstream: FakeOpenAI) -> None:
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(_chat(proxy, big), 413, code="request_too_large")
    assert upstream.requests == []


async def test_chunked_body_over_limit_413(proxy: RunningProxy) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    async with aiohttp.ClientSession() as s, s.post(
            proxy.base_url + CHAT, data=body(),
            headers={"Authorization": f"Bearer {MASTER_KEY}"}) as resp:
        assert resp.status == 413
        err = (await resp.json())["error"]
        assert err["code"] == "request_too_large" and set(err) == {"message", "type", "param",
                                                                   "code"}


@pytest.mark.parametrize("status", [400, 404, 422])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_4xx_passed_through(proxy: RunningProxy, upstream: FakeOpenAI,
                                     status: int, stream: bool) -> None:
    upstream.fail(status, "upstream says no")
    err = assert_openai_error(_chat(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES,
                                            "stream": stream, "user": "u"}), status)
    assert err["message"] == "upstream says no"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_refusing_our_key_keeps_the_status_not_the_message(
        proxy: RunningProxy, upstream: FakeOpenAI, status: int, stream: bool) -> None:
    """The provider's message can quote the gateway's own key: callers never see it."""
    upstream.fail(status, "Incorrect API key provided: sk-up-************abcd")
    reply = _chat(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream,
                          "user": "u"})
    err = assert_openai_error(reply, status)
    assert "abcd" not in reply.text and "sk-up" not in reply.text
    assert "refused the gateway's credentials" in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_keeps_retry_after(proxy: RunningProxy, upstream: FakeOpenAI,
                                        stream: bool) -> None:
    upstream.fail(429, "slow down", headers={"Retry-After": "7"})
    reply = _chat(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream,
                          "user": "u"})
    assert_openai_error(reply, 429, code="rate_limit_exceeded")
    assert reply.headers["retry-after"] == "7"
    assert reply.headers[CALL_ID_HEADER]


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_5xx_is_502(proxy: RunningProxy, upstream: FakeOpenAI, status: int,
                             stream: bool) -> None:
    upstream.fail(status)
    assert_openai_error(_chat(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES,
                                      "stream": stream, "user": "u"}), 502)


@pytest.mark.parametrize("stream", [False, True])
def test_refused_connection_is_502(proxy: RunningProxy, stream: bool) -> None:
    assert_openai_error(_chat(proxy, {"model": "nowhere", "messages": MESSAGES,
                                      "stream": stream, "user": "u"}), 502,
                        code="upstream_unreachable")


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b'{"choices": 5}', b"[]"])
@pytest.mark.parametrize("path", [CHAT, "/v1/embeddings"])
def test_upstream_unreadable_200_is_502(proxy: RunningProxy, upstream: FakeOpenAI,
                                        body: bytes, path: str) -> None:
    upstream.errors.append(FakeError(200, body))  # a 200 that is not a completion
    model = "embedder" if path != CHAT else "gpt-4o-mini"
    err = assert_openai_error(_chat(proxy, {"model": model, "messages": MESSAGES, "input": "x",
                                            "user": "u"}, path=path), 502)
    assert "upstream" in err["message"]


def test_upstream_drops_connection_is_502(proxy: RunningProxy, upstream: FakeOpenAI) -> None:
    upstream.drop_connection = "before"
    assert_openai_error(_chat(proxy, {"model": "gpt-4o-mini", "messages": MESSAGES,
                                      "user": "u"}), 502)


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_timeout_is_504(proxy: RunningProxy, upstream: FakeOpenAI,
                                 stream: bool) -> None:
    upstream.latency = 1.0
    started = time.monotonic()
    reply = _chat(proxy, {"model": "slow", "messages": MESSAGES, "stream": stream, "user": "u"})
    assert_openai_error(reply, 504, code="upstream_timeout", error_type="timeout")
    assert time.monotonic() - started < 0.9
    time.sleep(0.8)  # let the fake finish its late answer before teardown


async def test_openai_sdk_sees_typed_errors(proxy: RunningProxy, upstream: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                                  max_retries=0) as client:
        upstream.fail(429, headers={"Retry-After": "3"})
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert info.value.response.headers["retry-after"] == "3"
        upstream.fail(500)
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,  # type: ignore[arg-type]
                                                 stream=True)
        assert err.value.status_code == 502
    await asyncio.sleep(0)
