"""What the tests of the translating adapters (Cohere, Ollama) share: the body an adapter
builds for some params, and one call made with the adapter's request over real HTTP to
its stand-in and read back with the adapter (the answer, or a stream fed in pieces
split at odd places)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tallygate.providers.base import Deployment, Provider, StreamItem

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def request_body(provider: Provider, deployment: Deployment, params: dict[str, Any],
                 stream: bool = False) -> dict[str, Any]:
    parsed = orjson.loads(provider.chat_request(deployment, params, stream).body)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(name="session")
async def session_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def round_trip(session: aiohttp.ClientSession, provider: Provider,
                     deployment: Deployment, params: dict[str, Any], stream: bool, *,
                     split: int, stream_type: str | None = None,
                     ) -> tuple[dict[str, Any] | None, list[StreamItem], Any]:
    """(answer body or None, stream items, usage) of one call; ``split`` is the size of
    the pieces a stream is fed in, ``stream_type`` the Content-Type a stream must have."""
    request = provider.chat_request(deployment, params, stream)
    async with session.post(request.url, data=request.body, headers=request.headers) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
        if stream and stream_type is not None:
            assert resp.headers["Content-Type"].startswith(stream_type)
    if not stream:
        result = provider.chat_response(deployment, raw)
        return result.body, [], result.usage
    decoder = provider.chat_stream(deployment, include_usage=True)
    items: list[StreamItem] = []
    for i in range(0, len(raw), split):
        items += decoder.feed(raw[i:i + split])
    assert decoder.done
    return None, items, decoder.usage


def streamed_text(items: list[StreamItem], field: str = "content") -> str:
    return "".join(i.data["choices"][0]["delta"].get(field) or "" for i in items
                   if i.data["choices"])
