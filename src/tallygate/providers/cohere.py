"""Cohere's v2 API: OpenAI chat params in, OpenAI answers and chunks out; v2 Embed.

``cohere/<model>`` (and LiteLLM's ``cohere_chat/<model>``) posts to
``{api_base}/v2/chat`` with ``Authorization: Bearer`` (``COHERE_API_KEY``). Usage is
what Cohere bills, ``usage.billed_units``, not ``usage.tokens`` (the raw count, which
includes the prompt template Cohere adds and does not charge for); a count missing
from ``billed_units`` falls back to ``tokens``, and one missing from both is estimated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import (
    BadRequestError,
    ConfigError,
    UpstreamError,
    retry_after_of,
    upstream_error_for,
)
from tallygate.estimate import estimate_text_tokens
from tallygate.providers import translate as tr
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    Provider,
    StreamDecoder,
    StreamedBody,
    StreamItem,
    UpstreamRequest,
)
from tallygate.providers.registry import register
from tallygate.providers.sse import SSEParser
from tallygate.usage import Usage

LABEL = "Cohere"
DEFAULT_API_BASE = "https://api.cohere.com"
DEFAULT_INPUT_TYPE = "search_document"  # LiteLLM's default for Cohere embeddings

FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "TIMEOUT": "length",  # the answer was cut short; what came is kept and billed
}


def finish_reason(value: object) -> str:
    return FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"


def cohere_usage(raw: object, *, output: bool = True) -> Usage | None:
    """Usage from ``usage`` (chat) or ``meta`` (embed): ``billed_units``, what Cohere
    charges. A count missing there is taken from ``tokens`` (the raw count, template
    included, so larger) and the usage is flagged estimated. ``cached_tokens`` is not a
    bucket of its own: ``billed_units`` already says what is charged. None when no
    count is there at all. ``output=False`` reads an embed answer (input only)."""
    if not isinstance(raw, dict):
        return None
    billed = tr.obj(raw.get("billed_units"))
    tokens = tr.obj(raw.get("tokens"))
    values: list[int | None] = []
    from_billed = True
    for name in ("input_tokens", "output_tokens") if output else ("input_tokens",):
        value = tr.count(billed.get(name))
        if value is None:
            from_billed = False
            value = tr.count(tokens.get(name))
        values.append(value)
    if all(v is None for v in values):
        return None
    # A missing input count stays 0: the engine estimates a prompt reported as empty.
    out_tokens = (values[1] or 0) if output else 0
    return Usage(input_tokens=values[0] or 0, output_tokens=out_tokens,
                 source="provider" if from_billed else "estimated")


# --- request: OpenAI chat params -> v2 Chat body -----------------------------------------

def _user_content(content: object, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for part in tr.content_parts(content, where):
        kind = part.get("type")
        if kind == "text":
            out.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "image_url":
            url, detail = tr.image_url(part, where)
            image: dict[str, Any] = {"url": url}
            if detail:
                image["detail"] = detail
            out.append({"type": "image_url", "image_url": image})
        else:
            raise tr.unsupported_part(kind, LABEL, where)
    return out


def _tool_calls(calls: object, where: str) -> list[dict[str, Any]]:
    out = []
    for call, fn in tr.call_functions(calls, where):
        args = fn.get("arguments")
        out.append({"id": str(call.get("id") or tr.new_id("call_")), "type": "function",
                    "function": {"name": fn["name"],
                                 "arguments": args if isinstance(args, str)
                                 else orjson.dumps(args or {}).decode()}})
    return out


def translate_messages(messages: object) -> list[dict[str, Any]]:
    """OpenAI messages as v2 Chat messages. An assistant turn's text beside its tool
    calls is Cohere's ``tool_plan`` (the answers give the plan back as that text)."""
    out: list[dict[str, Any]] = []
    for where, message in tr.message_list(messages):
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": tr.text_of(content, LABEL, where)})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(content, where)})
        elif role == "assistant":
            text = tr.text_of(content, LABEL, where)
            turn: dict[str, Any] = {"role": "assistant"}
            if message.get("tool_calls"):
                turn["tool_calls"] = _tool_calls(message["tool_calls"], where)
                if text:
                    turn["tool_plan"] = text
            elif text:
                turn["content"] = text
            else:
                continue  # an empty assistant turn: Cohere refuses those
            out.append(turn)
        elif role == "tool":
            if not message.get("tool_call_id"):
                raise BadRequestError("tool messages need a tool_call_id", param=where)
            result: str | list[dict[str, Any]] = (
                content if isinstance(content, str)
                else [{"type": "text", "text": tr.text_of(content, LABEL, where)}])
            out.append({"role": "tool", "tool_call_id": str(message["tool_call_id"]),
                        "content": result})
        else:
            raise tr.unsupported_role(role, LABEL, where)
    return out


def translate_tools(tools: object, choice: object) -> tuple[list[dict[str, Any]], str | None,
                                                           bool]:
    """(tools, tool_choice, strict_tools). Cohere's tool_choice is REQUIRED or NONE; a
    choice naming one function is served as REQUIRED with only that function offered."""
    functions = tr.function_tools(tools)
    strict = any(fn.get("strict") is True for fn in functions)
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        functions = [fn for fn in functions if fn["name"] == named]
        if not functions:
            raise BadRequestError(f"tool_choice names {named!r}, which is not in tools",
                                  param="tool_choice")
        choice = "required"
    out = tr.function_tool_entries(functions)
    if choice in (None, "auto"):
        return out, None, strict
    if choice in ("required", "none"):
        return out, str(choice).upper(), strict
    raise BadRequestError(f"unsupported tool_choice {choice!r}", param="tool_choice")


def translate_response_format(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(value, dict):
        schema = (value.get("json_schema") or {}).get("schema")
        return ({"type": "json_object", "json_schema": schema} if isinstance(schema, dict)
                else {"type": "json_object"})
    raise BadRequestError(f"unsupported response_format {value!r}", param="response_format")


# OpenAI name -> v2 Chat name, for the sampling params passed as they are.
_SAMPLING = {"temperature": "temperature", "top_p": "p", "p": "p", "top_k": "k", "k": "k",
             "seed": "seed", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty"}


def build_body(model: str, params: Mapping[str, Any], extra: Mapping[str, Any],
               stream: bool) -> dict[str, Any]:
    """The v2 Chat body for OpenAI chat ``params``; ``extra`` are the deployment's
    Cohere litellm_params (``safety_mode``)."""
    tr.refuse_untranslatable(params, LABEL)
    body: dict[str, Any] = {"model": model, "messages": translate_messages(params.get("messages"))}
    limit = tr.max_tokens(params)
    if limit is not None:
        body["max_tokens"] = limit
    for name, target in _SAMPLING.items():
        if params.get(name) is not None:
            body[target] = params[name]
    stop = tr.stop_list(params.get("stop"))
    if stop:
        body["stop_sequences"] = stop
    if params.get("tools"):
        tools, choice, strict = translate_tools(params["tools"], params.get("tool_choice"))
        body["tools"] = tools
        if choice:
            body["tool_choice"] = choice
        if strict:
            body["strict_tools"] = True
    fmt = translate_response_format(params.get("response_format"))
    if fmt is not None:
        body["response_format"] = fmt
    effort = params.get("reasoning_effort")
    if effort is not None:
        body["thinking"] = {"type": "disabled" if effort in ("none", "minimal") else "enabled"}
    safety = params.get("safety_mode") or extra.get("safety_mode")
    if safety:
        body["safety_mode"] = safety
    if stream:
        body["stream"] = True
    return body


# --- answer: v2 Chat response -> OpenAI chat.completion ----------------------------------

def _answer_parts(message: Mapping[str, Any]) -> tuple[str, str]:
    """(text, thinking) of an assistant message's content items."""
    text, thinking = [], []
    for item in message.get("content") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text":
            text.append(str(item.get("text") or ""))
        elif item.get("type") == "thinking":
            thinking.append(str(item.get("thinking") or ""))
    return "".join(text), "".join(thinking)


def _answer_tool_calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.append(tr.tool_call(str(call.get("id") or tr.new_id("call_")),
                                    str(fn.get("name") or ""), str(fn.get("arguments") or "{}")))
    return out


def generation_failed(finish: object, detail: object) -> UpstreamError:
    message = f"Cohere ended the generation with {finish}"
    if isinstance(detail, str) and detail:
        message += f": {detail}"
    return UpstreamError(message, code="upstream_generation_error")


def translate_response(parsed: Mapping[str, Any], model: str) -> ChatResult:
    if parsed.get("finish_reason") == "ERROR":
        raise generation_failed("ERROR", parsed.get("error"))
    message = tr.obj(parsed.get("message"))
    text, thinking = _answer_parts(message)
    calls = _answer_tool_calls(message)
    plan = message.get("tool_plan")
    if calls and isinstance(plan, str) and plan and not text:
        text = plan  # the plan the model wrote before its tool calls
    usage = cohere_usage(parsed.get("usage"))
    if usage is not None and usage.source == "estimated" and not usage.output_tokens:
        usage = Usage(input_tokens=usage.input_tokens, source="estimated",
                      output_tokens=estimate_text_tokens(
                          text + thinking + "".join(c["function"]["arguments"] for c in calls)))
    body = tr.chat_completion(str(parsed.get("id") or tr.new_id("chatcmpl-")), model,
                              tr.assistant_message(text, calls, thinking),
                              finish_reason(parsed.get("finish_reason")), usage)
    return ChatResult(body=body, usage=usage, raw=None)


def upstream_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """A Cohere error answer ``{"id": ..., "message": ...}`` with its status; 498
    (invalid token) is the 401 it means, 499 (cancelled) a failed upstream."""
    message = tr.error_message(body, "message", f"Cohere answered {status}")
    keep = retry_after_of(headers)
    if status == 498:
        status = 401
    elif status == 499:
        status = 502
    return upstream_error_for(status, message, headers=keep)


# --- stream: v2 Chat events -> OpenAI chat.completion.chunk ------------------------------

class CohereStreamDecoder(StreamDecoder):
    """Reads v2 Chat stream events (``message-start`` ... ``message-end``)."""

    def __init__(self, include_usage: bool, model: str) -> None:
        super().__init__()
        self._sse = SSEParser()
        self._include_usage = include_usage
        self._chunks = tr.ChunkMaker(model)
        self._tool_index: dict[int, int] = {}  # Cohere tool-call index -> OpenAI index

    def feed(self, data: bytes) -> list[StreamItem]:
        out: list[StreamItem] = []
        for ev in self._sse.feed(data):
            if not ev.data or ev.data == b"[DONE]":
                continue
            try:
                event = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and not self.done:
                out.extend(self._on_event(event))
        return out

    def _text(self, text: object, field: str = "content") -> list[StreamItem]:
        if not isinstance(text, str) or not text:
            return []
        self.output_parts.append(text)
        return [self._chunks.delta({field: text})]

    def _on_event(self, event: dict[str, Any]) -> list[StreamItem]:
        kind = event.get("type")
        delta = tr.obj(event.get("delta"))
        message = tr.obj(delta.get("message"))
        if kind == "message-start":
            self._chunks.ident = str(event.get("id") or tr.new_id("chatcmpl-"))
            return [self._chunks.delta({"role": "assistant", "content": ""})]
        if kind in ("content-start", "content-delta"):
            content = tr.obj(message.get("content"))
            return (self._text(content.get("thinking"), "reasoning_content")
                    + self._text(content.get("text")))
        if kind == "tool-plan-delta":
            return self._text(message.get("tool_plan"))
        if kind == "tool-call-start":
            return self._tool_start(event, message)
        if kind == "tool-call-delta":
            calls = tr.obj(message.get("tool_calls"))
            args = (calls.get("function") or {}).get("arguments")
            index = self._tool_index.get(int(event.get("index") or 0))
            if index is None or not isinstance(args, str) or not args:
                return []
            self.output_parts.append(args)
            return [self._chunks.delta({"tool_calls": [{"index": index,
                                                        "function": {"arguments": args}}]})]
        if kind == "message-end":
            return self._on_end(delta)
        return []  # content-end, tool-call-end, citation-*, debug

    def _tool_start(self, event: Mapping[str, Any],
                    message: Mapping[str, Any]) -> list[StreamItem]:
        call = tr.obj(message.get("tool_calls"))
        fn = tr.obj(call.get("function"))
        index = len(self._tool_index)
        self._tool_index[int(event.get("index") or 0)] = index
        args = fn["arguments"] if isinstance(fn.get("arguments"), str) else ""
        self.output_parts.append(str(fn.get("name") or "") + args)
        return [self._chunks.delta({"tool_calls": [{
            "index": index, "id": str(call.get("id") or tr.new_id("call_")), "type": "function",
            "function": {"name": str(fn.get("name") or ""), "arguments": args}}]})]

    def _on_end(self, delta: Mapping[str, Any]) -> list[StreamItem]:
        self.done = True
        self.usage = cohere_usage(delta.get("usage"))
        finish = delta.get("finish_reason")
        if finish == "ERROR" or delta.get("error"):
            # Billed on the usage above (or an estimate), then reported in-band.
            raise generation_failed(finish or "an error", delta.get("error"))
        if self.usage is not None and self.usage.source == "estimated":
            self.usage = Usage(input_tokens=self.usage.input_tokens, source="estimated",
                               output_tokens=self.usage.output_tokens
                               or estimate_text_tokens(self.output_text()))
        out = [self._chunks.delta({}, finish_reason(finish))]
        if self._include_usage and self.usage is not None:
            out.append(self._chunks.usage(self.usage))
        return out


# --- embeddings --------------------------------------------------------------------------

def embed_body(model: str, params: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "texts": tr.embedding_inputs(params.get("input"), LABEL),
        "input_type": params.get("input_type") or extra.get("input_type") or DEFAULT_INPUT_TYPE,
        # Floats always: the engine packs them for encoding_format=base64 the way
        # OpenAI does (Cohere's own base64 type is not OpenAI's packing).
        "embedding_types": ["float"],
    }
    if params.get("dimensions") is not None:
        body["output_dimension"] = params["dimensions"]
    truncate = params.get("truncate") or extra.get("truncate")
    if truncate:
        body["truncate"] = truncate
    tr.check_encoding_format(params)
    return body


def embed_response(parsed: Mapping[str, Any], model: str) -> ChatResult:
    embeddings = parsed.get("embeddings")
    vectors = embeddings.get("float") if isinstance(embeddings, dict) else embeddings
    if not isinstance(vectors, list):
        raise UpstreamError("Cohere's embed answer has no float embeddings")
    usage = cohere_usage(parsed.get("meta"), output=False)  # embeddings bill input only
    tokens = usage.input_tokens if usage is not None else 0
    body = tr.embedding_list(vectors, model, tokens)
    return ChatResult(body=body, usage=usage if tokens else None, raw=None)


# --- the provider ------------------------------------------------------------------------

class CohereProvider(Provider):
    name = "cohere"
    price_provider = "cohere"
    default_api_base = DEFAULT_API_BASE
    api_key_env = "COHERE_API_KEY"
    litellm_params = frozenset({"input_type", "truncate", "safety_mode"})
    reads_top_k = True
    # Cohere cannot be told to make one tool call at a time: parallel_tool_calls is
    # refused (or dropped and named, with drop_params).
    supported_openai_params = tr.CHAT_PARAMS

    def check_deployment(self, deployment: Deployment) -> None:
        if deployment.model.startswith("v1/"):
            raise ConfigError("model: Cohere's v1 Chat API (cohere_chat/v1/...) is not "
                              "served; use the v2 model name without v1/")

    def api_key(self, deployment: Deployment, environ: Mapping[str, str]) -> str | None:
        # LiteLLM and Cohere's own SDK also read CO_API_KEY.
        return super().api_key(deployment, environ) or environ.get("CO_API_KEY")

    def _url(self, deployment: Deployment, route: str) -> str:
        base = (deployment.api_base or os.environ.get("COHERE_API_BASE")
                or DEFAULT_API_BASE).rstrip("/")
        # LiteLLM configs give the root, the /v2 prefix or a full endpoint URL.
        for suffix in ("/v2/chat", "/v2/embed", "/v2/rerank", "/v2"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        return f"{base}/v2/{route}"

    def _headers(self, deployment: Deployment, stream: bool = False) -> dict[str, str]:
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if stream else "application/json"}
        key = self.api_key(deployment, os.environ)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        return headers

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = build_body(deployment.model, params, deployment.params, stream)
        return UpstreamRequest(url=self._url(deployment, "chat"),
                               headers=self._headers(deployment, stream),
                               body=orjson.dumps(body))

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return translate_response(tr.json_object(body, LABEL), deployment.model)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return CohereStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return upstream_error(status, body, headers)

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        body = embed_body(deployment.model, params, deployment.params)
        return UpstreamRequest(url=self._url(deployment, "embed"),
                               headers=self._headers(deployment), body=orjson.dumps(body))

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return embed_response(tr.json_object(body, LABEL), deployment.model)


    def media_request(self, deployment: Deployment, path: str, body: bytes | StreamedBody,
                      content_type: str) -> UpstreamRequest:
        """``rerank`` (LiteLLM's ``cohere/rerank-v3.5``): the request is already in
        Cohere's shape; it goes to v2 Rerank, billed per search unit."""
        if path != "rerank":
            return super().media_request(deployment, path, body, content_type)
        headers = self._headers(deployment)
        headers["Content-Type"] = content_type
        return UpstreamRequest.of(self._url(deployment, "rerank"), headers, body)


class CohereChatProvider(CohereProvider):
    """LiteLLM's ``cohere_chat/`` prefix: the same v2 Chat API."""

    name = "cohere_chat"


register(CohereProvider())
register(CohereChatProvider())
