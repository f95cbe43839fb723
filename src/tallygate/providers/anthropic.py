"""Anthropic Messages API: OpenAI chat params in, OpenAI chat answers and chunks out.

Unlike the OpenAI adapter this one translates both ways, so ``ChatResult.raw`` is None
and every stream chunk is built here. Usage is read with ``Usage.from_anthropic``:
Anthropic counts cache reads and writes outside ``input_tokens``, so the buckets are
already disjoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from tallygate.errors import BadRequestError, UpstreamError, retry_after_of, upstream_error_for
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    NativeMessages,
    PassThroughDecoder,
    Provider,
    StreamDecoder,
    StreamItem,
    UpstreamRequest,
)
from tallygate.providers.registry import register
from tallygate.providers.sse import SSEParser
from tallygate.usage import Usage

ANTHROPIC_VERSION = "2023-06-01"
# The client's headers a native (pass-through) Messages call keeps.
VERSION_HEADER, BETA_HEADER = "anthropic-version", "anthropic-beta"
# response_format (json_schema / json_object) is served the way Anthropic documents JSON
# output: one tool with the schema as its input_schema, which the model is made to call;
# its input is the answer's text.
JSON_TOOL = "tallygate_json_response"
# Anthropic requires max_tokens; OpenAI callers often leave it out.
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Status an in-stream ``error`` event would have had as an HTTP answer.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def anthropic_usage(raw: object) -> Usage | None:
    """``Usage.from_anthropic`` plus thinking tokens, which are a part of output_tokens."""
    if not isinstance(raw, dict):
        return None
    usage = Usage.from_anthropic(raw)
    details = raw.get("output_tokens_details")
    if usage is None or not isinstance(details, dict):
        return usage
    thinking = details.get("thinking_tokens")
    if isinstance(thinking, int) and not isinstance(thinking, bool) and thinking > 0:
        usage = replace(usage, reasoning_tokens=min(thinking, usage.output_tokens))
    return usage


# --- request: OpenAI chat params -> Messages API body ---------------------------------

def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequestError("image_url part without a url", param="messages")
    if url.startswith("data:"):
        # data:<media type>;base64,<data>
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise BadRequestError("image data URLs must be base64-encoded", param="messages")
        return {"type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: object) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) as Anthropic blocks; empty text is dropped
    because Anthropic rejects empty text blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequestError("message content must be a string or a list of parts",
                              param="messages")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequestError("content parts must be objects", param="messages")
        kind = part.get("type")
        if kind == "text":
            if not part.get("text"):
                continue
            block: dict[str, Any] = {"type": "text", "text": str(part["text"])}
        elif kind == "image_url":
            block = _image_block(part)
        else:
            raise BadRequestError(f"content part type {kind!r} is not supported for "
                                  "Anthropic models", param="messages")
        if part.get("cache_control"):  # prompt-caching breakpoints pass through
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _tool_use_block(call: object) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequestError("tool_calls entries need a function", param="messages")
    fn = call["function"]
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        raise BadRequestError("tool call arguments are not valid JSON",
                              param="messages") from None
    if not isinstance(parsed, dict):
        raise BadRequestError("tool call arguments must be a JSON object", param="messages")
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": parsed}


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, list):
        block["content"] = _content_blocks(content)
    elif content:
        block["content"] = str(content)
    return block


def translate_messages(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) for the Messages API.

    System and developer messages are lifted to the top level; tool results become user
    ``tool_result`` blocks; consecutive messages of one role are merged, since
    Anthropic wants the roles to alternate (and all results of one turn in one message).
    """
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequestError("each message must be an object", param="messages")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_content_blocks(message.get("content")))
            continue
        if role == "user":
            blocks = _content_blocks(message.get("content"))
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"))
            blocks += [_tool_use_block(c) for c in message.get("tool_calls") or ()]
        elif role == "tool":
            role, blocks = "user", [_tool_result_block(message)]
        else:
            raise BadRequestError(f"message role {role!r} is not supported for "
                                  "Anthropic models", param="messages")
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def _system_value(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A plain string unless a block carries cache_control, which needs the list form."""
    if any("cache_control" in b for b in blocks):
        return blocks
    return "\n\n".join(b["text"] for b in blocks if b.get("type") == "text")


def translate_tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequestError("tools must be a list", param="tools")
    out = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise BadRequestError("only function tools with a name are supported",
                                  param="tools")
        entry: dict[str, Any] = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            entry["description"] = fn["description"]
        if tool.get("cache_control"):
            entry["cache_control"] = tool["cache_control"]
        out.append(entry)
    return out


# The OpenAI chat parameters ``build_body`` translates (get_supported_openai_params).
OPENAI_PARAMS = frozenset({
    "stream", "stream_options", "stop", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "user", "safety_identifier", "n", "extra_headers", "metadata",
    "reasoning_effort"})
# reasoning_effort -> thinking.budget_tokens (LiteLLM's, and Bedrock's for Claude)
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}


def translate_tool_choice(choice: object, parallel: object) -> dict[str, Any] | None:
    result: dict[str, Any]
    if choice is None:
        if parallel is not False:
            return None
        result = {"type": "auto"}
    elif choice in ("auto", "none"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise BadRequestError(f"unsupported tool_choice {choice!r}", param="tool_choice")
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def _json_tool(response_format: object) -> dict[str, Any] | None:
    """The tool that carries a ``response_format`` answer; None for plain text."""
    if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        schema: object = {"type": "object", "additionalProperties": True}
        description = "Give the answer as a JSON object."
    elif kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequestError("response_format.json_schema.schema must be an object",
                                  param="response_format")
        description = str(spec.get("description") or "Give the answer in this JSON schema.")
    else:
        raise BadRequestError(f"response_format type {kind!r} is not supported",
                              param="response_format")
    return {"name": JSON_TOOL, "description": description, "input_schema": schema}


def build_body(model: str, params: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Messages API request body for OpenAI chat ``params``."""
    n = params.get("n")
    if n is not None and n != 1:
        raise BadRequestError("Anthropic models return one choice; n must be 1", param="n")
    system, messages = translate_messages(params.get("messages"))
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = _system_value(system)
    for name in ("temperature", "top_p", "top_k"):
        if params.get(name) is not None:
            body[name] = params[name]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("tools"):
        body["tools"] = translate_tools(params["tools"])
        choice = translate_tool_choice(params.get("tool_choice"),
                                       params.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    json_tool = _json_tool(params.get("response_format"))
    if json_tool is not None:
        body["tools"] = [*body.get("tools", ()), json_tool]
        # Alone, the model must answer through it; beside the caller's tools, through one.
        only = len(body["tools"]) == 1
        body["tool_choice"] = {"type": "tool", "name": JSON_TOOL} if only else {"type": "any"}
    user = params.get("user") or params.get("safety_identifier")
    if user:
        body["metadata"] = {"user_id": str(user)}
    effort = params.get("reasoning_effort")
    if effort not in (None, "none"):
        # LiteLLM's mapping: extended thinking with a budget by effort.
        if effort not in THINKING_BUDGETS:
            raise BadRequestError(f"reasoning_effort {effort!r} is not one of minimal, low, "
                                  "medium, high", param="reasoning_effort")
        body["thinking"] = {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}
    if stream:
        body["stream"] = True
    return body


# --- response: Messages API answer -> OpenAI chat.completion ---------------------------

def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"),
                     "arguments": orjson.dumps(block.get("input") or {}).decode()},
    }


def check_message(parsed: dict[str, Any]) -> None:
    """An answer whose content is not a list of well-formed blocks is the upstream's
    failure (a 502, nothing billed), not something to translate into an empty reply."""
    content = parsed.get("content")
    if not isinstance(content, list):
        raise UpstreamError("upstream answered 200 with a message whose content is not a "
                            "list of blocks")
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if (not isinstance(kind, str) or (kind == "text" and not isinstance(block.get("text"), str))
                or (kind == "tool_use" and not isinstance(block.get("input"), dict))):
            raise UpstreamError("upstream answered 200 with a malformed content block")


def translate_response(parsed: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
    blocks = [b for b in parsed.get("content") or () if isinstance(b, dict)]
    text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
    answers = [b for b in blocks if b.get("type") == "tool_use" and b.get("name") == JSON_TOOL]
    if answers:  # the JSON answer is the text; words around it are not part of it
        text = orjson.dumps(answers[0].get("input") or {}).decode()
    tool_calls = [_tool_call(b) for b in blocks
                  if b.get("type") == "tool_use" and b.get("name") != JSON_TOOL]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls and not text else text,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = finish_reason(parsed.get("stop_reason"))
    if answers and not tool_calls and finish == "tool_calls":
        finish = "stop"
    body: dict[str, Any] = {
        "id": parsed.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage.to_openai()
    return body


def upstream_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """An Anthropic error answer ``{"type":"error","error":{type,message}}``."""
    message = f"upstream answered {status}"
    err_type: str | None = None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        err_type = err.get("type") if isinstance(err.get("type"), str) else None
    keep = retry_after_of(headers)
    # 529 (overloaded) and every 5xx are the provider's fault: a bad gateway for us.
    return upstream_error_for(status, message, error_type=err_type, headers=keep)


# --- stream: Anthropic SSE events -> OpenAI chat.completion.chunk ----------------------

def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _index(event: dict[str, Any]) -> int:
    index = event.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else -1


class AnthropicStreamDecoder(StreamDecoder):
    """Reads Anthropic stream events and builds the OpenAI chunks for them."""

    def __init__(self, include_usage: bool, model: str) -> None:
        super().__init__()
        self._sse = SSEParser()
        self._include_usage = include_usage
        self._id = ""
        self._model = model
        self._created = int(time.time())
        self._raw_usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # content block index -> OpenAI tool index
        self._json_block: int | None = None  # the block of the response_format answer
        self._finished = False

    def feed(self, data: bytes) -> list[StreamItem]:
        out: list[StreamItem] = []
        for ev in self._sse.feed(data):
            if not ev.data:
                continue
            try:
                event = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue  # a line that is not an event (a proxy's noise) is skipped
            if isinstance(event, dict):
                out.extend(self._on_event(event))
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> StreamItem:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}],
        }
        return StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n")

    def _merge_usage(self, raw: object, *, final: bool = False) -> None:
        # message_delta usage is cumulative: a later value replaces an earlier one.
        if isinstance(raw, dict):
            self._raw_usage.update({k: v for k, v in raw.items() if v is not None})
            self.usage = anthropic_usage(self._raw_usage)  # None when invalid: estimated
            self.usage_final = final and self.usage is not None

    def _on_event(self, event: dict[str, Any]) -> list[StreamItem]:
        # Parts not in the event's documented shape are skipped, never a crash.
        kind = event.get("type")
        if kind == "message_start":
            message = _object(event.get("message"))
            self._id = str(message.get("id") or "")
            self._model = str(message.get("model") or self._model)
            self._merge_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._on_block_start(event)
        if kind == "content_block_delta":
            return self._on_block_delta(event)
        if kind == "message_delta":
            self._merge_usage(event.get("usage"), final=True)
            stop_reason = _object(event.get("delta")).get("stop_reason")
            if stop_reason and not self._finished:
                self._finished = True
                finish = finish_reason(stop_reason)
                if finish == "tool_calls" and self._json_block is not None \
                        and not self._tool_index:
                    finish = "stop"
                return [self._chunk({}, finish)]
            return []
        if kind == "message_stop":
            self.done = True
            out = [] if self._finished else [self._chunk({}, "stop")]
            self._finished = True
            if self._include_usage and self.usage is not None:
                chunk = {"id": self._id, "object": "chat.completion.chunk",
                         "created": self._created, "model": self._model,
                         "choices": [], "usage": self.usage.to_openai()}
                out.append(StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n"))
            return out
        if kind == "error":
            raise _error_event(event)
        return []  # ping, content_block_stop and event types added later

    def _on_block_start(self, event: dict[str, Any]) -> list[StreamItem]:
        block = _object(event.get("content_block"))
        if block.get("type") == "text" and isinstance(block.get("text"), str) and block["text"]:
            self.output_parts.append(block["text"])
            return [self._chunk({"content": block["text"]})]
        if block.get("type") == "tool_use" and block.get("name") == JSON_TOOL:
            self._json_block = _index(event)
            return []
        if block.get("type") == "tool_use":
            tool_index = len(self._tool_index)
            self._tool_index[_index(event)] = tool_index
            call = {"index": tool_index, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and server tool blocks have no OpenAI chunk

    def _on_block_delta(self, event: dict[str, Any]) -> list[StreamItem]:
        delta = _object(event.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            self.output_parts.append(delta["text"])
            return [self._chunk({"content": delta["text"]})]
        partial = delta.get("partial_json")
        if (kind == "input_json_delta" and isinstance(partial, str) and partial
                and self._json_block == _index(event)):
            self.output_parts.append(partial)
            return [self._chunk({"content": partial})]
        if kind == "input_json_delta" and isinstance(partial, str) and partial:
            tool_index = self._tool_index.get(_index(event))
            if tool_index is None:
                return []
            self.output_parts.append(delta["partial_json"])
            call = {"index": tool_index, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking_delta, signature_delta, citations_delta


# --- native: the Messages API passed through ------------------------------------------

def _error_event(event: dict[str, Any]) -> UpstreamError:
    """An in-stream ``error`` event as the UpstreamError its HTTP answer would have been."""
    err = _object(event.get("error"))
    err_type = str(err.get("type") or "api_error")
    status = ERROR_STATUS.get(err_type, 500)
    return UpstreamError(str(err.get("message") or "upstream stream error"),
                         status_code=status if status < 500 else 502, error_type=err_type)


def _stream_error(payload: bytes) -> UpstreamError:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        event = None
    return _error_event(event if isinstance(event, dict) else {})


def _frame_parts(frame: bytes) -> tuple[str | None, bytes]:
    """(event name, data) of one raw SSE frame."""
    kind: str | None = None
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"event:"):
            kind = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
    return kind, b"\n".join(data)


class AnthropicPassThrough(PassThroughDecoder):
    """Anthropic's stream as it came, frame by frame; usage from ``message_start`` and
    ``message_delta`` (cumulative: a later value replaces an earlier one). Only those
    frames are parsed; the deltas are read back only for an estimate."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = b""
        self._raw_usage: dict[str, Any] = {}
        self._deltas: list[bytes] = []

    def _frames(self) -> list[bytes]:
        """The complete frames (each with its blank line) taken off the buffer."""
        frames: list[bytes] = []
        start = pos = 0
        buf = self._buf
        while (nl := buf.find(b"\n", pos)) >= 0:
            blank = nl == pos or (nl == pos + 1 and buf[pos] == 0x0D)  # "\n" or "\r\n"
            pos = nl + 1
            if blank:
                frames.append(buf[start:pos])
                start = pos
        self._buf = buf[start:]
        return frames

    def _merge_usage(self, raw: object, *, final: bool = False) -> None:
        if isinstance(raw, dict):
            self._raw_usage.update({k: v for k, v in raw.items() if v is not None})
            self.usage = anthropic_usage(self._raw_usage)  # None when invalid: estimated
            self.usage_final = final and self.usage is not None

    def feed(self, data: bytes) -> list[StreamItem]:
        self._buf += data
        out: list[StreamItem] = []
        for frame in self._frames():
            if self.done:  # nothing normally follows message_stop; keep it all the same
                self.tail += frame
                continue
            kind, payload = _frame_parts(frame)
            if kind == "message_stop":
                self.done = True
                self.tail = frame
                continue
            if kind == "error":
                # Not forwarded as it came: its message may quote a credential. The door
                # reports it in-band in its own (scrubbed) error event.
                raise _stream_error(payload)
            if kind in ("message_start", "message_delta"):
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    event = None
                if isinstance(event, dict):
                    message = event.get("message")
                    self._merge_usage(message.get("usage") if isinstance(message, dict)
                                      else event.get("usage"), final=kind == "message_delta")
            elif kind == "content_block_delta":
                self._deltas.append(payload)
            out.append(StreamItem(None, frame, payload or b"{}"))
        if self.done and self._buf:
            self.tail += self._buf
            self._buf = b""
        return out

    def output_text(self) -> str:
        parts: list[str] = []
        for payload in self._deltas:
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            delta = event.get("delta") if isinstance(event, dict) else None
            if isinstance(delta, dict):
                for name in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(name), str):
                        parts.append(delta[name])
        return "".join(parts)


def _merge_beta(*values: str | None) -> str:
    """Comma-separated beta flags of several sources, each once, in order."""
    seen: list[str] = []
    for value in values:
        for flag in (value or "").split(","):
            flag = flag.strip()
            if flag and flag not in seen:
                seen.append(flag)
    return ",".join(seen)


class AnthropicProvider(Provider, NativeMessages):
    name = "anthropic"
    price_provider = "anthropic"
    reads_cache_control = True
    supported_openai_params = OPENAI_PARAMS
    default_api_base = "https://api.anthropic.com"
    api_key_env = "ANTHROPIC_API_KEY"
    reads_top_k = True

    def _url(self, deployment: Deployment, path: str = "/messages") -> str:
        base = (deployment.api_base or self.default_api_base or "").rstrip("/")
        # Accept a base given with or without the version segment.
        return base + (path if base.endswith("/v1") else "/v1" + path)

    def _native_headers(self, deployment: Deployment,
                        client: Mapping[str, str]) -> dict[str, str]:
        """The gateway's key and headers; the client's API version and beta flags (the
        deployment's own ``anthropic-beta`` added to the client's)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   VERSION_HEADER: client.get(VERSION_HEADER) or ANTHROPIC_VERSION}
        api_key = self.api_key(deployment, os.environ)
        if api_key:
            headers["x-api-key"] = api_key
        own_beta = None
        for name, value in deployment.headers.items():
            if name.lower() == BETA_HEADER:
                own_beta = value
            else:
                headers[name] = value
        beta = _merge_beta(client.get(BETA_HEADER), own_beta)
        if beta:
            headers[BETA_HEADER] = beta
        return headers

    def messages_request(self, deployment: Deployment, body: dict[str, Any],
                         headers: Mapping[str, str], *, stream: bool,
                         query: str = "") -> UpstreamRequest:
        out = {**body, "model": deployment.model}
        url = self._url(deployment) + (f"?{query}" if query else "")
        return UpstreamRequest(url=url, headers=self._native_headers(deployment, headers),
                               body=orjson.dumps(out))

    def messages_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict) or parsed.get("type") != "message":
            raise UpstreamError("upstream answered 200 with a body that is not a message")
        check_message(parsed)  # passed on as it is: it must be a message a client reads
        return ChatResult(body=parsed, usage=anthropic_usage(parsed.get("usage")), raw=body)

    def messages_stream(self, deployment: Deployment) -> PassThroughDecoder:
        return AnthropicPassThrough()

    def count_tokens_request(self, deployment: Deployment, body: dict[str, Any],
                             headers: Mapping[str, str]) -> UpstreamRequest:
        out = {**body, "model": deployment.model}
        return UpstreamRequest(url=self._url(deployment, "/messages/count_tokens"),
                               headers=self._native_headers(deployment, headers),
                               body=orjson.dumps(out))

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = build_body(deployment.model, params, stream)
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "anthropic-version": ANTHROPIC_VERSION}
        api_key = self.api_key(deployment, os.environ)
        if api_key:
            headers["x-api-key"] = api_key
        headers.update(deployment.headers)
        return UpstreamRequest(url=self._url(deployment), headers=headers,
                               body=orjson.dumps(body))

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("upstream answered with a non-object body")
        check_message(parsed)
        usage = anthropic_usage(parsed.get("usage"))
        return ChatResult(body=translate_response(parsed, usage), usage=usage, raw=None)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return AnthropicStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return upstream_error(status, body, headers)


register(AnthropicProvider())
