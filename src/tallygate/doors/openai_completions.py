"""OpenAI's legacy text completions: ``POST /v1/completions`` (and ``/completions``).

For instruct and fill-in-the-middle models, and clients such as llama-index's
``OpenAILike(is_chat_model=False)``. To a deployment that serves ``/completions`` itself
(``openai/`` and every OpenAI-compatible server) the request goes as it came, model
replaced, and the answer or stream comes back as the upstream's bytes, so ``echo``,
``suffix``, ``logprobs`` and several prompts work as OpenAI documents them. To any
other provider (Anthropic, the mock) one prompt becomes one user turn of a chat call
and the answer is rendered back as a ``text_completion``; ``echo`` is done here, while
what a chat model cannot do (``suffix``, ``logprobs``, ``best_of``, several prompts,
token-id prompts) is a clear 400. Billed once like a chat call, kind ``completion``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from aiohttp import web

from tallygate import engine
from tallygate.doors.completions_translate import (
    GATEWAY_KEYS,
    TextChunks,
    admission_params,
    to_chat,
    to_text_completion,
)
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import TallygateError
from tallygate.event import UsageEvent, format_decimal
from tallygate.providers.base import Deployment, NativeCompletions
from tallygate.providers.openai import DONE_FRAME
from tallygate.providers.registry import get_provider
from tallygate.proxy.calls import (
    COST_HEADER,
    DROPPED_HEADER,
    CallFrame,
    dropped_header,
    serve_stream,
)
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.param_support import apply_drop_params

# --- the route ----------------------------------------------------------------------------

class CompletionsRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    def _headers(self, call_id: str) -> dict[str, str]:
        return self.calls.answer_headers(call_id)

    def _billed(self, body: bytes, event: UsageEvent, headers: dict[str, str]) -> web.Response:
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "completions", admission_params, self._create)

    async def _create(self, request: web.Request, params: dict[str, Any],
                      deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        provider = get_provider(deployment.provider)
        if isinstance(provider, NativeCompletions):
            return await self._forward(request, provider, params, deployment, ctx)
        return await self._translate(request, params, deployment, ctx)

    async def _forward(self, request: web.Request, provider: NativeCompletions,
                       params: dict[str, Any], deployment: Deployment,
                       ctx: CallContext) -> web.StreamResponse:
        data: dict[str, Any] = params["body"]
        body = {k: v for k, v in data.items() if k not in GATEWAY_KEYS}
        headers = self._headers(ctx.call_id)
        if not params["stream"]:
            result, event = await engine.forward(
                deployment, provider.completion_request(deployment, body, stream=False),
                partial(provider.completion_response, deployment), params, ctx, self.gw,
                self.gw.prices, kind="completion")
            return self._billed(result.raw or orjson.dumps(result.body), event, headers)
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices, include_usage,
                            request=provider.completion_request(deployment, body, stream=True),
                            decoder=provider.completion_stream(deployment, include_usage),
                            kind="completion")

        async def write(resp: web.StreamResponse) -> None:
            async for items in stream.pieces():  # the upstream's chunks, as they came
                await resp.write(b"".join([item.frame for item in items]))
            await resp.write_eof(DONE_FRAME)  # billed (outbox write) before this

        return await serve_stream(request, stream, headers, write, _error_frame)

    async def _translate(self, request: web.Request, params: dict[str, Any],
                         deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        data: dict[str, Any] = params["body"]
        try:
            chat, dropped = to_chat(data, deployment)
        except TallygateError as exc:
            await self.gw.record_failure(engine.failure_event(ctx, deployment, exc))
            raise
        dropped += await apply_drop_params(self.gw, data, chat, deployment, ctx)
        echo = chat["messages"][0]["content"] if data.get("echo") else ""
        headers = self._headers(ctx.call_id)
        if dropped:
            headers[DROPPED_HEADER] = dropped_header(dropped)
        if not params["stream"]:
            result, event = await engine.chat(deployment, chat, ctx, self.gw, self.gw.prices,
                                              kind="completion")
            body = to_text_completion(result.body, event.usage, echo, ctx.call_id)
            return self._billed(orjson.dumps(body), event, headers)
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        stream = ChatStream(deployment, chat, ctx, self.gw, self.gw.prices, include_usage,
                            kind="completion")
        chunks = TextChunks(ctx.call_id, deployment.model, echo)

        async def write(resp: web.StreamResponse) -> None:
            async for items in stream.pieces():
                frames = [f for item in items for f in chunks.feed(item.data)]
                if frames:
                    await resp.write(b"".join(frames))
            await resp.write_eof(DONE_FRAME)

        return await serve_stream(request, stream, headers, write, _error_frame)


def _error_frame(exc: TallygateError) -> bytes:
    return b"data: " + orjson.dumps(exc.to_body()) + b"\n\n"


def add_completions_routes(app: web.Application, gw: Gateway) -> None:
    """``POST /v1/completions`` (and ``/completions``)."""
    route = CompletionsRoute(gw)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/completions", route.create)
