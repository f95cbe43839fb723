"""The life of one model call over HTTP, whatever API shape it came in by.

Every model route (OpenAI chat and embeddings, Anthropic messages) shares it: a call id,
auth, the body and its size limit, the model group, admission, errors rendered in the
route's own shape, request metrics, and for streams the SSE response that bills what was
generated when the client leaves or the provider fails midway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

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
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.validation import parse_json_object, require_model

log = logging.getLogger("tallygate.proxy")

CALL_ID_HEADER = "x-tallygate-call-id"
COST_HEADER = "x-tallygate-response-cost"
# The openai SDK reads it as ``_request_id``: the call id too.
REQUEST_ID_HEADER = "x-request-id"
# What a translating door left out of the request (comma-separated field paths).
DROPPED_HEADER = "x-tallygate-dropped-params"

# (request, OpenAI-shaped params, deployment, ctx) -> the answer, once the call is admitted.
CallRunner = Callable[[web.Request, dict[str, Any], Deployment, CallContext],
                      Awaitable[web.StreamResponse]]
# The route's body (already JSON) -> OpenAI-shaped params, checked; raises a 400 error.
Prepare = Callable[[dict[str, Any]], dict[str, Any]]
ErrorRenderer = Callable[[TallygateError, str | None], web.Response]
# (request, its body bytes) -> the call's fields, for routes whose body is not JSON.
BodyParser = Callable[[web.Request, bytes], dict[str, Any]]
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


def openai_error_response(exc: TallygateError, call_id: str | None = None) -> web.Response:
    headers = dict(exc.headers)
    headers[REQUEST_ID_HEADER] = call_id or new_call_id()
    if call_id:
        headers[CALL_ID_HEADER] = call_id
    return web.Response(body=orjson.dumps(exc.to_body()), status=exc.status_code,
                        headers=headers, content_type="application/json")


async def read_body(request: web.Request, gw: Gateway) -> bytes:
    limit = gw.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit") from None


def model_group(gw: Gateway, model: str) -> tuple[Deployment, ...]:
    """The model group's deployments; the access policy picks one (rate limits)."""
    group = gw.settings.models.get(model)
    if not group:
        raise ModelNotFoundError(f"the model {model!r} does not exist on this gateway; "
                                 "GET /v1/models lists the models", param="model")
    return group


class CallFrame:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._known_models = frozenset(gw.settings.models)

    def observe(self, route: str, model: str | None, status: int, started: float) -> None:
        label = model if model in self._known_models else "unknown"
        m = self.gw.metrics
        m.inc("tallygate_requests_total",
              (("route", route), ("model", label), ("status", str(status))))
        m.observe_latency((("route", route),), time.perf_counter() - started)

    async def run(self, request: web.Request, route: str, prepare: Prepare, handle: CallRunner,
                  on_error: ErrorRenderer = openai_error_response, *,
                  model: str | None = None,
                  parse: BodyParser | None = None) -> web.StreamResponse:
        """``model``: the model group when the route's path names it (Gemini's
        ``/models/{model}:generateContent``); else the body's ``model``. ``parse``: the
        body's reading when it is not JSON (multipart uploads)."""
        started = time.perf_counter()
        gw = self.gw
        call_id = new_call_id()
        status = 200
        try:
            identity = await gw.access.authenticate(request)
            raw = await read_body(request, gw)
            body = parse(request, raw) if parse is not None else parse_json_object(raw)
            if model is None:
                model = require_model(body)  # the OpenAI and Anthropic shapes name it so
            params = prepare(body)
            group = model_group(gw, model)
            ctx, deployment = await gw.access.admit(identity, params, model, call_id, group)
            log.debug("call %s: %s %s -> %s/%s", call_id, route, model, deployment.provider,
                      deployment.model)
            return await handle(request, params, deployment, ctx)
        except TallygateError as exc:
            answer = on_error(exc, call_id)
            status = answer.status
            return answer
        except Exception:
            # A bug or a broken outbox: say so in the route's shape, with the call id.
            log.exception("call %s failed inside the gateway", call_id)
            answer = on_error(InternalError("internal gateway error"), call_id)
            status = answer.status
            return answer
        finally:
            self.observe(route, model, status, started)


def billed_response(gw: Gateway, body: bytes, event: UsageEvent,
                    content_type: str = "application/json") -> web.Response:
    """A billed call's answer with its call id and cost headers."""
    headers = {CALL_ID_HEADER: event.call_id, REQUEST_ID_HEADER: event.call_id,
               "Content-Type": content_type or "application/octet-stream",
               **gw.access.response_headers(event.call_id)}
    if event.cost is not None:
        headers[COST_HEADER] = format_decimal(event.cost)
    return web.Response(body=body, headers=headers)


async def serve_stream(request: web.Request, stream: ChatStream, headers: dict[str, str],
                       write: Callable[[web.StreamResponse], Awaitable[None]],
                       error_frame: Callable[[UpstreamError], bytes]) -> web.StreamResponse:
    """Open ``stream`` (an upstream error still gets its own status code), then answer as
    SSE: ``write`` sends the frames and ends the response. A provider failing midway is
    reported in-band; a client leaving stops the upstream read. Either way the stream
    bills what was generated, exactly once."""
    await stream.open()
    resp = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    try:
        await resp.prepare(request)
        await write(resp)
    except UpstreamError as exc:
        try:
            await resp.write(error_frame(exc))
            await resp.write_eof()
        except ConnectionError:
            pass
    except ConnectionError:
        # A normal event, not a server error: no traceback in the log.
        await stream.finish(disconnected=True)
        log.info("call %s: the client disconnected mid-stream; billed what was generated",
                 stream.ctx.call_id)
    except asyncio.CancelledError:
        await asyncio.shield(stream.finish(disconnected=True))
        raise
    return resp
