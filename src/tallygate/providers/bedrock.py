"""AWS Bedrock: chat through the Converse API, embeddings through InvokeModel.

OpenAI chat params are translated to a Converse body (``system``, content blocks,
``toolConfig``, ``inferenceConfig``, reasoning in ``additionalModelRequestFields``,
``cachePoint`` blocks from ``cache_control`` breakpoints) and the answer back to an OpenAI
chat.completion; streams are AWS event-stream frames, decoded in ``bedrock_stream``.
Requests are signed with SigV4 (``bedrock_auth``) over the exact URL that is sent: the
model id is percent-encoded in the path (ARNs carry ':' and '/') and the transport is told
not to re-quote it.

Usage: Converse's ``inputTokens`` excludes the cache, so ``cacheReadInputTokens`` and
``cacheWriteInputTokens`` are buckets of their own; ``cacheDetails`` splits the writes
into 5-minute and 1-hour ones.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from tallygate.errors import (
    BadRequestError,
    ConfigError,
    UpstreamError,
    UpstreamPermissionDeniedError,
    UpstreamTimeoutError,
    upstream_error_for,
)
from tallygate.estimate import estimate_text_tokens
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    Provider,
    StreamDecoder,
    UpstreamRequest,
)
from tallygate.providers.bedrock_auth import (
    BEARER_ENV,
    CREDENTIAL_PARAMS,
    Identities,
    bearer_token,
    identity_key,
    resolve_region,
    sign_headers,
    with_environment,
)
from tallygate.providers.registry import register
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
EVENTSTREAM = "application/vnd.amazon.eventstream"


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

def _bad(message: str, param: str = "messages") -> BadRequestError:
    return BadRequestError(message, param=param)


def cache_point(cache_control: object) -> dict[str, Any]:
    """A Converse ``cachePoint`` block for an Anthropic-style ``cache_control``."""
    point: dict[str, Any] = {"type": "default"}
    ttl = cache_control.get("ttl") if isinstance(cache_control, dict) else None
    if ttl is not None:
        if ttl not in ("5m", "1h"):
            raise _bad(f"cache_control ttl {ttl!r} is not supported (5m or 1h)")
        point["ttl"] = ttl
    return {"cachePoint": point}


def _image_block(part: Mapping[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _bad("image_url part without a url")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise _bad("image data URLs must be base64-encoded")
        fmt = IMAGE_FORMATS.get(media_type.lower())
        if fmt is None:
            raise _bad(f"image type {media_type!r} is not supported by Bedrock "
                       "(png, jpeg, gif, webp)")
        return {"image": {"format": fmt, "source": {"bytes": data}}}
    if url.startswith("s3://"):
        ext = url.rsplit(".", 1)[-1].lower()
        fmt = IMAGE_FORMATS.get(f"image/{ext}")
        if fmt is None:
            raise _bad("an s3:// image needs a .png, .jpeg, .jpg, .gif or .webp name")
        return {"image": {"format": fmt, "source": {"s3Location": {"uri": url}}}}
    raise _bad("Bedrock takes images as base64 data URLs or s3:// URIs, not web URLs")


def content_blocks(content: object, *, images: bool = True) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) as Converse blocks; a part's ``cache_control`` is a
    ``cachePoint`` after it. Empty text is dropped: Converse refuses blank text blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad("message content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise _bad("content parts must be objects")
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": str(part["text"])})
        elif kind == "image_url" and images:
            blocks.append(_image_block(part))
        else:
            raise _bad(f"content part type {kind!r} is not supported here for Bedrock models")
        if part.get("cache_control"):
            blocks.append(cache_point(part["cache_control"]))
    return blocks


def _tool_use_block(call: object) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise _bad("tool_calls entries need a function")
    fn = call["function"]
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        raise _bad("tool call arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _bad("tool call arguments must be a JSON object")
    return {"toolUse": {"toolUseId": str(call.get("id") or ""), "name": str(fn.get("name")),
                        "input": parsed}}


def _tool_result_block(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        inner = [b for b in content_blocks(content) if "cachePoint" not in b]
    else:
        inner = [{"text": str(content)}] if content else []
    return {"toolResult": {"toolUseId": str(message.get("tool_call_id") or ""),
                           "content": inner}}


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
        raise _bad("messages must be a non-empty list")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise _bad("each message must be an object")
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
            role, blocks = "user", [_tool_result_block(message)]
        else:
            raise _bad(f"message role {role!r} is not supported for Bedrock models")
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
        raise _bad("tools must be a list", "tools")
    out: list[dict[str, Any]] = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise _bad("only function tools with a name are supported", "tools")
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
    raise _bad(f"unsupported tool_choice {choice!r}", "tool_choice")


def _has_tool_blocks(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])


def reasoning_fields(family: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``additionalModelRequestFields`` for ``thinking`` / ``reasoning_effort``."""
    thinking = params.get("thinking")
    effort = params.get("reasoning_effort")
    if thinking is None and effort in (None, "none"):
        return {}
    if thinking is not None and not isinstance(thinking, dict):
        raise _bad("thinking must be an object", "thinking")
    if effort is not None and effort not in (*THINKING_BUDGETS, "none"):
        raise _bad(f"reasoning_effort {effort!r} is not one of minimal, low, medium, high",
                   "reasoning_effort")
    if family == "anthropic":
        if thinking is None:
            thinking = {"type": "enabled", "budget_tokens": THINKING_BUDGETS[str(effort)]}
        return {"thinking": thinking}
    if thinking is not None:
        raise _bad(f"thinking is for Claude models; use reasoning_effort for {family} "
                   "models on Bedrock", "thinking")
    level = "low" if effort == "minimal" else effort
    if family == "nova":
        return {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": level}}
    if family == "openai":
        return {"reasoning_effort": level}
    raise _bad(f"reasoning_effort is not supported for {family or 'this'} models on Bedrock "
               "(Claude, Nova 2 and gpt-oss take it; set model_info.base_model for an "
               "application inference profile)", "reasoning_effort")


def build_body(deployment: Deployment, params: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse (or ConverseStream) request body for OpenAI chat ``params``."""
    n = params.get("n")
    if n is not None and n != 1:
        raise _bad("Bedrock models return one choice; n must be 1", "n")
    if params.get("response_format") not in (None, {"type": "text"}):
        raise _bad("response_format is not supported for Bedrock models by this gateway",
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
            raise _bad(f"top_k is not supported for {family or 'this'} models on Bedrock",
                       "top_k")
    if extra:
        body["additionalModelRequestFields"] = extra
    return body


# --- answer: Converse response -> OpenAI chat.completion --------------------------------

def converse_usage(raw: object) -> Usage | None:
    """Usage from Converse's ``usage`` (or a stream's metadata usage)."""
    if not isinstance(raw, dict):
        return None
    written = _int(raw.get("cacheWriteInputTokens"))
    w5m = w1h = 0
    for detail in raw.get("cacheDetails") or ():
        if isinstance(detail, dict):
            if detail.get("ttl") == "1h":
                w1h += _int(detail.get("inputTokens"))
            elif detail.get("ttl") == "5m":
                w5m += _int(detail.get("inputTokens"))
    if w5m + w1h < written:
        w5m = written - w1h  # writes cacheDetails does not split: the default 5 minutes
    return Usage(input_tokens=_int(raw.get("inputTokens")),
                 cache_read_tokens=_int(raw.get("cacheReadInputTokens")),
                 cache_write_tokens=w5m, cache_write_1h_tokens=w1h,
                 output_tokens=_int(raw.get("outputTokens")))


def _int(value: object) -> int:
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


# --- errors ------------------------------------------------------------------------------

# Bedrock's exceptions that mean "try again later": 503 with their own type.
_UNAVAILABLE = {"ServiceUnavailableException", "ModelNotReadyException"}
_STATUS = {"ThrottlingException": 429, "ValidationException": 400,
           "AccessDeniedException": 403, "ResourceNotFoundException": 404,
           "ServiceQuotaExceededException": 400, "ModelErrorException": 502,
           "InternalServerException": 502, "ModelStreamErrorException": 502,
           "UnrecognizedClientException": 403, "InvalidSignatureException": 403,
           "ExpiredTokenException": 403, "IncompleteSignatureException": 403,
           "MissingAuthenticationTokenException": 403}


def error_type_of(headers: Mapping[str, str], parsed: object) -> str | None:
    """AWS's error code: ``x-amzn-errortype`` (``Code:namespace``), else the body's."""
    raw = headers.get("x-amzn-errortype") or headers.get("X-Amzn-ErrorType")
    if not raw and isinstance(parsed, dict):
        raw = parsed.get("__type") or parsed.get("code")
    if not isinstance(raw, str) or not raw:
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1]


def bedrock_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """A Bedrock error answer as an UpstreamError with the status its type calls for."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    err_type = error_type_of(headers, parsed)
    message = f"Bedrock answered {status}"
    if isinstance(parsed, dict):
        text = parsed.get("message") or parsed.get("Message")
        if isinstance(text, str) and text:
            message = text
    keep = {}
    retry_after = headers.get("retry-after") or headers.get("Retry-After")
    if retry_after:
        keep["Retry-After"] = retry_after
    code = err_type or f"http_{status}"
    if err_type in _UNAVAILABLE or (err_type is None and status == 503):
        return UpstreamError(message, status_code=503, code=code,
                             error_type="service_unavailable", headers=keep)
    if err_type == "ModelTimeoutException" or status == 408:
        exc = UpstreamTimeoutError(f"the Bedrock model did not answer in time: {message}")
        exc.headers = keep
        return exc
    mapped = _STATUS.get(err_type or "", status)
    if mapped in (401, 403):
        # AWS's text names the account and role ARNs: say what refused, never its words.
        return UpstreamPermissionDeniedError(
            f"AWS refused the gateway's credentials or permissions ({status} "
            f"{err_type or 'error'}); check the AWS credentials and IAM permissions "
            "configured for this model", status_code=403, code=code, headers=keep)
    return upstream_error_for(mapped, message, code=code, headers=keep)


# --- embeddings (InvokeModel) --------------------------------------------------------------

def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise _bad("input must be a string or a non-empty list of strings for Bedrock "
               "embedding models", "input")


def embedding_bodies(family: str, model: str, params: Mapping[str, Any]
                     ) -> list[dict[str, Any]]:
    """InvokeModel bodies for an embeddings call: Titan embeds one text per request,
    Cohere a list."""
    texts = _texts(params.get("input"))
    if family == "amazon" and "titan-embed" in model:
        extra = {} if params.get("dimensions") is None else {"dimensions": params["dimensions"]}
        return [{"inputText": text, **extra} for text in texts]
    if family == "cohere":
        body: dict[str, Any] = {"texts": texts,
                                "input_type": params.get("input_type") or "search_document"}
        if params.get("dimensions") is not None:
            body["output_dimension"] = params["dimensions"]
        return [body]
    raise _bad(f"Bedrock model {model!r} is not an embedding model this gateway serves "
               "(amazon.titan-embed-*, cohere.embed-*)", "model")


def _vectors_and_tokens(parsed: Mapping[str, Any]) -> tuple[list[Any], int | None]:
    """(vectors, input tokens or None when the answer has no count) of one answer."""
    if isinstance(parsed.get("embedding"), list):  # Titan
        return [parsed["embedding"]], _int(parsed.get("inputTextTokenCount"))
    raw = parsed.get("embeddings")  # Cohere: a list, or by type
    if isinstance(raw, dict):
        raw = raw.get("float")
    if not isinstance(raw, list):
        raise UpstreamError("Bedrock answered an embeddings call without embeddings")
    counted = _int(((parsed.get("meta") or {}).get("billed_units") or {}).get("input_tokens"))
    if counted:
        return raw, counted
    return raw, None


def embedding_result(answers: list[Mapping[str, Any]], model: str) -> ChatResult:
    """OpenAI's embeddings list (floats) from Titan or Cohere answers, billed on their input
    tokens (Cohere's answer has no count: estimated from the texts it echoes, flagged)."""
    vectors: list[Any] = []
    tokens = 0
    estimated = False
    for parsed in answers:
        found, counted = _vectors_and_tokens(parsed)
        vectors += found
        if counted is None:
            estimated = True
            counted = sum(estimate_text_tokens(str(t)) for t in parsed.get("texts") or ())
        tokens += counted
    usage = Usage(input_tokens=tokens, source="estimated" if estimated else "provider")
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return ChatResult(body=body, usage=usage, raw=None)


# --- the provider --------------------------------------------------------------------------

class BedrockProvider(Provider):
    name = "bedrock"
    price_provider = "aws"
    api_key_env = BEARER_ENV  # a Bedrock API key is a bearer token
    authorizes = True
    reads_cache_control = True
    litellm_params = frozenset({*CREDENTIAL_PARAMS, "aws_region_name",
                                "aws_bedrock_runtime_endpoint", "aws_web_identity_token",
                                "aws_session_tags"})

    def __init__(self) -> None:
        self._identities = Identities()

    def check_deployment(self, deployment: Deployment) -> None:
        for key in ("aws_web_identity_token", "aws_session_tags"):
            if deployment.params.get(key) is not None:
                raise ConfigError(f"{key} is not supported by tallygate's Bedrock provider "
                                  "(use aws_role_name, aws_profile_name or the AWS "
                                  "environment)")
        region = resolve_region(deployment.params, deployment.model, os.environ)
        identity_key(deployment.params, region, os.environ)

    def config_params(self, model: str, params: dict[str, Any],
                      config_env: Mapping[str, str]) -> dict[str, Any]:
        return with_environment(model, params, config_env)

    def price_names(self, model: str) -> tuple[str, ...]:
        return price_names(model)

    # -- where and how ------------------------------------------------------------------

    def _base(self, deployment: Deployment, region: str) -> str:
        base = (deployment.api_base or deployment.params.get("aws_bedrock_runtime_endpoint")
                or os.environ.get("AWS_BEDROCK_RUNTIME_ENDPOINT")
                or f"https://bedrock-runtime.{region}.amazonaws.com")
        return str(base).rstrip("/")

    def _request(self, deployment: Deployment, operation: str, body: dict[str, Any],
                 accept: str = "application/json") -> UpstreamRequest:
        region = resolve_region(deployment.params, deployment.model, os.environ)
        # Every byte of the id percent-encoded but -_.~, as botocore does: an ARN's ':'
        # and '/' go as %3A and %2F, and the signature covers them as sent.
        model = quote(deployment.model, safe="-_.~")
        headers = {"Content-Type": "application/json", "Accept": accept,
                   **deployment.headers}
        return UpstreamRequest(url=f"{self._base(deployment, region)}/model/{model}/{operation}",
                               headers=headers, body=orjson.dumps(body), encoded_url=True)

    async def authorize(self, deployment: Deployment,
                        request: UpstreamRequest) -> UpstreamRequest:
        token = bearer_token(deployment.api_key, deployment.params, os.environ)
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
            return request
        region = resolve_region(deployment.params, deployment.model, os.environ)
        identity = self._identities.get(identity_key(deployment.params, region, os.environ))
        creds = await identity.frozen()
        request.headers = sign_headers(creds, region, request.url, request.headers,
                                       request.body)
        return request

    # -- chat -----------------------------------------------------------------------------

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = build_body(deployment, params)
        if stream:
            return self._request(deployment, "converse-stream", body, EVENTSTREAM)
        return self._request(deployment, "converse", body)

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("Bedrock answered with a non-object body")
        usage = converse_usage(parsed.get("usage"))
        return ChatResult(body=translate_response(parsed, deployment.model, usage),
                          usage=usage, raw=None)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        from tallygate.providers.bedrock_stream import ConverseStreamDecoder

        return ConverseStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return bedrock_error(status, body, headers)

    # -- embeddings -------------------------------------------------------------------------

    def embedding_requests(self, deployment: Deployment,
                           params: dict[str, Any]) -> list[UpstreamRequest]:
        model = base_model_id(deployment.base_model or deployment.model)
        return [self._request(deployment, "invoke", body)
                for body in embedding_bodies(model.partition(".")[0], model, params)]

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        requests = self.embedding_requests(deployment, params)
        if len(requests) != 1:
            raise _bad("this model embeds one input per request", "input")
        return requests[0]

    def embedding_responses(self, deployment: Deployment, bodies: list[bytes]) -> ChatResult:
        answers = [orjson.loads(body) for body in bodies]
        if not all(isinstance(a, dict) for a in answers):
            raise UpstreamError("Bedrock answered with a non-object body")
        return embedding_result(answers, deployment.model)

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return self.embedding_responses(deployment, [body])


register(BedrockProvider())
