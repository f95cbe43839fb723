"""The life of one model call over HTTP, whatever API shape it came in by.

Every model route (OpenAI chat and embeddings, Anthropic messages, and every door to
come) shares it: a call id, auth, the body and its size limit, the model group,
admission, routing (the router retries the door's ``handle`` or falls back to other
groups when an upstream fails before the answer's first byte), errors rendered in the
route's own shape, request metrics, and for streams the SSE response that bills what was
generated when the client leaves or the provider fails midway.

Budgets: one reservation per client call, made at admission, grown when a fallback
moves to a dearer model, settled by the answering attempt's bill or released once when
the call fails as a whole (never per failed attempt).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from tallygate.engine import CallContext, ChatStream, failure_event
from tallygate.errors import (
    BadRequestError,
    InternalError,
    RequestTooLargeError,
    TallygateError,
    UpstreamError,
)
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.event import UsageEvent, format_decimal, new_call_id
from tallygate.price_fields import price_context
from tallygate.providers.base import Deployment
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.validation import close_after, parse_json_object, read_in_time, require_model
from tallygate.routing import CURRENT_ATTEMPT, Attempt, RouteOptions, pop_options
from tallygate.routing.settings import FallbackTo, fallback_name
from tallygate.storable import check_kept

log = logging.getLogger("tallygate.proxy")

CALL_ID_HEADER = "x-tallygate-call-id"
COST_HEADER = "x-tallygate-response-cost"
# The openai SDK reads it as ``_request_id``: the call id too.
REQUEST_ID_HEADER = "x-request-id"
# What a translating door left out of the request (comma-separated field paths).
DROPPED_HEADER = "x-tallygate-dropped-params"
_HEADER_SAFE = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,200}$")  # visible ASCII, no comma


def dropped_header(names: Iterable[str], sep: str = ",") -> str:
    """The ``x-tallygate-dropped-params`` value: the names are the caller's own field
    names, so one with a control character (a header injection, which aiohttp refuses
    with an exception) or no ASCII is left out, counted as ``(N more)``."""
    kept, other = [], 0
    for name in names:
        if _HEADER_SAFE.match(name):
            kept.append(name)
        else:
            other += 1
    if other:
        kept.append(f"({other} more)")
    return sep.join(kept)

# (request, OpenAI-shaped params, deployment, ctx) -> the answer: one attempt, once the
# call is admitted. The router may run it again (a retry, a fallback) when it raises an
# upstream error before the answer is prepared; ``ctx.routing`` names the deployment.
CallRunner = Callable[[web.Request, dict[str, Any], Deployment, CallContext],
                      Awaitable[web.StreamResponse]]
# The route's body (already JSON) -> OpenAI-shaped params, checked; raises a 400 error.
Prepare = Callable[[dict[str, Any]], dict[str, Any]]
ErrorRenderer = Callable[[TallygateError, str | None], web.Response]
# (request, gateway, what the call holds) -> the call's fields, for routes whose body is
# not JSON (multipart uploads): read from the request under the gateway's size limit
# and read timeout; what it leaves open (an upload's spool) closes with ``held`` when
# the call ends.
BodyReader = Callable[[web.Request, Gateway, ExitStack], Awaitable[dict[str, Any]]]
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
    return await read_in_time(request, gw.settings.body_read_timeout_s, limit)


def _prompt_tokens(params: Mapping[str, Any]) -> int:
    if "messages" in params:
        return estimate_prompt_tokens(params.get("messages") or ())
    value = params.get("input")
    if isinstance(value, list):
        value = " ".join(v for v in value if isinstance(v, str))
    return estimate_text_tokens(value if isinstance(value, str) else "")


def _max_output(params: Mapping[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _tokens(params: Mapping[str, Any]) -> int:
    return _prompt_tokens(params) + _max_output(params)


def _estimates(params: dict[str, Any]) -> Callable[
        [Mapping[str, Any]], tuple[Callable[[], int], Callable[[], int]]]:
    """A fallback's (tokens, prompt_tokens) estimates, for its params over ``params``."""
    def of(own: Mapping[str, Any]) -> tuple[Callable[[], int], Callable[[], int]]:
        merged = {**params, **own}
        return (lambda: _tokens(merged)), (lambda: _prompt_tokens(merged))
    return of


def _check_fallbacks(gw: Gateway, options: RouteOptions, params: dict[str, Any],
                     prepare: Prepare | None) -> None:
    """Every fallback of the request names a model here; those with params of their own
    make a valid request once applied (``prepare`` None: the route cannot apply them)."""
    for i, item in enumerate(options.fallbacks or ()):
        name = fallback_name(item)
        if not gw.router.resolves(name):
            raise BadRequestError(f"'fallbacks[{i}]': no model {name!r} on this gateway",
                                  param=f"fallbacks[{i}]", code="model_not_found")
        if not isinstance(item, FallbackTo):
            continue
        if prepare is None:
            raise BadRequestError(
                f"'fallbacks[{i}]': per-fallback parameters are taken on "
                "/v1/chat/completions and /v1/embeddings, not on this route",
                param=f"fallbacks[{i}]", code="unsupported_parameter")
        try:
            prepare({**params, **item.params})
        except BadRequestError as exc:
            raise BadRequestError(f"'fallbacks[{i}]': {exc.message}",
                                  param=f"fallbacks[{i}].{exc.param or ''}".rstrip("."),
                                  code=exc.code) from None


def model_group(gw: Gateway, model: str) -> tuple[Deployment, ...]:
    """The deployments that the name ``model`` reaches (a group, an alias, a deployment
    id, a wildcard group's made concrete); 404 when none. Routing calls go through
    ``CallFrame.run`` instead: this is for routes that only look (token counting)."""
    return gw.router.resolve(model).deployments


class CallFrame:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        # Metric labels: configured names only, never a name a client made up.
        self._known_models = frozenset(gw.router.groups) | frozenset(gw.router.names())

    def answer_headers(self, call_id: str) -> dict[str, str]:
        """The headers every door's answer carries: the call id (also as the request id
        clients log) and what the access layer adds (the key's limits)."""
        return {CALL_ID_HEADER: call_id, REQUEST_ID_HEADER: call_id,
                **self.gw.access.response_headers(call_id)}

    def observe(self, route: str, model: str | None, status: int, started: float) -> None:
        label = model if model in self._known_models else "unknown"  # never client-chosen
        m = self.gw.metrics
        m.inc("tallygate_requests_total",
              (("route", route), ("model", label), ("status", str(status))))
        m.observe_latency((("route", route),), time.perf_counter() - started)

    async def run(self, request: web.Request, route: str, prepare: Prepare, handle: CallRunner,
                  on_error: ErrorRenderer = openai_error_response, *,
                  model: str | None = None,
                  read: BodyReader | None = None,
                  fallback_params: bool = False) -> web.StreamResponse:
        """``model``: the model group when the route's path names it (Gemini's
        ``/models/{model}:generateContent``); else the body's ``model``. ``read``: the
        body's reading when it is not JSON (multipart uploads). ``fallback_params``:
        the route's params are OpenAI's request fields, so a fallback's own params
        (LiteLLM's ``{"model": ..., "messages": ...}``) can replace them."""
        started = time.perf_counter()
        gw = self.gw
        call_id = new_call_id()
        group: str | None = None
        status = 200
        ctx: CallContext | None = None
        held = ExitStack()
        try:
            identity = await gw.access.authenticate(request)
            if read is not None:
                body = await read(request, gw, held)
            else:
                body = parse_json_object(await read_body(request, gw))
            if model is None:
                model = require_model(body)  # the OpenAI and Anthropic shapes name it so
            options = pop_options(body)  # the gateway's routing options, never upstream's
            params = prepare(body)
            check_kept(params)  # whatever the door: what the event keeps can be stored
            plan = gw.router.resolve(model)
            group = plan.group.name
            if options.fallbacks:
                _check_fallbacks(gw, options, params, prepare if fallback_params else None)
            # 400 before anything is reserved when a service tier has no known price.
            pricing = price_context(params, plan.deployments, gw.prices)
            ctx = await gw.access.admit(identity, params, model, call_id, plan.deployments)
            if pricing:
                ctx = replace(ctx, price_context=pricing)
            admitted = ctx

            async def attempt(att: Attempt) -> web.StreamResponse:
                log.debug("call %s: %s %s -> %s/%s", call_id, route, model,
                          att.deployment.provider, att.deployment.model)
                # A copy each time: a retry must see the params as they came; a fallback
                # with params of its own calls with them, checked as the client's were.
                sent = prepare({**params, **att.params}) if att.params else dict(params)
                answer = await handle(request, sent, att.deployment,
                                      admitted.routed(att.tag))
                if not answer.prepared:
                    for name, value in att.headers.items():
                        answer.headers.setdefault(name, value)
                return answer

            async def cover(deployments: Sequence[Deployment],
                            own: Mapping[str, Any] | None) -> None:
                await gw.access.cover(call_id, {**params, **own} if own else params,
                                      deployments)

            answer = await gw.router.run(
                plan, attempt, options=options, stream=bool(params.get("stream")),
                tokens=lambda: _tokens(params), prompt_tokens=lambda: _prompt_tokens(params),
                cover=cover,
                # Only when a fallback may carry params: no closure on the usual path.
                with_params=(_estimates(params) if fallback_params and (
                    gw.router.param_fallbacks or options.fallbacks is not None) else None))
            # An admitted call that ended neither settled nor released (a stream that
            # broke before it sent anything, say) gives its reservation back.
            await gw.access.abandon(call_id)
            return answer
        except TallygateError as exc:
            answer = close_after(on_error(exc, call_id), exc)
            status = answer.status
            await self._release(ctx, exc)
            return answer
        except Exception as exc:
            # A bug or a broken outbox: say so in the route's shape, with the call id.
            log.exception("call %s failed inside the gateway", call_id)
            answer = on_error(InternalError("internal gateway error"), call_id)
            status = answer.status
            await self._release(ctx, exc)
            return answer
        except BaseException as exc:  # cancelled: the client left
            await asyncio.shield(self._release(ctx, exc))
            raise
        finally:
            held.close()
            self.observe(route, group, status, started)

    async def _release(self, ctx: CallContext | None, exc: BaseException) -> None:
        """The call failed as a whole: give back its one reservation (once)."""
        if ctx is not None:
            await self.gw.access.release(failure_event(ctx, None, exc))


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
    SSE: ``write`` sends the frames and ends the response. A provider failing midway, or
    a stream that breaks whatever the cause, is reported in-band (no end marker is sent
    for it); a client leaving stops the upstream read. Either way the stream bills what
    was sent, exactly once, or releases the call when nothing was."""
    await stream.open()
    attempt = CURRENT_ATTEMPT.get()
    if attempt is not None:
        headers = {**attempt.headers, **headers}
        attempt.commit()  # the first byte leaves now: no retry after this
    resp = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    try:
        await resp.prepare(request)
        await write(resp)
    except ConnectionError:
        # A normal event, not a server error: no traceback in the log.
        await stream.finish(disconnected=True)
        log.info("call %s: the client disconnected mid-stream; billed what was generated",
                 stream.ctx.call_id)
    except asyncio.CancelledError:
        await asyncio.shield(stream.finish(disconnected=True))
        raise
    except Exception as exc:
        failure = exc if isinstance(exc, UpstreamError) else UpstreamError(
            f"the stream could not be relayed ({type(exc).__name__})")
        if not isinstance(exc, UpstreamError):
            log.warning("call %s: stream relay failed: %r", stream.ctx.call_id, exc)
        if attempt is not None:
            attempt.broke_midstream(failure)
        try:
            await stream.fail(failure)  # bills what was sent (no-op if already billed)
        except Exception:
            # The outbox write failed: the call frame gives the reservation back.
            log.exception("call %s: could not bill the broken stream", stream.ctx.call_id)
        try:
            await resp.write(error_frame(failure))
            await resp.write_eof()
        except ConnectionError:
            pass
    return resp
