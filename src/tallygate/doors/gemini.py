"""The Gemini-shaped door: Google's Gemini API for Gemini CLI and Google's SDKs.

``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent`` (``?alt=sse``
for SSE; without it one JSON array, as Google answers), ``:countTokens``,
``:embedContent`` and ``:batchEmbedContents`` (``gemini_embed``); the model
group is the ``{model}`` path segment, the key is ``x-goog-api-key`` or ``?key=`` (the
master key or a virtual key). Two ways through, by the deployment the policy picks:

* Native: ``gemini/`` and Vertex AI's Gemini models (providers implementing
  ``NativeGemini``) get the request body as it came, with the gateway's credentials;
  their answer and stream payloads come back as they are, usage read from them.
* Translated: any other provider. The request becomes chat params (``gemini_to_chat``),
  runs as a chat call, and comes back as Gemini answers or chunks (``gemini_answers``).

Either way the call is admitted and billed once like a chat call. Who pays: a key
bound to a customer; for the master key, ``labels.user`` in the body names the end user
(``labels`` is Gemini's request field for caller tags; it is not sent to AI Studio,
which refuses it). Errors use Google's shape ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from tallygate import engine
from tallygate.doors.gemini_answers import GeminiChunkEncoder, GeminiFramer, to_gemini
from tallygate.doors.gemini_embed import (
    EMBED_METHODS,
    embed_params,
    native_answer,
    to_gemini_embeddings,
)
from tallygate.doors.gemini_to_chat import GeminiTranslation, fields
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import InternalError, NotFoundError, TallygateError, UpstreamError
from tallygate.estimate import estimate_prompt_tokens
from tallygate.event import format_decimal, new_call_id
from tallygate.providers.base import Deployment, NativeGemini
from tallygate.providers.gemini_answer import GeminiPassThrough, read_native_answer
from tallygate.providers.registry import get_provider
from tallygate.proxy.calls import (
    CALL_ID_HEADER,
    COST_HEADER,
    DROPPED_HEADER,
    REQUEST_ID_HEADER,
    CallFrame,
    dropped_header,
    model_group,
    read_body,
    serve_stream,
)
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.param_support import pop_unsupported
from tallygate.proxy.validation import parse_json_object

log = logging.getLogger("tallygate.proxy")

# On a countTokens answer the gateway estimated: "estimated".
TOKEN_COUNT_HEADER = "x-tallygate-token-count"
# google.rpc.Code names by HTTP status, as Google's errors carry them.
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 409: "ABORTED", 413: "INVALID_ARGUMENT",
                429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                501: "NOT_IMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}
METHODS = ("generateContent", "streamGenerateContent", "countTokens", *EMBED_METHODS)


# --- errors ---------------------------------------------------------------------------

def error_body(exc: TallygateError) -> dict[str, Any]:
    status = exc.status_code
    name = exc.code if exc.code in STATUS_NAMES.values() else None
    return {"error": {"code": status, "message": exc.message,
                      "status": name or STATUS_NAMES.get(status, "UNKNOWN")}}


def error_response(exc: TallygateError, call_id: str | None = None) -> web.Response:
    """Google's error shape with the right status; ``Retry-After`` and the rate-limit
    headers kept."""
    headers = dict(exc.headers)
    headers[REQUEST_ID_HEADER] = call_id or new_call_id()
    if call_id:
        headers[CALL_ID_HEADER] = call_id
    return web.Response(body=orjson.dumps(error_body(exc)), status=exc.status_code,
                        headers=headers, content_type="application/json")


# --- the request ----------------------------------------------------------------------

def end_user(body: Mapping[str, Any]) -> str | None:
    labels = body.get("labels")
    user = labels.get("user") if isinstance(labels, Mapping) else None
    return user if isinstance(user, str) and user else None


def admission_params(data: dict[str, Any]) -> dict[str, Any]:
    """The chat params of the request (checked: a bad body is a 400 before anything is
    reserved), which the policy reads for its estimates, with ``user`` (the payer the
    master key names) and the body as it came under ``body``."""
    translation = GeminiTranslation()
    params = translation.params(data)
    params["body"] = data
    params["dropped"] = translation.dropped
    params["metadata"] = {}
    user = end_user(data)
    if user:
        params["user"] = user
    return params


def _native(deployment: Deployment) -> NativeGemini | None:
    provider = get_provider(deployment.provider)
    if isinstance(provider, NativeGemini) and provider.speaks_gemini(deployment):
        return provider
    return None


def native_body(raw: bytes, data: Mapping[str, Any], deployment: Deployment) -> bytes:
    """The bytes a native deployment gets: the client's, unless they carry ``labels``
    and the deployment is AI Studio's, which refuses the field."""
    if deployment.provider == "gemini" and "labels" in data:
        return orjson.dumps({k: v for k, v in data.items() if k != "labels"})
    return raw


def _split_target(target: str) -> tuple[str, str]:
    model, sep, method = target.rpartition(":")
    if not sep or method not in METHODS:
        raise NotFoundError(f"no route POST /v1beta/models/{target}: the gateway serves "
                            f"{', '.join(':' + m for m in METHODS)}")
    return model, method


# --- routes ---------------------------------------------------------------------------

class GeminiRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    def _headers(self, call_id: str) -> dict[str, str]:
        return self.calls.answer_headers(call_id)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            model, method = _split_target(request.match_info["target"])
        except TallygateError as exc:
            # A method we do not serve shows in /metrics, as any unserved route does.
            self.gw.metrics.inc("tallygate_requests_total", (
                ("route", "no_route"), ("method", request.method), ("status", "404")))
            return error_response(exc)
        if method == "countTokens":
            return await self.count_tokens(request, model)
        if method in EMBED_METHODS:
            return await self.calls.run(request, "gemini_embed",
                                        partial(embed_params, batch=method != "embedContent"),
                                        partial(self._embed, method=method),
                                        on_error=error_response, model=model)
        stream = method == "streamGenerateContent"
        route = "gemini_stream" if stream else "gemini"

        async def handle(request: web.Request, params: dict[str, Any],
                         deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
            provider = _native(deployment)
            if provider is not None:
                return await self._forward(request, provider, params, deployment, ctx, stream)
            return await self._translate(request, params, deployment, ctx, stream)

        return await self.calls.run(request, route, admission_params, handle,
                                    on_error=error_response, model=model)

    # -- native: bytes through -------------------------------------------------------

    async def _forward(self, request: web.Request, provider: NativeGemini,
                       params: dict[str, Any], deployment: Deployment, ctx: CallContext,
                       stream: bool) -> web.StreamResponse:
        body = native_body(await request.read(), params["body"], deployment)
        headers = self._headers(ctx.call_id)
        if not stream:
            upstream = provider.gemini_request(deployment, "generateContent", body)
            result, event = await engine.forward(deployment, upstream, read_native_answer,
                                                 params, ctx, self.gw, self.gw.prices)
            if event.cost is not None:
                headers[COST_HEADER] = format_decimal(event.cost)
            return web.Response(body=result.raw or orjson.dumps(result.body), headers=headers,
                                content_type="application/json")
        # Upstream always streams SSE; the array form is the same payloads, reframed.
        array = request.query.get("alt") != "sse"
        upstream = provider.gemini_request(deployment, "streamGenerateContent?alt=sse", body)
        decoder = GeminiPassThrough(array=array)
        chat_stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices,
                                 include_usage=False, request=upstream, decoder=decoder)

        async def write(resp: web.StreamResponse) -> None:
            async for items in chat_stream.pieces():
                await resp.write(b"".join([item.frame for item in items]))
            await chat_stream.finish()  # billed before the last chunk goes out
            await resp.write_eof(decoder.closing())

        framer = GeminiFramer(array=array)
        return await serve_stream(request, chat_stream, self._content_type(headers, array),
                                  write, lambda exc: self._error_frame(framer, exc, decoder))

    @staticmethod
    def _content_type(headers: dict[str, str], array: bool) -> dict[str, str]:
        # The array form is JSON, streamed: not text/event-stream.
        return {**headers, "Content-Type": "application/json"} if array else headers

    @staticmethod
    def _error_frame(framer: GeminiFramer, exc: UpstreamError,
                     decoder: GeminiPassThrough | None = None) -> bytes:
        payload = orjson.dumps(error_body(exc))
        if not framer.array:
            return framer.frame(payload)
        opened = decoder is not None and decoder.closing() != b"[]"
        return (b",\r\n" if opened else b"[") + payload + b"]"

    # -- translated: through the chat path -------------------------------------------

    async def _translate(self, request: web.Request, params: dict[str, Any],
                         deployment: Deployment, ctx: CallContext,
                         stream: bool) -> web.StreamResponse:
        chat = {k: v for k, v in params.items() if k not in ("body", "dropped", "metadata")}
        chat["model"] = deployment.model
        # What the provider has no field for: left out and named, as the door's own drops.
        params["dropped"] = [*params["dropped"], *pop_unsupported(deployment, chat)]
        headers = self._headers(ctx.call_id)
        if params["dropped"]:
            headers[DROPPED_HEADER] = dropped_header(params["dropped"])
        response_id = "tg-" + ctx.call_id
        if not stream:
            result, event = await engine.chat(deployment, chat, ctx, self.gw, self.gw.prices)
            body = to_gemini(result.body, event.usage, response_id, ctx.model)
            if event.cost is not None:
                headers[COST_HEADER] = format_decimal(event.cost)
            return web.Response(body=orjson.dumps(body), headers=headers,
                                content_type="application/json")
        array = request.query.get("alt") != "sse"
        framer = GeminiFramer(array=array)
        encoder = GeminiChunkEncoder(response_id, ctx.model)
        chat_stream = ChatStream(deployment, chat, ctx, self.gw, self.gw.prices,
                                 include_usage=False)

        async def write(resp: web.StreamResponse) -> None:
            async for items in chat_stream.pieces():
                frames = [framer.frame(c) for item in items for c in encoder.feed(item.data)]
                if frames:
                    await resp.write(b"".join(frames))
            # The bill is written (finish) before the last chunk, which carries its usage.
            event = await chat_stream.finish()
            assert event is not None  # the stream ended well: it billed itself
            await resp.write_eof(framer.frame(encoder.end(event.usage)) + framer.close())

        return await serve_stream(request, chat_stream, self._content_type(headers, array),
                                  write, lambda exc: self._error_frame(framer, exc))

    # -- embeddings ------------------------------------------------------------------

    async def _embed(self, request: web.Request, params: dict[str, Any],
                     deployment: Deployment, ctx: CallContext, *,
                     method: str) -> web.StreamResponse:
        headers = self._headers(ctx.call_id)
        provider = _native(deployment)
        if provider is not None and deployment.provider == "gemini":
            # Google wants each request to name the URL's model: the deployment's.
            body = dict(params["body"])
            name = f"models/{deployment.model}"
            if params["batch"]:
                body["requests"] = [{**r, "model": name} for r in body["requests"]]
            elif "model" in body:
                body["model"] = name
            upstream = provider.gemini_request(deployment, method, orjson.dumps(body))
            result, event = await engine.forward(
                deployment, upstream, native_answer(params["input"]), params, ctx, self.gw,
                self.gw.prices, kind="embedding")
            answer = result.raw or orjson.dumps(result.body)
        else:
            embed = {"model": deployment.model, "input": params["input"]}
            if params.get("dimensions") is not None:
                embed["dimensions"] = params["dimensions"]
            result, event = await engine.embedding(deployment, embed, ctx, self.gw,
                                                   self.gw.prices)
            answer = orjson.dumps(to_gemini_embeddings(result.body, params["batch"]))
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=answer, headers=headers, content_type="application/json")

    # -- countTokens -----------------------------------------------------------------

    async def count_tokens(self, request: web.Request, model: str) -> web.StreamResponse:
        """Google's count from the first native deployment of the group; else an
        estimate (``x-tallygate-token-count: estimated``). Not billed."""
        started = time.perf_counter()
        try:
            answer = await self._count(request, model)
        except TallygateError as exc:
            answer = error_response(exc)
        except Exception:
            log.exception("countTokens failed inside the gateway")
            answer = error_response(InternalError("internal gateway error"))
        self.calls.observe("gemini_count_tokens", model, answer.status, started)
        return answer

    async def _count(self, request: web.Request, model: str) -> web.Response:
        identity = await self.gw.access.authenticate(request)
        raw = await read_body(request, self.gw)
        data = parse_json_object(raw)
        group = model_group(self.gw, model)
        self.gw.access.check_model(identity, model)
        inner = data.get("generateContentRequest", data.get("generate_content_request"))
        request_body = fields(inner, "generateContentRequest") if inner is not None else data
        chat = GeminiTranslation().params(request_body)  # checked before anything is sent
        headers = {REQUEST_ID_HEADER: new_call_id()}
        for deployment in group:
            provider = _native(deployment)
            if provider is None:
                continue
            if inner is not None:
                # Google wants the model named inside: the deployment's, not the group's.
                out = {**request_body, "model": f"models/{deployment.model}"}
                out.pop("labels", None)
                raw = orjson.dumps({"generateContentRequest": out})
            upstream = provider.gemini_request(deployment, "countTokens", raw)
            answer = await engine.unbilled(deployment, upstream)
            return web.Response(body=answer, headers=headers, content_type="application/json")
        headers[TOKEN_COUNT_HEADER] = "estimated"
        total = estimate_prompt_tokens(chat["messages"])
        for tool in chat.get("tools") or ():
            total += len(orjson.dumps(tool)) // 4
        return web.Response(body=orjson.dumps({"totalTokens": total}), headers=headers,
                            content_type="application/json")


    # -- models ----------------------------------------------------------------------

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"name": f"models/{name}", "displayName": name,
                "supportedGenerationMethods": list(METHODS)}

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """The model groups in Google's ``ListModelsResponse`` shape (one page)."""
        try:
            await self.gw.access.authenticate(request)
        except TallygateError as exc:
            return error_response(exc)
        body = {"models": [self._model(n) for n in self.gw.model_names()]}
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={REQUEST_ID_HEADER: new_call_id()})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        try:
            await self.gw.access.authenticate(request)
            model_group(self.gw, name)
        except TallygateError as exc:
            return error_response(exc)
        return web.Response(body=orjson.dumps(self._model(name)),
                            content_type="application/json",
                            headers={REQUEST_ID_HEADER: new_call_id()})


def add_gemini_routes(app: web.Application, gw: Gateway) -> None:
    """``POST /v1beta/models/{model}:{method}`` (and under ``/v1``, which Google serves
    too); ``GET /v1beta/models`` and ``/v1beta/models/{model}`` in Google's shape (under
    ``/v1`` the OpenAI-shaped models routes answer)."""
    route = GeminiRoute(gw)
    for version in ("v1beta", "v1"):
        app.router.add_post(f"/{version}/models/{{target:.+}}", route.dispatch)
    app.router.add_get("/v1beta/models", route.list_models)
    app.router.add_get("/v1beta/models/{model:.+}", route.get_model)
