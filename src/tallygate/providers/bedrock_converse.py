"""Bedrock's Converse API as OpenAI chat: the request body for OpenAI chat params, and the
OpenAI chat.completion for a Converse answer, with its usage in disjoint buckets.

Converse's ``inputTokens`` excludes the cache, so ``cacheReadInputTokens`` and
``cacheWriteInputTokens`` are buckets of their own; ``cacheDetails`` splits the writes
into 5-minute and 1-hour ones. Model ids may be inference profile ids (``us.``, ``eu.``,
``global.``...) or ARNs: ``base_model_id`` finds the model behind them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import BadRequestError
from tallygate.providers.base import Deployment
from tallygate.usage import Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}
# Geographic cross-region inference profiles cost what the model costs in its region;
# ``global.`` profiles are priced on their own (lower), so that prefix is never dropped.
REGIONAL_PREFIXES = frozenset({"us", "eu", "apac", "au", "jp", "ca", "us-gov", "in"})
PROFILE_PREFIXES = REGIONAL_PREFIXES | {"global"}
# reasoning_effort -> Claude's thinking budget (LiteLLM's defaults)
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


# --- model ids ---------------------------------------------------------------------------

def arn_resource(model_id: str) -> tuple[str, str] | None:
    """(resource type, id) of an ARN model id, e.g. ("inference-profile", "us.anthropic...")."""
    if not model_id.startswith("arn:"):
        return None
    parts = model_id.split(":", 5)
    if len(parts) < 6:
        return None
    kind, _, rest = parts[5].partition("/")
    return kind, rest


def base_model_id(model_id: str) -> str:
    """The foundation model id behind an inference profile id or a system ARN
    (``us.anthropic.claude-x`` -> ``anthropic.claude-x``); an application inference
    profile ARN names no model, and is returned as it is."""
    resource = arn_resource(model_id)
    if resource is not None:
        kind, rest = resource
        if kind not in ("foundation-model", "inference-profile") or not rest:
            return model_id
        model_id = rest
    head, dot, tail = model_id.partition(".")
    return tail if dot and head in PROFILE_PREFIXES else model_id


def model_family(deployment: Deployment) -> str:
    """``anthropic``, ``nova``, ``amazon``, ``openai``, ``meta``, ``mistral``... of the
    deployment's model (model_info.base_model names it for application profiles)."""
    model = base_model_id(deployment.base_model or deployment.model)
    vendor, _, name = model.partition(".")
    if vendor == "amazon" and name.startswith("nova"):
        return "nova"
    return vendor


def price_names(model: str) -> tuple[str, ...]:
    """genai-prices names ("aws") for a model id: the id itself (the library knows the
    ``us.``/``eu.``/``global.`` profile ids), then without a regional profile prefix.
    ARNs: the model or profile id they carry; an application profile has none."""
    resource = arn_resource(model)
    if resource is not None:
        kind, rest = resource
        if kind not in ("foundation-model", "inference-profile") or not rest:
            return ()
        model = rest
    names = [model]
    head, dot, tail = model.partition(".")
    if dot and head in REGIONAL_PREFIXES:
        names.append(tail)
    return tuple(names)


# --- request: OpenAI chat params -> Converse body ----------------------------------------

def bad_request(message: str, param: str = "messages") -> BadRequestError:
    return BadRequestError(message, param=param)


def cache_point(cache_control: object) -> dict[str, Any]:
    """A Converse ``cachePoint`` block for an Anthropic-style ``cache_control``."""
    point: dict[str, Any] = {"type": "default"}
    ttl = cache_control.get("ttl") if isinstance(cache_control, dict) else None
    if ttl is not None:
        if ttl not in ("5m", "1h"):
            raise bad_request(f"cache_control ttl {ttl!r} is not supported (5m or 1h)")
        point["ttl"] = ttl
    return {"cachePoint": point}


def _image_block(part: Mapping[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request("image_url part without a url")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise bad_request("image data URLs must be base64-encoded")
        fmt = IMAGE_FORMATS.get(media_type.lower())
        if fmt is None:
            raise bad_request(f"image type {media_type!r} is not supported by Bedrock "
                              "(png, jpeg, gif, webp)")
        return {"image": {"format": fmt, "source": {"bytes": data}}}
    if url.startswith("s3://"):
        ext = url.rsplit(".", 1)[-1].lower()
        fmt = IMAGE_FORMATS.get(f"image/{ext}")
        if fmt is None:
            raise bad_request("an s3:// image needs a .png, .jpeg, .jpg, .gif or .webp name")
        return {"image": {"format": fmt, "source": {"s3Location": {"uri": url}}}}
    raise bad_request("Bedrock takes images as base64 data URLs or s3:// URIs, not web URLs")


def content_blocks(content: object, *, images: bool = True) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) as Converse blocks; a part's ``cache_control`` is a
    ``cachePoint`` after it. Empty text is dropped: Converse refuses blank text blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("message content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise bad_request("content parts must be objects")
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url" and images:
            blocks.append(_image_block(part))
        else:
            raise bad_request(f"content part type {kind!r} is not supported here for Bedrock "
                              "models")
        if part.get("cache_control"):
            blocks.append(cache_point(part["cache_control"]))
    return blocks


def _tool_use_block(call: object) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise bad_request("tool_calls entries need a function")
    fn = call["function"]
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        raise bad_request("tool call arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise bad_request("tool call arguments must be a JSON object")
    return {"toolUse": {"toolUseId": str(call.get("id") or ""), "name": str(fn.get("name")),
                        "input": parsed}}


def _tool_result_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A tool message as a ``toolResult`` block; a breakpoint inside its content (where
    Converse takes none) becomes a ``cachePoint`` right after it."""
    content = message.get("content")
    points: list[dict[str, Any]] = []
    if isinstance(content, list):
        inner = content_blocks(content)
        points = [b for b in inner if "cachePoint" in b][-1:]
        inner = [b for b in inner if "cachePoint" not in b]
    else:
        inner = [{"text": str(content)}] if content else []
    return [{"toolResult": {"toolUseId": str(message.get("tool_call_id") or ""),
                            "content": inner}}, *points]


def _reasoning_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Earlier thinking (LiteLLM's ``thinking_blocks``), which Claude needs back when it
    thought before a tool call."""
    out: list[dict[str, Any]] = []
    for block in message.get("thinking_blocks") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "thinking" and isinstance(block.get("thinking"), str):
            text: dict[str, Any] = {"text": block["thinking"]}
            if block.get("signature"):
                text["signature"] = str(block["signature"])
            out.append({"reasoningContent": {"reasoningText": text}})
        elif block.get("type") == "redacted_thinking" and block.get("data"):
            out.append({"reasoningContent": {"redactedContent": str(block["data"])}})
    return out


def translate_messages(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) for Converse: system and developer messages go to
    ``system``; tool results become user ``toolResult`` blocks; consecutive messages of one
    role are merged, as Converse wants the roles to alternate."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise bad_request("each message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(content_blocks(message.get("content"), images=False))
            if message.get("cache_control"):
                system.append(cache_point(message["cache_control"]))
            continue
        if role == "user":
            blocks = content_blocks(message.get("content"))
        elif role == "assistant":
            blocks = _reasoning_blocks(message) + content_blocks(message.get("content"))
            blocks += [_tool_use_block(c) for c in message.get("tool_calls") or ()]
        elif role == "tool":
            role, blocks = "user", _tool_result_blocks(message)
        else:
            raise bad_request(f"message role {role!r} is not supported for Bedrock models")
        if message.get("cache_control") and blocks:
            blocks.append(cache_point(message["cache_control"]))
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return system, out


def translate_tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    out: list[dict[str, Any]] = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise bad_request("only function tools with a name are supported", "tools")
        spec: dict[str, Any] = {
            "name": str(fn["name"]),
            "inputSchema": {"json": fn.get("parameters") or {"type": "object",
                                                              "properties": {}}},
        }
        if fn.get("description"):
            spec["description"] = str(fn["description"])
        out.append({"toolSpec": spec})
        if tool.get("cache_control"):
            out.append(cache_point(tool["cache_control"]))
    return out


def translate_tool_choice(choice: object) -> dict[str, Any] | None:
    """Converse's toolChoice; None for ``auto`` (its default) or ``none`` (no tools)."""
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
            and choice["function"].get("name"):
        return {"tool": {"name": str(choice["function"]["name"])}}
    raise bad_request(f"unsupported tool_choice {choice!r}", "tool_choice")


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])


def reasoning_fields(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``additionalModelRequestFields`` for ``thinking`` / ``reasoning_effort``."""
    thinking = params.get("thinking")
    effort = params.get("reasoning_effort")
    if thinking is None and effort in (None, "none"):
        return {}
    if thinking is not None and not isinstance(thinking, dict):
        raise bad_request("thinking must be an object", "thinking")
    if effort is not None and effort not in (*THINKING_BUDGETS, "none"):
        raise bad_request(f"reasoning_effort {effort!r} is not one of minimal, low, medium, high",
                          "reasoning_effort")
    if family == "anthropic":
        if thinking is None:
            thinking = {"type": "enabled", "budget_tokens": THINKING_BUDGETS[str(effort)]}
        return {"thinking": thinking}
    if thinking is not None:
        raise bad_request(f"thinking is for Claude models; use reasoning_effort for {family} "
                          "models on Bedrock", "thinking")
    level = "low" if effort == "minimal" else effort
    if family == "nova":
        return {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": level}}
    if family == "openai":
        return {"reasoning_effort": level}
    raise bad_request(f"reasoning_effort is not supported for {family or 'this'} models on Bedrock "
                      "(Claude, Nova 2 and gpt-oss take it; set model_info.base_model for an "
                      "application inference profile)", "reasoning_effort")


# The OpenAI chat parameters ``build_body`` translates (get_supported_openai_params);
# ``thinking`` and ``top_k`` are not OpenAI parameters and pass as they are.
OPENAI_PARAMS = frozenset({
    "stream", "stream_options", "stop", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "tools", "tool_choice", "reasoning_effort", "user", "n",
    "extra_headers", "metadata"})


def build_body(deployment: Deployment, params: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse (or ConverseStream) request body for OpenAI chat ``params``."""
    n = params.get("n")
    if n is not None and n != 1:
        raise bad_request("Bedrock models return one choice; n must be 1", "n")
    if params.get("response_format") not in (None, {"type": "text"}):
        raise bad_request("response_format is not supported for Bedrock models by this gateway",
                          "response_format")
    system, messages = translate_messages(params.get("messages"))
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = max_tokens
    if params.get("temperature") is not None:
        inference["temperature"] = params["temperature"]
    if params.get("top_p") is not None:
        inference["topP"] = params["top_p"]
    stop = params.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if inference:
        body["inferenceConfig"] = inference
    tools = params.get("tools")
    if tools and (params.get("tool_choice") != "none" or _has_tool_blocks(messages)):
        config: dict[str, Any] = {"tools": translate_tools(tools)}
        choice = translate_tool_choice(params.get("tool_choice"))
        if choice is not None:
            config["toolChoice"] = choice
        body["toolConfig"] = config
    family = model_family(deployment)
    extra = reasoning_fields(family, params)
    if params.get("top_k") is not None:
        if family == "anthropic":
            extra["top_k"] = params["top_k"]
        elif family == "nova":
            extra["inferenceConfig"] = {"topK": params["top_k"]}
        else:
            raise bad_request(f"top_k is not supported for {family or 'this'} models on Bedrock",
                              "top_k")
    if extra:
        body["additionalModelRequestFields"] = extra
    return body


# --- answer: Converse response -> OpenAI chat.completion --------------------------------

def converse_usage(raw: object) -> Usage | None:
    """Usage from Converse's ``usage`` (or a stream's metadata usage)."""
    if not isinstance(raw, dict):
        return None
    written = positive_int(raw.get("cacheWriteInputTokens"))
    w5m = w1h = 0
    for detail in raw.get("cacheDetails") or ():
        if isinstance(detail, dict):
            if detail.get("ttl") == "1h":
                w1h += positive_int(detail.get("inputTokens"))
            elif detail.get("ttl") == "5m":
                w5m += positive_int(detail.get("inputTokens"))
    if w5m + w1h < written:
        w5m = written - w1h  # writes cacheDetails does not split: the default 5 minutes
    return Usage(input_tokens=positive_int(raw.get("inputTokens")),
                 cache_read_tokens=positive_int(raw.get("cacheReadInputTokens")),
                 cache_write_tokens=w5m, cache_write_1h_tokens=w1h,
                 output_tokens=positive_int(raw.get("outputTokens")))


def positive_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": block.get("toolUseId"), "type": "function",
            "function": {"name": block.get("name"),
                         "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def thinking_block(reasoning: Mapping[str, Any]) -> dict[str, Any] | None:
    text = reasoning.get("reasoningText")
    if isinstance(text, dict):
        return {"type": "thinking", "thinking": str(text.get("text") or ""),
                "signature": text.get("signature")}
    if reasoning.get("redactedContent"):
        return {"type": "redacted_thinking", "data": reasoning["redactedContent"]}
    return None


def translate_response(parsed: Mapping[str, Any], model: str,
                       usage: Usage | None) -> dict[str, Any]:
    output = parsed.get("output") or {}
    message = output.get("message") if isinstance(output, dict) else None
    blocks = [b for b in (message or {}).get("content") or () if isinstance(b, dict)]
    text = "".join(str(b["text"]) for b in blocks if isinstance(b.get("text"), str))
    calls = [tool_call(b["toolUse"]) for b in blocks if isinstance(b.get("toolUse"), dict)]
    thinking = [t for b in blocks if isinstance(b.get("reasoningContent"), dict)
                if (t := thinking_block(b["reasoningContent"])) is not None]
    reply: dict[str, Any] = {"role": "assistant",
                             "content": None if calls and not text else text, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    if thinking:
        reply["reasoning_content"] = "".join(str(t.get("thinking") or "") for t in thinking)
        reply["thinking_blocks"] = thinking
    body: dict[str, Any] = {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": finish_reason(parsed.get("stopReason"))}],
    }
    if usage is not None:
        body["usage"] = usage.to_openai()
    return body
