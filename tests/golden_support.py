"""What the golden tests of the translated providers (Cohere, Ollama) share: the turn and
tool they send, the stand-in put back to its defaults between tests, the openai SDK
client, and the calls every such test makes the same way (a stream read whole, the
Messages door called and streamed, a raw stream the client leaves or that fails).

The module-scoped ``world`` fixture is each test module's own: it has ``.proxy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.fakes.lago_server import FakeLago
from tests.proxy_harness import (
    CALL_ID_HEADER,
    MASTER_KEY,
    RunningProxy,
    await_for,
    leave_stream,
)

MESSAGES: list[Any] = [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def reset_fake(fake: object, defaults: object) -> None:
    """Give ``fake`` (one stand-in serves a whole module) the settings of ``defaults``, a
    new one, keeping the server it runs (its port and runner)."""
    for name, value in vars(defaults).items():
        if name not in ("port", "_runner"):
            setattr(fake, name, value)


@pytest.fixture(name="client")
def client_fixture(world: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=world.proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as c:
        yield c


def stream_chat(client: openai.OpenAI, **params: Any) -> tuple[str, list[Any]]:
    """(call id, every chunk) of a streamed chat call read to its end."""
    with client.chat.completions.with_streaming_response.create(stream=True,
                                                                **params) as resp:
        return resp.headers[CALL_ID_HEADER], list(resp.parse())


def messages_door_calls(proxy: RunningProxy, model: str, stream_model: str,
                        user: str) -> tuple[Any, anthropic.types.Message,
                                            anthropic.types.Message, str]:
    """A Messages door call to ``model`` (system prompt, ``top_k``) and a streamed one to
    ``stream_model``, with the anthropic SDK: (raw reply, message, streamed message, the
    stream's call id)."""
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as door:
        raw = door.messages.with_raw_response.create(
            model=model, max_tokens=100, system="Be brief.", extra_body={"top_k": 5},
            messages=[{"role": "user", "content": "Hi"}], metadata={"user_id": user})
        message = raw.parse()
        with door.messages.stream(model=stream_model, max_tokens=100,
                                  messages=[{"role": "user", "content": "Hi"}],
                                  metadata={"user_id": user}) as stream:
            streamed = stream.get_final_message()
            stream_call = stream.response.headers[CALL_ID_HEADER]
    return raw, message, streamed, stream_call


def _chat_stream_body(model: str, user: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "user": user, "stream": True}


async def leave_mid_stream(proxy: RunningProxy, model: str, user: str) -> str:
    """Start a chat stream, read six chunks and hang up; the call id."""
    return await leave_stream(proxy.base_url + "/v1/chat/completions",
                              _chat_stream_body(model, user), count=6)


async def read_chat_stream(proxy: RunningProxy, model: str, user: str) -> tuple[int, str, str]:
    """(status, call id, body) of a chat stream read to its end as raw text."""
    async with aiohttp.ClientSession() as s, s.post(
            proxy.base_url + "/v1/chat/completions", json=_chat_stream_body(model, user),
            headers={"Authorization": f"Bearer {MASTER_KEY}"}) as resp:
        body = await resp.text()
        return resp.status, resp.headers[CALL_ID_HEADER], body


async def event_after_stream_error(lago: FakeLago, status: int, call_id: str) -> Any | None:
    """The Lago event of a stream that failed: None (after checking nothing was billed)
    when the failure came before any byte reached the client, a failed attempt."""
    if status >= 500:
        # The failure came before any byte reached the client (the router reads up to
        # the first chunk before it commits): a failed attempt, billed nothing.
        await asyncio.sleep(0.5)
        assert call_id not in lago.events
        return None
    assert status == 200  # in-band after output began
    await await_for(lambda: call_id in lago.events)
    return lago.events[call_id]
