"""create_app(settings): the aiohttp application, its routes and SSE streaming.

aiohttp serves and fetches: one stack, no middleware on the hot path, upstream bytes
passed through untouched where no translation is needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tallygate import engine
from tallygate.config import ProxySettings
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import (
    InternalError,
    ModelNotFoundError,
    RequestTooLargeError,
    TallygateError,
    UpstreamError,
)
from tallygate.event import UsageEvent, format_decimal, new_call_id
from tallygate.providers.base import Deployment
from tallygate.providers.openai import DONE_FRAME
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.validation import (
    check_chat,
    check_embedding,
    parse_json_object,
    require_model,
)

log = logging.getLogger("tallygate.proxy")

GATEWAY = web.AppKey("gateway", Gateway)
CALL_ID_HEADER = "x-tallygate-call-id"
COST_HEADER = "x-tallygate-response-cost"
_GATEWAY_PARAMS = ("metadata",)  # read by the gateway, never sent upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A model route's own work, once the call is admitted: (request, body, deployment, ctx).
CallRunner = Callable[[web.Request, dict[str, Any], Deployment, CallContext],
                      Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[TallygateError, str | None], web.Response]


def error_response(exc: TallygateError, call_id: str | None = None) -> web.Response:
    headers = dict(exc.headers)
    if call_id:
        headers[CALL_ID_HEADER] = call_id
    return web.Response(body=orjson.dumps(exc.to_body()), status=exc.status_code,
                        headers=headers, content_type="application/json")


async def _read_body(request: web.Request, gw: Gateway) -> bytes:
    limit = gw.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit") from None


def _group(gw: Gateway, model: str) -> tuple[Deployment, ...]:
    """The model group's deployments; the access policy picks one (rate limits)."""
    group = gw.settings.models.get(model)
    if not group:
        raise ModelNotFoundError(f"the model {model!r} does not exist on this gateway; "
                                 "GET /v1/models lists the models", param="model")
    return group


def _upstream_params(data: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    params = {k: v for k, v in data.items() if k not in _GATEWAY_PARAMS}
    if deployment.provider != "mock":
        params.pop("mock_response", None)
    return params


class Routes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._known_models = frozenset(gw.settings.models)

    def _observe(self, route: str, model: str | None, status: int, started: float) -> None:
        label = model if model in self._known_models else "unknown"
        m = self.gw.metrics
        m.inc("tallygate_requests_total",
              (("route", route), ("model", label), ("status", str(status))))
        m.observe_latency((("route", route),), time.perf_counter() - started)

    async def model_call(self, request: web.Request, route: str,
                         check: Callable[[dict[str, Any]], None], run: CallRunner,
                         on_error: ErrorRenderer = error_response) -> web.StreamResponse:
        """What every model route shares: a call id, auth, the body, the model group,
        admission, errors in the route's shape, and the request metrics."""
        started = time.perf_counter()
        gw = self.gw
        call_id = new_call_id()
        model: str | None = None
        status = 200
        try:
            identity = await gw.access.authenticate(request)
            data = parse_json_object(await _read_body(request, gw))
            model = require_model(data)
            check(data)
            group = _group(gw, model)
            ctx, deployment = await gw.access.admit(identity, data, model, call_id, group)
            return await run(request, data, deployment, ctx)
        except TallygateError as exc:
            status = exc.status_code
            return on_error(exc, call_id)
        except Exception:
            # A bug or a broken outbox: say so in the route's shape, with the call id.
            log.exception("call %s failed inside the gateway", call_id)
            status = 500
            return on_error(InternalError("internal gateway error"), call_id)
        finally:
            self._observe(route, model, status, started)

    def _billed_response(self, body: bytes, event: UsageEvent) -> web.Response:
        headers = {CALL_ID_HEADER: event.call_id,
                   **self.gw.access.response_headers(event.call_id)}
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.model_call(request, "chat", check_chat, self._chat)

    async def _chat(self, request: web.Request, data: dict[str, Any], deployment: Deployment,
                    ctx: CallContext) -> web.StreamResponse:
        params = _upstream_params(data, deployment)
        if data.get("stream"):
            return await self._stream(request, deployment, params, ctx)
        result, event = await engine.chat(deployment, params, ctx, self.gw, self.gw.prices)
        return self._billed_response(
            result.raw if result.raw is not None else orjson.dumps(result.body), event)

    async def _stream(self, request: web.Request, deployment: Deployment,
                      params: dict[str, Any], ctx: CallContext) -> web.StreamResponse:
        options = params.pop("stream_options", None) or {}
        params.pop("stream", None)
        stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices,
                            include_usage=bool(options.get("include_usage")))
        await stream.open()  # an upstream error here still gets its own status code
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", CALL_ID_HEADER: ctx.call_id,
            **self.gw.access.response_headers(ctx.call_id)})
        try:
            await resp.prepare(request)
            async for items in stream.pieces():
                await resp.write(b"".join([item.frame for item in items]))
            # The stream billed itself (outbox write) before the last byte goes out.
            await resp.write_eof(DONE_FRAME)
        except UpstreamError as exc:
            # Headers are gone already: report the failure in-band, as OpenAI does.
            await _write_quietly(resp, b"data: " + orjson.dumps(exc.to_body()) + b"\n\n")
        except ConnectionError:
            # The client left: stop reading upstream, bill what was generated. A normal
            # event, not a server error: no traceback in the log.
            await stream.finish(disconnected=True)
            log.info("call %s: the client disconnected mid-stream; billed what was generated",
                     ctx.call_id)
        except asyncio.CancelledError:
            await asyncio.shield(stream.finish(disconnected=True))
            raise
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.model_call(request, "embeddings", check_embedding, self._embed)

    async def _embed(self, request: web.Request, data: dict[str, Any], deployment: Deployment,
                     ctx: CallContext) -> web.StreamResponse:
        result, event = await engine.embedding(deployment, _upstream_params(data, deployment),
                                               ctx, self.gw, self.gw.prices)
        return self._billed_response(
            result.raw if result.raw is not None else orjson.dumps(result.body), event)

    async def models(self, request: web.Request) -> web.StreamResponse:
        try:
            await self.gw.access.authenticate(request)
        except TallygateError as exc:
            return error_response(exc)
        created = int(self.gw.started_at)
        data = [{"id": name, "object": "model", "created": created, "owned_by": "tallygate"}
                for name in self.gw.model_names()]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}),
                            content_type="application/json")

    async def liveness(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'"I\'m alive!"', content_type="application/json")

    async def readiness(self, request: web.Request) -> web.StreamResponse:
        # Degraded delivery (e.g. Lago refusing our key) keeps serving: events wait in
        # the outbox, so the gateway stays in rotation and says so in the body.
        ready, body = await self.gw.readiness()
        return web.Response(body=orjson.dumps(body), status=200 if ready else 503,
                            content_type="application/json")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        await self.gw.refresh_queue_gauges()
        return web.Response(text=self.gw.metrics.render(),
                            content_type="text/plain", charset="utf-8")


async def _write_quietly(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
        await resp.write_eof()
    except ConnectionError:
        pass


async def _json_404(request: web.Request) -> web.StreamResponse:
    body = {"error": {"message": f"no route {request.method} {request.path}",
                      "type": "invalid_request_error", "param": None, "code": "not_found"}}
    return web.Response(body=orjson.dumps(body), status=404, content_type="application/json")


def create_app(settings: ProxySettings) -> web.Application:
    """The proxy as an aiohttp Application; the gateway starts and stops with it."""
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
        r.add_get(f"{prefix}/models", routes.models)
    r.add_get("/health/liveliness", routes.liveness)
    r.add_get("/health/liveness", routes.liveness)
    r.add_get("/health/readiness", routes.readiness)
    r.add_get("/metrics", routes.metrics)
    from tallygate.access.admin_routes import add_admin_routes

    add_admin_routes(app, gw.keys)
    from tallygate.proxy.messages_api import add_messages_routes

    add_messages_routes(app, gw)  # the Anthropic Messages API door
    r.add_route("*", "/{tail:.*}", _json_404)
    return app
