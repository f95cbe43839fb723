"""The OpenAI Responses API door: ``POST /v1/responses`` and the stored responses'
``GET`` / ``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.

A call runs the same frame as ``/v1/chat/completions`` (auth, virtual keys, who pays,
rate limits, budgets, metrics) and is billed once through the gateway. Per deployment:
one that serves the Responses API itself (``openai/``) gets the request passed through
(``responses_native``); any other is called through its chat API with the request
translated (``responses_request``) and the answer or chunks rendered back as a Response
and its stream events (``responses_render``). Responses are kept in the gateway's own
database (``responses_store``), so ``previous_response_id`` works whichever deployment
answers the follow-up. Errors are OpenAI-shaped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from tallygate import engine
from tallygate.doors.responses_native import (
    PassthroughDecoder,
    answer_reader,
    is_native,
    replayable,
)
from tallygate.doors.responses_render import (
    ResponseStreamEncoder,
    base_response,
    from_chat,
)
from tallygate.doors.responses_request import (
    REQUEST_KEY,
    ResponsesRequest,
    admission_params,
    to_chat,
)
from tallygate.doors.responses_store import ResponseStore, StoredResponse, upstream_of
from tallygate.engine import CallContext, ChatStream, failure_event
from tallygate.errors import BadRequestError, NotFoundError, TallygateError, UpstreamError
from tallygate.event import UsageEvent, format_decimal
from tallygate.providers.base import Deployment
from tallygate.providers.registry import get_provider
from tallygate.proxy.calls import (
    CALL_ID_HEADER,
    COST_HEADER,
    CallFrame,
    dropped_header,
    openai_error_response,
    serve_stream,
)
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.param_support import pop_unsupported

DROPPED_HEADER = "x-tallygate-dropped-params"
RESPONSE_STORE = web.AppKey("response_store", ResponseStore)
_STREAM_ERROR_FRAME = b"event: error\ndata: "


def _error_event(exc: UpstreamError, sequence_number: int) -> bytes:
    event = {"type": "error", "code": exc.code or exc.error_type, "message": exc.message,
             "param": exc.param, "sequence_number": sequence_number}
    return _STREAM_ERROR_FRAME + orjson.dumps(event) + b"\n\n"


def owner_of(caller: Any) -> str:
    """Whose stored responses a caller sees: a virtual key's own, the master key's,
    or (on a proxy without a master key) the open proxy's."""
    kind = getattr(caller, "kind", "anonymous")
    key = getattr(caller, "key", None)
    if kind == "key" and key is not None:
        return "key:" + str(key.token)
    return "master" if kind == "master" else "open"


def _not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found.", param=param,
                         code="previous_response_not_found" if param else "not_found")


def _listed_items(record: StoredResponse) -> list[dict[str, Any]]:
    """The response's input items as the API lists them: each with an id, messages with
    their content as parts."""
    out = []
    for index, item in enumerate(record.input_items):
        listed = dict(item)
        if listed.get("type", "message") == "message":
            listed["type"] = "message"
            if isinstance(listed.get("content"), str):
                kind = "output_text" if listed.get("role") == "assistant" else "input_text"
                listed["content"] = [{"type": kind, "text": listed["content"]}]
            listed.setdefault("status", "completed")
        if not listed.get("id"):
            digest = hashlib.sha256(f"{record.id}:{index}".encode()).hexdigest()[:32]
            listed["id"] = f"{'msg' if listed['type'] == 'message' else 'item'}_{digest}"
        out.append(listed)
    return out


class ResponsesRoute:
    def __init__(self, gw: Gateway, store: ResponseStore) -> None:
        self.gw = gw
        self.store = store
        self.calls = CallFrame(gw)

    def _headers(self, call_id: str, dropped: Sequence[str] = ()) -> dict[str, str]:
        headers = {CALL_ID_HEADER: call_id, **self.gw.access.response_headers(call_id)}
        if dropped:
            headers[DROPPED_HEADER] = dropped_header(dropped, ", ")
        return headers

    def _billed(self, body: bytes, event: UsageEvent,
                dropped: Sequence[str] = ()) -> web.Response:
        headers = self._headers(event.call_id, dropped)
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def _save(self, rq: ResponsesRequest, response: dict[str, Any], owner: str,
                    ctx: CallContext, upstream: str | None) -> None:
        if not rq.store or not isinstance(response.get("id"), str):
            return
        await self.store.save(StoredResponse(
            id=response["id"], owner=owner, customer=ctx.customer, model=rq.model,
            upstream=upstream, previous_id=rq.previous_response_id,
            input_items=list(rq.items), response=response))

    # -- POST /v1/responses -------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "responses", admission_params, self._create)

    async def _create(self, request: web.Request, params: dict[str, Any],
                      deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        try:
            rq: ResponsesRequest = params[REQUEST_KEY]
            owner = owner_of(await self.gw.access.authenticate(request))
            chain: list[StoredResponse] = []
            if rq.previous_response_id is not None:
                found = await self.store.chain(rq.previous_response_id, owner, ctx.customer)
                if found is None:
                    raise _not_found(rq.previous_response_id, "previous_response_id")
                chain = found
            if is_native(deployment):
                return await self._native(request, rq, chain, params, deployment, ctx, owner)
            return await self._translated(request, rq, chain, deployment, ctx, owner)
        except BaseException as exc:
            # A refusal before the provider was called (an unknown previous response, a
            # built-in tool it lacks) gives the call's reservation back; after a billed
            # or failed provider call this finds nothing left to release.
            await self.gw.record_failure(failure_event(ctx, deployment, exc))
            raise

    async def _native(self, request: web.Request, rq: ResponsesRequest,
                      chain: list[StoredResponse], params: dict[str, Any],
                      deployment: Deployment, ctx: CallContext,
                      owner: str) -> web.StreamResponse:
        body = dict(rq.body)
        body["model"] = deployment.model
        here = upstream_of(deployment)
        echo: dict[str, Any] = {}
        if chain and chain[-1].upstream != here:
            # The previous response lives elsewhere: send its conversation along.
            history = [item for record in chain for item in record.conversation()]
            body["input"] = [*replayable(history), *rq.items]
            body.pop("previous_response_id", None)
            echo["previous_response_id"] = rq.previous_response_id
        upstream = get_provider(deployment.provider).responses_request(deployment,
                                                                       orjson.dumps(body))
        if not rq.stream:
            result, event = await engine.forward(deployment, upstream, answer_reader(echo),
                                                 params, ctx, self.gw, self.gw.prices)
            await self._save(rq, result.body, owner, ctx, here)
            return self._billed(result.raw or orjson.dumps(result.body), event)
        decoder = PassthroughDecoder(echo)
        stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices,
                            include_usage=False, request=upstream, decoder=decoder)

        async def write(resp: web.StreamResponse) -> None:
            async for items in stream.pieces():  # one write per upstream read
                await resp.write(b"".join([item.frame for item in items]))
            await stream.finish()  # billed before the terminal event goes out
            if decoder.final is not None:
                await self._save(rq, decoder.final, owner, ctx, here)
            await resp.write_eof(decoder.terminal)

        return await serve_stream(request, stream, self._headers(ctx.call_id), write,
                                  lambda exc: _error_event(exc, decoder.events))

    async def _translated(self, request: web.Request, rq: ResponsesRequest,
                          chain: list[StoredResponse], deployment: Deployment,
                          ctx: CallContext, owner: str) -> web.StreamResponse:
        history = [item for record in chain for item in record.conversation()]
        call = to_chat(rq, history, deployment)
        # What the provider has no field for: left out and named, as the door's own drops.
        call.dropped.extend(pop_unsupported(deployment, call.params))
        response_id = "resp_" + ctx.call_id.removeprefix("tg-")
        if not rq.stream:
            result, event = await engine.chat(deployment, call.params, ctx, self.gw,
                                              self.gw.prices)
            model = result.body.get("model")
            base = base_response(rq, response_id,
                                 model if isinstance(model, str) else deployment.model)
            response = from_chat(base, result.body, event.usage, call.namespaced)
            await self._save(rq, response, owner, ctx, None)
            return self._billed(orjson.dumps(response), event, call.dropped)
        stream = ChatStream(deployment, call.params, ctx, self.gw, self.gw.prices,
                            include_usage=False)
        encoder = ResponseStreamEncoder(base_response(rq, response_id, deployment.model),
                                        call.namespaced)

        async def write(resp: web.StreamResponse) -> None:
            await resp.write(encoder.start())
            async for items in stream.pieces():  # one write per upstream read
                frames = [frame for item in items for frame in encoder.feed(item.data)]
                if frames:
                    await resp.write(b"".join(frames))
            event = await stream.finish()  # billed before the last event goes out
            assert event is not None  # the stream ended well: it billed itself
            tail = encoder.end(event.usage)
            if encoder.final is not None:
                await self._save(rq, encoder.final, owner, ctx, None)
            await resp.write_eof(tail)

        return await serve_stream(
            request, stream, self._headers(ctx.call_id, call.dropped), write,
            lambda exc: encoder.error(exc.code or exc.error_type, exc.message))

    # -- the stored responses ------------------------------------------------------------

    async def _stored(self, request: web.Request) -> tuple[StoredResponse | None, str]:
        owner = owner_of(await self.gw.access.authenticate(request))
        response_id = request.match_info["response_id"]
        return await self.store.get(response_id, owner), owner

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.query.get("stream") in ("true", "1"):
                raise BadRequestError("streaming a stored response again is not served by "
                                      "this gateway", param="stream",
                                      code="unsupported_parameter")
            record, _ = await self._stored(request)
            if record is None:
                raise _not_found(request.match_info["response_id"])
        except TallygateError as exc:
            return openai_error_response(exc)
        return web.Response(body=orjson.dumps(record.response),
                            content_type="application/json")

    async def delete(self, request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["response_id"]
        try:
            owner = owner_of(await self.gw.access.authenticate(request))
            if not await self.store.delete(response_id, owner):
                raise _not_found(response_id)
        except TallygateError as exc:
            return openai_error_response(exc)
        return web.Response(body=orjson.dumps({"id": response_id, "object": "response.deleted",
                                               "deleted": True}),
                            content_type="application/json")

    async def input_items(self, request: web.Request) -> web.StreamResponse:
        try:
            limit_text = request.query.get("limit", "20")
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
                raise BadRequestError("limit must be an integer from 1 to 100",
                                      param="limit", code="invalid_value")
            order = request.query.get("order", "desc")
            if order not in ("asc", "desc"):
                raise BadRequestError("order must be 'asc' or 'desc'", param="order",
                                      code="invalid_value")
            record, _ = await self._stored(request)
            if record is None:
                raise _not_found(request.match_info["response_id"])
        except TallygateError as exc:
            return openai_error_response(exc)
        items = _listed_items(record)
        if order == "desc":
            items.reverse()
        after = request.query.get("after")
        if after:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:int(limit_text)]
        body = {"object": "list", "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > len(page)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_responses_routes(app: web.Application, gw: Gateway) -> None:
    """The Responses API routes (with and without ``/v1``) and the store's lifecycle:
    it opens in the gateway's database once the gateway has started."""
    store = app[RESPONSE_STORE] = ResponseStore(gw.settings.responses_retention_s)
    route = ResponsesRoute(gw, store)

    async def open_store(_: web.Application) -> None:
        assert gw.keys.db is not None, "the gateway starts before the response store"
        await store.open(gw.keys.db)

    async def close_store(_: web.Application) -> None:
        await store.close()

    app.on_startup.append(open_store)
    app.on_shutdown.append(close_store)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/responses", route.create)
        app.router.add_get(f"{prefix}/responses/{{response_id}}", route.retrieve)
        app.router.add_delete(f"{prefix}/responses/{{response_id}}", route.delete)
        app.router.add_get(f"{prefix}/responses/{{response_id}}/input_items",
                           route.input_items)
