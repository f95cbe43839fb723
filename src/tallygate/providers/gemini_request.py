"""OpenAI chat params to a Gemini ``generateContent`` body (Google AI Studio and Vertex).

Pure functions on dicts, shared by the ``gemini`` and ``vertex_ai`` providers (and a
Gemini door going the other way): system messages to ``systemInstruction``, roles
``user`` / ``model``, text, images, audio and files as parts, tool calls as
``functionCall`` and tool results as ``functionResponse`` parts, tools as
``functionDeclarations``, and the sampling knobs in ``generationConfig``.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import BadRequestError
from tallygate.providers.gemini_schema import function_parameters, gemini_schema

# reasoning_effort -> thinkingConfig.thinkingBudget (tokens), as LiteLLM maps it;
# Gemini 3 models take a budget too (for backwards compatibility).
THINKING_BUDGETS = {"none": 0, "disable": 0, "minimal": 512, "low": 1024, "medium": 2048,
                    "high": 4096}
TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# A Gemini 3 function call carries a thought signature that must come back with it in
# the next turn; OpenAI clients only send back the tool call id, so it rides in there.
SIGNATURE_MARK = "__sig__"


def _bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param)


def tool_call_id(signature: object = None) -> str:
    """A new OpenAI tool call id, carrying a function call's thought signature."""
    base = "call_" + os.urandom(12).hex()
    if isinstance(signature, str) and signature:
        # base64 -> URL-safe alphabet: ids stay [A-Za-z0-9_-] for clients that check.
        safe = signature.replace("+", "-").replace("/", "_").rstrip("=")
        return base + SIGNATURE_MARK + safe
    return base


def signature_of(call_id: object) -> str | None:
    """The thought signature a ``tool_call_id`` carries, in its original base64."""
    if not isinstance(call_id, str) or SIGNATURE_MARK not in call_id:
        return None
    safe = call_id.split(SIGNATURE_MARK, 1)[1]
    if not safe:
        return None
    plain = safe.replace("-", "+").replace("_", "/")
    return plain + "=" * (-len(plain) % 4)


# --- content parts ---------------------------------------------------------------------

def _data_url(url: str, where: str) -> dict[str, Any]:
    head, sep, data = url[5:].partition(",")
    mime, _, encoding = head.partition(";")
    if not sep or encoding != "base64" or not mime:
        raise _bad(f"{where}: data URLs must be base64 with a media type", where)
    return {"inlineData": {"mimeType": mime, "data": data}}


def _file_uri(uri: str, mime: object) -> dict[str, Any]:
    if not isinstance(mime, str) or not mime:
        mime = mimetypes.guess_type(uri.split("?", 1)[0])[0]
    data: dict[str, Any] = {"fileUri": uri}
    if mime:
        data["mimeType"] = mime
    return {"fileData": data}


def _part(part: object, where: str) -> dict[str, Any] | None:
    if not isinstance(part, Mapping):
        raise _bad(f"{where} must be an object", where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text must be a string", f"{where}.text")
        return {"text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        if not isinstance(url, str) or not url:
            raise _bad(f"{where}.image_url needs a url", f"{where}.image_url")
        if url.startswith("data:"):
            return _data_url(url, f"{where}.image_url.url")
        fmt = image.get("format") if isinstance(image, Mapping) else None
        return _file_uri(url, fmt)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
            raise _bad(f"{where}.input_audio needs data", f"{where}.input_audio")
        fmt = audio.get("format") or "wav"
        return {"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}}
    if kind == "file":
        file = part.get("file")
        if not isinstance(file, Mapping):
            raise _bad(f"{where}.file must be an object", f"{where}.file")
        if isinstance(file.get("file_data"), str):
            data = file["file_data"]
            if data.startswith("data:"):
                return _data_url(data, f"{where}.file.file_data")
            raise _bad(f"{where}.file.file_data must be a data URL", f"{where}.file.file_data")
        if isinstance(file.get("file_id"), str):
            return _file_uri(file["file_id"], file.get("format"))
        raise _bad(f"{where}.file needs file_data or file_id", f"{where}.file")
    raise _bad(f"{where}: content part type {kind!r} is not supported for Gemini models",
               f"{where}.type")


def content_parts(content: object, where: str) -> list[dict[str, Any]]:
    """OpenAI message content (a string or parts) as Gemini parts; empty text dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of parts", where)
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    return [p for p in parts if p is not None]


def _function_call(call: object, where: str) -> tuple[str, dict[str, Any]]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise _bad(f"{where} needs a function with a name", where)
    args = fn.get("arguments") or "{}"
    try:
        parsed = orjson.loads(args) if isinstance(args, str) else args
    except orjson.JSONDecodeError:
        raise _bad(f"{where}.function.arguments is not valid JSON",
                   f"{where}.function.arguments") from None
    if not isinstance(parsed, dict):
        raise _bad(f"{where}.function.arguments must be a JSON object",
                   f"{where}.function.arguments")
    part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": parsed}}
    call_id = call.get("id") if isinstance(call, Mapping) else None
    signature = signature_of(call_id)
    if signature:
        part["thoughtSignature"] = signature
    return str(call_id or ""), part


def _function_response(message: Mapping[str, Any], name: str) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text") or "") for p in content
                          if isinstance(p, Mapping) and p.get("type") == "text")
    text = "" if content is None else str(content)
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    # Gemini wants an object; a result that is not one is wrapped.
    response = parsed if isinstance(parsed, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def translate_messages(messages: object) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(systemInstruction or None, contents) for OpenAI chat ``messages``.

    Tool results become ``functionResponse`` parts of a user turn, named after the call
    they answer; consecutive turns of one role are merged, as Gemini wants them to
    alternate.
    """
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _bad(f"{where} must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(content_parts(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            gemini_role, parts = "user", content_parts(message.get("content"),
                                                       f"{where}.content")
        elif role == "assistant":
            gemini_role = "model"
            parts = content_parts(message.get("content"), f"{where}.content")
            for j, call in enumerate(message.get("tool_calls") or ()):
                call_id, part = _function_call(call, f"{where}.tool_calls[{j}]")
                call_names[call_id] = part["functionCall"]["name"]
                parts.append(part)
        elif role in ("tool", "function"):
            name = call_names.get(str(message.get("tool_call_id") or "")) or message.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(f"{where}.tool_call_id names no earlier tool call",
                           f"{where}.tool_call_id")
            gemini_role, parts = "user", [_function_response(message, name)]
        else:
            raise _bad(f"{where}.role {role!r} is not supported for Gemini models",
                       f"{where}.role")
        if not parts:
            continue
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents:
        raise _bad("messages hold no user or assistant content to send", "messages")
    return ({"parts": system} if system else None), contents


# --- tools, output format, generation config -------------------------------------------

def translate_tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    declarations = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if (not isinstance(tool, Mapping) or tool.get("type", "function") != "function"
                or not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str)):
            raise _bad(f"{where}: only function tools with a name are supported for Gemini "
                       "models", where)
        declaration: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            declaration["description"] = str(fn["description"])
        parameters = function_parameters(fn.get("parameters"), f"{where}.function.parameters")
        if parameters is not None:
            declaration["parameters"] = parameters
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}] if declarations else []


def translate_tool_choice(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return {"functionCallingConfig": {"mode": TOOL_CHOICE_MODES[choice]}}
    fn = choice.get("function") if isinstance(choice, Mapping) else None
    if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [fn["name"]]}}
    raise _bad(f"unsupported tool_choice {choice!r}", "tool_choice")


def _response_format(value: object, config: dict[str, Any]) -> None:
    if value is None:
        return
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "text":
        return
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
        return
    if kind == "json_schema":
        spec = value.get("json_schema") if isinstance(value, Mapping) else None
        if not isinstance(spec, Mapping):
            raise _bad("response_format.json_schema must be an object",
                       "response_format.json_schema")
        config["responseMimeType"] = "application/json"
        if spec.get("schema") is not None:
            config["responseSchema"] = gemini_schema(spec["schema"],
                                                     "response_format.json_schema.schema")
        return
    raise _bad("response_format.type must be text, json_object or json_schema",
               "response_format.type")


def _thinking(effort: object) -> dict[str, Any]:
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise _bad(f"reasoning_effort must be one of {', '.join(THINKING_BUDGETS)}",
                   "reasoning_effort")
    return {"thinkingBudget": THINKING_BUDGETS[effort]}


# The OpenAI chat parameters ``generate_content_body`` translates
# (get_supported_openai_params).
OPENAI_PARAMS = frozenset({
    "stream", "stream_options", "stop", "temperature", "top_p", "max_tokens",
    "max_completion_tokens", "seed", "presence_penalty", "frequency_penalty", "n",
    "response_format", "reasoning_effort", "tools", "tool_choice", "user", "extra_headers",
    "metadata"})
_CONFIG_NAMES = {"temperature": "temperature", "top_p": "topP", "top_k": "topK",
                 "seed": "seed", "presence_penalty": "presencePenalty",
                 "frequency_penalty": "frequencyPenalty"}


def generation_config(params: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    for name, gemini_name in _CONFIG_NAMES.items():
        if params.get(name) is not None:
            config[gemini_name] = params[name]
    stop = params.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    n = params.get("n")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _bad("n must be a positive integer", "n")
        config["candidateCount"] = n
    _response_format(params.get("response_format"), config)
    if params.get("reasoning_effort") is not None:
        config["thinkingConfig"] = _thinking(params["reasoning_effort"])
    return config


def generate_content_body(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generateContent`` / ``streamGenerateContent`` body for OpenAI chat params
    (the model goes in the URL, not the body)."""
    system, contents = translate_messages(params.get("messages"))
    body: dict[str, Any] = {"contents": contents}
    if system is not None:
        body["systemInstruction"] = system
    if params.get("tools"):
        tools = translate_tools(params["tools"])
        if tools:
            body["tools"] = tools
        choice = translate_tool_choice(params.get("tool_choice"))
        if choice is not None:
            body["toolConfig"] = choice
    config = generation_config(params)
    if config:
        body["generationConfig"] = config
    # LiteLLM's Gemini-only params, passed through in Gemini's names.
    if params.get("safety_settings") is not None:
        body["safetySettings"] = params["safety_settings"]
    if params.get("cached_content") is not None:
        body["cachedContent"] = params["cached_content"]
    return body


# --- embeddings ------------------------------------------------------------------------

def embed_body(model: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method, body) for OpenAI embedding params: one text is ``embedContent``, a list
    ``batchEmbedContents``."""
    value = params.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _bad("input must be a string or a list of strings for Gemini embeddings "
                   "(token arrays are not accepted)", "input")

    def request(text: str) -> dict[str, Any]:
        one: dict[str, Any] = {"model": f"models/{model}",
                               "content": {"parts": [{"text": text}]}}
        if params.get("dimensions") is not None:
            one["outputDimensionality"] = params["dimensions"]
        if params.get("task_type") is not None:
            one["taskType"] = params["task_type"]
        return one

    if isinstance(value, str):
        return "embedContent", request(value)
    return "batchEmbedContents", {"requests": [request(t) for t in texts]}
