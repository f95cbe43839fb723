"""The Anthropic-shaped door: ``POST /v1/messages`` for clients of Anthropic's Messages API.

A Messages API request is translated into OpenAI chat parameters and then runs the same
path as ``/v1/chat/completions``: the access policy admits it and picks the deployment,
``engine.chat`` / ``ChatStream`` call the provider and bill the call once through the
gateway. The OpenAI-shaped answer (or chunk stream) is translated back into an Anthropic
message (or Anthropic stream events). Any provider serves the door: an ``anthropic/``
deployment goes OpenAI -> Anthropic again in its adapter, an ``openai/`` or ``mock/`` one
answers as it always does.

Usage in answers comes from the billed ``UsageEvent`` (disjoint buckets), so what the
client reads is what Lago is sent. Errors use Anthropic's error shape and statuses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from tallygate import engine
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import BadRequestError, TallygateError
from tallygate.estimate import estimate_prompt_tokens
from tallygate.event import format_decimal
from tallygate.providers.base import Deployment
from tallygate.providers.registry import get_provider
from tallygate.proxy.calls import (
    CALL_ID_HEADER,
    COST_HEADER,
    CallFrame,
    serve_stream,
)
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.validation import require_model
from tallygate.usage import Usage

log = logging.getLogger("tallygate.proxy")

REQUEST_ID_HEADER = "request-id"  # the Anthropic SDK shows it as ``_request_id``

# OpenAI finish_reason -> Anthropic stop_reason
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic's error type for each status it documents.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
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
    if call_id:
        headers[CALL_ID_HEADER] = call_id
        headers[REQUEST_ID_HEADER] = call_id
    body = {"type": "error", "error": {"type": error_type, "message": exc.message}}
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _error_frame(exc: TallygateError) -> bytes:
    _, error_type = error_status(exc)
    return _frame({"type": "error", "error": {"type": error_type, "message": exc.message}})


# --- request: Messages API body -> OpenAI chat params ---------------------------------

def _bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="invalid_request")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _cached(part: dict[str, Any], block: Mapping[str, Any]) -> dict[str, Any]:
    """Keep a prompt-caching breakpoint (the Anthropic adapter reads it on parts)."""
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _text_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text must be a string", where)
    return _cached({"type": "text", "text": text}, block)


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source must be an object", where)
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise _bad(f"{where}.source needs media_type and data strings", where)
        url = f"data:{media_type};base64,{data}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad(f"{where}.source type {kind!r} is not supported (base64 or url)", where)
    return _cached({"type": "image_url", "image_url": {"url": url}}, block)


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone plain text part as a string (every OpenAI-compatible server takes that)."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content blocks", where)
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}[{i}] must be a content block with a type", f"{where}[{i}]")
    return content


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _bad(f"{where}.tool_use_id is required", where)
    content = block.get("content")
    parts: list[dict[str, Any]] = []
    if content is not None:
        for i, inner in enumerate(_blocks(content, f"{where}.content")):
            at = f"{where}.content[{i}]"
            if inner["type"] == "text":
                parts.append(_text_part(inner, at))
            elif inner["type"] == "image":
                parts.append(_image_part(inner, at))
            else:
                raise _bad(f"{at}: block type {inner['type']!r} is not supported in "
                           "tool_result", at)
    value: str | list[dict[str, Any]] = _content(parts) if parts else ""
    return {"role": "tool", "tool_call_id": tool_use_id, "content": value}


def _user_messages(content: object, where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results become ``tool`` messages (first, as OpenAI
    wants them right after the assistant's calls), the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(_blocks(content, where)):
        at, kind = f"{where}[{i}]", block["type"]
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
        else:
            raise _bad(f"{at}: content block type {kind!r} is not supported by this "
                       "gateway", at)
    out = results
    if parts:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _assistant_message(content: object, where: str) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(_blocks(content, where)):
        at, kind = f"{where}[{i}]", block["type"]
        if kind == "text":
            if block.get("text"):
                parts.append(_text_part(block, at))
        elif kind == "tool_use":
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise _bad(f"{at}: tool_use needs an id and a name", at)
            arguments = block.get("input")
            calls.append({"id": call_id, "type": "function", "function": {
                "name": name, "arguments": orjson.dumps(arguments or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: no OpenAI equivalent, not needed to continue
        else:
            raise _bad(f"{at}: content block type {kind!r} is not supported by this "
                       "gateway", at)
    if not parts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system(system: object, where: str = "system") -> dict[str, Any] | None:
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    parts = []
    for i, block in enumerate(_blocks(system, where)):
        if block["type"] != "text":
            raise _bad(f"{where}[{i}] must be a text block", f"{where}[{i}]")
        parts.append(_text_part(block, f"{where}[{i}]"))
    return {"role": "system", "content": _content(parts)} if parts else None


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _bad(f"{where} must be an object with a name", where)
        if tool.get("type") not in (None, "custom"):
            raise _bad(f"{where}: server tool {tool['type']!r} is not supported by this "
                       "gateway; only client tools with an input_schema", where)
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise _bad(f"{where}.input_schema must be an object", where)
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": schema or {"type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append(_cached({"type": "function", "function": function}, tool))
    return out


def _tool_choice(choice: object, params: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise _bad("tool_choice must be an object with a type", "tool_choice")
    kind = choice.get("type")
    if kind in ("auto", "none"):
        params["tool_choice"] = kind
    elif kind == "any":
        params["tool_choice"] = "required"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad(f"tool_choice type {kind!r} is not supported (auto, any, tool, none)",
                   "tool_choice")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        params["parallel_tool_calls"] = False


def to_chat_params(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(OpenAI chat params, gateway metadata, stream?) for a Messages API request body.

    ``metadata.user_id`` becomes ``user`` (the end user who pays under
    ``LAGO_API_CHARGE_BY=end_user_id``); other metadata keys are the gateway's metadata,
    never sent upstream. Fields with no equivalent (``thinking``, ``service_tier``, ...)
    are not forwarded.
    """
    model = require_model(dict(data))
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise BadRequestError("max_tokens: Field required", param="max_tokens",
                              code="missing_required_parameter")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens must be a positive integer", "max_tokens")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages must be a non-empty list", "messages")
    messages: list[dict[str, Any]] = []
    if data.get("system") is not None:
        system = _system(data["system"])
        if system is not None:
            messages.append(system)
    for i, message in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object", where)
        role, content = message.get("role"), message.get("content")
        if role == "user":
            messages.extend(_user_messages(content, f"{where}.content"))
        elif role == "assistant":
            turn = _assistant_message(content, f"{where}.content")
            if turn is not None:
                messages.append(turn)
        elif role == "system":  # newer API versions allow system turns in messages
            turn = _system(content, f"{where}.content")
            if turn is not None:
                messages.append(turn)
        else:
            raise _bad(f"{where}.role must be 'user', 'assistant' or 'system'",
                       f"{where}.role")
    params: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _bad(f"{name} must be a number", name)
            params[name] = value
    stop = data.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences must be a list of strings", "stop_sequences")
        if stop:
            params["stop"] = stop
    if data.get("tools"):
        params["tools"] = _tools(data["tools"])
        if data.get("tool_choice") is not None:
            _tool_choice(data["tool_choice"], params)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    metadata = data.get("metadata")
    gateway_metadata: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata must be an object", "metadata")
        gateway_metadata = {k: v for k, v in metadata.items() if k != "user_id"}
        user = metadata.get("user_id")
        if user is not None:
            if not isinstance(user, str):
                raise _bad("metadata.user_id must be a string", "metadata.user_id")
            if user:
                params["user"] = user
    return params, gateway_metadata, bool(stream)


def _without_cache_control(content: object) -> object:
    if not isinstance(content, list):
        return content
    return [{k: v for k, v in p.items() if k != "cache_control"} if isinstance(p, dict) else p
            for p in content]


def for_deployment(params: dict[str, Any], deployment: Deployment) -> dict[str, Any]:
    """The params as this deployment's provider takes them: only the Anthropic adapter
    reads ``cache_control``, and ``top_k`` goes only to providers that read it (Cohere's
    ``k``, Ollama's option); an OpenAI-compatible server may refuse either."""
    if deployment.provider == "anthropic":
        return params
    keep_top_k = get_provider(deployment.provider).reads_top_k
    out = {k: v for k, v in params.items() if k != "top_k" or keep_top_k}
    out["messages"] = [{**m, "content": _without_cache_control(m["content"])}
                       if isinstance(m.get("content"), list) else m for m in params["messages"]]
    if "tools" in params:
        out["tools"] = [{k: v for k, v in t.items() if k != "cache_control"}
                        for t in params["tools"]]
    return out


# --- answer: OpenAI chat.completion -> Anthropic message -------------------------------

def usage_dict(usage: Usage) -> dict[str, int]:
    """Anthropic's usage object from our disjoint buckets (``input_tokens`` uncached)."""
    return {"input_tokens": usage.input_tokens + usage.audio_input_tokens,
            "cache_creation_input_tokens": usage.cache_write_all_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "output_tokens": usage.completion_tokens}


def _tool_use_id() -> str:
    return "toolu_" + os.urandom(12).hex()


def _tool_input(arguments: object) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    # Anthropic's input is always an object; keep text that is not one rather than lose it.
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def stop_reason(finish_reason: object, has_tools: bool) -> str:
    reason = STOP_REASONS.get(finish_reason, "end_turn") if isinstance(
        finish_reason, str) else "end_turn"
    # Some OpenAI-compatible servers say "stop" after tool calls.
    return "tool_use" if has_tools and reason == "end_turn" else reason


def to_message(body: Mapping[str, Any], usage: Usage, message_id: str,
               model: str) -> dict[str, Any]:
    """The Anthropic message for an OpenAI chat.completion body and the billed usage."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    for call in calls:
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id") or _tool_use_id(),
                       "name": function.get("name") or "",
                       "input": _tool_input(function.get("arguments"))})
    return {"id": message_id, "type": "message", "role": "assistant",
            "model": body.get("model") or model, "content": blocks,
            "stop_reason": stop_reason(choice.get("finish_reason"), bool(calls)),
            "stop_sequence": None, "usage": usage_dict(usage)}


# --- stream: OpenAI chunks -> Anthropic stream events ----------------------------------

def _frame(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class MessageStreamEncoder:
    """Builds Anthropic stream events from OpenAI chat chunks.

    ``start`` (message_start), ``feed`` per chunk (content_block_start / delta / stop for
    text and tool_use), ``end`` with the billed usage (message_delta, message_stop).
    message_start carries an estimate of the input; message_delta carries the billed
    numbers, cumulative, which the Anthropic SDK takes over the earlier ones.
    """

    def __init__(self, message_id: str, model: str, input_estimate: int) -> None:
        self.message_id = message_id
        self.model = model
        self.input_estimate = input_estimate
        self._open: int | None = None      # index of the open content block
        self._open_kind: str | None = None
        self._blocks = 0
        self._tools: dict[int, int] = {}   # OpenAI tool_calls index -> block index
        self._finish: object = None

    def start(self) -> bytes:
        return _frame({"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 0}}})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open, self._open_kind = self._open, None, None
        return [_frame({"type": "content_block_stop", "index": index})]

    def _begin(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._open, self._open_kind = self._blocks, kind
        self._blocks += 1
        out.append(_frame({"type": "content_block_start", "index": self._open,
                           "content_block": block}))
        return out

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._open_kind != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                out.append(_frame({"type": "content_block_delta", "index": self._open,
                                   "delta": {"type": "text_delta", "text": text}}))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                key = call.get("index", 0)
                index = self._tools.get(key)
                if index is None:
                    out += self._begin("tool_use", {
                        "type": "tool_use", "id": call.get("id") or _tool_use_id(),
                        "name": function.get("name") or "", "input": {}})
                    index = self._tools[key] = self._blocks - 1
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    out.append(_frame({"type": "content_block_delta", "index": index,
                                       "delta": {"type": "input_json_delta",
                                                 "partial_json": arguments}}))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def end(self, usage: Usage) -> bytes:
        out = self._close()
        out.append(_frame({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason(self._finish, bool(self._tools)),
                                     "stop_sequence": None},
                           "usage": usage_dict(usage)}))
        out.append(_frame({"type": "message_stop"}))
        return b"".join(out)


# --- routes ---------------------------------------------------------------------------

def _prepare(data: dict[str, Any]) -> dict[str, Any]:
    """The call's OpenAI-shaped params, with the gateway's ``metadata`` and ``stream``
    (both taken off again before the upstream request)."""
    params, metadata, stream = to_chat_params(data)
    return {**params, "metadata": metadata, "stream": stream}


class MessagesRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    def _headers(self, call_id: str) -> dict[str, str]:
        return {CALL_ID_HEADER: call_id, REQUEST_ID_HEADER: call_id,
                **self.gw.access.response_headers(call_id)}

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "messages", _prepare, self._create,
                                    on_error=error_response)

    async def _create(self, request: web.Request, data: dict[str, Any],
                      deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        params = for_deployment({k: v for k, v in data.items()
                                 if k not in ("metadata", "stream")}, deployment)
        message_id = "msg_" + ctx.call_id.replace("-", "_")
        if data["stream"]:
            return await self._stream(request, deployment, params, ctx, message_id)
        result, event = await engine.chat(deployment, params, ctx, self.gw, self.gw.prices)
        upstream_id = result.body.get("id")
        if isinstance(upstream_id, str) and upstream_id.startswith("msg_"):
            message_id = upstream_id
        body = to_message(result.body, event.usage, message_id, deployment.model)
        headers = self._headers(ctx.call_id)
        if event.cost is not None:
            headers[COST_HEADER] = format_decimal(event.cost)
        return web.Response(body=orjson.dumps(body), headers=headers,
                            content_type="application/json")

    async def _stream(self, request: web.Request, deployment: Deployment,
                      params: dict[str, Any], ctx: CallContext,
                      message_id: str) -> web.StreamResponse:
        stream = ChatStream(deployment, params, ctx, self.gw, self.gw.prices,
                            include_usage=False)
        encoder = MessageStreamEncoder(message_id, deployment.model,
                                       estimate_prompt_tokens(params["messages"]))

        async def write(resp: web.StreamResponse) -> None:
            await resp.write(encoder.start())
            async for items in stream.pieces():  # one write per upstream read
                frames = [frame for item in items for frame in encoder.feed(item.data)]
                if frames:
                    await resp.write(b"".join(frames))
            # The iteration ended with the bill written (finish); its usage closes the
            # message, so the client reads the billed numbers.
            event = await stream.finish()
            await resp.write_eof(encoder.end(event.usage))

        return await serve_stream(request, stream, self._headers(ctx.call_id), write,
                                  _error_frame)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        return error_response(_NotServed("POST /v1/messages/count_tokens is not served by "
                                         "this gateway"))


class _NotServed(TallygateError):
    status_code = 404
    error_type = "not_found_error"


def add_messages_routes(app: web.Application, gw: Gateway) -> None:
    """``POST /v1/messages`` (and ``/messages``); ``count_tokens`` answers 404."""
    route = MessagesRoute(gw)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/messages", route.create)
        app.router.add_post(f"{prefix}/messages/count_tokens", route.count_tokens)
