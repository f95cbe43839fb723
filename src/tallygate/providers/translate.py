"""Pieces shared by the adapters that translate OpenAI chat to another wire format
(Cohere, Ollama): reading OpenAI content parts, refusing what cannot be translated,
and building the OpenAI chunks, answers and embedding lists they hand back.

It registers no provider; the adapters import it.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from tallygate.errors import BadRequestError, UpstreamError
from tallygate.providers.base import StreamItem
from tallygate.usage import Usage

# OpenAI chat params that change the answer's shape and that no translated provider
# here can honour: refused with a 400 naming them, never dropped in silence.
UNTRANSLATABLE = ("logprobs", "top_logprobs", "logit_bias", "audio", "modalities",
                  "prediction", "functions", "function_call")


# The OpenAI chat params the translating adapters here read (LiteLLM's
# get_supported_openai_params); ``user``, ``safety_identifier`` and ``metadata`` name who
# pays and go no further, ``n`` is served when it is 1.
CHAT_PARAMS = frozenset({
    "stream", "stream_options", "stop", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "tools", "tool_choice", "response_format", "user",
    "safety_identifier", "metadata", "n", "reasoning_effort", "seed", "frequency_penalty",
    "presence_penalty"})


def refuse_untranslatable(params: Mapping[str, Any], label: str) -> None:
    """400 for a param in UNTRANSLATABLE that is set, and for ``n`` other than 1."""
    for name in UNTRANSLATABLE:
        if params.get(name):
            raise BadRequestError(f"{name!r} is not supported for {label} models",
                                  param=name, code="unsupported_parameter")
    n = params.get("n")
    if n is not None and n != 1:
        raise BadRequestError(f"{label} models return one choice; n must be 1", param="n",
                              code="unsupported_parameter")


def max_tokens(params: Mapping[str, Any]) -> Any:
    """The output limit, the newer OpenAI name first."""
    value = params.get("max_completion_tokens")
    return value if value is not None else params.get("max_tokens")


def stop_list(stop: object) -> list[str] | None:
    if not stop:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise BadRequestError("stop must be a string or a list of strings", param="stop")


def content_parts(content: object, where: str = "messages") -> list[dict[str, Any]]:
    """OpenAI message content as a list of parts (a string is one text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequestError("message content must be a string or a list of parts",
                              param=where)
    for part in content:
        if not isinstance(part, dict):
            raise BadRequestError("content parts must be objects", param=where)
    return content


def text_of(content: object, label: str, where: str = "messages") -> str:
    """The text of content that may hold text parts only (system, assistant, tool)."""
    texts = []
    for part in content_parts(content, where):
        if part.get("type") != "text":
            raise BadRequestError(f"content part type {part.get('type')!r} is not "
                                  f"supported here for {label} models", param=where)
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def image_url(part: Mapping[str, Any], where: str = "messages") -> tuple[str, str | None]:
    """(url, detail) of an ``image_url`` part."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequestError("image_url part without a url", param=where)
    detail = image.get("detail") if isinstance(image, dict) else None
    return url, detail if isinstance(detail, str) else None


def data_url_base64(url: str, label: str, where: str = "messages") -> str:
    """The base64 payload of a ``data:<type>;base64,<data>`` URL."""
    if not url.startswith("data:"):
        raise BadRequestError(f"{label} takes images as base64 data URLs "
                              "(data:image/png;base64,...), not links", param=where)
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise BadRequestError("image data URLs must be base64-encoded", param=where)
    return data


def arguments_object(arguments: object, where: str = "messages") -> dict[str, Any]:
    """OpenAI tool-call arguments (a JSON string) as an object."""
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else arguments
    except orjson.JSONDecodeError:
        raise BadRequestError("tool call arguments are not valid JSON", param=where) from None
    if not isinstance(parsed, dict):
        raise BadRequestError("tool call arguments must be a JSON object", param=where)
    return parsed


def function_tools(tools: object) -> list[dict[str, Any]]:
    """The ``function`` objects of OpenAI tools, each checked to have a name."""
    if not isinstance(tools, list):
        raise BadRequestError("tools must be a list", param="tools")
    out = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadRequestError("only function tools with a name are supported",
                                  param="tools")
        out.append(fn)
    return out


def function_tool_entries(functions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Checked ``function`` objects as the tools list both Cohere and Ollama take: name,
    parameters (an empty object schema when none) and the description when given."""
    out = []
    for fn in functions:
        entry: dict[str, Any] = {
            "name": fn["name"],
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append({"type": "function", "function": entry})
    return out


def call_functions(calls: object,
                   where: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(call, function) of an assistant turn's OpenAI ``tool_calls``, each checked (as
    it is reached) to have a function with a name."""
    if not isinstance(calls, list):
        raise BadRequestError("tool_calls must be a list", param=where)
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise BadRequestError("tool_calls entries need a function with a name",
                                  param=where)
        yield call, fn


def message_list(messages: object) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, message) of OpenAI ``messages``, checked to be a non-empty list of
    objects; ``where`` names the message in errors (``messages[2]``)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError("each message must be an object", param=where)
        yield where, message


def unsupported_role(role: object, label: str, where: str) -> BadRequestError:
    return BadRequestError(f"message role {role!r} is not supported for {label} models",
                           param=f"{where}.role")


def unsupported_part(kind: object, label: str, where: str) -> BadRequestError:
    return BadRequestError(f"content part type {kind!r} is not supported for {label} models",
                           param=where)


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


# --- answers and chunks in the OpenAI shape ----------------------------------------------

def chat_completion(ident: str, model: str, message: dict[str, Any], finish: str,
                    usage: Usage | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ident, "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage.to_openai()
    return body


def assistant_message(text: str, tool_calls: Sequence[dict[str, Any]],
                      reasoning: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if tool_calls and not text else text,
                               "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning  # the field OpenAI-compatible servers use
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    return message


def json_object(body: bytes, label: str) -> dict[str, Any]:
    """An upstream's JSON answer, which must be an object."""
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise UpstreamError(f"{label} answered with a non-object body")
    return parsed


def error_message(body: bytes, field: str, default: str) -> str:
    """The string ``field`` of a JSON error answer; ``default`` when there is none."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get(field), str):
        return str(parsed[field])
    return default


def tool_call(ident: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


class ChunkMaker:
    """Builds the ``chat.completion.chunk`` items of one translated stream."""

    def __init__(self, model: str, ident: str = "") -> None:
        self.ident = ident
        self.model = model
        self.created = int(time.time())

    def _item(self, chunk: dict[str, Any]) -> StreamItem:
        return StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n")

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> StreamItem:
        return self._item({
            "id": self.ident, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]})

    def usage(self, usage: Usage) -> StreamItem:
        return self._item({
            "id": self.ident, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [], "usage": usage.to_openai()})


# --- embeddings --------------------------------------------------------------------------

def embedding_inputs(value: object, label: str) -> list[str]:
    """The OpenAI ``input`` as a list of strings (token arrays cannot be translated)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
        raise BadRequestError(f"{label} embeddings take input as a string or a list of "
                              "strings (not token arrays)", param="input")
    return items


def check_encoding_format(params: Mapping[str, Any]) -> None:
    """Float vectors are asked for upstream; the engine packs them for base64."""
    if params.get("encoding_format") not in (None, "float", "base64"):
        raise BadRequestError("encoding_format must be 'float' or 'base64'",
                              param="encoding_format")


def embedding_list(vectors: Sequence[Sequence[float]], model: str,
                   input_tokens: int) -> dict[str, Any]:
    """OpenAI's embeddings answer, with float vectors."""
    data = [{"object": "embedding", "index": i, "embedding": list(vector)}
            for i, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens}}


def pack_base64(body: dict[str, Any]) -> dict[str, Any]:
    """An embeddings answer with each float vector packed as base64 little-endian
    float32, as OpenAI answers ``encoding_format: base64`` (vectors already packed are
    left as they are)."""
    data = []
    for item in body.get("data") or ():
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list):
            packed = struct.pack(f"<{len(vector)}f", *vector)
            item = {**item, "embedding": base64.b64encode(packed).decode()}
        data.append(item)
    return {**body, "data": data}


def obj(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for reading answers)."""
    return value if isinstance(value, dict) else {}


def count(value: object) -> int | None:
    """A token count from a provider's JSON (ints, or floats such as 12.0); None when
    absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(int(value), 0)
