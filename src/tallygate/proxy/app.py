"""create_app(settings): the aiohttp application, its routes and SSE streaming.

aiohttp serves and fetches: one stack, no middleware on the hot path, upstream bytes
passed through untouched where no translation is needed.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from tallygate import engine
from tallygate.config import ProxySettings
from tallygate.doors.openai_request import check_chat, check_embedding
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import (
    BadRequestError,
    MethodNotAllowedError,
    PermissionDeniedError,
    TallygateError,
    UpstreamError,
)
from tallygate.event import UsageEvent, format_decimal, new_call_id
from tallygate.providers.base import Deployment
from tallygate.providers.openai import DONE_FRAME
from tallygate.proxy.auth import presented_key
from tallygate.proxy.calls import (
    CALL_ID_HEADER,
    COST_HEADER,
    DROPPED_HEADER,
    REQUEST_ID_HEADER,
    CallFrame,
    dropped_header,
    openai_error_response,
    serve_stream,
)
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.param_support import DROP_PARAMS_FIELD, apply_drop_params

log = logging.getLogger("tallygate.proxy")

GATEWAY = web.AppKey("gateway", Gateway)
_GATEWAY_PARAMS = ("metadata", DROP_PARAMS_FIELD)  # read by the gateway, never sent upstream


def _upstream_params(data: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    params = {k: v for k, v in data.items() if k not in _GATEWAY_PARAMS}
    if deployment.provider != "mock":
        params.pop("mock_response", None)
    return params


def _chat_params(data: dict[str, Any]) -> dict[str, Any]:
    check_chat(data)
    return data


def _embedding_params(data: dict[str, Any]) -> dict[str, Any]:
    check_embedding(data)
    return data


def _openai_error_frame(exc: UpstreamError) -> bytes:
    # Headers are gone already: report the failure in-band, as OpenAI does.
    return b"data: " + orjson.dumps(exc.to_body()) + b"\n\n"


class Routes:
    """The OpenAI-compatible routes."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    def _billed_response(self, body: bytes, event: UsageEvent,
                         dropped: tuple[str, ...] = ()) -> web.Response:
        headers = {CALL_ID_HEADER: event.call_id, REQUEST_ID_HEADER: event.call_id,
                   **self.gw.access.response_headers(event.call_id)}
        if dropped:
            headers[DROPPED_HEADER] = dropped_header(dropped)
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "chat", _chat_params, self._chat,
                                    fallback_params=True)

    async def _chat(self, request: web.Request, data: dict[str, Any], deployment: Deployment,
                    ctx: CallContext) -> web.StreamResponse:
        params = _upstream_params(data, deployment)
        dropped = await apply_drop_params(self.gw, data, params, deployment, ctx)
        if data.get("stream"):
            return await self._stream(request, deployment, params, ctx, dropped)
        result, event = await engine.chat(deployment, params, ctx, self.gw, self.gw.prices)
        return self._billed_response(
            result.raw if result.raw is not None else orjson.dumps(result.body), event,
            dropped)

    async def _stream(self, request: web.Request, deployment: Deployment,
                      params: dict[str, Any], ctx: CallContext,
                      dropped: tuple[str, ...]) -> web.StreamResponse:
        options = params.pop("stream_options", None) or {}
        params.pop("stream", None)
        stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices,
                            include_usage=bool(options.get("include_usage")))

        async def write(resp: web.StreamResponse) -> None:
            async for items in stream.pieces():  # one write per upstream read
                await resp.write(b"".join([item.frame for item in items]))
            # The stream billed itself (outbox write) before the last byte goes out.
            await resp.write_eof(DONE_FRAME)

        headers = {CALL_ID_HEADER: ctx.call_id, REQUEST_ID_HEADER: ctx.call_id,
                   **self.gw.access.response_headers(ctx.call_id)}
        if dropped:
            headers[DROPPED_HEADER] = dropped_header(dropped)
        return await serve_stream(request, stream, headers, write, _openai_error_frame)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "embeddings", _embedding_params, self._embed,
                                    fallback_params=True)

    async def _embed(self, request: web.Request, data: dict[str, Any], deployment: Deployment,
                     ctx: CallContext) -> web.StreamResponse:
        # drop_params is never sent; every translating provider takes the OpenAI
        # embedding params (encoding_format aside: the answer is floats, which the openai
        # SDK's default base64 reading accepts as they are), so there is nothing to drop.
        result, event = await engine.embedding(deployment, _upstream_params(data, deployment),
                                               ctx, self.gw, self.gw.prices)
        return self._billed_response(
            result.raw if result.raw is not None else orjson.dumps(result.body), event)

    async def health(self, request: web.Request) -> web.StreamResponse:
        """LiteLLM's ``GET /health``: every deployment (or ``?model=`` one group's)
        checked with a tiny real call, or the latest background round."""
        try:
            await self.gw.access.authenticate(request)
        except TallygateError as exc:
            return openai_error_response(exc)
        body = await self.gw.health.answer(request.query.get("model") or None)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def liveness(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'"I\'m alive!"', content_type="application/json",
                            headers={REQUEST_ID_HEADER: new_call_id()})

    async def _operator_only(self, request: web.Request, required: bool) -> None:
        """The status routes show the gateway's internals (delivery errors, volumes):
        with the setting on, only the master key reads them (401/403 otherwise)."""
        if required and not getattr(await self.gw.access.authenticate(request), "is_master",
                                    False):
            raise PermissionDeniedError("this route needs the master key")

    async def readiness(self, request: web.Request) -> web.StreamResponse:
        try:
            await self._operator_only(request, self.gw.settings.readiness_auth)
        except TallygateError as exc:
            return openai_error_response(exc)
        # Degraded delivery (e.g. Lago refusing our key) keeps serving: events wait in
        # the outbox, so the gateway stays in rotation and says so in the body.
        ready, body = await self.gw.readiness()
        return web.Response(body=orjson.dumps(body), status=200 if ready else 503,
                            content_type="application/json",
                            headers={REQUEST_ID_HEADER: new_call_id()})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            await self._operator_only(request, self.gw.settings.metrics_auth)
        except TallygateError as exc:
            return openai_error_response(exc)
        return web.Response(text=await self.gw.render_metrics(), content_type="text/plain",
                            charset="utf-8", headers={REQUEST_ID_HEADER: new_call_id()})


    async def loop_lag(self, request: web.Request) -> web.StreamResponse:
        """The event loop's sampled lag (only served when sampling is on)."""
        if self.gw.settings.master_key is not None and not self.gw.keys.is_master(
                presented_key(request)):
            return web.json_response({"error": {"message": "the master key is required",
                                                "type": "auth_error"}}, status=401)
        sampler = self.gw.loop_lag
        assert sampler is not None
        sampling = request.query.get("sampling")
        if sampling == "off":
            sampler.stop()
        elif sampling == "on":
            sampler.start()
        elif sampling is not None:
            return openai_error_response(
                BadRequestError("sampling is 'on' or 'off'", param="sampling"))
        return web.json_response({**sampler.figures(reset=request.query.get("reset") == "1"),
                                  "sampling": sampler.running})


def _openapi() -> Any:
    """``GET /openapi.json``: the description of these routes kept beside this module."""
    from importlib.resources import files

    body = files("tallygate.proxy").joinpath("openapi.json").read_bytes()

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    return openapi


def _no_route(app: web.Application, gw: Gateway) -> Any:
    """The answer to a request no route takes: 405 with ``Allow`` when the path exists
    with other methods (in that route's API shape: Anthropic's for /v1/messages), else a
    JSON 404. Both are counted by method: a client calling a route we do not serve shows
    in /metrics."""
    allowed: dict[str, set[str]] = {}
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "*" and "{" not in path:
            allowed.setdefault(path, set()).add(route.method)
    from tallygate.doors.anthropic_messages import error_response as anthropic_error
    from tallygate.doors.anthropic_messages import is_messages_path

    async def no_route(request: web.Request) -> web.StreamResponse:
        methods = allowed.get(request.path)
        status = "405" if methods else "404"
        gw.metrics.inc("tallygate_requests_total", (("route", "no_route"),
                                                    ("method", request.method),
                                                    ("status", status)))
        if not methods:
            body = {"error": {"message": f"no route {request.method} {request.path}",
                              "type": "invalid_request_error", "param": None,
                              "code": "not_found"}}
            return web.Response(body=orjson.dumps(body), status=404,
                                content_type="application/json",
                                headers={REQUEST_ID_HEADER: new_call_id()})
        allow = ", ".join(sorted(methods, key=lambda m: (m == "HEAD", m)))
        verbs = " or ".join(sorted(m for m in methods if m != "HEAD"))
        exc = MethodNotAllowedError(f"{request.method} is not allowed on {request.path}; "
                                    f"use {verbs}", headers={"Allow": allow})
        render = anthropic_error if is_messages_path(request.path) else openai_error_response
        return render(exc, new_call_id())

    return no_route


def create_app(settings: ProxySettings) -> web.Application:
    """The proxy as an aiohttp Application; the gateway starts and stops with it."""
    from tallygate import log_safety

    log_safety.install()  # aiohttp's own error lines carry no credential
    gw = Gateway(settings)
    # Bodies over the limit are refused by our own check (OpenAI-shaped 413); aiohttp's
    # limit sits a little above it as a backstop.
    app = web.Application(client_max_size=settings.max_request_bytes + 1)
    app[GATEWAY] = gw
    routes = Routes(gw)

    async def on_startup(_: web.Application) -> None:
        await gw.start()

    async def on_cleanup(_: web.Application) -> None:
        await gw.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    r = app.router
    for prefix in ("/v1", ""):
        r.add_post(f"{prefix}/chat/completions", routes.chat_completions)
        r.add_post(f"{prefix}/embeddings", routes.embeddings)
    r.add_get("/health", routes.health)
    r.add_get("/health/liveliness", routes.liveness)
    r.add_get("/health/liveness", routes.liveness)
    r.add_get("/health/readiness", routes.readiness)
    r.add_get("/metrics", routes.metrics)
    r.add_get("/openapi.json", _openapi())
    if gw.loop_lag is not None:
        r.add_get("/debug/loop-lag", routes.loop_lag)
    from tallygate.access.admin_routes import add_admin_routes

    add_admin_routes(app, gw.keys)
    from tallygate.doors.anthropic_messages import add_messages_routes

    add_messages_routes(app, gw)  # the Anthropic Messages API door
    from tallygate.doors.models import add_models_routes

    add_models_routes(app, gw)  # in OpenAI's shape, or Anthropic's for its clients
    from tallygate.doors.openai_completions import add_completions_routes

    add_completions_routes(app, gw)  # legacy text completions
    from tallygate.doors.openai_responses import add_responses_routes

    add_responses_routes(app, gw)  # the OpenAI Responses API door
    from tallygate.doors.gemini import add_gemini_routes

    add_gemini_routes(app, gw)  # Google's Gemini API door (Gemini CLI, google-genai)
    from tallygate.doors.audio import add_audio_routes
    from tallygate.doors.images import add_image_routes
    from tallygate.doors.moderation import add_moderation_routes
    from tallygate.doors.rerank import add_rerank_routes

    add_image_routes(app, gw)  # billed per image or per token
    add_audio_routes(app, gw)  # per second / character / token
    add_rerank_routes(app, gw)  # per search unit or token
    add_moderation_routes(app, gw)
    from tallygate.ui.routes import add_ui_routes

    add_ui_routes(app, gw)  # the spend dashboard at /ui
    r.add_route("*", "/{tail:.*}", _no_route(app, gw))
    return app
