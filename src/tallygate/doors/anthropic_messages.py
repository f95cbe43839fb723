"""The Anthropic-shaped door: ``POST /v1/messages`` for clients of Anthropic's Messages API.

Two ways through, chosen by the deployment the access policy picks:

* Native: the deployment speaks the Messages API itself (``anthropic/``; a provider that
  implements ``NativeMessages``). The request goes on as it came, with only ``model``
  replaced, the gateway's credentials and the client's ``anthropic-version`` /
  ``anthropic-beta`` headers; the answer comes back as the upstream's bytes, and the
  usage is read from them (cache writes by lifetime, server tool use).
* Translated: any other provider. The request becomes OpenAI chat params
  (``anthropic_to_chat``), runs as a chat call, and the answer or chunk stream is
  rendered back as an Anthropic message or stream events (``anthropic_answers``).

Either way the call is admitted, billed once through the gateway's recorder
(``engine.forward`` / ``engine.chat`` / ``ChatStream``) and errors use Anthropic's
shape. ``POST /v1/messages/count_tokens`` is forwarded to a native deployment, else
estimated (and says so in a header); it is not billed.
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
from tallygate.attribution import stable_user_id
from tallygate.doors.anthropic_answers import MessageStreamEncoder, frame, to_message
from tallygate.doors.anthropic_request import check_fields
from tallygate.doors.anthropic_to_chat import ChatTranslation, bad
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import BadRequestError, InternalError, TallygateError
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.event import format_decimal, new_call_id
from tallygate.providers.anthropic import BETA_HEADER, VERSION_HEADER
from tallygate.providers.base import Deployment, NativeMessages
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
from tallygate.proxy.validation import parse_json_object, require_model

log = logging.getLogger("tallygate.proxy")

ANTHROPIC_REQUEST_ID_HEADER = "request-id"  # the Anthropic SDK shows it as ``_request_id``
# On a count_tokens answer the gateway estimated: "estimated".
TOKEN_COUNT_HEADER = "x-tallygate-token-count"
# Input tokens counted for an image in an estimate (Anthropic's figure for ~1.15 MP).
IMAGE_TOKENS = 1600

# Anthropic's error type for each status it documents.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


# --- errors ---------------------------------------------------------------------------

def error_status(exc: TallygateError) -> tuple[int, str]:
    """(HTTP status, Anthropic error type) for one of our errors.

    An upstream that said it is overloaded (Anthropic's 529, which the gateway reports as
    a 502) is a 529 ``overloaded_error`` again here: Anthropic clients know what it means.
    """
    if exc.error_type == "overloaded_error":
        return 529, "overloaded_error"
    status = exc.status_code
    if status in ERROR_TYPES:
        return status, ERROR_TYPES[status]
    if status >= 500:
        return status, "api_error"
    return status, "invalid_request_error"


def error_response(exc: TallygateError, call_id: str | None = None) -> web.Response:
    """``{"type": "error", "error": {"type", "message"}}`` with the right status; the
    error's headers (``Retry-After``, ``x-ratelimit-*``) are kept."""
    status, error_type = error_status(exc)
    headers = dict(exc.headers)
    request_id = call_id or new_call_id()
    headers[REQUEST_ID_HEADER] = headers[ANTHROPIC_REQUEST_ID_HEADER] = request_id
    if call_id:
        headers[CALL_ID_HEADER] = call_id
    body = {"type": "error", "error": {"type": error_type, "message": exc.message}}
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _error_frame(exc: TallygateError) -> bytes:
    _, error_type = error_status(exc)
    return frame({"type": "error", "error": {"type": error_type, "message": exc.message}})


# --- the request ----------------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_messages(data: Mapping[str, Any]) -> None:
    """The checks every Messages request passes before admission, whatever the
    deployment: a clear 400 naming the field, nothing reserved yet."""
    require_model(dict(data))
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise BadRequestError("max_tokens: Field required", param="max_tokens",
                              code="missing_required_parameter")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise bad("max_tokens must be a positive integer", "max_tokens")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"{where} must be an object", where)
        if message.get("role") not in ("user", "assistant", "system"):
            raise bad(f"{where}.role must be 'user', 'assistant' or 'system'", f"{where}.role")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream must be a boolean", "stream")
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise bad("metadata must be an object", "metadata")
        if metadata.get("user_id") is not None and not isinstance(metadata["user_id"], str):
            raise bad("metadata.user_id must be a string", "metadata.user_id")
    check_fields(data)  # ranges, tool_use inputs, storable metadata


def admission_params(data: dict[str, Any]) -> dict[str, Any]:
    """What the access policy reads (``user``, gateway ``metadata``, ``max_tokens``,
    ``messages`` for the estimates), with the request body itself under ``body``.

    ``metadata.user_id`` is the end user who pays (the ``user`` of a chat call; for
    Claude Code's JSON form its account or device, never its session); the other
    metadata keys are the gateway's, never sent upstream.
    """
    check_messages(data)
    metadata = dict(data.get("metadata") or {})
    raw_user = metadata.pop("user_id", None)
    system = data.get("system")
    messages = list(data["messages"])
    if system:
        messages.insert(0, {"role": "system", "content": system})
    params: dict[str, Any] = {"model": data["model"], "max_tokens": data["max_tokens"],
                              "messages": messages, "metadata": metadata,
                              "stream": bool(data.get("stream")), "body": data}
    user = stable_user_id(raw_user) if raw_user else None
    if user:
        params["user"] = user
    return params


def upstream_body(data: Mapping[str, Any]) -> dict[str, Any]:
    """The body a native deployment gets: the client's, less the gateway's own metadata
    keys (the Messages API takes only ``metadata.user_id``)."""
    body = dict(data)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
        if "user_id" in metadata:
            body["metadata"] = {"user_id": metadata["user_id"]}
        else:
            del body["metadata"]
    return body


def kept_headers(request: web.Request) -> dict[str, str]:
    """The client's API headers a native call keeps: its API version and beta flags."""
    return {name: request.headers[name] for name in (VERSION_HEADER, BETA_HEADER)
            if request.headers.get(name)}


def _beta_query(request: web.Request) -> str:
    """Anthropic's SDKs call beta features at ``?beta=true``: kept. No other query goes
    upstream with the gateway's credentials."""
    return "beta=true" if request.query.get("beta") == "true" else ""


def _native(deployment: Deployment) -> NativeMessages | None:
    provider = get_provider(deployment.provider)
    if isinstance(provider, NativeMessages) and provider.speaks_messages(deployment):
        return provider
    return None


# --- token counting -------------------------------------------------------------------

def _block_text(block: object) -> tuple[str, int]:
    """(text, image count) of a content value, nested tool results included."""
    if isinstance(block, str):
        return block, 0
    if isinstance(block, list):
        texts, images = [], 0
        for inner in block:
            text, n = _block_text(inner)
            texts.append(text)
            images += n
        return " ".join(texts), images
    if not isinstance(block, dict):
        return "", 0
    kind = block.get("type")
    if kind == "image":
        return "", 1
    parts = [block[k] for k in ("text", "thinking") if isinstance(block.get(k), str)]
    if kind in ("tool_use", "server_tool_use"):
        parts.append(str(block.get("name") or "") + orjson.dumps(block.get("input")).decode())
    images = 0
    if "content" in block:
        text, images = _block_text(block["content"])
        parts.append(text)
    source = block.get("source")
    if isinstance(source, dict) and isinstance(source.get("data"), str) and kind == "document":
        # A text document is read as text; a PDF's size is a rough guide to its tokens.
        parts.append(source["data"] if source.get("type") == "text"
                     else source["data"][: len(source["data"]) * 3 // 4])
    return " ".join(parts), images


def estimate_input_tokens(data: Mapping[str, Any]) -> int:
    """An estimate of a Messages request's input tokens, for deployments that cannot
    count them: text at about four characters a token, tools as their JSON."""
    messages: list[Any] = []
    images = 0
    for message in data.get("messages") or ():
        if isinstance(message, dict):
            text, n = _block_text(message.get("content"))
            messages.append({"role": message.get("role"), "content": text})
            images += n
    total = estimate_prompt_tokens(messages)
    if data.get("system"):
        total += estimate_text_tokens(_block_text(data["system"])[0])
    for tool in data.get("tools") or ():
        total += estimate_text_tokens(orjson.dumps(tool).decode())
    return total + images * IMAGE_TOKENS


# --- routes ---------------------------------------------------------------------------

class MessagesRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    def _headers(self, call_id: str) -> dict[str, str]:
        return {ANTHROPIC_REQUEST_ID_HEADER: call_id, **self.calls.answer_headers(call_id)}

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "messages", admission_params, self._create,
                                    on_error=error_response)

    async def _create(self, request: web.Request, params: dict[str, Any],
                      deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        provider = _native(deployment)
        if provider is not None:
            return await self._forward(request, provider, params, deployment, ctx)
        return await self._translate(request, params, deployment, ctx)

    # -- native: bytes through -------------------------------------------------------

    async def _forward(self, request: web.Request, provider: NativeMessages,
                       params: dict[str, Any], deployment: Deployment,
                       ctx: CallContext) -> web.StreamResponse:
        upstream = provider.messages_request(
            deployment, upstream_body(params["body"]), kept_headers(request),
            stream=params["stream"], query=_beta_query(request))
        if not params["stream"]:
            result, event = await engine.forward(
                deployment, upstream, partial(provider.messages_response, deployment), params,
                ctx, self.gw, self.gw.prices)
            headers = self._headers(ctx.call_id)
            if event.cost is not None:
                headers[COST_HEADER] = format_decimal(event.cost)
            return web.Response(body=result.raw or orjson.dumps(result.body), headers=headers,
                                content_type="application/json")
        decoder = provider.messages_stream(deployment)
        stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices,
                            include_usage=False, request=upstream, decoder=decoder)

        async def write(resp: web.StreamResponse) -> None:
            async for items in stream.pieces():  # the upstream's frames, as they came
                await resp.write(b"".join([item.frame for item in items]))
            # Billed (outbox write) before the last frame, message_stop, goes out.
            await stream.finish()
            await resp.write_eof(decoder.tail)

        return await serve_stream(request, stream, self._headers(ctx.call_id), write,
                                  _error_frame)

    # -- translated: through the chat path -------------------------------------------

    async def _translate(self, request: web.Request, params: dict[str, Any],
                         deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        translation = ChatTranslation(deployment)
        try:
            chat = translation.params(params["body"])
        except TallygateError as exc:
            # Refused after admission: give the reservation back.
            await self.gw.record_failure(engine.failure_event(ctx, deployment, exc))
            raise
        if params.get("user"):
            chat["user"] = params["user"]
        # What the provider has no field for: left out and named, as the door's own drops.
        translation.dropped.extend(pop_unsupported(deployment, chat))
        headers = self._headers(ctx.call_id)
        if translation.dropped:
            headers[DROPPED_HEADER] = dropped_header(translation.dropped)
        message_id = "msg_" + ctx.call_id.replace("-", "_")
        if params["stream"]:
            return await self._stream(request, deployment, chat, ctx, message_id, headers)
        result, event = await engine.chat(deployment, chat, ctx, self.gw, self.gw.prices)
        upstream_id = result.body.get("id")
        if isinstance(upstream_id, str) and upstream_id.startswith("msg_"):
            message_id = upstream_id
        body = to_message(result.body, event.usage, message_id, deployment.model)
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=orjson.dumps(body), headers=headers,
                            content_type="application/json")

    async def _stream(self, request: web.Request, deployment: Deployment,
                      chat: dict[str, Any], ctx: CallContext, message_id: str,
                      headers: dict[str, str]) -> web.StreamResponse:
        stream = ChatStream(deployment, chat, ctx, self.gw, self.gw.prices,
                            include_usage=False)
        encoder = MessageStreamEncoder(message_id, deployment.model,
                                       estimate_prompt_tokens(chat["messages"]))

        async def write(resp: web.StreamResponse) -> None:
            await resp.write(encoder.start())
            async for items in stream.pieces():  # one write per upstream read
                frames = [f for item in items for f in encoder.feed(item.data)]
                if frames:
                    await resp.write(b"".join(frames))
            # The iteration ended with the bill written (finish); its usage closes the
            # message, so the client reads the billed numbers.
            event = await stream.finish()
            assert event is not None  # the stream ended well: it billed itself
            await resp.write_eof(encoder.end(event.usage))

        return await serve_stream(request, stream, headers, write, _error_frame)

    # -- count_tokens ----------------------------------------------------------------

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's count, from the first native deployment of the model group; for
        a group without one, an estimate (``x-tallygate-token-count: estimated``)."""
        started = time.perf_counter()
        request_id = new_call_id()
        model: list[str] = []  # for the metric, once known
        try:
            answer = await self._count(request, request_id, model)
        except TallygateError as exc:
            answer = error_response(exc)
        except Exception:
            log.exception("count_tokens %s failed inside the gateway", request_id)
            answer = error_response(InternalError("internal gateway error"))
        self.calls.observe("count_tokens", model[0] if model else None, answer.status, started)
        return answer

    async def _count(self, request: web.Request, request_id: str,
                     model_seen: list[str]) -> web.Response:
        identity = await self.gw.access.authenticate(request)
        data = parse_json_object(await read_body(request, self.gw))
        model = require_model(data)
        model_seen.append(model)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("messages must be a non-empty list", "messages")
        group = model_group(self.gw, model)
        self.gw.access.check_model(identity, model)
        headers = {REQUEST_ID_HEADER: request_id, ANTHROPIC_REQUEST_ID_HEADER: request_id}
        for deployment in group:
            provider = _native(deployment)
            if provider is not None:
                raw = await engine.unbilled(deployment, provider.count_tokens_request(
                    deployment, upstream_body(data), kept_headers(request)))
                return web.Response(body=raw, headers=headers, content_type="application/json")
        headers[TOKEN_COUNT_HEADER] = "estimated"
        body = {"input_tokens": estimate_input_tokens(data)}
        return web.Response(body=orjson.dumps(body), headers=headers,
                            content_type="application/json")


def is_messages_path(path: str) -> bool:
    """Whether ``path`` is this door's (its errors then take Anthropic's shape)."""
    return path.startswith(("/v1/messages", "/messages"))


def add_messages_routes(app: web.Application, gw: Gateway) -> None:
    """``POST /v1/messages`` and ``/v1/messages/count_tokens`` (each also without /v1)."""
    route = MessagesRoute(gw)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/messages", route.create)
        app.router.add_post(f"{prefix}/messages/count_tokens", route.count_tokens)
